"""``fieldgate probe DEVICE``: read a device once and show raw and normalized values.

For a technician at the cabinet: does the device answer, and does the
profile decode it right? Uses the same driver, profile and normalizer as the
running gateway, so what it prints is what the gateway would publish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, TextIO

from .app import DeviceLog
from .config import LoadedConfig
from .driver import DeviceContext, SharedResources
from .errors import DriverError
from .normalize import Normalizer
from .schema import PointError, RawReading


class _Collect:
    def __init__(self) -> None:
        self.readings: list[RawReading] = []
        self.errors: list[DriverError] = []

    def add(self, reading: RawReading) -> None:
        self.readings.append(reading)

    def add_error(self, error: DriverError) -> None:
        self.errors.append(error)


async def probe(loaded: LoadedConfig, device_id: str, out: TextIO) -> int:
    """Poll ``device_id`` once and print a table; returns an exit code (0 ok, 3 failed)."""
    spec = next((d for d in loaded.devices if d.config.id == device_id), None)
    if spec is None:
        ids = ", ".join(d.config.id for d in loaded.devices) or "none"
        print(f"no device {device_id!r} in {loaded.path} (devices: {ids})", file=out)
        return 1
    log = DeviceLog(logging.getLogger(f"fieldgate.device.{device_id}"), {"device": device_id})
    ctx = DeviceContext(device_id, spec.profile, spec.connection, spec.config.poll_timeout, log, SharedResources())
    driver: Any = spec.driver(ctx)
    sink = _Collect()
    started = time.monotonic()
    try:
        async with asyncio.timeout(spec.config.poll_timeout * 2):
            await driver.__aenter__()
            try:
                if hasattr(driver, "run") and not hasattr(driver, "poll"):
                    await driver.run(sink)
                else:
                    await driver.poll(sink)
            finally:
                await driver.__aexit__(None, None, None)
    except TimeoutError:
        print(f"{device_id}: no answer within {spec.config.poll_timeout * 2:g}s", file=out)
        return 3
    except DriverError as exc:
        print(f"{device_id}: {exc}", file=out)
        return 3
    took = (time.monotonic() - started) * 1000
    raw_text = dict(driver.last_raw()) if hasattr(driver, "last_raw") else {}
    norm = Normalizer(loaded.config.gateway.id, device_id, spec.profile)
    rows = [("point", "raw", "value", "unit", "quality")]
    for reading in sink.readings:
        msg = norm.normalize(reading) or {"metrics": {}}
        for name, raw in reading.values.items():
            m = msg["metrics"].get(name, {})
            raw_s = raw_text.get(name) or (raw.reason if isinstance(raw, PointError) else repr(raw))
            q = m.get("quality", "")
            if m.get("reason"):
                q += f" ({m['reason']})"
            rows.append((name, raw_s, repr(m.get("value")), m.get("unit", ""), q))
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
    for err in sink.errors:
        print(f"partial failure: {err}", file=out)
    print(f"{device_id}: {len(rows) - 1} point(s) in {took:.0f} ms via {spec.driver.name} "
          f"({spec.profile.vendor} {spec.profile.model})", file=out)
    return 0 if not sink.errors else 3
