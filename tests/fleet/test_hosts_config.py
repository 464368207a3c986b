"""``mqtt.hosts``: validated like the rest of the file, with named errors; ``host``/``port`` unchanged."""

from __future__ import annotations

import pytest
from fieldgate.config import load_config_text
from fieldgate.errors import ConfigError
from fieldgate.mqtt import broker_url


def _load(mqtt: str) -> object:
    return load_config_text(f"gateway: {{id: gw}}\nmqtt: {mqtt}\n", "t.yaml")


def _errors(mqtt: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(mqtt)
    return "\n".join(str(d) for d in info.value.diagnostics)


def test_hosts_resolve_in_order_with_default_ports() -> None:
    cfg = load_config_text("gateway: {id: gw}\nmqtt: {hosts: ['a.example:1884', b.example, '[::1]:1885']}\n",
                           "t.yaml").config.mqtt
    assert cfg is not None
    assert cfg.endpoints == [("a.example", 1884), ("b.example", 1883), ("::1", 1885)]
    assert broker_url(cfg) == "mqtt://a.example:1884"


def test_single_host_keeps_working() -> None:
    cfg = load_config_text("gateway: {id: gw}\nmqtt: {host: b.example, port: 1999}\n", "t.yaml").config.mqtt
    assert cfg is not None
    assert cfg.endpoints == [("b.example", 1999)]


@pytest.mark.parametrize(("mqtt", "needle"), [
    ("{host: a, hosts: ['b:1883']}", "not both"),
    ("{port: 1883, hosts: ['b:1883']}", "not both"),
    ("{hosts: []}", "name the broker"),
    ("{topic_prefix: x}", "name the broker"),
    ("{hosts: ['b:99999']}", "1..65535"),
    ("{hosts: ['mqtt://b:1883']}", "not a broker address"),
    ("{hosts: ['b:1883', 'b:1883']}", "listed twice"),
])
def test_bad_hosts_are_named_errors(mqtt: str, needle: str) -> None:
    text = _errors(mqtt)
    assert needle in text
    assert "t.yaml:2:" in text  # file and line, as every other config error
