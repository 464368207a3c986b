"""Helpers of the CoAP tests: contexts, a recording sink, profiles."""

from __future__ import annotations

import logging
from collections.abc import Callable
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
