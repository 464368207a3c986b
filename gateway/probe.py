"""``fieldgate probe DEVICE``: read a device once and show raw and normalized values.

For a technician at the cabinet: does the device answer, and does the
profile decode it right? Uses the same driver, profile and normalizer as the
running gateway, so what it prints is what the gateway would publish.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

from .app import DeviceLog
from .config import LoadedConfig
from .driver import (
    AnyDriver,
    DeviceContext,
    ServiceDriver,
    SharedResources,
    create_driver,
    driver_status,
    is_passive,
    raw_values,
)
from .errors import DriverError
from .normalize import Normalizer
from .schema import PointError
from .testing.sink import RecordingSink  # the one recording sink, also what third parties test with

#: How long to wait for a device that reports on its own (BLE adverts, CoAP observe) ...
PUSH_WAIT_S = 30.0
#: ... and for one that sleeps between reports (an NB-IoT device pushing): long enough to wake it by hand.
PASSIVE_WAIT_S = 300.0


def endpoint_of(driver: object) -> str:
    """Where a passive (push) driver receives its device's reports, from its ``status()``."""
    doc = driver_status(driver)
    return "".join(str((doc or {}).get(k) or "") for k in ("endpoint", "path")) or "its endpoint"


async def first_report(driver: ServiceDriver, sink: RecordingSink) -> None:
    """Run a push driver until its first reading or error (its own failure is raised)."""
    runner = asyncio.create_task(driver.run(sink), name="probe-run")
    first = asyncio.create_task(sink.first.wait(), name="probe-first")
    try:
        await asyncio.wait({runner, first}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (runner, first):
            task.cancel()
        await asyncio.gather(runner, first, return_exceptions=True)
    if not sink.first.is_set() and runner.done() and not runner.cancelled() and runner.exception() is not None:
        raise runner.exception()  # type: ignore[misc]


async def read_once(driver: AnyDriver, sink: RecordingSink) -> None:
    """One poll of a polled driver; a pushing one (with ``run``, as the supervisor sees it) up to its first report."""
    if isinstance(driver, ServiceDriver):
        await first_report(driver, sink)
    else:
        await driver.poll(sink)


async def probe(loaded: LoadedConfig, device_id: str, out: TextIO, wait: float | None = None,
                err: TextIO | None = None) -> int:
    """Read ``device_id`` once and print a table; returns an exit code (0 ok, 1 no such device, 3 failed).

    A polled device is polled once. A device that reports on its own (the
    driver has ``run``, as the supervisor sees it) is run until its first
    reading or error, for at most ``wait`` seconds (default: twice the poll
    timeout for polled devices, ``PUSH_WAIT_S`` for pushing ones,
    ``PASSIVE_WAIT_S`` for sleeping ones, which the technician can wake).
    """
    err = err if err is not None else sys.stderr
    spec = next((d for d in loaded.devices if d.config.id == device_id), None)
    if spec is None:
        ids = ", ".join(d.config.id for d in loaded.devices) or "none"
        print(f"no device {device_id!r} in {loaded.path} (devices: {ids})", file=out)
        return 1
    log = DeviceLog(logging.getLogger(f"fieldgate.device.{device_id}"), {"device": device_id})
    ctx = DeviceContext(device_id, spec.profile, spec.connection, spec.config.poll_timeout, log, SharedResources())
    driver = create_driver(spec.driver, ctx)
    pushes = isinstance(driver, ServiceDriver)
    passive = is_passive(driver)
    if wait is None:
        wait = PASSIVE_WAIT_S if passive else max(spec.config.poll_timeout * 2, PUSH_WAIT_S if pushes else 0.0)
    sink = RecordingSink()
    started = time.monotonic()
    try:
        async with asyncio.timeout(wait):
            await driver.__aenter__()
            try:
                if pushes:
                    where = f" at {endpoint_of(driver)}" if passive else ""
                    print(f"waiting up to {wait:g} s for {device_id} to report{where}"
                          + ("; wake it (button, magnet) to report now" if passive else "") + " ...", file=err)
                await read_once(driver, sink)
            finally:
                await driver.__aexit__(None, None, None)
    except TimeoutError:
        print(f"{device_id}: {'no report' if pushes else 'no answer'} within {wait:g}s", file=out)
        return 3
    except DriverError as exc:
        print(f"{device_id}: {exc}", file=out)  # the message carries its hint
        return 3
    except Exception as exc:  # a driver bug: one clear line, not a traceback
        print(f"{device_id}: the {spec.driver.name} driver failed: {exc!r} (a bug: please report it)", file=out)
        return 3
    took = (time.monotonic() - started) * 1000
    raw_text = raw_values(driver)
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
    # What the device told about itself on connect (a SunSpec chain's models), as its driver lists it.
    for line in (driver_status(driver) or {}).get("found", []):
        print(f"found: {line}", file=out)
    for failure in sink.errors:
        print(f"partial failure: {failure}", file=out)
    print(f"{device_id}: {len(rows) - 1} point(s) in {took:.0f} ms via {spec.driver.name} "
          f"({spec.profile.vendor} {spec.profile.model})", file=out)
    return 0 if not sink.errors else 3
