"""Benchmark: where the gateway's memory goes, at import and in the real process (issue 16: RSS <= 50 MB).

Run: .venv/bin/python bench/memory.py [-s D] [--seconds 10]

Prints, with the 1-minute load average:
  - the import ladder: VmRSS (MiB) of a fresh interpreter after each module of the run path, and
    how many modules it has loaded (``python -X importtime`` says where the time goes; this says
    where the resident memory goes);
  - the real gateway (bench/fleet.py's setup: Modbus TCP fleet simulator, mosquitto, ``fieldgate
    run`` with its defaults) for one scenario: VmHWM and VmRSS with the status page on and nobody
    on it, on after one visit (the page loads its HTTP server then), and off.

Figures are in docs/performance.md ("Memory").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet  # bench/fleet.py, beside this file

LADDER = ("yaml", "pydantic", "fieldgate.config", "fieldgate.app", "fieldgate.runtime", "fieldgate.cli",
          "fieldgate.uplink", "fieldgate.drivers.modbus.driver", "fieldgate.web.deferred", "fieldgate.web.app")

_LADDER_CODE = """
import importlib, sys
def rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS'):
                return int(line.split()[1]) / 1024
print(f"  {'(interpreter)':34s} {rss():6.1f} MiB  {len(sys.modules):4d} modules")
for name in sys.argv[1:]:
    importlib.import_module(name)
    print(f"  {name:34s} {rss():6.1f} MiB  {len(sys.modules):4d} modules")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-s", "--scenario", default="D", choices=sorted(fleet.SCENARIOS))
    ap.add_argument("--seconds", type=float, default=10.0, help="window per gateway run (default 10)")
    ap.add_argument("--warmup", type=float, default=5.0)
    args = ap.parse_args()
    print(f"import ladder (VmRSS after each import; load {os.getloadavg()[0]:.2f})", flush=True)
    subprocess.run([sys.executable, "-c", _LADDER_CODE, *LADDER], check=True)
    d, r, i = fleet.SCENARIOS[args.scenario]
    print(f"gateway, {args.scenario}: {d} devices x {r} registers every {i:g} s, window {args.seconds:g} s", flush=True)
    for label, web, visit in (("page on, no visitor", True, False), ("page on, visited", True, True),
                              ("page off", False, False)):
        res = fleet.run_once(args.scenario, args.seconds, args.warmup, web, None, visit=visit)
        print(f"  {label:22s} VmHWM {res['vmhwm_mib']:6.1f} MiB ({res['vmhwm_mib'] * 1.048576:5.1f} MB)  "
              f"VmRSS {res['rss_mib']:6.1f} MiB  values/s {res['values_per_s']:8.0f}  load {res['load1']:.2f}"
              + (f"  first request {res['first_visit_s']:.2f} s" if visit else ""),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
