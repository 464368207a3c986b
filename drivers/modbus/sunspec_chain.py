"""SunSpec on the wire: find a device's model chain on connect and move a SunSpec profile's points onto it.

The profile side (the models' points on a nominal chain) is sunspec.py; this
is the connect-time side the driver calls: ``discover`` finds the ``SunS``
marker at the usual bases, walks ``ID, L, body`` up to the end marker and
reads common model 1; ``relocate`` moves each generated point to where its
model really is and drops the points of models (or MPPT modules) the device
lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

from fieldgate.errors import DeviceProtocolError, DeviceTimeout

from .bus import ExceptionResponse, FrameError, ModbusBus
from .profile import ModbusConnection, ModbusProfile
from .sunspec import BASES, END_ID, MARKER, MAX_MODELS, SunSpecError, _definition, layout


@dataclass
class Chain:
    """What ``discover`` found on a device."""

    base: int
    models: list[tuple[int, int, int]]  # (id, address of its ID register, L)
    common: dict[str, str]  # manufacturer, model, version, serial from model 1

    def summary(self) -> list[str]:
        """One line per model, for ``probe`` and the log."""
        lines = []
        for mid, start, length in self.models:
            name = _name(mid)
            lines.append(f"SunSpec model {mid} ({name}) at {start}, {length} registers")
        return lines


def _name(mid: int) -> str:
    try:
        return str(_definition(mid)["group"]["name"])
    except SunSpecError:
        return "unknown model"


async def _read(bus: ModbusBus, conn: ModbusConnection, start: int, count: int) -> list[int]:
    data = await bus.read(conn.unit, "holding", start, count, timeout=conn.timeout, retries=conn.retries,
                          backoff=conn.backoff, backoff_max=conn.backoff_max)
    return [int(w) for w in data]


def _text(words: list[int]) -> str:
    return b"".join(w.to_bytes(2, "big") for w in words).split(b"\0", 1)[0].decode("ascii", "replace").strip()


async def discover(bus: ModbusBus, conn: ModbusConnection, base: int | str) -> Chain:
    """Find the ``SunS`` marker, walk the model chain and read the common model.

    Raises:
        DeviceProtocolError: no marker at the bases tried, or a chain that runs off the address space.
        DeviceTimeout: the device answered at none of the bases.
    """
    bases = BASES if base == "auto" else (int(base),)
    found: int | None = None
    timeouts = 0
    for b in bases:
        try:
            if tuple(await _read(bus, conn, b, 2)) == MARKER:
                found = b
                break
        except ExceptionResponse:
            continue  # exception 02 at a base the device does not use: try the next
        except (DeviceTimeout, FrameError):
            timeouts += 1  # some devices stay silent for unmapped addresses
    if found is None:
        where = ", ".join(str(b) for b in bases)
        if timeouts == len(bases):
            raise DeviceTimeout(f"no answer at SunSpec base(s) {where}", reason="timeout",
                                hint="check host, port and unit id")
        raise DeviceProtocolError(f"no SunSpec marker 'SunS' at {where}", reason="sunspec_not_found",
                                  hint="not a SunSpec device, or SunSpec is switched off in its settings "
                                       "(many inverters need 'Modbus TCP / SunSpec' enabled)")
    models: list[tuple[int, int, int]] = []
    address = found + 2
    while True:
        if address + 2 > 0x10000 or len(models) >= MAX_MODELS:
            raise DeviceProtocolError(f"SunSpec chain from {found} has no end marker within {len(models)} "
                                      "models", reason="sunspec_chain")
        mid, length = await _read(bus, conn, address, 2)
        if mid == END_ID:
            break
        models.append((mid, address, length))
        address += 2 + length
    common: dict[str, str] = {}
    first = next((m for m in models if m[0] == 1), None)
    if first is not None and first[2] >= 64:
        body = await _read(bus, conn, first[1] + 2, 64)
        common = {"manufacturer": _text(body[0:16]), "model": _text(body[16:32]), "options": _text(body[32:40]),
                  "version": _text(body[40:48]), "serial": _text(body[48:64])}
    return Chain(found, models, common)


def relocate(profile: ModbusProfile, chain: Chain) -> tuple[ModbusProfile, dict[str, int]]:
    """The profile with its SunSpec points where the device has them, and each point's "not implemented" value.

    Points of a model the device lacks, or beyond the length it declares
    (fewer MPPT modules, an older model revision), are dropped; the first
    instance of a model is used.
    """
    assert profile.sunspec is not None
    lay = layout(profile.sunspec.models, profile.sunspec.modules)
    where: dict[int, tuple[int, int]] = {}
    for mid, start, length in chain.models:
        where.setdefault(mid, (start, length))
    placed = {p.name: p for p in lay.placed}
    points = []
    unset: dict[str, int] = {}
    for p in profile.points:
        if p.name in lay.chain:
            continue
        spot = placed.get(p.name)
        if spot is None:
            points.append(p)  # a point the profile declares itself
            continue
        found = where.get(spot.model)
        if found is None or spot.offset + spot.width > found[1]:
            continue
        points.append(p.model_copy(update={"address": found[0] + 2 + spot.offset}))
        if spot.unset is not None:
            unset[p.name] = spot.unset
    names = {p.name for p in points}
    # a value whose scale factor is gone cannot be scaled: drop it too
    points = [p for p in points if p.scale_factor_point is None or p.scale_factor_point in names]
    return profile.model_copy(update={"points": points}), {n: v for n, v in unset.items()
                                                          if n in {p.name for p in points}}
