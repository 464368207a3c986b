"""The command message, pure: what ``parse`` takes and refuses, and the results it builds."""

from __future__ import annotations

from typing import Any

import pytest
from fieldgate.commands.message import BadCommand, parse, parse_time, result

from ..support.contract import validate_command, validate_command_result

BASE = {"schema": "fieldgate.command/1", "id": "c-1", "op": "write", "metrics": {"setpoint": 21.5}}


def test_the_contract_example_parses() -> None:
    msg = {**BASE, "id": "c-2026-12-01-0007", "metrics": {"setpoint": 21.5, "relay": True},
           "expires": "2026-12-01T20:15:30.000Z"}
    validate_command(msg)
    cmd = parse(msg)
    assert (cmd.id, cmd.op, cmd.values, cmd.expires) == ("c-2026-12-01-0007", "write",
                                                          {"setpoint": 21.5, "relay": True}, 1796156130.0)
    validate_command(cmd.as_dict())


@pytest.mark.parametrize(("metrics", "names"), [(None, None), (["a", "b", "a"], ("a", "b"))])
def test_a_read_names_points_or_all(metrics: Any, names: Any) -> None:
    msg: dict[str, Any] = {"schema": "fieldgate.command/1", "id": "r", "op": "read"}
    if metrics is not None:
        msg["metrics"] = metrics
    assert parse(msg).names == names


@pytest.mark.parametrize(("change", "detail"), [
    ({"id": "x" * 65}, "id must be"),
    ({"id": ""}, "id must be"),
    ({"id": 7}, "id must be"),
    ({"op": "read", "metrics": {"a": 1}}, "a read's metrics is a list"),
    ({"metrics": {}}, "a write needs metrics"),
    ({"metrics": {"a": [1]}}, "metrics.a: a value is"),
    ({"metrics": {f"p{i}": 1 for i in range(65)}}, "at most 64 points"),
    ({"expires": "2026-12-01T20:15:30"}, "without a zone"),
    ({"expires": 1796156130}, "not an RFC 3339 date-time"),
])
def test_bad_commands_name_the_problem(change: dict[str, Any], detail: str) -> None:
    with pytest.raises(BadCommand) as exc:
        parse({**BASE, **change})
    assert exc.value.reason.startswith("bad_message: ") and detail in exc.value.reason


def test_a_bad_command_keeps_a_usable_id_for_its_answer() -> None:
    with pytest.raises(BadCommand) as exc:
        parse({**BASE, "op": "erase"})
    assert exc.value.id == "c-1"


def test_offsets_are_understood() -> None:
    assert parse_time("2026-12-01T21:15:30.000+01:00") == parse_time("2026-12-01T20:15:30Z")


def test_results_follow_the_schema() -> None:
    ok = result("gw", "dev", "c-1", "ok", 1796156130.25, metrics={"setpoint": {"value": 21.5, "quality": "good"}})
    validate_command_result(ok)
    assert ok["ts"] == "2026-12-01T20:15:30.250Z"
    validate_command_result(result("gw", "dev", "", "rejected", 0.0, reason="bad_message: x"))
    with pytest.raises(ValueError, match="needs a reason"):
        result("gw", "dev", "c", "failed", 0.0)
