"""Alternative encodings for one register: a point's ``map`` of code → value also accepts the literal
values (the XY-MD02 baud register: code 0/1/2 in one table of the vendor's document, the literal 9600 in
its own example). Lives beside the SunSpec tests: both are issue 20's alternative-encoding work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from fieldgate.drivers.modbus.profile import ModbusProfile
from fieldgate.normalize import Normalizer
from fieldgate_hwsim.modbus_sim import ModbusSim
from pydantic import ValidationError

from tests.modbus.conftest import poll_once, validate_reading


def _profile(**point: Any) -> ModbusProfile:
    return ModbusProfile.model_validate({
        "schema_version": 1, "driver": "modbus", "vendor": "Generic", "model": "XY-MD02",
        "points": [{"name": "temperature", "table": "input", "address": 1, "type": "int16", "scale": 0.1,
                    "unit": "Cel"},
                   {"name": "baud_rate", "table": "holding", "address": 0x0102, "type": "uint16",
                    "range": [9600, 19200], **point}]})


BAUD = {"map": {0: 9600, 1: 14400, 2: 19200}}


@pytest.fixture
async def served() -> AsyncIterator[tuple[ModbusSim, int, ModbusProfile]]:
    prof = _profile(**BAUD)
    sim = ModbusSim({1: prof}, animate=False)
    port = await sim.start_tcp()
    yield sim, port, prof
    await sim.stop()


@pytest.mark.parametrize(("raw", "value"), [(0, 9600), (1, 14400), (2, 19200), (9600, 9600), (19200, 19200)])
async def test_code_or_literal_publish_the_value(raw: int, value: int,
                                                 served: tuple[ModbusSim, int, ModbusProfile]) -> None:
    sim, port, prof = served
    sim.models[1].image["holding"][0x0102] = raw
    sink, _ = await poll_once(prof, host="127.0.0.1", port=port)
    msg = Normalizer("gw", "xy-1", prof).normalize(sink.readings[0])
    assert msg is not None
    validate_reading({"seq": 1, **msg})
    assert msg["metrics"]["baud_rate"] == {"value": value, "quality": "good"}


async def test_neither_code_nor_literal_is_bad(served: tuple[ModbusSim, int, ModbusProfile]) -> None:
    sim, port, prof = served
    sim.models[1].image["holding"][0x0102] = 7
    sink, _ = await poll_once(prof, host="127.0.0.1", port=port)
    msg = Normalizer("gw", "xy-1", prof).normalize(sink.readings[0])
    assert msg is not None
    validate_reading({"seq": 1, **msg})
    assert msg["metrics"]["baud_rate"] == {"value": None, "quality": "bad", "reason": "unknown_code"}
    assert msg["metrics"]["temperature"]["quality"] == "good"


@pytest.mark.parametrize(("point", "message"), [
    ({"map": {0: 9600, 9600: 14400}}, "9600 is both a code and a literal"),
    ({"map": {0: 9600}, "scale_factor_point": "temperature"}, "map and scale_factor_point"),
    ({"map": {}}, "map needs at least one code"),
])
def test_ambiguous_maps_are_named_errors(point: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _profile(**point)


def test_a_mapped_point_is_not_writable() -> None:
    prof = _profile(**BAUD, writable=True, write_range=[9600, 19200])
    assert any("map cannot be written" in m for _, m, sev in prof.checks() if sev == "error")
