"""Choosing the Sparkplug output in the config: named errors, never a traceback."""

from __future__ import annotations

import sys
import time

import pytest
from fieldgate.config import load_config_text
from fieldgate.errors import ConfigError, GatewayError
from fieldgate.runtime import make_output

BASE = "gateway: {id: gw-1, data_dir: /tmp/x}\nmqtt: {host: 127.0.0.1, format: sparkplug}\n"


def _errors(text: str) -> str:
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "f.yaml")
    assert time.monotonic() - t0 < 2
    return "\n".join(str(d) for d in info.value.diagnostics)


def test_sparkplug_format_needs_its_section() -> None:
    assert "add a sparkplug section with at least group_id" in _errors(BASE)


@pytest.mark.parametrize(("key", "value"), [("group_id", "a/b"), ("edge_node_id", "x+y"), ("primary_host_id", "#")])
def test_ids_cannot_hold_topic_characters(key: str, value: str) -> None:
    extra = "" if key == "group_id" else ", group_id: plant"
    text = BASE + f"sparkplug: {{{key}: '{value}'{extra}}}\n"
    assert f"sparkplug.{key}" in _errors(text)


def test_json_stays_the_default() -> None:
    cfg = load_config_text("gateway: {id: gw-1, data_dir: /tmp/x}\nmqtt: {host: h}\n", "f.yaml").config
    assert cfg.mqtt is not None and cfg.mqtt.format == "json" and cfg.sparkplug.group_id is None


async def test_a_missing_extra_is_an_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config_text(BASE + "sparkplug: {group_id: plant}\n", "f.yaml").config
    monkeypatch.setitem(sys.modules, "fieldgate.sparkplug.output", None)  # as if protobuf were not installed
    with pytest.raises(GatewayError) as info:
        await make_output(cfg)
    assert "pip install 'fieldgate[sparkplug]'" in str(info.value)


def test_a_reload_names_the_sparkplug_settings_as_restart_only() -> None:
    """The output is chosen and the edge node named at start: a reload must not claim to apply them."""
    from fieldgate.reload import plan_reload

    def cfg(fmt: str, group: str) -> object:
        return load_config_text(f"gateway: {{id: gw-1, data_dir: /tmp/x}}\nmqtt: {{host: h, format: {fmt}}}\n"
                                f"sparkplug: {{group_id: {group}}}\n", "f.yaml").config

    plan = plan_reload(cfg("json", "a"), cfg("sparkplug", "b"))  # type: ignore[arg-type]
    assert "mqtt.format" in plan.restart_required and "mqtt.format" not in plan.applied, plan
    assert "sparkplug.group_id" in plan.restart_required, plan
