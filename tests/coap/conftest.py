"""Helpers of the CoAP tests: contexts, a recording sink, profiles."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fieldgate.driver import DeviceContext, SharedResources
from fieldgate.drivers.coap.profile import CoapConnection, CoapProfile

from tests.conftest import REPO
from tests.support.contract import validate_reading as _validate


def profile(name: str) -> CoapProfile:
    return CoapProfile.model_validate(yaml.safe_load((REPO / "profiles" / f"{name}.yaml").read_text()))


def make_ctx(prof: CoapProfile | str, shared: SharedResources | None = None, dev: str = "dev-1",
             timeout: float = 2.0, **conn: Any) -> DeviceContext:
    p = profile(prof) if isinstance(prof, str) else prof
    return DeviceContext(dev, p, CoapConnection(**conn), timeout,
                         logging.LoggerAdapter(logging.getLogger(f"test.coap.{dev}")), shared or SharedResources())


@pytest.fixture
def validate_reading() -> Callable[[dict[str, Any]], None]:
    """The contract check; a message straight from the normalizer gets the ``seq`` the output would add."""

    def check(msg: dict[str, Any]) -> None:
        _validate(msg if "seq" in msg else {**msg, "seq": 1})

    return check


def valve_profile(fmt: str = "senml", **write: Any) -> CoapProfile:
    """An NB-IoT valve controller: a writable setpoint (0.1 % steps, 0 to 100 %) and relay, a read-only level."""
    return CoapProfile.model_validate(valve_profile_doc(fmt, **write))


def valve_profile_doc(fmt: str = "senml", **write: Any) -> dict[str, Any]:
    """The valve profile as the YAML document holds it (``write``: the writable resource, default /valve/ctl)."""
    points: list[dict[str, Any]] = [
        {"name": "setpoint", "unit": "%", "scale": 0.1, "range": [0, 100], "writable": True},
        {"name": "relay", "writable": True},
        {"name": "level", "unit": "%", "range": [0, 100]},
    ]
    if fmt in ("json", "cbor"):
        for p, path in zip(points, ("ctl.setpoint", "ctl.relay", "level"), strict=True):
            p["path"] = path
    return {"schema_version": 1, "driver": "coap", "vendor": "Test", "model": "valve", "resource": "/valve",
            "payload": {"format": fmt}, "points": points, "write": write or {"resource": "/valve/ctl"}}


def write_valve_profile(folder: Path) -> Path:
    """The valve profile as a file (for configurations: ``profile: <path>``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "valve.yaml"
    path.write_text(yaml.safe_dump(valve_profile_doc(), sort_keys=False))
    return path
