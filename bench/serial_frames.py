"""Benchmark: serial frames framed and decoded per second on one core.

Run: .venv/bin/python bench/serial_frames.py
For each shipped streaming profile, feeds a long stream of simulator frames
(in 4 KiB reads, as a busy port delivers them, and again with 30% garbage
between frames) through the framer and decoder, and prints frames/s of CPU
time; then the same through the core's normalizer as well.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from fieldgate.codecs.fields import BinaryDecoder, TextDecoder
from fieldgate.codecs.frames import make_framer
from fieldgate.drivers.serial.profile import SerialProfile
from fieldgate.normalize import Normalizer
from fieldgate.schema import RawReading
from fieldgate_hwsim.serial_sim import gnss_sentences, pms5003_frame, sds011_frame

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
FRAMES = 5000


def streams(rng: random.Random) -> dict[str, list[bytes]]:
    return {
        "novafitness/sds011": [sds011_frame(rng.randint(0, 9999) / 10, rng.randint(0, 9999) / 10)
                               for _ in range(FRAMES)],
        "plantower/pms5003": [pms5003_frame([rng.randint(0, 999) for _ in range(13)]) for _ in range(FRAMES)],
        "nmea0183/gnss": [gnss_sentences(1.7e9 + k, 48 + rng.random(), 11 + rng.random()) for k in range(FRAMES)],
    }


def run(profile: SerialProfile, data: bytes, sink: Callable[[dict[str, object]], object]) -> tuple[int, float]:
    points = [(p.name, p) for p in profile.points]
    decoder = (TextDecoder(profile.frame.patterns, points) if profile.frame.is_text
               else BinaryDecoder(points, profile.frame.byte_order))
    decode = decoder.decode
    n = 0
    start = time.process_time()
    while time.process_time() - start < 1.0:
        framer = make_framer(profile.frame)
        for i in range(0, len(data), 4096):
            for frame in framer.feed(data[i:i + 4096]):
                values = decode(frame)
                if values is not None:
                    sink(values)
                    n += 1
    return n, time.process_time() - start


def main() -> None:
    rng = random.Random(1)
    for name, frames in streams(rng).items():
        profile = SerialProfile.model_validate(yaml.safe_load((PROFILES / f"{name}.yaml").read_text()))
        clean = b"".join(frames)
        noisy = b"".join((rng.randbytes(rng.randint(1, 20)) if rng.random() < 0.3 else b"") + f for f in frames)
        norm = Normalizer("gw-bench", "dev-1", profile)
        for label, data, sink in (
            ("frame+decode", clean, lambda v: None),
            ("  with garbage", noisy, lambda v: None),
            ("  +normalize", clean, lambda v, norm=norm: norm.normalize(RawReading(v, ts=1.7e9))),
        ):
            n, cpu = run(profile, data, sink)  # type: ignore[arg-type]
            print(f"{name:20s} {label:15s} {n / cpu:12,.0f} frames/s  ({len(data) / len(frames):.0f} B/frame, "
                  "one core, CPU time)")


if __name__ == "__main__":
    main()
