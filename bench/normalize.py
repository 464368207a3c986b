"""Benchmark: values normalized per second for a 20-point profile on one core.

Run: .venv/bin/python bench/normalize.py
Prints values/s and readings/s for the normalizer alone (scale, offset,
rounding, range check, quality) and with JSON encoding of each message.
"""

from __future__ import annotations

import json
import random
import time

from fieldgate.drivers.sim.profile import SimProfile
from fieldgate.normalize import Normalizer
from fieldgate.schema import RawReading

POINTS = 20


def main() -> None:
    profile = SimProfile.model_validate({
        "schema_version": 1, "driver": "sim", "vendor": "bench", "model": "twenty",
        "points": [{"name": f"p{i}", "unit": "V", "scale": 0.1, "offset": 0.0, "decimals": 2,
                    "range": [0, 10_000]} for i in range(POINTS)],
    })
    norm = Normalizer("gw-bench", "dev-1", profile, {"driver": "sim", "profile": "bench/twenty"})
    rng = random.Random(1)
    raws = [RawReading({f"p{i}": rng.randint(0, 60000) for i in range(POINTS)}, ts=1.7e9 + k) for k in range(1000)]
    encode = json.JSONEncoder(separators=(",", ":")).encode
    for label, fn in (("normalize", norm.normalize),
                      ("normalize+json", lambda r: encode(norm.normalize(r)))):
        n = 0
        start = time.process_time()
        while time.process_time() - start < 2.0:
            for r in raws:
                fn(r)
            n += len(raws)
        cpu = time.process_time() - start
        print(f"{label:16s} {n * POINTS / cpu:12,.0f} values/s  {n / cpu:10,.0f} readings/s  "
              f"({POINTS} points, one core, CPU time)")


if __name__ == "__main__":
    main()
