"""Config and profile validation: every error at once, with file:line:col and a hint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fieldgate.config import load_config, load_profile_file
from fieldgate.errors import ConfigError
from fieldgate.yamlsrc import load_yaml

from .conftest import REPO, SIM_PROFILES


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(d) for d in info.value.diagnostics if d.severity == "error"]


def test_several_independent_errors_are_all_reported_with_positions(write_config: Callable[..., Path]) -> None:
    path = write_config(
        "gateway:\n"
        "  id: gw/01\n"                      # 2: bad id
        "mqtt:\n"
        "  host: localhost\n"
        "  port: 99999\n"                     # 5: out of range
        "devices:\n"
        f"  - id: m1\n    driver: sim\n    profile: {SIM_PROFILES}/energy-meter.yaml\n"
        "    poll_interval: soon\n"           # 10: bad duration
        f"  - id: m2\n    driver: sim\n    profile: {SIM_PROFILES}/energy-meter.yaml\n"
        "    connection: {fail: sometimes}\n"  # 14: bad enum inside driver-specific part
    )
    errs = errors_of(path)
    f = str(path)
    assert any(e.startswith(f"{f}:2:7: gateway.id: ") for e in errs), errs
    assert any(e.startswith(f"{f}:5:9: mqtt.port: ") for e in errs), errs
    assert any(e.startswith(f"{f}:10:20: devices[0].poll_interval: 'soon' is not a duration") for e in errs), errs
    assert any(e.startswith(f"{f}:14:24: devices[1].connection.fail: unknown value 'sometimes'") for e in errs), errs
    assert len(errs) == 4


def test_unknown_keys_get_did_you_mean(write_config: Callable[..., Path]) -> None:
    path = write_config(
        "gateway:\n  id: gw1\n  data_dirr: /tmp/x\n"
        "mqtt:\n  hots: localhost\n"
        "devices:\n"
        f"  - id: m1\n    driver: simm\n    profile: {SIM_PROFILES}/energy-meter.yaml\n    pol_interval: 5s\n"
    )
    errs = errors_of(path)
    f = str(path)
    assert f"{f}:3:3: gateway.data_dirr: unknown key 'data_dirr', did you mean 'data_dir'?" in errs
    assert f"{f}:5:3: mqtt.hots: unknown key 'hots', did you mean 'hosts'?" in errs  # mqtt.hosts (issue 21)
    assert f"{f}:8:13: devices[0].driver: unknown driver 'simm', did you mean 'sim'?" in errs
    assert f"{f}:10:5: devices[0].pol_interval: unknown key 'pol_interval', did you mean 'poll_interval'?" in errs
    assert any("mqtt.host: required key is missing" in e for e in errs)


def test_duplicate_keys_are_rejected_with_both_lines(write_config: Callable[..., Path]) -> None:
    path = write_config("gateway:\n  id: gw1\n  id: gw2\n")
    errs = errors_of(path)
    assert errs == [f"{path}:3:3: gateway.id: duplicate key (first defined on line 2); remove one of them"]


def test_duplicate_device_ids_and_missing_profile(write_config: Callable[..., Path]) -> None:
    path = write_config(
        "gateway: {id: gw1}\ndevices:\n"
        "  - {id: a, driver: sim, profile: fieldgate/sim-energy-meterr}\n"
        f"  - {{id: a, driver: sim, profile: {SIM_PROFILES}/energy-meter.yaml}}\n"
    )
    errs = errors_of(path)
    assert any(":3:" in e and "profile 'fieldgate/sim-energy-meterr' not found" in e for e in errs), errs
    assert any(e.startswith(f"{path}:4:10: devices[1].id: device id 'a' is already used by devices[0]") for e in errs)


def test_profile_errors_point_into_the_profile_file(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    prof = tmp_path / "p.yaml"
    prof.write_text(
        "schema_version: 1\ndriver: sim\nvendor: x\nmodel: y\npoints:\n"
        "  - name: a\n    type: flaot\n"
        "  - name: a\n    unit: degC\n"
        "  - name: b\n    range: [10, 1]\n"
    )
    path = write_config(f"gateway: {{id: gw1}}\ndevices:\n  - {{id: d, driver: sim, profile: {prof}}}\n")
    errs = errors_of(path)
    assert f"{prof}:7:11: points[0].type: unknown value 'flaot', did you mean 'float'?" in errs
    assert any(e.startswith(f"{prof}:11:12: points[2].range: ") and "above its maximum" in e for e in errs), errs
    # fix the schema errors: the semantic checks (duplicate names, units) then run
    prof.write_text(prof.read_text().replace("flaot", "float").replace("[10, 1]", "[1, 10]"))
    errs = errors_of(path)
    assert errs == [f"{prof}:8:11: points[1].name: point name 'a' is already used by points[0]"]
    _, diags = load_profile_file(prof)
    warnings = [str(d) for d in diags if d.severity == "warning"]
    assert f"{prof}:9:11: points[1].unit: warning: 'degC' is not a SenML unit symbol, did you mean 'Cel'?" in warnings


def test_inline_secrets_are_refused(write_config: Callable[..., Path]) -> None:
    path = write_config("gateway: {id: gw1}\nmqtt:\n  host: h\n  password: hunter2\n")
    errs = errors_of(path)
    assert len(errs) == 1 and ":4:13: mqtt.password: secrets are not written inline" in errs[0]
    assert "hunter2" not in errs[0]


def test_status_page_off_loopback_needs_a_password(write_config: Callable[..., Path]) -> None:
    path = write_config("gateway: {id: gw1}\nweb: {listen: '0.0.0.0:8080'}\n")
    errs = errors_of(path)
    assert len(errs) == 1 and "web: the status page listens on 0.0.0.0" in errs[0]


def test_yaml_syntax_error_points_at_the_character(write_config: Callable[..., Path]) -> None:
    path = write_config("gateway:\n  id: [gw1\ndevices: []\n")
    errs = errors_of(path)
    assert len(errs) == 1 and errs[0].startswith(f"{path}:3:") and "YAML syntax error" in errs[0]


def test_relative_paths_are_taken_from_the_config_folder(write_config: Callable[..., Path]) -> None:
    path = write_config("gateway: {id: gw1, data_dir: state}\ndevices:\n"
                        "  - {id: d, driver: sim, profile: p/air.yaml}\n")
    (path.parent / "p").mkdir()
    (path.parent / "p" / "air.yaml").write_text((SIM_PROFILES / "air-quality.yaml").read_text())
    loaded = load_config(path)
    assert loaded.config.gateway.data_dir == path.parent / "state"
    assert loaded.devices[0].profile.model == "sim-air-quality"


def test_example_config_validates() -> None:
    loaded = load_config(REPO / "drivers" / "sim" / "example.yaml")
    assert [d.config.id for d in loaded.devices] == ["meter-1", "aq-1"]
    assert loaded.warnings == []


def test_yaml_positions_follow_merge_keys() -> None:
    data, smap, diags = load_yaml("base: &b {x: 1}\nitem:\n  <<: *b\n  y: 2\n", "t.yaml")
    assert data == {"base": {"x": 1}, "item": {"x": 1, "y": 2}} and diags == []
    assert smap.position(("item", "y")) == (4, 6)


def test_missing_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, write_config: Callable[..., Path]
) -> None:
    from importlib.metadata import EntryPoint

    from fieldgate import driver as registry

    fake = EntryPoint(name="coap", value="fieldgate_not_installed_anywhere.driver:CoapDriver",
                      group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "available_drivers", lambda: {"coap": fake, "sim": None})
    monkeypatch.setattr("fieldgate.config.available_drivers", registry.available_drivers)
    monkeypatch.delitem(registry._cache, "coap", raising=False)
    path = write_config("gateway: {id: g}\ndevices:\n  - {id: nb1, driver: coap, profile: x/y}\n")
    errs = errors_of(path)
    assert errs == [f"{path}:3:35: devices[0].driver: driver 'coap' needs 'fieldgate_not_installed_anywhere', "
                    "which is not installed: pip install 'fieldgate[coap]' (hint: pip install 'fieldgate[coap]')"] \
        or any("pip install 'fieldgate[coap]'" in e and ":3:" in e for e in errs), errs
