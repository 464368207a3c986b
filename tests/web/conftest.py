"""Fixtures for the status page tests: a running gateway with simulated devices, and clients."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fieldgate.app import Gateway
from fieldgate.config import load_config_text
from fieldgate.outputs import MemoryOutput
from fieldgate.runtime import running as running_gateway
from fieldgate.web.app import CTX, create_app
from fieldgate.web.auth import LoginLimiter, PasswordHash, hash_password
from fieldgate.web.logring import LogRing
from fieldgate.web.state import StateHub
from fieldgate_hwsim.coap_sim import ObservableSensor

from ..coap.conftest import valve_profile, write_valve_profile
from ..conftest import REPO, Proc, sim_device

ARTIFACTS = REPO / "test-artifacts" / "web"
PASSWORD = "correct horse battery staple"


@dataclass
class Running:
    """A gateway running in the test's event loop."""

    gw: Gateway
    out: MemoryOutput
    control: Path
    folder: Path


def gateway_yaml(control: Path) -> str:
    """Two sim devices: ``meter-1`` (breakable through ``control``) and ``air-1``."""
    # data_dir in the test's folder: nothing a test starts may write to /var/lib/fieldgate
    return (f"gateway: {{id: gw-web, clock_check: off, data_dir: {control.parent / 'data'}}}\ndevices:\n"
            + sim_device("meter-1", poll_interval="0.1s", offline_after=2, backoff_max="0.2s",
                         connection=f"{{control_file: {control}}}", tags="{site: depot}")
            + sim_device("air-1", profile="air-quality", poll_interval="0.2s"))


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """A gateway with two sim devices, polling until the test ends."""
    control = tmp_path / "meter-1.fault"
    control.write_text("none")
    out = MemoryOutput()
    # Built by the composition root, as `fieldgate run` builds it; the page under test is made by each test.
    async with running_gateway(load_config_text(gateway_yaml(control), str(tmp_path / "fieldgate.yaml")),
                               output=out) as rt:
        yield Running(rt.gateway, out, control, tmp_path)


@pytest.fixture
def ring() -> Iterator[LogRing]:
    """A log ring attached to the root logger for this test only."""
    r = LogRing(capacity=100, level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(r)
    root.setLevel(logging.DEBUG)
    try:
        yield r
    finally:
        root.removeHandler(r)
        root.setLevel(old_level)


@pytest.fixture(scope="session")
def password_hash() -> PasswordHash:
    """The test password, hashed once per session (scrypt is slow on purpose)."""
    return hash_password(PASSWORD)


def remote_as(address: str) -> Any:
    """A middleware making every request look as if it came from ``address``."""

    @web.middleware
    async def _mw(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request.clone(remote=address))  # type: ignore[no-any-return]

    return _mw


MakeClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_client(running: Running, ring: LogRing) -> AsyncIterator[MakeClient]:
    """Build a test client for the status page of ``running`` (password and remote optional)."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def _make(*, password: PasswordHash | None = None, remote: str | None = None,
                    limiter: LoginLimiter | None = None) -> TestClient[web.Request, web.Application]:
        app = create_app(running.gw, running.out, password_hash=password, log_ring=ring, interval=0.05,
                         limiter=limiter)
        if remote is not None:
            app.middlewares.insert(0, remote_as(remote))
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield _make
    for c in clients:
        await c.close()


def hub_of(client: TestClient[web.Request, web.Application]) -> StateHub:
    """The state hub behind a test client's app."""
    return client.app[CTX].hub  # type: ignore[index]


class ThreadedGateway:
    """A gateway and its status page in a thread of their own (for synchronous clients)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="web-gateway", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        from fieldgate.config import WebConfig
        from fieldgate.web import start_web

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        control = self.folder / "meter-1.fault"
        control.write_text("none")
        out = MemoryOutput()
        loaded = load_config_text(gateway_yaml(control), str(self.folder / "fieldgate.yaml"))
        async with running_gateway(loaded, output=out) as rt:
            server = await start_web(rt.gateway, out, WebConfig(listen="127.0.0.1:0"), interval=0.2,
                                     log_ring=LogRing())
            self.url = server.url.rstrip("/")
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await server.close()

    def __enter__(self) -> ThreadedGateway:
        self._thread.start()
        if not self._ready.wait(20) or self._error is not None:
            raise RuntimeError(f"gateway thread did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


@dataclass
class GatewayProcess:
    """A real ``fieldgate run`` process and the URL of its status page."""

    proc: Proc
    url: str
    config: Path
    control: Path

    def lines(self) -> str:
        """Everything it logged so far."""
        return "".join(self.proc.stderr_lines)


def process_yaml(folder: Path, *, mqtt_port: int | None = None, web: str = "{listen: '127.0.0.1:0'}",
                 meter_interval: str = "0.2s") -> str:
    """A config for a gateway process: ``meter-1`` (breakable) and ``air-1``; MQTT when a port is given."""
    folder.mkdir(parents=True, exist_ok=True)
    control = folder / "meter-1.fault"
    if not control.exists():
        control.write_text("none")
    mqtt = (f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, reconnect_min: 0.05s, reconnect_max: 0.3s}}\n"
            f"buffer: {{flush_interval: 50ms}}\n" if mqtt_port is not None else "")
    return (f"gateway: {{id: gw-web, data_dir: {folder / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
            + mqtt + f"web: {web}\ndevices:\n"
            + sim_device("meter-1", poll_interval=meter_interval, offline_after=2, backoff_max="0.3s",
                         connection=f"{{control_file: {control}}}", tags="{site: depot}")
            + sim_device("air-1", profile="air-quality", poll_interval="0.5s"))


def start_gateway_process(start: Callable[..., Proc], folder: Path, text: str, *,
                          stdout: bool = False) -> GatewayProcess:
    """Write ``text`` as the config and start ``fieldgate run`` on it; waits for its status page."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "fieldgate.yaml"
    config.write_text(text)
    proc = start("run", "-c", str(config), *(["--stdout"] if stdout else []))
    line = proc.wait_stderr("status page on http", timeout=30)
    url = line.split("status page on ", 1)[1].split()[0].rstrip("/")
    return GatewayProcess(proc, url, config, folder / "meter-1.fault")


# --- a gateway that takes commands (the Commands panel, the local API route) ------------------------


@dataclass
class Valve:
    """A gateway with a CoAP valve controller (commands on for it) and its simulator."""

    gw: Any
    out: MemoryOutput
    sensor: ObservableSensor


def valve_yaml(folder: Path, port: int, *, allow: bool = True) -> str:
    profile = write_valve_profile(folder / "profiles")
    return (f"gateway: {{id: gw-web, clock_check: off, data_dir: {folder / 'data'}}}\n"
            f"commands: {{enabled: true, allow: [{'valve-1' if allow else ''}]}}\n"
            "devices:\n"
            f"  - {{id: valve-1, driver: coap, profile: {profile}, poll_interval: 0.5s, "
            f"connection: {{host: 127.0.0.1, port: {port}, ack_timeout: 0.5s}}}}\n")


@pytest.fixture
async def valve(tmp_path: Path) -> AsyncIterator[Valve]:
    async with ObservableSensor(valve_profile(), seed=7) as sensor:
        out = MemoryOutput()
        loaded = load_config_text(valve_yaml(tmp_path, sensor.port), str(tmp_path / "fieldgate.yaml"))
        async with running_gateway(loaded, output=out) as rt:
            assert rt.gateway.commands is not None
            yield Valve(rt.gateway, out, sensor)
