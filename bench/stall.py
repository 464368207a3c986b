"""Benchmark: what a host stall costs the Modbus polls (not a timed test; prints figures).

The real gateway process polls pymodbus servers (hw-sim) and publishes to a
real mosquitto; the run freezes the gateway with SIGSTOP/SIGCONT for a
moment, many times, and counts at a QoS 1 subscriber the polls expected,
delivered and lost, and the device statuses that went degraded or offline,
with the load average. The devices keep answering during a stall: any poll
lost is the gateway's doing. Run: ``.venv/bin/python bench/stall.py``
(``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the rig lives with the tests that use it

from tests.modbus.stall_rig import describe, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=6)
    ap.add_argument("--stalls", type=int, default=15)
    ap.add_argument("--interval", type=float, action="append", help="poll interval(s) in seconds (repeatable)")
    ap.add_argument("--stall-ms", type=float, action="append", help="stall length(s) in ms (repeatable)")
    args = ap.parse_args()
    for interval in args.interval or [0.1, 0.25, 1.0]:
        for stall_ms in args.stall_ms or [100.0, 300.0]:
            with tempfile.TemporaryDirectory(prefix="fg-stall-") as tmp:
                fig = run(Path(tmp), devices=args.devices, interval=interval, stalls=args.stalls,
                          stall_s=stall_ms / 1000, gap_s=(max(0.4, 2 * interval), max(0.9, 3 * interval)))
            print(describe(fig), flush=True)
            for d, n in fig.per_device.items():
                print(f"    {d}: {n}", end="")
            print(flush=True)


if __name__ == "__main__":
    main()
