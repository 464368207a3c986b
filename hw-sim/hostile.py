"""Hostile network peers for the fault campaign: a Modbus TCP server that misbehaves, and bad CoAP datagrams.

The simulators beside this module (``modbus_sim``, ``coap_sim``) are well-behaved devices with
faults a real device has (silence, exception codes through pymodbus, a slow answer). A site
also meets peers that break the protocol itself: a gateway of the wrong make on port 502, a
half-dead converter that sends noise, a device that dribbles one byte a second, a packet
crafted to crash the parser. pymodbus's server cannot be made to send a wrong transaction id
or a bad length, and aiocoap's codec cannot send an option that is not UTF-8, so both peers
here speak their protocol from raw bytes.

``HostileModbus`` answers Modbus TCP (MBAP framing, Modbus Application Protocol v1.1b3 and
Messaging on TCP/IP Implementation Guide v1.0b) according to its ``mode``:

========== ===========================================================================
mode       answer
========== ===========================================================================
ok         a correct answer (all registers zero): the control case
junk       random bytes of random length
slowloris  a correct answer, one byte every ``drip`` seconds
wrong-unit a correct answer from another unit id
wrong-tid  a correct answer with another transaction id
bad-length a correct answer whose MBAP length field disagrees with the PDU
wrong-fc   a correct answer for another function code
exception  exception response ``fc | 0x80`` with ``code`` (default 02, illegal data address)
========== ===========================================================================

``coap_datagrams(rng, path)`` yields ``(name, bytes)`` of hostile CoAP datagrams: random bytes,
header violations, a non-UTF-8 Uri-Path, an oversized datagram, and SenML/CBOR payloads with
values out of any range (``t: 1e300``, ``t: 1e16``, deep nesting, infinity). CLI::

    python -m fieldgate_hwsim.hostile modbus --mode junk --listen 127.0.0.1:0
    python -m fieldgate_hwsim.hostile coap --to 127.0.0.1:5683 --path /t/dev-1 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import struct
import sys
from collections.abc import Iterator
from typing import Any

MODBUS_MODES = ("ok", "junk", "slowloris", "wrong-unit", "wrong-tid", "bad-length", "wrong-fc", "exception")
_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length (unit id + PDU), unit id
_READS = {1, 2, 3, 4}  # read coils, discrete inputs, holding registers, input registers


def _read_answer(fc: int, pdu: bytes) -> bytes:
    """A correct answer PDU (all zero values) for a read request PDU, else an echo (writes)."""
    if fc in _READS and len(pdu) >= 5:
        count = struct.unpack(">H", pdu[3:5])[0]
        size = (count + 7) // 8 if fc in (1, 2) else 2 * count
        size = min(size, 250)  # a PDU is at most 253 bytes
        return bytes([fc, size]) + bytes(size)
    return pdu[:5]  # write single / multiple: the answer repeats function, address and value/count


class HostileModbus:
    """A Modbus TCP server that answers every request according to ``mode`` (see the module docstring).

    Args:
        mode: one of :data:`MODBUS_MODES`.
        host: listen address.
        port: listen port (0: a free one; see :attr:`port` after :meth:`start`).
        seed: for the junk bytes.
        code: the exception code of mode ``exception``.
        drip: seconds between bytes in mode ``slowloris``.
    """

    def __init__(self, mode: str, host: str = "127.0.0.1", port: int = 0, *, seed: int = 0, code: int = 2,
                 drip: float = 0.4) -> None:
        if mode not in MODBUS_MODES:
            raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODBUS_MODES)}")
        self.mode, self.host, self.port, self.code, self.drip = mode, host, port, code, drip
        self.rng = random.Random(seed)
        self.requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False

    async def start(self) -> int:
        """Listen; returns the bound port."""
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Close the listener and every connection, and wait for the connection handlers to end.

        The handlers are not cancelled: asyncio's stream server logs a cancelled handler as an
        exception in a callback. Aborting the connections ends them (the next read or write fails).
        """
        self._closing = True
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HostileModbus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def answer(self, tid: int, unit: int, pdu: bytes) -> bytes:
        """The bytes sent back for one request (for modes that answer at once)."""
        fc = pdu[0] if pdu else 0
        body = _read_answer(fc, pdu)
        if self.mode == "junk":
            return self.rng.randbytes(self.rng.randint(1, 40))
        if self.mode == "exception":
            body = bytes([fc | 0x80, self.code])
        elif self.mode == "wrong-unit":
            unit = (unit % 247) + 1
        elif self.mode == "wrong-tid":
            tid = (tid + 1) & 0xFFFF
        elif self.mode == "wrong-fc":
            other = 4 if fc == 3 else 3
            body = bytes([other]) + body[1:]
        length = len(body) + 1
        if self.mode == "bad-length":
            length += 7  # claims bytes that never come
        return _MBAP.pack(tid, 0, length, unit) + body

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while not self._closing:
                head = await reader.readexactly(_MBAP.size)
                tid, _pid, length, unit = _MBAP.unpack(head)
                pdu = await reader.readexactly(max(0, length - 1))
                self.requests += 1
                data = self.answer(tid, unit, pdu) if self.mode != "slowloris" else self._ok(tid, unit, pdu)
                if self.mode == "slowloris":
                    for i in range(len(data)):
                        if self._closing:
                            break
                        writer.write(data[i:i + 1])
                        await writer.drain()
                        await asyncio.sleep(self.drip)  # the fault itself: a peer that dribbles bytes
                else:
                    writer.write(data)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    def _ok(tid: int, unit: int, pdu: bytes) -> bytes:
        body = _read_answer(pdu[0] if pdu else 0, pdu)
        return _MBAP.pack(tid, 0, len(body) + 1, unit) + body


# -- CoAP ----------------------------------------------------------------------------------------

_CON, _NON = 0, 1
_POST = 0x02
_OPT_URI_PATH = 11
_OPT_CONTENT_FORMAT = 12
CF_SENML_JSON = 110  # RFC 8428
CF_SENML_CBOR = 112
CF_CBOR = 60


def _opt_nibble(value: int) -> tuple[int, bytes]:
    """RFC 7252 3.1: an option delta/length as its 4-bit nibble and extended bytes."""
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    return 14, struct.pack(">H", value - 269)


def coap_message(path_segments: list[bytes], payload: bytes, *, content_format: int | None, mid: int,
                 token: bytes = b"", mtype: int = _CON, code: int = _POST) -> bytes:
    """Encode a CoAP request from raw option bytes (RFC 7252 section 3); segments need not be UTF-8."""
    out = bytearray([0x40 | (mtype << 4) | len(token), code]) + struct.pack(">H", mid) + token
    options: list[tuple[int, bytes]] = [(_OPT_URI_PATH, seg) for seg in path_segments]
    if content_format is not None:
        cf = content_format.to_bytes(2, "big").lstrip(b"\0") if content_format else b""
        options.append((_OPT_CONTENT_FORMAT, cf))
    last = 0
    for number, value in options:
        d, dext = _opt_nibble(number - last)
        ln, lext = _opt_nibble(len(value))
        out += bytes([(d << 4) | ln]) + dext + lext + value
        last = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def _senml_cbor(records: list[dict[str, Any]]) -> bytes:
    import cbor2

    labels = {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "t": 6}
    return bytes(cbor2.dumps([{labels.get(k, k): v for k, v in r.items()} for r in records]))


def coap_datagrams(rng: random.Random, path: str) -> Iterator[tuple[str, bytes]]:
    """Hostile datagrams for a push endpoint, each ``(name, bytes)``; ``path`` is a configured push path."""
    segs = [s.encode() for s in path.split("/") if s]

    def mid() -> int:
        return rng.randrange(0x10000)

    def tok() -> bytes:
        return rng.randbytes(4)

    yield "random-bytes", rng.randbytes(rng.randint(1, 64))
    yield "empty-datagram", b""
    yield "bad-version", bytes([0x80 | 0x00, _POST]) + struct.pack(">H", mid())
    yield "token-length-15", bytes([0x4F, _POST]) + struct.pack(">H", mid()) + rng.randbytes(8)
    yield "truncated-option", bytes([0x40, _POST]) + struct.pack(">H", mid()) + bytes([0xBD, 0x20]) + b"ab"
    yield "payload-marker-no-payload", bytes([0x40, _POST]) + struct.pack(">H", mid()) + b"\xff"
    yield "non-utf8-uri-path", coap_message([b"t", b"\xff\xfe\xc3("], b"{}", content_format=CF_SENML_JSON,
                                            mid=mid(), token=tok())
    yield "non-utf8-path-of-device", coap_message([*segs[:-1], segs[-1] + b"\xc3\x28"], b"[]",
                                                  content_format=CF_SENML_JSON, mid=mid(), token=tok())
    yield "oversized-datagram", coap_message(segs, rng.randbytes(60_000), content_format=CF_SENML_JSON,
                                             mid=mid(), token=tok())
    senml_json = [
        ("senml-t-1e300", [{"n": "temp", "u": "Cel", "v": 21.5, "t": 1e300}]),
        ("senml-t-1e16", [{"n": "temp", "u": "Cel", "v": 21.5, "t": 1e16}]),
        ("senml-bt-minus-1e300", [{"bn": "x", "bt": -1e300, "n": "temp", "v": 1}]),
        ("senml-v-huge-int", [{"n": "temp", "u": "Cel", "v": 10**400}]),
        ("senml-not-a-list", {"n": "temp", "v": 1}),
        ("senml-10000-records", [{"n": "temp", "u": "Cel", "v": 1.0}] * 10_000),
        ("senml-name-64k", [{"n": "x" * 65_000, "v": 1}]),
        ("senml-value-string-for-number", [{"n": "temp", "u": "Cel", "vs": "hot"}]),
    ]
    for name, doc in senml_json:
        text = json.dumps(doc).encode()
        yield name, coap_message(segs, text[:64_000], content_format=CF_SENML_JSON, mid=mid(), token=tok())
    yield "senml-json-infinity", coap_message(segs, b'[{"n":"temp","v":Infinity,"t":NaN}]',
                                              content_format=CF_SENML_JSON, mid=mid(), token=tok())
    yield "senml-json-not-utf8", coap_message(segs, b'[{"n":"\xff\xfe","v":1}]', content_format=CF_SENML_JSON,
                                              mid=mid(), token=tok())
    yield "senml-json-deep-nesting", coap_message(segs, b"[" * 20_000 + b"]" * 20_000,
                                                  content_format=CF_SENML_JSON, mid=mid(), token=tok())
    yield "senml-cbor-t-1e300", coap_message(segs, _senml_cbor([{"n": "temp", "v": 21.5, "t": 1e300}]),
                                             content_format=CF_SENML_CBOR, mid=mid(), token=tok())
    yield "senml-cbor-t-nan", coap_message(segs, _senml_cbor([{"n": "temp", "v": 1.0, "t": float("nan")}]),
                                           content_format=CF_SENML_CBOR, mid=mid(), token=tok())
    yield "cbor-deep-nesting", coap_message(segs, b"\x81" * 20_000 + b"\x00", content_format=CF_SENML_CBOR,
                                            mid=mid(), token=tok())
    yield "cbor-unterminated-indefinite", coap_message(segs, b"\x9f" * 64, content_format=CF_SENML_CBOR,
                                                       mid=mid(), token=tok())
    yield "cbor-bignum-8k", coap_message(segs, b"\xc2\x59\x20\x00" + rng.randbytes(8192),
                                         content_format=CF_SENML_CBOR, mid=mid(), token=tok())
    yield "cbor-huge-length-claim", coap_message(segs, b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",
                                                 content_format=CF_SENML_CBOR, mid=mid(), token=tok())
    yield "cbor-for-json-format", coap_message(segs, b"\xa1\x61a\x01", content_format=CF_SENML_JSON,
                                               mid=mid(), token=tok())
    yield "unknown-content-format", coap_message(segs, b"hello", content_format=65_000, mid=mid(), token=tok())
    for i in range(3):
        yield f"random-payload-{i}", coap_message(segs, rng.randbytes(rng.randint(1, 512)),
                                                  content_format=rng.choice([CF_SENML_JSON, CF_SENML_CBOR, CF_CBOR]),
                                                  mid=mid(), token=tok())


class CoapProbe(asyncio.DatagramProtocol):
    """A UDP socket that sends datagrams and records what comes back (the gateway's ACK/RST and codes)."""

    def __init__(self) -> None:
        self.answers: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.answers.append(data)
        self.changed.set()

    def error_received(self, exc: Exception) -> None:
        self.changed.set()  # ICMP port unreachable: the endpoint is gone; the caller sees no answer

    @staticmethod
    def code_of(data: bytes) -> str:
        """``"4.00"``-style code of a CoAP message (``"?"`` if it is not one)."""
        if len(data) < 4:
            return "?"
        return f"{data[1] >> 5}.{data[1] & 0x1F:02d}"


async def send_hostile_coap(target: tuple[str, int], path: str, seed: int, wait: float = 0.5) -> list[tuple[str, str]]:
    """Send every datagram of :func:`coap_datagrams` to ``target``; returns ``(name, answer code or "-")``."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    transport, proto = await loop.create_datagram_endpoint(CoapProbe, family=family,
                                                           local_addr=("::1" if family == socket.AF_INET6
                                                                       else "127.0.0.1", 0))
    out: list[tuple[str, str]] = []
    try:
        for name, data in coap_datagrams(random.Random(seed), path):
            proto.changed.clear()
            before = len(proto.answers)
            transport.sendto(data, target)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proto.changed.wait(), wait)  # an answer, or none (silence is allowed)
            got = proto.answers[before:]
            out.append((name, CoapProbe.code_of(got[0]) if got else "-"))
    finally:
        transport.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: serve a hostile Modbus TCP peer, or send the hostile CoAP datagrams once."""
    ap = argparse.ArgumentParser(prog="python -m fieldgate_hwsim.hostile", description="Hostile network peers.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("modbus", help="a Modbus TCP server that misbehaves")
    m.add_argument("--mode", choices=MODBUS_MODES, required=True)
    m.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: a free one, printed)")
    m.add_argument("--code", type=lambda s: int(s, 0), default=2, help="exception code (mode exception)")
    m.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("coap", help="send hostile CoAP datagrams to a push endpoint")
    c.add_argument("--to", required=True, help="host:port of the push endpoint")
    c.add_argument("--path", default="/t/sim-1", help="a configured push path")
    c.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    async def go() -> None:
        if args.cmd == "modbus":
            host, _, port = args.listen.rpartition(":")
            async with HostileModbus(args.mode, host or "127.0.0.1", int(port), seed=args.seed,
                                     code=args.code) as srv:
                print(f"hostile modbus ({args.mode}) on {srv.host}:{srv.port}", flush=True)
                await asyncio.Event().wait()
        else:
            host, _, port = args.to.rpartition(":")
            for name, code in await send_hostile_coap((host.strip("[]"), int(port)), args.path, args.seed):
                print(f"{name:32} {code}")

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
