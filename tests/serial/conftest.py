"""Fixtures of the serial tests: the driver registered, contract validation, profile loading."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fieldgate.config import load_profile_file
from fieldgate.drivers.serial.driver import SerialDriver
from fieldgate.drivers.serial.profile import SerialProfile

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "profiles"



def serial_profiles() -> list[Path]:
    """Every shipped profile written for the serial driver."""
    return sorted(p for p in PROFILES.rglob("*.yaml") if "driver: serial" in p.read_text())


def load_serial_profile(path: Path) -> SerialProfile:
    """Load a profile file, failing the test with its diagnostics."""
    profile, diags = load_profile_file(path, SerialDriver)
    assert profile is not None, "\n".join(map(str, diags))
    assert not [d for d in diags if d.severity == "error"], diags
    return profile  # type: ignore[return-value]


def _validator() -> Callable[[dict[str, Any]], None]:
    try:
        from tests.support.contract import validate_reading
    except ImportError:
        import jsonschema

        schema = json.loads((REPO / "gateway" / "contract" / "reading.schema.json").read_text())
        check = jsonschema.Draft202012Validator(schema)

        def validate_reading(msg: dict[str, Any]) -> None:
            check.validate(msg)

    return validate_reading  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def validate_reading() -> Callable[[dict[str, Any]], None]:
    """Validate one reading message against the wire contract's JSON schema."""
    return _validator()
