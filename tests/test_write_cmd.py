"""``fieldgate write`` from outside: the real CLI process against a pymodbus simulator, with and without a service.

Without a service the CLI opens the device itself; with one (a gateway built by the composition
root, its status page taking commands, on a port the configuration names) it goes through the
service's local API. The simulator records every frame and write, so "refused before any device
I/O" is counted, not assumed.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fieldgate.commands import CommandStore
from fieldgate.config import load_config
from fieldgate.outputs import MemoryOutput
from fieldgate.runtime import running as running_gateway
from fieldgate.web.app import start_web
from fieldgate.web.logring import LogRing
from fieldgate.write_cmd import parse_assignments
from fieldgate_hwsim.modbus_sim import ModbusSim

from tests.commands.conftest import config, profile_path, sims, start_sim  # noqa: F401  # fixtures

SECRET = "write-test-password"


@dataclass
class Done:
    rc: int
    out: str
    err: str


async def fieldgate(*args: str, timeout: float = 60.0) -> Done:
    """Run ``python -m fieldgate.cli ARGS`` without blocking the loop the simulator serves in."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "fieldgate.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    done = Done(proc.returncode, out.decode(), err.decode())
    assert "Traceback" not in done.err, done.err
    return done


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_parse_assignments() -> None:
    assert parse_assignments(["a=1", "b=-2.5", "c=on", "d=FALSE", "e=1e3"]) == {
        "a": 1, "b": -2.5, "c": True, "d": False, "e": 1000.0}
    for bad in (["a"], ["=1"], ["a=x"], ["a=nan"], ["a=1", "a=2"], []):
        with pytest.raises(ValueError):  # noqa: PT011  # UsageError, whose messages are checked below
            parse_assignments(bad)


async def test_write_without_a_service_opens_the_device_and_prints_the_read_back(
        tmp_path: Path, profile_path: Path, sims: list[ModbusSim]) -> None:  # noqa: F811
    sim, conn = await start_sim(sims, profile_path)
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(config(tmp_path / "data", profile_path, {"boiler-1": conn}))
    done = await fieldgate("write", "boiler-1", "flow_setpoint=21.5", "relay=on", "-c", str(cfg))
    assert done.rc == 0, done
    assert "flow_setpoint: wrote 21.5, read back 21.5 Cel (good)" in done.out
    assert "relay: wrote true, read back true (good)" in done.out
    assert "boiler-1: ok [command cli-" in done.out and "via the device directly" in done.out
    assert "no status page" in done.err  # it says why it opened the device itself
    # 21.5 / 0.1 = 215 in holding register 2 (FC 6), the relay coil 0 on (FC 5)
    assert sim.models[1].writes == [(6, 2, [215]), (5, 0, [1])]
    store = CommandStore(tmp_path / "data")  # recorded where the service keeps its commands: at most once per id
    store.open()
    try:
        [entry] = store.recent("boiler-1", 5)
    finally:
        store.close()
    assert entry["origin"] == "cli" and entry["result"]["status"] == "ok" and entry["result"]["id"] in done.out


@pytest.mark.parametrize(("args", "rc", "says"), [
    (["flow_setpoint=500"], 4, "flow_setpoint: out_of_range (allowed -20 to 90)"),
    (["mode=3"], 4, "mode: read_only"),
    (["nozzle=1"], 2, "no point 'nozzle' (writable points: setpoint, flow_setpoint, counter_preset, relay, pump)"),
    (["relay"], 2, "write POINT=VALUE"),
    (["relay=maybe"], 2, "a number or true/false"),
])
async def test_refused_writes_name_the_problem_and_send_no_frame(
        tmp_path: Path, profile_path: Path, sims: list[ModbusSim],  # noqa: F811
        args: list[str], rc: int, says: str) -> None:
    sim, conn = await start_sim(sims, profile_path)
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(config(tmp_path / "data", profile_path, {"boiler-1": conn}))
    done = await fieldgate("write", "boiler-1", *args, "-c", str(cfg))
    assert done.rc == rc and says in done.err, done
    assert sim.requests == {} and sim.writes == 0  # zero frames reached the device


async def test_write_to_an_unknown_device_is_a_usage_error(tmp_path: Path, profile_path: Path) -> None:  # noqa: F811
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(config(tmp_path / "data", profile_path, {"boiler-1": {"host": "127.0.0.1", "port": 1}}))
    done = await fieldgate("write", "boiler-9", "relay=on", "-c", str(cfg))
    assert done.rc == 2 and "no device 'boiler-9'" in done.err and "boiler-1" in done.err


async def test_write_to_a_device_that_does_not_answer_fails_with_its_reason(
        tmp_path: Path, profile_path: Path, sims: list[ModbusSim]) -> None:  # noqa: F811
    sim, conn = await start_sim(sims, profile_path)
    sim.set_fault(1, "exception:02")
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(config(tmp_path / "data", profile_path, {"boiler-1": conn}))
    done = await fieldgate("write", "boiler-1", "relay=off", "-c", str(cfg))
    assert done.rc == 3 and "boiler-1: failed: exception:02" in done.out, done


# --- through a running service ---------------------------------------------------------------------


@dataclass
class Service:
    config: Path
    sim: ModbusSim
    gateway: object


@pytest.fixture
async def service(tmp_path: Path, profile_path: Path, sims: list[ModbusSim]) -> AsyncIterator[Service]:  # noqa: F811
    """A gateway with its status page on a port the configuration names, taking commands (web.commands)."""
    sim, conn = await start_sim(sims, profile_path)
    secret = tmp_path / "web.password"
    secret.write_text(SECRET + "\n")
    port = free_tcp_port()
    cfg = tmp_path / "fieldgate.yaml"
    text = config(tmp_path / "data", profile_path, {"boiler-1": conn}, interval="0.5s", rate=0.01, burst=1)
    cfg.write_text(text.replace("web: {enabled: false}",
                                f"web: {{listen: '127.0.0.1:{port}', password: {{file: {secret}}}}}"))
    loaded = load_config(cfg)
    async with running_gateway(loaded, output=MemoryOutput()) as rt:
        server = await start_web(rt.gateway, rt.output, loaded.config.web, interval=0.2, log_ring=LogRing(),
                                 commands=True)
        try:
            yield Service(cfg, sim, rt.gateway)
        finally:
            await server.close()


async def test_write_through_the_running_service_uses_its_local_api(service: Service) -> None:
    done = await fieldgate("write", "boiler-1", "setpoint=55.5", "-c", str(service.config))
    assert done.rc == 0, done
    assert "setpoint: wrote 55.5, read back 55.5 Cel (good)" in done.out
    assert "via the running service at http://127.0.0.1:" in done.out
    assert [w[:2] for w in service.sim.models[1].writes] == [(16, 0)]  # float32 over two registers, once
    recent = service.gateway.commands.recent("boiler-1")  # type: ignore[attr-defined]
    assert recent[0]["origin"] == "local-api" and recent[0]["result"]["status"] == "ok"
    # refused by the service's executor: the answer says so, and the device saw no write
    done = await fieldgate("write", "boiler-1", "setpoint=99", "-c", str(service.config))
    assert done.rc == 4 and "out_of_range" in done.err + done.out, done
    assert len(service.sim.models[1].writes) == 1
    # refused by the service itself (the CLI's own check passes): its rate limit (1 command, then 1 per 100 s)
    done = await fieldgate("write", "boiler-1", "setpoint=60", "-c", str(service.config))
    assert done.rc == 4 and "setpoint: 60 not written" in done.out, done
    assert "boiler-1: rejected: rate_limited" in done.out, done
    assert len(service.sim.models[1].writes) == 1


async def test_write_with_a_wrong_password_file_is_refused_by_the_service(service: Service, tmp_path: Path) -> None:
    (tmp_path / "web.password").write_text("not-it\n")  # the CLI reads the file; the service hashed the old one
    done = await fieldgate("write", "boiler-1", "relay=on", "-c", str(service.config))
    assert done.rc == 3 and "refused the login" in done.err, done
    assert service.sim.models[1].writes == []


async def test_an_unreadable_password_file_is_named(tmp_path: Path, profile_path: Path) -> None:  # noqa: F811
    cfg = tmp_path / "fieldgate.yaml"
    text = config(tmp_path / "data", profile_path, {"boiler-1": {"host": "127.0.0.1", "port": 1}})
    web = f"web: {{listen: '127.0.0.1:{free_tcp_port()}', password: {{file: {tmp_path / 'gone'}}}}}"
    cfg.write_text(text.replace("web: {enabled: false}", web))
    done = await fieldgate("write", "boiler-1", "relay=on", "-c", str(cfg))
    assert done.rc == 3 and "cannot read web.password" in done.err and "service's user" in done.err, done


async def test_another_program_on_the_page_port_is_not_taken_for_the_service(tmp_path: Path,
                                                                              profile_path: Path) -> None:  # noqa: F811
    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")  # something else owns the port
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = tmp_path / "fieldgate.yaml"
        text = config(tmp_path / "data", profile_path, {"boiler-1": {"host": "127.0.0.1", "port": 1}})
        cfg.write_text(text.replace("web: {enabled: false}", f"web: {{listen: '127.0.0.1:{port}'}}"))
        done = await fieldgate("write", "boiler-1", "relay=on", "-c", str(cfg))
    finally:
        server.close()
        await server.wait_closed()
    assert done.rc == 3 and f"127.0.0.1:{port} does not answer HTTP" in done.err, done
    assert "may have run" not in done.err  # it failed before any command was sent
