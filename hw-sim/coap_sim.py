"""Simulated NB-IoT CoAP devices: a sleeping device that pushes, and an observable sensor.

``SleepyDevice`` behaves like an NB-IoT module in power-saving mode: it
wakes up, sends one confirmable POST with its report (retransmitting with
RFC 7252 backoff until the ACK comes), and sleeps again. It speaks CoAP on
a plain UDP socket with aiocoap's message codec, so it can do what a real
device (or a broken one) does and a library client cannot: resend the same
message ID (``duplicates``), send a payload that does not decode
(``malformed``), or flood the gateway with distinct requests (``flood``).
With ``dtls=(identity, key)`` it sends through aiocoap's tinydtls client
instead.

``ObservableSensor`` is an aiocoap server with an observable resource
(RFC 7641) serving a profile's payload; ``forget_observers`` drops its
observers without telling them, as a device does after a reboot, so the
gateway must notice the silence and re-register. When the profile declares
a writable resource (``write:``), it takes PUT/POST there: every request is
recorded in ``writes`` (method, payload bytes, Content-Format) and the values
it carries become the sensor's own, so a read-back shows them;
``refuse_writes = "4.03"`` answers that code instead (a device that refuses).

Payloads come from the profile: binary layouts are packed from the points'
``at``/``type``, SenML from their names and units, JSON/CBOR from their
paths. CLI: ``python -m fieldgate_hwsim.coap_sim --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import struct
import time
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.resource
from aiocoap.numbers import CON, NON
from aiocoap.numbers.codes import Code
from fieldgate.codecs.fields import BINARY_TYPES
from fieldgate.drivers.coap.payload import CF_CBOR, CF_JSON, CF_OCTETS, CF_SENML_CBOR, CF_SENML_JSON
from fieldgate.drivers.coap.profile import CoapProfile

REPO_PROFILES = Path(__file__).resolve().parents[1] / "profiles"


def load_coap_profile(name: str | Path) -> CoapProfile:
    """A profile from the library (``dragino/ndds75``) or a path."""
    import yaml

    path = Path(name)
    if not path.suffix:
        from fieldgate.config import library_profiles

        path = library_profiles().get(str(name)) or REPO_PROFILES / f"{name}.yaml"
    return CoapProfile.model_validate(yaml.safe_load(path.read_text()))


# What a quantity usually reads, by unit (a simulated building, not the full sensor range).
_TYPICAL = {"Cel": 21.0, "%RH": 45.0, "V": 230.0, "A": 1.5, "%": 40.0, "hPa": 1013.0, "ppm": 600.0, "mm": 1200.0}
_FLAG_NAMES = {"open", "closed", "alarm", "present", "occupied", "leak", "tamper", "relay", "pump"}
_TEXT_NAMES = {"label", "name", "state", "status_text"}


def _is_clock(p: Any) -> bool:
    """A point that carries the device's own time (Unix seconds)."""
    return p.unit == "s" and ("time" in p.name or "timestamp" in p.name)


class Model:
    """Plausible values for a profile's points, drifting a little on each ``step``.

    Measurements wander around what such a quantity usually reads; a device's clock is the
    wall clock; a count (unit ``count``) only grows; and a number with neither unit nor range
    (a mode, a firmware version) is a constant, taken from the profile's test vector when it
    has one: the datasheet's example is what such a device reports.
    """

    def __init__(self, profile: CoapProfile, seed: int | None = None) -> None:
        self.profile = profile
        self.rng = random.Random(seed)
        self.values: dict[str, Any] = {}
        self.home: dict[str, float] = {}
        self.clocks = {p.name for p in profile.points if _is_clock(p)}
        self.counts = {p.name for p in profile.points if p.unit == "count"}
        self.constants: set[str] = set()
        example: dict[str, Any] = {}
        for vector in profile.test_vectors or []:
            if isinstance(vector, dict) and isinstance(vector.get("expect"), dict):
                example = {**vector["expect"], **example}
        for p in profile.points:
            if p.type == "bool" or (p.bits is not None and p.bits[1] == 1) or p.name in _FLAG_NAMES:
                self.values[p.name] = False
            elif p.name in _TEXT_NAMES:
                self.values[p.name] = f"{profile.model} sim"
            elif p.name in self.clocks:
                self.values[p.name] = float(int(time.time()))
            elif p.name in self.counts:
                self.values[p.name] = float(example.get(p.name, 0))
            elif p.unit is None and not p.range and isinstance(example.get(p.name), int | float):
                self.constants.add(p.name)
                self.values[p.name] = float(example[p.name])
            else:
                typical = _TYPICAL.get(p.unit or "")
                if p.name.startswith("batt") and p.unit == "V":
                    typical = 3.6
                if typical is not None and (not p.range or p.range[0] <= typical <= p.range[1]):
                    home = typical
                elif p.range:
                    home = (p.range[0] + p.range[1]) / 2
                else:
                    home = 20.0
                self.home[p.name] = self.values[p.name] = home
        self.step()

    def step(self) -> dict[str, Any]:
        """Move every value a little: flags flip now and then, numbers wander around their usual value."""
        for p in self.profile.points:
            v = self.values[p.name]
            if p.name in self.constants:
                continue
            if p.name in self.clocks:
                self.values[p.name] = float(int(time.time()))
            elif p.name in self.counts:
                self.values[p.name] = v + (1 if self.rng.random() < 0.3 else 0)
            elif isinstance(v, bool):
                self.values[p.name] = self.rng.random() < 0.2
            elif isinstance(v, int | float):
                home = self.home[p.name]
                scale = max(abs(home), 1.0) * 0.02
                v += (home - v) * 0.2 + self.rng.uniform(-scale, scale)
                lo, hi = p.range or (v, v)
                self.values[p.name] = min(hi, max(lo, v))
        return dict(self.values)

    def raw(self, p: Any) -> Any:
        """The raw (unscaled) value of point ``p``."""
        v = self.values[p.name]
        if isinstance(v, bool | str):
            return v
        raw = (v - p.offset) / p.scale
        return raw


def encode(profile: CoapProfile, model: Model, fmt: str | None = None) -> tuple[bytes, int]:
    """(payload, Content-Format) of the model's current values in the profile's format."""
    fmt = fmt or profile.payload.format
    if fmt == "binary":
        need = max(p.at + struct.calcsize(BINARY_TYPES[p.type or "u16"]) for p in profile.points if p.at is not None)
        buf = bytearray(max(need, profile.payload.min_length))
        order = ">" if profile.payload.byte_order == "big" else "<"
        for p in profile.points:
            assert p.at is not None
            kind = p.type or "u16"
            code = (">" if p.byte_order == "big" else "<") if p.byte_order else order
            st = struct.Struct(code + BINARY_TYPES[kind])
            raw = model.raw(p)
            if p.bits is not None:
                first, count = p.bits
                current = st.unpack_from(buf, p.at)[0]
                mask = ((1 << count) - 1) << first
                current = (current & ~mask) | ((round(raw) << first) & mask)
                st.pack_into(buf, p.at, current)
            elif kind.startswith("f"):
                st.pack_into(buf, p.at, float(raw))
            else:
                bits = st.size * 8
                lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if kind.startswith("i") else (0, (1 << bits) - 1)
                st.pack_into(buf, p.at, max(lo, min(hi, round(raw))) if kind != "bool" else bool(raw))
        return bytes(buf), CF_OCTETS
    if fmt in ("senml", "senml+cbor"):
        records: list[dict[str, Any]] = []
        for p in profile.points:
            raw = model.raw(p)
            rec: dict[str, Any] = {"n": p.senml or p.name}
            if isinstance(raw, bool):
                rec["vb"] = raw
            elif isinstance(raw, str):
                rec["vs"] = raw
            else:
                rec["v"] = round(float(raw), 4)
                if p.unit:
                    rec["u"] = p.unit
            records.append(rec)
        if fmt == "senml+cbor":
            import cbor2
            from fieldgate.drivers.coap.senml import CBOR_LABELS

            labels = {v: k for k, v in CBOR_LABELS.items()}
            return cbor2.dumps([{labels[k]: v for k, v in r.items()} for r in records]), CF_SENML_CBOR
        return json.dumps(records).encode(), CF_SENML_JSON
    doc: dict[str, Any] = {}
    for p in profile.points:
        assert p.path is not None
        node = doc
        parts = p.path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = model.raw(p)
    if fmt == "cbor":
        import cbor2

        return cbor2.dumps(doc), CF_CBOR
    return json.dumps(doc).encode(), CF_JSON


def request_bytes(path: str, payload: bytes, content_format: int | None, mid: int, token: bytes,
                  confirmable: bool = True) -> bytes:
    """One encoded CoAP POST."""
    msg = aiocoap.Message(code=aiocoap.POST, payload=payload)
    msg.mtype = CON if confirmable else NON
    msg.mid = mid
    msg.token = token
    msg.opt.uri_path = tuple(p for p in path.split("/") if p)
    if content_format is not None:
        msg.opt.content_format = content_format
    return bytes(msg.encode())


class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.responses: dict[int, asyncio.Future[aiocoap.Message]] = {}
        self.received = 0
        self.changed = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1
        self.changed.set()
        try:
            msg = aiocoap.Message.decode(data)
        except Exception:
            return
        fut = self.responses.get(msg.mid)
        if fut is not None and not fut.done():
            fut.set_result(msg)


class SleepyDevice:
    """An NB-IoT device that wakes, pushes one report (CON POST), and sleeps.

    Args:
        target: (host, port) of the gateway's push endpoint.
        path: the device's push path, e.g. ``/t/bin-7``.
        profile: the device's profile (for the payload).
        dtls: (identity, key) to push over coaps:// instead.
    """

    def __init__(self, target: tuple[str, int], path: str, profile: CoapProfile, *, seed: int | None = None,
                 dtls: tuple[str, bytes] | None = None, ack_timeout: float = 0.5, max_retransmit: int = 4,
                 fmt: str | None = None) -> None:
        self.target, self.path, self.profile = target, path, profile
        self.model = Model(profile, seed)
        self.dtls, self.fmt = dtls, fmt
        self.ack_timeout, self.max_retransmit = ack_timeout, max_retransmit
        self.rng = random.Random(seed)
        self._mid = self.rng.randrange(0x10000)
        self._transport: asyncio.DatagramTransport | None = None
        self._proto: _Udp | None = None
        self._dtls_ctx: aiocoap.Context | None = None
        self.sent = 0
        self.acked = 0
        self.codes: list[str] = []

    async def start(self) -> None:
        if self.dtls is not None:
            from aiocoap.credentials import DTLS

            self._dtls_ctx = await aiocoap.Context.create_client_context(transports=["tinydtls"])
            host, port = self.target
            self._dtls_ctx.client_credentials[f"coaps://{_h(host)}:{port}/*"] = DTLS(
                psk=self.dtls[1], client_identity=self.dtls[0].encode())
            return
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET
        self._transport, self._proto = await loop.create_datagram_endpoint(
            _Udp, local_addr=("::1" if family == socket.AF_INET6 else "127.0.0.1", 0), family=family)

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._dtls_ctx is not None:
            try:
                async with asyncio.timeout(2):
                    await self._dtls_ctx.shutdown()
            except Exception:
                pass

    async def __aenter__(self) -> SleepyDevice:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def payload(self) -> tuple[bytes, int]:
        """The next report (the model moves on)."""
        self.model.step()
        return encode(self.profile, self.model, self.fmt)

    async def wait_received(self, n: int, timeout: float = 5.0) -> None:
        """Wait until ``n`` datagrams (ACKs) have come back."""
        assert self._proto is not None
        async with asyncio.timeout(timeout):
            while self._proto.received < n:
                self._proto.changed.clear()
                await self._proto.changed.wait()

    async def push(self, payload: bytes | None = None, content_format: int | None = None, *,
                   duplicates: int = 0, timeout: float | None = None) -> str:
        """Send one report and wait for its answer; returns the response code (``"2.04 Changed"``).

        Args:
            payload: bytes to send (default: the model's next report).
            duplicates: send the identical datagram (same message ID) this many extra times.

        Raises:
            TimeoutError: no ACK after all retransmissions.
        """
        if payload is None:
            payload, content_format = self.payload()
        if self._dtls_ctx is not None:
            host, port = self.target
            msg = aiocoap.Message(code=aiocoap.POST, payload=payload,
                                  uri=f"coaps://{_h(host)}:{port}/{self.path.lstrip('/')}")
            if content_format is not None:
                msg.opt.content_format = content_format
            self.sent += 1
            async with asyncio.timeout(timeout or 5.0):
                resp = await self._dtls_ctx.request(msg).response
            self.acked += 1
            self.codes.append(str(resp.code))
            return str(resp.code)
        assert self._transport is not None and self._proto is not None
        mid = self.next_mid()
        data = request_bytes(self.path, payload, content_format, mid, self.rng.randbytes(4))
        fut: asyncio.Future[aiocoap.Message] = asyncio.get_running_loop().create_future()
        self._proto.responses[mid] = fut
        wait = self.ack_timeout
        try:
            for _attempt in range(self.max_retransmit + 1):
                for _ in range(1 + duplicates):
                    self._transport.sendto(data, self.target)
                    self.sent += 1
                duplicates = 0
                try:
                    resp = await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    wait *= 2
                    continue
                self.acked += 1
                self.codes.append(str(resp.code))
                return str(resp.code)
            raise TimeoutError(f"no ACK for message {mid} after {self.max_retransmit} retransmissions")
        finally:
            self._proto.responses.pop(mid, None)

    async def flood(self, count: int, payload: bytes | None = None, content_format: int | None = None) -> int:
        """Send ``count`` distinct CON requests as fast as the socket takes them (no waiting for ACKs)."""
        assert self._transport is not None
        if payload is None:
            payload, content_format = self.payload()
        for i in range(count):
            self._transport.sendto(request_bytes(self.path, payload, content_format, self.next_mid(),
                                                 i.to_bytes(4, "big")), self.target)
            if i % 256 == 255:
                await asyncio.sleep(0)  # let the loop (and the gateway in it) breathe
        self.sent += count
        return count

    async def run(self, interval: float, count: int | None = None, malformed: float = 0.0,
                  duplicates: float = 0.0) -> None:
        """Wake, push, sleep; ``count`` reports or forever. Faults by probability."""
        n = 0
        while count is None or n < count:
            payload: bytes | None = None
            cf: int | None = None
            if self.rng.random() < malformed:
                payload, cf = b"\xff\x00garbage", None
            try:
                await self.push(payload, cf, duplicates=1 if self.rng.random() < duplicates else 0)
            except TimeoutError:
                pass  # a real device gives up and tries at its next wake-up
            n += 1
            await asyncio.sleep(interval)


class _Observable(aiocoap.resource.ObservableResource):
    def __init__(self, sensor: ObservableSensor) -> None:
        super().__init__()
        self.sensor = sensor

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        self.sensor.gets += 1
        payload, cf = encode(self.sensor.profile, self.sensor.model, self.sensor.fmt)
        msg = aiocoap.Message(payload=payload, content_format=cf)
        msg.opt.max_age = self.sensor.max_age
        return msg

    async def add_observation(self, request: aiocoap.Message, serverobservation: Any) -> None:
        self.sensor.registrations += 1
        await super().add_observation(request, serverobservation)


def _apply_write(sensor: ObservableSensor, payload: bytes, content_format: int | None) -> None:
    """Take the raw values a write carries as the sensor's (engineering = raw * scale + offset)."""
    prof = sensor.profile
    raws: dict[str, Any] = {}
    if prof.payload.format == "senml":
        names = {(p.senml or p.name): p.name for p in prof.points}
        for rec in json.loads(payload):
            value = rec.get("v", rec.get("vb", rec.get("vs")))
            if rec.get("n") in names:
                raws[names[rec["n"]]] = value
    else:
        import cbor2

        doc = cbor2.loads(payload) if content_format == CF_CBOR else json.loads(payload)
        for p in prof.points:
            node: Any = doc
            for part in (p.path or "").split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                raws[p.name] = node
    for p in prof.points:
        if p.name in raws:
            raw = raws[p.name]
            sensor.model.values[p.name] = raw if isinstance(raw, bool | str) else raw * p.scale + p.offset


class _Writable(aiocoap.resource.Resource):
    """The profile's writable resource (when it is not the observed one)."""

    def __init__(self, sensor: ObservableSensor) -> None:
        super().__init__()
        self.sensor = sensor

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        return self.sensor.written("PUT", request)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return self.sensor.written("POST", request)


class _ObservableWritable(_Observable):
    """The observed resource also takes writes (a profile whose write resource is its data resource)."""

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        return self.sensor.written("PUT", request)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return self.sensor.written("POST", request)


class ObservableSensor:
    """A CoAP server with one observable resource serving a profile's payload (plain UDP or DTLS-PSK).

    Args:
        profile: the device's profile; its ``resource`` is where the data is served.
        max_age: Max-Age of each response, seconds.
        psk: (identity, key) to serve coaps:// instead (needs an explicit ``port``).
    """

    def __init__(self, profile: CoapProfile, *, host: str = "127.0.0.1", port: int = 0, max_age: int = 60,
                 seed: int | None = None, psk: tuple[str, bytes] | None = None, fmt: str | None = None) -> None:
        self.profile, self.host, self.port, self.max_age = profile, host, port, max_age
        self.model = Model(profile, seed)
        self.psk, self.fmt = psk, fmt
        path = tuple(p for p in (profile.resource or "/data").split("/") if p)
        spec = profile.write
        self.write_path = tuple(p for p in (spec.resource or "").split("/") if p) if spec is not None else None
        same = self.write_path is not None and self.write_path in ((), path)
        self.resource = _ObservableWritable(self) if same else _Observable(self)
        self.ctx: aiocoap.Context | None = None
        self.gets = 0
        self.registrations = 0
        self.silent = False
        self.writes: list[tuple[str, bytes, int | None]] = []
        self.refuse_writes: str | None = None
        self.written_event = asyncio.Event()

    def written(self, method: str, request: aiocoap.Message) -> aiocoap.Message:
        """Record a write and take its values (or refuse it with ``refuse_writes``)."""
        self.writes.append((method, bytes(request.payload), request.opt.content_format))
        self.written_event.set()
        if self.refuse_writes is not None:
            major, minor = (int(x) for x in self.refuse_writes.split("."))
            return aiocoap.Message(code=Code((major << 5) | minor), payload=b"refused")
        _apply_write(self, bytes(request.payload), request.opt.content_format)
        self.resource.updated_state()
        return aiocoap.Message(code=aiocoap.CHANGED)

    async def start(self) -> int:
        site = aiocoap.resource.Site()
        path = tuple(p for p in (self.profile.resource or "/data").split("/") if p)
        site.add_resource(path, self.resource)
        if self.write_path and self.write_path != path:
            site.add_resource(self.write_path, _Writable(self))
        if self.psk is not None:
            from aiocoap.credentials import DTLS, CredentialsMap

            creds = CredentialsMap()
            creds[":device"] = DTLS(psk=self.psk[1], client_identity=self.psk[0].encode())
            # aiocoap's DTLS server binds the given port + 1 (the coap→coaps default offset)
            self.ctx = await aiocoap.Context.create_server_context(
                site, bind=(self.host, self.port - 1), transports=["tinydtls_server"], server_credentials=creds)
        else:
            self.ctx = await aiocoap.Context.create_server_context(site, bind=(self.host, self.port),
                                                                   transports=["udp6"])
            mi = self.ctx.request_interfaces[0].token_interface.message_interface
            self.port = int(mi.transport.get_extra_info("socket").getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self.ctx is not None:
            await self.ctx.shutdown()
            self.ctx = None

    async def __aenter__(self) -> ObservableSensor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def update(self) -> None:
        """A new measurement: observers get a notification."""
        self.model.step()
        self.resource.updated_state()

    def forget_observers(self) -> int:
        """Drop every observation silently (a rebooted device); returns how many were dropped."""
        obs = self.resource._observations
        n = len(obs)
        obs.clear()
        return n

    @property
    def observers(self) -> int:
        return len(self.resource._observations)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _h(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class CoapDemo:
    """NB-IoT devices for ``fieldgate demo``: two sleeping pushers and one observable sensor.

    ``start`` picks a free port for the gateway's push endpoint and returns the
    YAML device lines; the pushers begin once the gateway listens (they retry).
    """

    def __init__(self) -> None:
        self.notes: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._devices: list[SleepyDevice] = []
        self._sensor: ObservableSensor | None = None

    async def start(self, folder: Path) -> list[str]:
        port = free_udp_port()
        bins = load_coap_profile("dragino/ndds75")
        covers = load_coap_profile("dragino/cpn01")
        senml = load_coap_profile("generic/senml")
        lines = [
            f"  - {{id: bin-level-1, driver: coap, profile: dragino/ndds75, connection: {{mode: push, "
            f"listen: '127.0.0.1:{port}', path: /t/bin-level-1, rate_limit: {{rate: 5, burst: 20}}}}}}",
            f"  - {{id: manhole-1, driver: coap, profile: dragino/cpn01, connection: {{mode: push, "
            f"listen: '127.0.0.1:{port}', path: /t/manhole-1}}}}",
        ]
        for dev_id, prof, interval, seed in (("bin-level-1", bins, 5.0, 11), ("manhole-1", covers, 7.0, 12)):
            dev = SleepyDevice(("127.0.0.1", port), f"/t/{dev_id}", prof, seed=seed, max_retransmit=2)
            await dev.start()
            self._devices.append(dev)
            self._tasks.append(asyncio.create_task(dev.run(interval), name=f"coap-sim[{dev_id}]"))
        sensor = ObservableSensor(senml, max_age=30, seed=13)
        sport = await sensor.start()
        self._sensor = sensor
        self._tasks.append(asyncio.create_task(self._tick(sensor), name="coap-sim[observe]"))
        lines.append(f"  - {{id: climate-coap-1, driver: coap, profile: generic/senml, connection: {{mode: observe, "
                     f"host: 127.0.0.1, port: {sport}}}}}")
        self.notes.append(f"NB-IoT over CoAP: NDDS75 bin sensor and CPN01 manhole contact push to "
                          f"coap://127.0.0.1:{port}/t/<id>; a SenML sensor observed at coap://127.0.0.1:{sport}"
                          f"{senml.resource}")
        return lines

    async def _tick(self, sensor: ObservableSensor) -> None:
        while True:
            await asyncio.sleep(5.0)
            sensor.update()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for d in self._devices:
            await d.stop()
        if self._sensor is not None:
            await self._sensor.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fieldgate_hwsim.coap_sim",
                                     description="Simulated NB-IoT CoAP devices")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("push", help="a sleeping device: wake, POST a report, sleep")
    p.add_argument("profile", help="library name (dragino/ndds75) or path")
    p.add_argument("--to", default="127.0.0.1:5683", help="gateway push endpoint host:port")
    p.add_argument("--path", default="/t/sim-1")
    p.add_argument("--interval", type=float, default=10.0, help="seconds asleep between reports")
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--malformed", type=float, default=0.0, help="probability of a garbage payload")
    p.add_argument("--duplicates", type=float, default=0.0, help="probability of resending the same message ID")
    p.add_argument("--flood", type=int, default=0, help="send this many requests at once, then exit")
    o = sub.add_parser("observe", help="an observable sensor (CoAP server)")
    o.add_argument("profile")
    o.add_argument("--listen", default="127.0.0.1:5683")
    o.add_argument("--interval", type=float, default=5.0, help="seconds between new values")
    o.add_argument("--max-age", type=int, default=60)
    args = parser.parse_args(argv)

    async def go() -> None:
        prof = load_coap_profile(args.profile)
        if args.cmd == "push":
            host, _, port = args.to.rpartition(":")
            async with SleepyDevice((host.strip("[]"), int(port)), args.path, prof) as dev:
                if args.flood:
                    await dev.flood(args.flood)
                    print(f"sent {args.flood} requests")
                    return
                await dev.run(args.interval, args.count, args.malformed, args.duplicates)
                print(f"sent {dev.sent}, acknowledged {dev.acked}: {dev.codes[-5:]}")
        else:
            host, _, port = args.listen.rpartition(":")
            async with ObservableSensor(prof, host=host.strip("[]"), port=int(port), max_age=args.max_age) as s:
                print(f"serving coap://{args.listen}{prof.resource}", flush=True)
                while True:
                    await asyncio.sleep(args.interval)
                    s.update()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
