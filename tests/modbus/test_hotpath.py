"""The driver's hot path (issue 16): block decoding, the cached poll plan, raw hex only when asked."""

from __future__ import annotations

from typing import Any

import pytest
from fieldgate.drivers.modbus import decode as decode_mod
from fieldgate.drivers.modbus import driver as driver_mod
from fieldgate.drivers.modbus.decode import decode, encode
from fieldgate.drivers.modbus.driver import ModbusDriver
from fieldgate.drivers.modbus.profile import TYPE_WIDTH
from fieldgate_hwsim.modbus_sim import ModbusSim
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.modbus.conftest import Sink, make_ctx, profile, start

_NUMERIC = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
_ORDER = st.sampled_from(["big", "little"])


@st.composite
def _layouts(draw: Any) -> tuple[list[tuple[int, str, str, str, int | None, int]], list[int]]:
    """Points laid out in one block, gaps and shared registers (bits, a register read twice) included."""
    specs: list[tuple[int, str, str, str, int | None, int]] = []
    at = 0
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from([*_NUMERIC, "bit", "string"]))
        width = draw(st.integers(1, 4)) if kind == "string" else TYPE_WIDTH[kind]
        if specs and draw(st.booleans()) and draw(st.booleans()):
            at = specs[-1][0]  # overlap the previous point (declared overlaps exist in real profiles)
        else:
            at += draw(st.integers(0, 3))  # a gap the merged read spans
        bit = draw(st.integers(0, 15)) if kind == "bit" else None
        specs.append((at, kind, draw(_ORDER), draw(_ORDER), bit, width))
        at += width
    size = max(a + w for a, *_rest, w in specs)
    words = draw(st.lists(st.integers(0, 0xFFFF), min_size=size, max_size=size))
    return specs, words


def _same(a: Any, b: Any) -> bool:
    return (a != a and b != b) or (a == b and type(a) is type(b))  # NaN equals NaN here


@settings(max_examples=300, deadline=None)
@given(_layouts())
def test_block_decoder_equals_decoding_point_by_point(layout: Any) -> None:
    """One compiled decoder per block gives what decoding each point's registers alone gives."""
    specs, words = layout
    got = decode_mod.BlockDecoder(specs).decode(words)
    want = [decode(words[at:at + width], kind, bo, wo, bit) for at, kind, bo, wo, bit, width in specs]
    assert len(got) == len(want)
    assert all(_same(g, w) for g, w in zip(got, want, strict=True)), (got, want)


def test_block_decoder_reads_the_datasheet_orders() -> None:
    """230.0 V as float32 in each of the four orders, beside an int16 and a bit, in one block."""
    for bo in ("big", "little"):
        for wo in ("big", "little"):
            words = [0xFF33, *encode(230.0, "float32", bo, wo), 0x0008]
            specs = [(0, "int16", "big", "big", None, 1), (1, "float32", bo, wo, None, 2),
                     (3, "bit", "big", "big", 3, 1)]
            assert decode_mod.BlockDecoder(specs).decode(words) == [-205, 230.0, True]


def test_block_decoder_short_answer_is_a_decode_error() -> None:
    """Fewer registers than the layout needs (a device that truncates) is reported, not mis-decoded."""
    decoder = decode_mod.BlockDecoder([(0, "uint16", "big", "big", None, 1), (1, "uint32", "big", "big", None, 2)])
    with pytest.raises(decode_mod.DecodeError):
        decoder.decode([1, 2])


def test_the_due_set_is_planned_once_per_phase() -> None:
    """``due()`` hands back the same cached set for every poll of one phase (no set built per poll)."""
    prof = profile("generic-rs485/xy-md02")  # device_address is read every 60th poll
    drv = ModbusDriver(make_ctx(prof, host="127.0.0.1", port=1502))
    assert drv.due(0) is drv.due(60) is drv.due(6000)
    assert drv.due(1) is drv.due(7)
    assert "device_address" in drv.due(0) and "device_address" not in drv.due(1)


async def test_polls_format_no_raw_hex_until_probe_asks(monkeypatch: pytest.MonkeyPatch,
                                                        sims: list[ModbusSim]) -> None:
    """Raw hex is for ``fieldgate probe``: polling formats none; ``last_raw()`` still shows the last poll."""
    calls = []
    real = decode_mod.hex_words

    def counting(words: Any) -> str:
        calls.append(1)
        return real(words)

    monkeypatch.setattr(decode_mod, "hex_words", counting)
    monkeypatch.setattr(driver_mod, "hex_words", counting, raising=False)
    prof = profile("eastron/sdm120")
    sim, conn = await start(sims, "tcp", {1: prof})
    sim.models[1].set_raw("voltage", 230.0)
    sink = Sink()
    async with ModbusDriver(make_ctx(prof, **conn)) as drv:
        for _ in range(3):
            await drv.poll(sink)
        assert calls == []
        raw = dict(drv.last_raw())
        last = drv.due(2)
    assert raw["voltage"] == "0x4366 0x0000"
    assert set(raw) == set(last)  # the third poll's points (the demand values come every 6th)
    assert sink.readings[0].values == sim.models[1].expected()  # the first poll reads every point


async def test_the_reading_keeps_profile_order_whatever_the_request_order() -> None:
    """Points listed out of address order still come in profile order (the message's metric order)."""
    from fieldgate.drivers.modbus.profile import ModbusProfile
    from fieldgate_hwsim.fleet_sim import FleetSim

    sim = FleetSim(1, 8)
    ports = await sim.start()
    try:
        for order in ([0, 1, 2, 3], [3, 0, 2, 1]):
            prof = ModbusProfile.model_validate({
                "schema_version": 1, "driver": "modbus", "vendor": "b", "model": "f", "addressing_verified": True,
                "points": [{"name": f"r{a}", "address": a} for a in order]})
            sink = Sink()
            async with ModbusDriver(make_ctx(prof, host="127.0.0.1", port=ports[0])) as drv:
                await drv.poll(sink)
            assert list(sink.readings[0].values) == [f"r{a}" for a in order]
    finally:
        await sim.stop()
