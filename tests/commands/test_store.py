"""The command store: committed before the write, settled after a kill, bounded, and failing closed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fieldgate.commands.store import AlreadyKnown, CommandStore, StoreUnavailable
from fieldgate.config import load_config_text
from fieldgate.outputs import MemoryOutput
from fieldgate.runtime import running

CMD = {"schema": "fieldgate.command/1", "id": "x", "op": "read"}
SIM_PROFILE = Path(__file__).resolve().parents[2] / "drivers" / "sim" / "profiles" / "energy-meter.yaml"


def test_executing_rows_survive_and_are_handed_back_at_the_next_open(tmp_path: Path) -> None:
    store = CommandStore(tmp_path)
    assert store.open() == []
    store.begin("dev", "a", CMD, "mqtt")
    with pytest.raises(AlreadyKnown):
        store.begin("dev", "a", CMD, "mqtt")
    store.begin("dev", "b", CMD, "cli")
    store.finish("dev", "b", {"status": "ok"})
    store.close()  # as after a kill: "a" never finished
    again = CommandStore(tmp_path)
    assert [(r["device"], r["id"]) for r in again.open()] == [("dev", "a")]
    assert again.lookup("dev", "a") == ("executing", None)
    assert again.lookup("dev", "b") == ("done", {"status": "ok"})
    assert again.lookup("dev", "c") is None
    again.close()


def test_the_store_is_bounded_and_never_drops_an_executing_row(tmp_path: Path) -> None:
    store = CommandStore(tmp_path, remember_max=100)
    store.open()
    store.begin("dev", "pending", CMD, "mqtt")
    for i in range(450):
        store.begin("dev", f"c{i}", CMD, "mqtt")
        store.finish("dev", f"c{i}", {"status": "ok"})
    # Pruned every 100 results down to the newest 100: never more than 100 + 100 + the executing one.
    assert store.count() <= 201
    assert store.lookup("dev", "pending") == ("executing", None)
    assert store.lookup("dev", "c449") is not None and store.lookup("dev", "c0") is None
    store.close()


def test_a_store_that_cannot_be_opened_is_a_named_error(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder should be")
    with pytest.raises(StoreUnavailable, match="cannot open the command store"):
        CommandStore(blocker).open()


async def test_without_its_store_the_gateway_runs_with_commands_off(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Fail closed: without the store "at most once" cannot be kept, so no command runs at all."""
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    text = (f"gateway: {{id: g, data_dir: {blocker}, clock_check: off}}\nweb: {{enabled: false}}\n"
            "commands: {enabled: true, allow: [m1]}\n"
            f"devices:\n  - {{id: m1, driver: sim, profile: {SIM_PROFILE}}}\n")
    out = MemoryOutput()
    with caplog.at_level(logging.ERROR):
        async with running(load_config_text(text, "t.yaml"), output=out) as rt:
            await out.wait_for(lambda o: len(o.by_device("m1")) >= 1)
            assert rt.gateway.commands is None
    assert any("commands are off" in r.getMessage() for r in caplog.records)


async def test_a_finished_command_repeated_after_a_restart_gets_its_first_result(tmp_path: Path) -> None:
    profile = tmp_path / "sim.yaml"
    profile.write_text("schema_version: 1\ndriver: sim\nvendor: t\nmodel: t\npoints:\n"
                       "  - {name: v, range: [0, 9], sim: {shape: random, min: 1, max: 2}}\n")
    text = (f"gateway: {{id: g, data_dir: {tmp_path / 'data'}, clock_check: off}}\nweb: {{enabled: false}}\n"
            "commands: {enabled: true, allow: [m1]}\n"
            f"devices:\n  - {{id: m1, driver: sim, profile: {profile}, poll_interval: 3600s}}\n")
    read = {"schema": "fieldgate.command/1", "id": "again", "op": "read"}
    answers = []
    for _ in range(2):
        out = MemoryOutput()
        async with running(load_config_text(text, "t.yaml"), output=out) as rt:
            await out.wait_for(lambda o: len(o.by_device("m1")) >= 1)  # this run's output
            assert rt.gateway.commands is not None
            answers.append(await rt.gateway.commands.execute("m1", read, origin="cli"))
            recent = rt.gateway.commands.recent("m1")
    first, second = answers
    assert first["status"] == "ok" and "duplicate" not in first
    assert second == {**first, "duplicate": True}
    # The page's list has both: the first run's from the store, this run's from memory.
    assert [e["result"].get("duplicate", False) for e in recent] == [True, False]
