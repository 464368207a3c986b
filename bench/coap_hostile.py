"""Benchmark: what a flood of hostile CoAP datagrams costs the push endpoint and a healthy device.

Run: .venv/bin/python bench/coap_hostile.py [--seconds 5] [--flooders 1]

The gateway side (one ``CoapPushDriver`` and its ``PushServer``) runs in this
process, once with a per-source rate limit (50/s, burst 50; the healthy
device pushes 20 times a second, within it, and the flood dies at the token
bucket) and once with it opened up so every hostile
datagram reaches the checks and the decoder (the worst case: a sender with
endless source addresses). Flooder processes send hostile datagrams of
every kind from ``fieldgate_hwsim.coap_hostile`` (all but the 65000-byte one,
which the loopback MTU fragments) as fast as their sockets take them. A
healthy device in this process pushes one valid report after another; the
figures are its round-trip times without and with the flood, the hostile
datagrams the endpoint refused per second, and the gateway's CPU per refused
datagram. Figures, not assertions: run it on an idle machine and quote the
load average with it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import socket
import statistics
import time
from typing import Any


def _flooder(port: int, seconds: float, seed: int) -> None:
    from fieldgate_hwsim.coap_hostile import KINDS, datagrams

    kinds = [k for k in KINDS if k != "oversized_64k"]
    batch = [d for _k, _m, d in datagrams(2000, "/t/d0", seed=seed, kinds=kinds)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        try:
            sock.sendto(batch[i % len(batch)], ("127.0.0.1", port))
        except OSError:
            pass
        i += 1
    sock.close()


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def add(self, reading: Any) -> None:
        self.n += 1

    def add_error(self, error: Any) -> None:
        pass


async def _pushes(dev: Any, seconds: float, pace: float) -> tuple[list[float], int]:
    rtts: list[float] = []
    failed = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        try:
            code = await dev.push()
        except TimeoutError:
            failed += 1
            continue
        if code == "2.04 Changed":
            rtts.append(time.perf_counter() - t0)
        else:
            failed += 1
        if pace:
            await asyncio.sleep(pace)  # the device's own schedule (pacing a load, not synchronizing)
    return rtts, failed


def _fmt(rtts: list[float]) -> str:
    if len(rtts) < 2:
        return "n/a"
    q = statistics.quantiles(rtts, n=100, method="inclusive")
    return f"p50 {q[49] * 1000:6.2f} ms  p99 {q[98] * 1000:6.2f} ms  max {max(rtts) * 1000:6.2f} ms"


async def _run(seconds: float, flooders: int, open_limit: bool) -> None:
    from fieldgate.driver import DeviceContext, SharedResources
    from fieldgate.drivers.coap.driver import CoapDriver
    from fieldgate.drivers.coap.profile import CoapConnection
    from fieldgate_hwsim.coap_sim import SleepyDevice, free_udp_port, load_coap_profile

    logging.getLogger("fieldgate").setLevel(logging.ERROR)  # the refusal summaries are not the figure
    prof = load_coap_profile("generic/senml")
    port = free_udp_port()
    limit = {"rate": 1e9, "burst": 10**9} if open_limit else {"rate": 50, "burst": 50}
    pace = 0.0 if open_limit else 0.05
    conn = CoapConnection(mode="push", listen=f"127.0.0.1:{port}", path="/t/d0", queue=10000, rate_limit=limit)
    drv: Any = CoapDriver.create(DeviceContext("d0", prof, conn, 5.0, logging.LoggerAdapter(logging.getLogger("bench")),
                                        SharedResources()))
    await drv.__aenter__()
    sink = _Count()
    task = asyncio.create_task(drv.run(sink))
    server = drv.server
    try:
        async with SleepyDevice(("127.0.0.1", port), "/t/d0", prof, seed=1, ack_timeout=1.0) as dev:
            quiet, quiet_failed = await _pushes(dev, seconds, pace)
            procs = [multiprocessing.Process(target=_flooder, args=(port, seconds, k)) for k in range(flooders)]
            refused0 = sum(server.refused.values())
            cpu0, t0 = time.process_time(), time.perf_counter()
            for p in procs:
                p.start()
            loud, loud_failed = await _pushes(dev, seconds, pace)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            refused = sum(server.refused.values()) - refused0
            await asyncio.to_thread(lambda: [p.join(seconds + 5) for p in procs])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await drv.__aexit__(None, None, None)
    print(f"rate limit {'opened up' if open_limit else '50/s per source, device at 20/s'}; load average "
          f"{os.getloadavg()[0]:.2f}; {flooders} flooder process(es), {seconds:g} s per phase")
    print(f"  valid pushes, quiet:  {len(quiet):6d} ok {quiet_failed:4d} failed   {_fmt(quiet)}")
    print(f"  valid pushes, flood:  {len(loud):6d} ok {loud_failed:4d} failed   {_fmt(loud)}")
    print(f"  hostile datagrams refused: {refused / wall:8.0f}/s, {cpu / max(refused, 1) * 1e6:6.1f} us of "
          f"gateway CPU each (both phases' valid pushes included); by reason: "
          + ", ".join(f"{k} {n}" for k, n in sorted(server.refused.items())))
    print(f"  over the rate limit (dropped before parsing): {sum(server.rate_limited.values())}")
    print(f"  readings delivered: {sink.n} (valid pushes {len(quiet) + len(loud)}, plus the flood's accepted ones)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--flooders", type=int, default=1)
    args = parser.parse_args()
    for open_limit in (False, True):
        asyncio.run(_run(args.seconds, args.flooders, open_limit))


if __name__ == "__main__":
    main()
