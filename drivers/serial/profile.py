"""Profile and connection models of the ``serial`` driver.

A serial profile says how the device talks (``serial`` line settings from
its datasheet, ``mode`` stream or query, the ``query`` to send), how its
byte stream is framed (``frame``, see ``frames.FrameSpec``) and where each
point sits in a frame (``at``/``group``, see ``fields.FieldSpec``). The
connection says where the device is plugged in and may override the line
settings. No pyserial here: the models load on any machine.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Literal

from fieldgate.codecs.fields import BINARY_TYPES, FieldSpec
from fieldgate.codecs.frames import FrameSpec, Payload
from fieldgate.profile import BasePoint, BaseProfile, Model
from fieldgate.units import Duration, PositiveDuration
from pydantic import Field, model_validator

from .nmea import NmeaRules

Parity = Literal["N", "E", "O", "M", "S"]
# 1.5 stop bits is real (5-bit lines), but PEP 586 keeps floats out of Literal, so mypy
# sees a float; pydantic validates against the Literal at run time.
if TYPE_CHECKING:
    StopBits = float
else:
    StopBits = Literal[1, 1.5, 2]
_PARITY_WORDS = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}


def _parity(data: Any) -> Any:
    if isinstance(data, dict) and isinstance(data.get("parity"), str):
        data = dict(data)
        p = data["parity"]
        data["parity"] = _PARITY_WORDS.get(p.lower(), p.upper() if len(p) == 1 else p)
    return data


class LineSettings(Model):
    """UART settings a device uses (its datasheet's "9600 8N1")."""

    baudrate: int = Field(9600, gt=0, description="bits per second")
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Parity = Field("N", description="N(one), E(ven), O(dd), M(ark), S(pace)")
    stopbits: StopBits = 1

    @model_validator(mode="before")
    @classmethod
    def _words(cls, data: Any) -> Any:
        return _parity(data)


class SerialPoint(BasePoint, FieldSpec):
    """A point read from a frame: ``at`` (binary) or ``group`` (line), plus scaling."""


class SerialProfile(BaseProfile):
    """A profile for the ``serial`` driver."""

    driver: Literal["serial"]
    serial: LineSettings = Field(default_factory=LineSettings, description="the device's UART settings")
    mode: Literal["stream", "query"] = Field(
        "stream", description="stream: the device sends frames on its own; query: send 'query', read one answer")
    query: Payload | None = Field(None, description="query mode: bytes that ask for a reading "
                                                    "(text with escapes, or {hex: ...})")
    init: Payload | None = Field(None, description="bytes sent once after the port opens (e.g. start streaming)")
    frame: FrameSpec
    nmea: NmeaRules | None = Field(None, description="NMEA 0183: fix time as the reading's time, signed E/W values")
    points: list[SerialPoint] = Field(min_length=1)  # type: ignore[assignment]  # narrows BaseProfile.points; list is invariant to mypy, pydantic validates the narrower type

    @model_validator(mode="after")
    def _points_fit_frame(self) -> SerialProfile:
        if self.mode == "query" and not self.query:
            raise ValueError("mode query needs 'query' (the bytes that ask the device for a reading)")
        text = self.frame.is_text
        groups: set[str] = set()
        if text:
            import re

            for p in self.frame.patterns:
                groups.update(re.compile(p).groupindex)
        problems: list[str] = []
        for i, pt in enumerate(self.points):
            if text and pt.group is None:
                problems.append(f"points[{i}] ({pt.name}): a line frame's points name a pattern 'group', "
                                "not a byte offset 'at'")
            elif not text and pt.at is None:
                problems.append(f"points[{i}] ({pt.name}): a binary frame's points give a byte offset 'at'")
            elif text and pt.group not in groups:
                problems.append(f"points[{i}] ({pt.name}): no pattern has a group named {pt.group!r}")
            elif text and pt.hemisphere is not None and pt.hemisphere not in groups:
                problems.append(f"points[{i}] ({pt.name}): no pattern has a hemisphere group {pt.hemisphere!r}")
            elif text and pt.invalid_when and not set(pt.invalid_when) <= groups:
                missing = ", ".join(repr(g) for g in sorted(set(pt.invalid_when) - groups))
                problems.append(f"points[{i}] ({pt.name}): invalid_when names {missing}, which no pattern has")
            elif pt.at is not None and self.frame.kind == "fixed":
                assert self.frame.length is not None
                end = pt.at + struct.calcsize(BINARY_TYPES[pt.value_type])
                if end > self.frame.length:
                    problems.append(f"points[{i}] ({pt.name}): bytes {pt.at}..{end - 1} lie beyond the "
                                    f"{self.frame.length}-byte frame")
        if self.nmea is not None:
            names = {pt.name for pt in self.points}
            problems += [f"nmea: {name!r} is not a point of this profile" for name in self.nmea.points()
                         if name not in names]
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SerialConnection(Model):
    """Where the device is plugged in, and how the driver treats it."""

    port: str = Field(description="serial device; prefer a stable /dev/serial/by-id/... path over /dev/ttyUSB0")
    baudrate: int | None = Field(None, gt=0, description="override the profile's baud rate")
    bytesize: Literal[5, 6, 7, 8] | None = None
    parity: Parity | None = None
    stopbits: StopBits | None = None
    mode: Literal["stream", "query"] | None = Field(None, description="override the profile's mode")
    query: Payload | None = Field(None, description="override the profile's query bytes")
    answer_timeout: PositiveDuration = Field(1.0, description="query mode: wait this long for an answer")
    stale_after: Duration = Field(
        30.0, description="stream mode: no valid frame for this long → the device is reopened and reported "
                          "(0: never)")
    min_interval: Duration = Field(0.0, description="stream mode: at most one reading per this interval")
    aggregate: Literal["last", "mean"] = Field(
        "last", description="with min_interval: report the last frame's values or their mean")
    exclusive: bool = Field(True, description="lock the port so a second program cannot read it too")
    bad_frames_degraded: int = Field(
        3, ge=1, description="bad checksums in a row before the device is reported degraded")

    @model_validator(mode="before")
    @classmethod
    def _words(cls, data: Any) -> Any:
        return _parity(data)

    def line(self, profile: SerialProfile) -> LineSettings:
        """The effective UART settings: the profile's, overridden by the connection's."""
        base = profile.serial
        return LineSettings(
            baudrate=self.baudrate or base.baudrate,
            bytesize=self.bytesize or base.bytesize,
            parity=self.parity or base.parity,
            stopbits=self.stopbits or base.stopbits,
        )
