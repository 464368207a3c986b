"""Profile and connection models of the ``modbus`` driver.

Addressing convention (the one rule that causes most Modbus field bugs):
every ``address`` in a profile is the 0-based *PDU address*, the number that
travels in the request frame. Datasheets often print Modicon register
numbers instead (``30001`` = input register at PDU address 0, ``40001`` =
holding register at PDU address 0) or 1-based "register numbers". Convert
them: PDU address = register number - 30001 (input) or - 40001 (holding), or
- 1 for plain 1-based numbering. ``checks()`` warns when a profile looks like
it still holds such numbers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fieldgate.profile import BasePoint, BaseProfile, Model
from fieldgate.units import PositiveDuration
from pydantic import Field, model_validator

Table = Literal["holding", "input", "coil", "discrete"]
PointType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "bit", "bool"
]
Order = Literal["big", "little"]

#: Registers (16-bit words) each type occupies; strings use ``count``.
TYPE_WIDTH: dict[str, int] = {
    "int16": 1, "uint16": 1, "bit": 1, "bool": 1,
    "int32": 2, "uint32": 2, "float32": 2,
    "int64": 4, "uint64": 4, "float64": 4,
}
BIT_TABLES = ("coil", "discrete")
Address = Annotated[int, Field(ge=0, le=65535)]


class ModbusPoint(BasePoint):
    """One value read from a Modbus register table.

    The raw value is the decoded register content before ``scale``/``offset``
    (which the core applies), except for ``scale_factor_point``: SunSpec-style
    devices publish a power-of-ten exponent in another register, which the
    driver applies while decoding because it changes at run time.
    """

    table: Table = Field(
        "holding", description="register table: holding (FC3), input (FC4), coil (FC1), discrete (FC2)")
    address: Address = Field(description="0-based PDU address (register 30001/40001 in a datasheet is address 0)")
    type: PointType | None = Field(
        None, description="value type; default uint16 for registers, bool for coils and discrete inputs"
    )
    byte_order: Order | None = Field(None, description="byte order inside each register (default: profile's, big)")
    word_order: Order | None = Field(
        None, description="order of registers in multi-register values: big = most significant first"
    )
    count: int | None = Field(None, ge=1, le=125, description="string: number of registers (2 characters each)")
    bit: int | None = Field(
        None, ge=0, le=15, description="type bit: bit number in the register, 0 = least significant")
    every: int = Field(1, ge=1, le=1000, description="read on every Nth poll only (slow-changing values)")
    scale_factor_point: str | None = Field(
        None, description="name of an int16 point holding a power-of-ten exponent (SunSpec *_SF registers)"
    )
    report: bool = Field(True, description="false: read (e.g. as a scale factor) but not published")
    overlaps: list[str] = Field(
        default_factory=list,
        description="points this one deliberately shares registers with (one register read as two types); "
                    "any other overlap is an error")

    map: dict[int, float] | None = Field(
        None, description="alternative encodings: raw code -> value; a raw value equal to one of the values "
                          "(the literal, e.g. 9600 where the code is 0) is accepted as itself, anything else "
                          "is bad (unknown_code)")

    write_function: Literal[5, 6, 15, 16] | None = Field(
        None, description="writable points: FC 6 or 16 for holding registers (default 6 for one register, 16 for "
                          "more), FC 5 or 15 for coils (default 5)")

    def write_problem(self, value: object) -> str | None:
        """The core's checks, then what the register type holds (drivers/modbus/write.py)."""
        from .writeplan import write_problem

        return super().write_problem(value) or write_problem(self, value)

    def readback_tolerance(self, value: float) -> float:
        """The core's tolerance plus the raw type's step (half a step of the inverse scaling's rounding)."""
        from .writeplan import readback_tolerance

        return super().readback_tolerance(value) + readback_tolerance(self, value)

    @model_validator(mode="before")
    @classmethod
    def _one_overlap(cls, data: Any) -> Any:
        # `overlaps: other` reads better than a one-item list in a profile
        if isinstance(data, dict) and isinstance(data.get("overlaps"), str):
            data = {**data, "overlaps": [data["overlaps"]]}
        return data

    @model_validator(mode="after")
    def _unambiguous_map(self) -> ModbusPoint:
        # A raw value that is both a code and another code's literal could mean two things: refuse it.
        if self.map is None:
            return self
        if not self.map:
            raise ValueError("map needs at least one code")
        for code, value in self.map.items():
            if code in self.map.values() and value != code:
                raise ValueError(f"map: {code} is both a code and a literal (of code "
                                 f"{next(c for c, v in self.map.items() if v == code)}): one raw value, two meanings")
        if self.scale_factor_point is not None:
            raise ValueError("a point takes map and scale_factor_point not both: the code is the raw register")
        return self

    @property
    def kind(self) -> str:
        """The effective type."""
        if self.type is not None:
            return self.type
        return "bool" if self.table in BIT_TABLES else "uint16"

    @property
    def width(self) -> int:
        """Registers (or bits, in the bit tables) the point occupies."""
        if self.table in BIT_TABLES:
            return 1
        if self.kind == "string":
            return self.count or 1
        return TYPE_WIDTH[self.kind]


class AddressRange(Model):
    """Addresses the device rejects or that must never be read (e.g. clear-on-read registers)."""

    table: Table
    start: Address
    end: Address = Field(description="last unreadable address (inclusive)")

    @model_validator(mode="after")
    def _ordered(self) -> AddressRange:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is below start {self.start}")
        return self


class SunSpecSettings(Model):
    """``sunspec:``: the points come from the SunSpec models the device's chain holds (drivers/modbus/sunspec.py)."""

    base: Literal["auto"] | Address = Field(
        "auto", description="address of the SunS marker; auto tries 40000, 0 and 50000")
    models: list[int] = Field(
        default_factory=lambda: [103, 160, 203],
        description="SunSpec model ids to publish (common model 1 is always read), e.g. 103 inverter, "
                    "160 MPPT, 203 meter, 124 storage")
    modules: int = Field(2, ge=1, le=32, description="repeating groups to map (MPPT 160: modules/strings)")


class ModbusProfile(BaseProfile):
    """A profile for the ``modbus`` driver."""

    driver: Literal["modbus"]
    points: list[ModbusPoint] = Field(min_length=1)  # type: ignore[assignment]  # narrows BaseProfile.points; list is invariant to mypy, pydantic validates the narrower type
    byte_order: Order = Field("big", description="default byte order inside a register")
    word_order: Order = Field("big", description="default register order of 32/64-bit values")
    max_registers: int = Field(125, ge=1, le=125, description="most registers the device returns in one request")
    max_gap: int = Field(10, ge=0, le=124, description="unused registers a merged read may span")
    unreadable: list[AddressRange] = Field(
        default_factory=list, description="ranges a merged read must never touch"
    )
    addressing_verified: bool = Field(
        False, description="true: addresses that look 1-based were checked against the datasheet (no warning)"
    )
    sunspec: SunSpecSettings | None = Field(
        None, description="a SunSpec device: discover the model chain and publish its models' points")

    @model_validator(mode="before")
    @classmethod
    def _sunspec_points(cls, data: Any) -> Any:
        # The models' points are generated before validation, so every check sees them as written points.
        if isinstance(data, dict) and "sunspec" in data:
            from .sunspec import expand

            return expand(data)
        return data

    def order_of(self, point: ModbusPoint) -> tuple[str, str]:
        """Effective (byte order, word order) of a point."""
        return point.byte_order or self.byte_order, point.word_order or self.word_order

    def checks(self) -> list[tuple[tuple[str | int, ...], str, str]]:
        """Schema checks plus Modbus ones: types vs tables, ranges, and 1-based-looking addresses."""
        out = super().checks()
        names = {p.name: p for p in self.points}
        for i, p in enumerate(self.points):
            kind = p.kind
            if p.table in BIT_TABLES and kind != "bool":
                out.append((("points", i, "type"), f"{p.table} points are single bits: use type bool", "error"))
            if p.table not in BIT_TABLES and kind == "bool":
                out.append((("points", i, "type"),
                            "bool is for coils and discrete inputs; use type bit with bit: N for a bit in a register",
                            "error"))
            if kind == "string" and p.count is None:
                out.append((("points", i, "count"), "a string needs count: number of registers", "error"))
            if kind == "bit" and p.bit is None:
                out.append((("points", i, "bit"), "type bit needs bit: 0..15", "error"))
            if p.address + p.width > 65536:
                out.append((("points", i, "address"), "the value runs past address 65535", "error"))
            for r in self.unreadable:
                if r.table == p.table and p.address <= r.end and p.address + p.width - 1 >= r.start:
                    out.append((("points", i, "address"),
                                f"{p.table} {p.address} lies in an unreadable range {r.start}..{r.end}", "error"))
            out.extend((("points", i, key), message, "error") for key, message in _write_checks(p))
            if p.scale_factor_point is not None:
                sf = names.get(p.scale_factor_point)
                if sf is None or sf.kind != "int16":
                    out.append((("points", i, "scale_factor_point"),
                                f"{p.scale_factor_point!r} must name an int16 point of this profile", "error"))
        out.extend(self._overlap_checks())
        out.extend(self._addressing_checks())
        return out

    def _overlap_checks(self) -> list[tuple[tuple[str | int, ...], str, str]]:
        """Points whose registers (or bits) intersect within one table, unless either declares it.

        A register read twice as two types is legitimate but rare; far more
        often an overlap is a float32 typed at the next address, which decodes
        garbage from two halves of two values. Bit points of one register
        overlap only when they name the same bit.
        """
        out: list[tuple[tuple[str | int, ...], str, str]] = []
        index = {p.name: i for i, p in enumerate(self.points)}
        by_table: dict[str, list[int]] = {}
        for i, p in enumerate(self.points):
            by_table.setdefault(p.table, []).append(i)
        overlapping: set[frozenset[str]] = set()
        for table, members in by_table.items():
            members.sort(key=lambda i: (self.points[i].address, i))
            for n, i in enumerate(members):
                a = self.points[i]
                a_end = a.address + a.width  # exclusive
                for j in members[n + 1:]:
                    b = self.points[j]
                    if b.address >= a_end:
                        break  # sorted by address: no later point reaches back into a
                    if a.kind == "bit" and b.kind == "bit" and a.bit != b.bit:
                        continue
                    overlapping.add(frozenset((a.name, b.name)))
                    if b.name in a.overlaps or a.name in b.overlaps:
                        continue
                    first, second = (i, j) if i < j else (j, i)
                    p, q = self.points[first], self.points[second]
                    out.append((("points", second, "address"),
                                f"{q.name!r} ({table} {_span(q)}) overlaps {p.name!r} (points[{first}], "
                                f"{table} {_span(p)}): check the address and type against the datasheet; "
                                f"if one register is deliberately read twice, add overlaps: {p.name}",
                                "error"))
        for i, p in enumerate(self.points):
            for k, other in enumerate(p.overlaps):
                if other not in index:
                    out.append((("points", i, "overlaps", k),
                                f"{other!r} is not a point of this profile", "error"))
                elif frozenset((p.name, other)) not in overlapping:
                    out.append((("points", i, "overlaps", k),
                                f"{p.name!r} does not overlap {other!r}: remove it from overlaps", "warning"))
        return out

    def _addressing_checks(self) -> list[tuple[tuple[str | int, ...], str, str]]:
        if self.addressing_verified:
            return []
        out: list[tuple[tuple[str | int, ...], str, str]] = []
        for table, lo, hi in (("input", 30001, 39999), ("holding", 40001, 49999)):
            idx = [i for i, p in enumerate(self.points) if p.table == table]
            if idx and all(lo <= self.points[i].address <= hi for i in idx):
                out.append((("points", idx[0], "address"),
                            f"{table} addresses all lie in {lo}..{hi}: these look like Modicon register numbers; "
                            f"profiles use 0-based PDU addresses (register {lo} is address 0, so subtract {lo})",
                            "warning"))
        for table in ("holding", "input", "coil", "discrete"):
            idx = [i for i, p in enumerate(self.points) if p.table == table]
            if idx and min(self.points[i].address for i in idx) == 1:
                first = min(idx, key=lambda i: self.points[i].address)
                out.append((("points", first, "address"),
                            f"the first {table} address is 1: if the datasheet numbers registers from 1, "
                            "subtract 1 (profiles use 0-based PDU addresses); if 1 is right, set "
                            "addressing_verified: true", "warning"))
        return out


def _write_checks(p: ModbusPoint) -> list[tuple[str, str]]:
    """What makes a point's write settings wrong: (key, message)."""
    from .writeplan import WRITABLE_TYPES

    out: list[tuple[str, str]] = []
    fc = p.write_function
    if fc is not None and not p.writable:
        out.append(("write_function", "write_function has no effect without writable: true"))
    if not p.writable:
        return out
    if p.table not in ("holding", "coil"):
        out.append(("writable", f"{p.table} points cannot be written: only holding registers and coils"))
    elif p.kind not in WRITABLE_TYPES:
        out.append(("writable", f"type {p.kind} points cannot be written (strings and register bits are "
                                "not supported: a bit needs a read-modify-write another master could race)"))
    elif p.scale_factor_point is not None:
        out.append(("writable", "points with a scale_factor_point cannot be written (the factor may change)"))
    elif p.map is not None:
        out.append(("writable", "points with a map cannot be written (the map leaves open which encoding the "
                                "device takes)"))
    elif p.kind != "bool" and p.write_limits is None:
        out.append(("write_range", "a writable number needs write_range (or range): the values a command may set"))
    if fc is not None and p.table == "coil" and fc not in (5, 15):
        out.append(("write_function", "coils are written with FC 5 or 15"))
    if fc is not None and p.table == "holding" and fc not in (6, 16):
        out.append(("write_function", "holding registers are written with FC 6 or 16"))
    if fc == 6 and p.width != 1:
        out.append(("write_function", f"FC 6 writes one register; {p.kind} takes {p.width}: use 16"))
    return out


def _span(p: ModbusPoint) -> str:
    """A point's registers as a datasheet prints them: ``0x0000..0x0001`` (``bit 3`` for register bits)."""
    last = p.address + p.width - 1
    text = f"0x{p.address:04X}" if last == p.address else f"0x{p.address:04X}..0x{last:04X}"
    return f"{text} bit {p.bit}" if p.kind == "bit" else text


def _parity(value: Any) -> Any:
    aliases = {"none": "N", "even": "E", "odd": "O", "n": "N", "e": "E", "o": "O"}
    return aliases.get(value.lower(), value) if isinstance(value, str) else value


class ModbusConnection(Model):
    """How to reach one Modbus device."""

    transport: Literal["tcp", "rtu", "rtu-over-tcp"] = Field(
        "tcp", description="tcp: Modbus TCP; rtu: RS-485 serial port; rtu-over-tcp: RTU frames via a serial server"
    )
    host: str | None = Field(None, description="tcp, rtu-over-tcp: host name or IP address")
    port: int | None = Field(None, ge=1, le=65535, description="tcp, rtu-over-tcp: TCP port (default 502)")
    serial_port: str | None = Field(None, description="rtu: serial device, best /dev/serial/by-id/...")
    baudrate: int = Field(9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: int = Field(1, ge=1, le=255, description="unit id (slave address): 1..247 on RS-485")
    timeout: PositiveDuration = Field(1.0, description="wait this long for each answer")
    retries: int = Field(1, ge=0, le=5, description="extra attempts after a timeout, per request")
    backoff: PositiveDuration = Field(
        5.0, description="after a unit stops answering, skip it this long (doubling up to backoff_max)"
    )
    backoff_max: PositiveDuration = Field(120.0, description="longest a silent unit is skipped")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict) and "parity" in data:
            data = {**data, "parity": _parity(data["parity"])}
        return data

    @model_validator(mode="after")
    def _complete(self) -> ModbusConnection:
        if self.transport == "rtu":
            if not self.serial_port:
                raise ValueError("transport rtu needs serial_port (e.g. /dev/serial/by-id/usb-FTDI_...)")
            if self.unit > 247:
                raise ValueError("RS-485 unit ids are 1..247")
        elif not self.host:
            raise ValueError(f"transport {self.transport} needs host")
        return self

    @property
    def tcp_port(self) -> int:
        """The TCP port, or Modbus's default 502."""
        return self.port or 502
