"""A reload of the ``commands`` section: what is applied live, and what waits for a restart.

Revoking a device's allowance, or lowering its rate, must take effect at once (an operator who
reloads to stop writes must not be told it applied while writes go on); switching commands on or
off, and the store's bounds, wait for a restart and are named so.
"""

from __future__ import annotations

from pathlib import Path

from fieldgate.config import load_config_text
from fieldgate.outputs import MemoryOutput
from fieldgate.reload import plan_reload
from fieldgate.runtime import running
from fieldgate_hwsim.modbus_sim import ModbusSim

from ..support.contract import validate_command_result
from .conftest import config, start_sim


def _cmd(cid: str) -> dict[str, object]:
    return {"schema": "fieldgate.command/1", "id": cid, "op": "write", "metrics": {"relay": True}}


async def test_a_reload_that_revokes_a_device_applies_at_once(tmp_path: Path, profile_path: Path,
                                                              sims: list[ModbusSim]) -> None:
    sim, conn = await start_sim(sims, profile_path)
    path = tmp_path / "c.yaml"
    both = config(tmp_path / "data", profile_path, {"b1": conn, "b2": conn}, interval="3600s")
    path.write_text(both)
    out = MemoryOutput()
    loaded = load_config_text(both, str(path))
    async with running(loaded, output=out, loader=lambda: load_config_text(path.read_text(), str(path))) as rt:
        await out.wait_for(lambda o: len(o.by_device("b1")) >= 1 and len(o.by_device("b2")) >= 1)
        ex = rt.gateway.commands
        assert ex is not None
        assert (await ex.execute("b2", _cmd("before"), origin="cli"))["status"] == "ok"
        path.write_text(both.replace("allow: [b1, b2]", "allow: [b1]"))
        await rt.gateway.reload()
        res = await ex.execute("b2", _cmd("after"), origin="cli")
        validate_command_result(res)
        assert (res["status"], res["reason"]) == ("rejected", "not_allowed")
        assert (await ex.execute("b1", _cmd("still"), origin="cli"))["status"] == "ok"
        reloaded = [e for e in out.events if e["kind"] == "config_reloaded"]
        assert "commands.allow" in reloaded[-1]["applied"]
        assert len(sim.models[1].writes) == 2


def test_switching_commands_on_or_off_waits_for_a_restart() -> None:
    def cfg(commands: str) -> object:
        return load_config_text(f"gateway: {{id: g}}\ncommands: {commands}\n", "t.yaml").config

    plan = plan_reload(cfg("{}"), cfg("{enabled: true, rate: {rate: 2}, max_queued: 2, remember: 1d}"))  # type: ignore[arg-type]
    assert plan.restart_required == ["commands.enabled", "commands.remember"]
    assert plan.applied == ["commands.max_queued", "commands.rate"]
