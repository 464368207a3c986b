"""Profile and connection models of the ``coap`` driver.

A CoAP profile says what a device's payload looks like (``payload.format``:
SenML, JSON or CBOR with a field mapping, or binary with the serial
driver's field descriptions) and, for devices that can be polled or
observed, which ``resource`` holds the data. The connection says how the
gateway reaches the device: ``poll`` (GET on a schedule), ``observe`` (RFC
7641 subscription) or ``push`` (the device wakes up and POSTs to the
gateway's CoAP endpoint), with per-device retransmission timing, DTLS-PSK
and, for pushes, the listen address and rate limit. No aiocoap here: the
models load on any machine.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from fieldgate.codecs.fields import FieldSpec, FieldType
from fieldgate.codecs.frames import ChecksumSpec
from fieldgate.listen import ListenAddress
from fieldgate.profile import BasePoint, BaseProfile, Model
from fieldgate.secret import Secret
from fieldgate.units import Duration, PositiveDuration
from pydantic import Field, model_validator

COAP_PORT, COAPS_PORT = 5683, 5684
_PATH_PART = re.compile(r"^[A-Za-z0-9_.~-]+$")


class CoapPoint(BasePoint):
    """A point: where its value is in a payload, plus the common scaling keys.

    SenML points match records by ``senml`` (default: the point name);
    JSON/CBOR points read the dotted ``path``; binary points give ``at`` and
    ``type`` exactly like the serial driver's binary fields.
    """

    senml: str | None = Field(None, description="senml: record name (n, or base name + n); default: the point name")
    path: str | None = Field(None, description="json/cbor: dotted path of the value, e.g. data.level or values.0")
    at: int | None = Field(None, ge=0, description="binary: byte offset of the value (0 = first payload byte)")
    type: FieldType | None = Field(None, description="binary: u8 i8 u16 i16 u32 i32 u64 i64 f16 f32 f64 bool "
                                                     "(default u16)")
    byte_order: Literal["big", "little"] | None = Field(None, description="binary: default: the payload's")
    bits: list[int] | None = Field(None, min_length=2, max_length=2,
                                   description="binary integers: [first bit, bit count]; one bit gives a bool")

    def field_spec(self) -> FieldSpec:
        """The serial driver's field description of a binary point (validated there)."""
        return FieldSpec(at=self.at, type=self.type, byte_order=self.byte_order, bits=self.bits)


class PayloadSpec(Model):
    """How a device encodes its report."""

    format: Literal["senml", "json", "cbor", "binary"] = Field(
        description="senml: RFC 8428 JSON or CBOR (by Content-Format); json/cbor: a document read with each "
                    "point's 'path'; binary: bytes read with each point's 'at'/'type'")
    time: str | None = Field(None, description="json/cbor: dotted path of the measurement time (seconds since the "
                                               "epoch); default: the receive time")
    byte_order: Literal["big", "little"] = Field("big", description="binary: default byte order of the fields")
    min_length: int = Field(1, ge=1, description="binary: shorter payloads are refused as malformed")
    checksum: ChecksumSpec | None = Field(
        None, description="binary: {type, over, at}; 'at' defaults to the last bytes, 'over' to all bytes before")


class WriteSpec(Model):
    """Where a device takes commands' writes: one request carries every point of a command.

    The payload is in the profile's ``payload.format`` (SenML records by the points' names, or a
    JSON/CBOR document built from their paths); binary payloads cannot be written (a frame would
    need every field, not only the written ones).
    """

    resource: str | None = Field(None, description="path the writes go to, e.g. /actuators/setpoint; "
                                                   "default: the profile's resource")
    method: Literal["put", "post"] = Field("put", description="put (RFC 7252: replace the state, idempotent) "
                                                              "or post (for devices that take writes as POST)")

    @model_validator(mode="after")
    def _path(self) -> WriteSpec:
        if self.resource is not None:
            parse_path(self.resource)
        return self


class CoapProfile(BaseProfile):
    """A profile for the ``coap`` driver."""

    driver: Literal["coap"]
    resource: str | None = Field(None, description="poll/observe: path of the resource holding the data, e.g. "
                                                   "/sensors/level")
    payload: PayloadSpec
    write: WriteSpec | None = Field(
        None, description="the writable resource: commands set the points marked writable with one "
                          "PUT (or POST) there; absent: the device takes no writes")
    points: list[CoapPoint] = Field(min_length=1)  # type: ignore[assignment]  # narrows BaseProfile.points; list is invariant to mypy, pydantic validates the narrower type

    @model_validator(mode="after")
    def _points_fit_format(self) -> CoapProfile:
        fmt = self.payload.format
        problems: list[str] = []
        record_names: dict[str, tuple[int, CoapPoint]] = {}
        for i, pt in enumerate(self.points):
            if fmt == "senml":
                # one record name, two points: the decoder could feed only one of them
                key = pt.senml or pt.name
                if key in record_names:
                    j, other = record_names[key]
                    shown = f"{other.name}, senml: {other.senml}" if other.senml else other.name
                    problems.append(f"points[{i}] ({pt.name}): matches the same SenML records as points[{j}] "
                                    f"({shown}): give one of them another senml name")
                record_names.setdefault(key, (i, pt))
            binary_keys = [k for k in ("at", "type", "byte_order", "bits") if getattr(pt, k) is not None]
            where = f"points[{i}] ({pt.name})"
            if fmt == "binary":
                if pt.at is None:
                    problems.append(f"{where}: a binary payload's points give a byte offset 'at'")
                    continue
                try:
                    pt.field_spec()
                except ValueError as exc:
                    problems.append(f"{where}: {_first_error(exc)}")
            elif binary_keys:
                problems.append(f"{where}: {', '.join(binary_keys)} apply to binary payloads")
            if fmt in ("json", "cbor") and pt.path is None:
                problems.append(f"{where}: a {fmt} payload's points give a dotted 'path'")
            if fmt != "senml" and pt.senml is not None:
                problems.append(f"{where}: 'senml' applies to senml payloads")
            if fmt not in ("json", "cbor") and pt.path is not None:
                problems.append(f"{where}: 'path' applies to json/cbor payloads")
        if fmt != "binary" and (self.payload.checksum is not None):
            problems.append("payload.checksum applies to binary payloads")
        writable = [pt.name for pt in self.points if pt.writable]
        if writable and self.write is None:
            problems.append(f"points {', '.join(writable)} are writable but the profile declares no writable "
                            "resource: add write: {resource: /path, method: put}")
        if fmt == "binary" and self.write is not None:
            problems.append("write: a binary payload cannot be written (a frame needs every field); "
                            "writes take senml, json or cbor")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        items = errors()
        if items:
            return str(items[0].get("msg", exc)).removeprefix("Value error, ")
    return str(exc)


class DtlsSettings(Model):
    """DTLS with a pre-shared key (RFC 7925 profile of CoAP over DTLS 1.2)."""

    identity: str = Field(min_length=1, max_length=128, description="PSK identity the device presents")
    psk: Secret = Field(description="the pre-shared key, from {file: ...} or {env: ...}; never inline")
    psk_format: Literal["text", "hex"] = Field("text", description="text: the key's characters; hex: hex digits")

    def key(self) -> bytes:
        """The key bytes (read now, so a rotated file takes effect on reconnect).

        Raises:
            OSError, KeyError: the secret's file or variable is missing.
            ValueError: hex format but not hex digits.
        """
        text = self.psk.reveal()
        return bytes.fromhex(text.strip()) if self.psk_format == "hex" else text.encode("utf-8")


class RateLimit(Model):
    """Token bucket per source: ``rate`` reports per second, bursts of ``burst``.

    Checked on each datagram before it is parsed; what exceeds it is dropped
    silently (a confirmable report is retransmitted by the device and gets
    through when tokens are back).
    """

    rate: float = Field(1.0, gt=0, description="sustained requests per second accepted from one source address")
    burst: int = Field(10, ge=1, description="requests one source may send at once before the rate applies")
    per: Literal["address", "host"] = Field(
        "address", description="address: one bucket per IP and port (NB-IoT devices often share a carrier NAT "
                               "address); host: one per IP (stops a flood from rotating ports)")


class CoapConnection(Model):
    """How the gateway talks to the device."""

    mode: Literal["poll", "observe", "push"] = Field(
        "poll", description="poll: GET each poll_interval; observe: subscribe (RFC 7641); push: the device "
                            "POSTs its reports to the gateway")
    host: str | None = Field(None, description="poll/observe: the device's address or name")
    port: int | None = Field(None, ge=1, le=65535, description="poll/observe: default 5683, or 5684 with dtls")
    resource: str | None = Field(None, description="poll/observe: override the profile's resource path")
    ack_timeout: PositiveDuration = Field(
        2.0, description="poll/observe: first retransmission after this (RFC 7252 ACK_TIMEOUT); doubles each time")
    max_retransmit: int = Field(
        2, ge=0, le=8, description="poll/observe: retransmissions before the device counts as unreachable; with "
                                   "the defaults a silent device costs about 2+4+8 s, not aiocoap's 93 s")
    observe_margin: Duration = Field(
        10.0, description="observe: re-register when no notification came for Max-Age plus this margin")
    listen: str = Field("[::]:5683", description="push: address:port of the gateway's CoAP endpoint, e.g. "
                                                  "0.0.0.0:5683 or [::]:5683 (5684 is usual with dtls)")
    path: str | None = Field(None, description="push: path the device POSTs to; default /t/<device id>")
    dtls: DtlsSettings | None = Field(None, description="DTLS-PSK: coaps:// for poll/observe; for push the "
                                                         "device must present this identity and key")
    rate_limit: RateLimit = Field(default_factory=RateLimit, description="push: per source address")
    sources: list[str] | None = Field(
        None, description="push: only accept reports from these addresses or networks (e.g. 10.64.0.0/10)")
    stale_after: Duration = Field(
        0.0, description="push: no report for this long → the device is reported (0: never; sleeping devices "
                         "report rarely, set it above their reporting interval)")
    queue: int = Field(64, ge=1, le=10000, description="push: reports held for the device at most; oldest dropped")

    @model_validator(mode="after")
    def _mode_keys(self) -> CoapConnection:
        if self.mode in ("poll", "observe"):
            if not self.host:
                raise ValueError(f"mode {self.mode} needs 'host' (the device's address)")
            if self.sources is not None or self.path is not None:
                raise ValueError("'sources' and 'path' apply to mode push")
        else:
            if self.host or self.port or self.resource:
                raise ValueError("mode push takes no host/port/resource: the device sends to 'listen' and 'path'")
            parse_listen(self.listen)
            if self.path is not None:
                parse_path(self.path)
            for s in self.sources or []:
                try:
                    ipaddress.ip_network(s, strict=False)
                except ValueError:
                    raise ValueError(f"sources: {s!r} is not an address or network") from None
        return self

    def uri(self, profile: CoapProfile) -> str:
        """coap(s)://host:port/resource of a polled or observed device."""
        return self._uri(self.resource or profile.resource or "/")

    def write_uri(self, profile: CoapProfile) -> str | None:
        """coap(s)://host:port/resource that takes the profile's writes; None when it declares none."""
        if profile.write is None:
            return None
        return self._uri(profile.write.resource or self.resource or profile.resource or "/")

    def _uri(self, res: str) -> str:
        assert self.host is not None
        scheme = "coaps" if self.dtls else "coap"
        port = self.port or (COAPS_PORT if self.dtls else COAP_PORT)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{port}/{res.lstrip('/')}"


def parse_listen(text: str) -> tuple[str, int]:
    """``0.0.0.0:5683`` / ``[::]:5683`` / ``[::1]:0`` → (host, port).

    Raises:
        ValueError: not host:port.
    """
    addr = ListenAddress.parse(text, require_ip=True)
    return addr.host, addr.port


def parse_path(text: str) -> tuple[str, ...]:
    """``/t/bin-7`` → ``("t", "bin-7")``.

    Raises:
        ValueError: empty or with characters a device cannot send without escaping.
    """
    parts = tuple(p for p in text.split("/") if p)
    if not parts or not all(_PATH_PART.match(p) for p in parts):
        raise ValueError(f"path {text!r}: write segments of letters, digits and - _ . ~ such as /t/bin-7")
    return parts
