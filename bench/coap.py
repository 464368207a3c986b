"""Benchmark: CoAP pushes accepted per second on one core.

Run: .venv/bin/python bench/coap.py [--seconds 5] [--senders 4] [--window 32]

The gateway side (a ``CoapPushDriver`` for each simulated device, sharing
one ``PushServer``, with the rate limit opened up) runs in this process on
one event loop, so its figure is per core. The senders run in separate
processes: each is a set of simulated NB-IoT devices on their own UDP
sockets, keeping ``window`` confirmable POSTs in flight and sending the next
one when an ACK comes (no ACK after 0.5 s: resend with the same message
ID, as a device would). Readings are counted at the drivers' sinks; the
figure printed is readings per second of wall time and per second of the
gateway process's CPU time, for binary (NDDS75) and SenML JSON payloads.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import time
from typing import Any

from fieldgate.driver import SharedResources
from fieldgate.drivers.coap.driver import CoapDriver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sender(port: int, paths: list[str], profile: str, fmt: str | None, seconds: float, window: int) -> None:
    """A process of simulated devices pushing as fast as ACKs come back."""
    import aiocoap
    from fieldgate_hwsim.coap_sim import Model, encode, load_coap_profile, request_bytes

    async def go() -> None:
        prof = load_coap_profile(profile)
        payload, cf = encode(prof, Model(prof, seed=1), fmt)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        pending: dict[int, tuple[bytes, float]] = {}
        mid = 0
        i = 0
        while loop.time() < end:
            while len(pending) < window:
                mid = (mid + 1) & 0xFFFF
                data = request_bytes(paths[i % len(paths)], payload, cf, mid, mid.to_bytes(2, "big"))
                i += 1
                pending[mid] = (data, loop.time())
                sock.sendto(data, ("127.0.0.1", port))
            try:
                resp = await asyncio.wait_for(loop.sock_recv(sock, 1500), 0.5)
                pending.pop(aiocoap.Message.decode(resp).mid, None)
            except TimeoutError:
                now = loop.time()
                for m, (data, _) in list(pending.items()):
                    pending[m] = (data, now)
                    sock.sendto(data, ("127.0.0.1", port))
        sock.close()

    asyncio.run(go())


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def add(self, reading: Any) -> None:
        self.n += 1

    def add_error(self, error: Any) -> None:
        pass


async def _run(profile: str, fmt: str | None, seconds: float, senders: int, window: int) -> tuple[float, float]:
    import logging

    from fieldgate.driver import DeviceContext
    from fieldgate.drivers.coap.profile import CoapConnection
    from fieldgate_hwsim.coap_sim import free_udp_port, load_coap_profile

    prof = load_coap_profile(profile)
    if fmt:  # a SenML variant of the same points
        prof = load_coap_profile("generic/senml")
    port = free_udp_port()
    shared = SharedResources()
    counts: list[_Count] = []
    drivers = []
    tasks = []
    paths = [f"/t/d{i}" for i in range(16)]
    for i, path in enumerate(paths):
        conn = CoapConnection(mode="push", listen=f"127.0.0.1:{port}", path=path, queue=10000,
                              rate_limit={"rate": 1e9, "burst": 10**9})
        ctx = DeviceContext(f"d{i}", prof, conn, 5.0, logging.LoggerAdapter(logging.getLogger("bench")), shared)
        drv = CoapDriver.create(ctx)
        await drv.__aenter__()
        sink = _Count()
        counts.append(sink)
        drivers.append(drv)
        tasks.append(asyncio.create_task(drv.run(sink)))  # type: ignore[attr-defined]
    procs = [multiprocessing.Process(target=_sender, args=(port, paths[k::senders] or paths, profile if not fmt
                                                          else "generic/senml", fmt, seconds, window))
             for k in range(senders)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for p in procs:
        p.start()
    await asyncio.sleep(seconds)
    total = sum(c.n for c in counts)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    await asyncio.to_thread(lambda: [p.join(seconds + 5) for p in procs])  # stop the senders before the server
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for d in drivers:
        await d.__aexit__(None, None, None)
    return total / wall, total / max(cpu, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--senders", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--window", type=int, default=32)
    args = parser.parse_args()
    print(f"CoAP push endpoint, {args.senders} sender process(es), {args.window} requests in flight each, "
          f"{args.seconds:g} s per payload kind; gateway on one core")
    for label, profile, fmt in (("binary (Dragino NDDS75, 14 B)", "dragino/ndds75", None),
                                ("SenML JSON (8 records)", "generic/senml", "senml")):
        per_wall, per_cpu = asyncio.run(_run(profile, fmt, args.seconds, args.senders, args.window))
        print(f"  {label:32s} {per_wall:8.0f} pushes/s accepted   {per_cpu:8.0f} per CPU-second of the gateway")


if __name__ == "__main__":
    main()
