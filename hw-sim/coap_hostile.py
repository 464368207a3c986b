"""Hostile CoAP datagrams for fault campaigns: what a broken or malicious sender puts on the wire.

``datagrams`` builds them (random bytes, truncated headers, wrong versions and
token lengths, oversized datagrams, non-UTF-8 string options, odd
Content-Formats, CBOR bombs and SenML that breaks RFC 8428 in every way a
receiver must check), each tagged with a *kind*. ``send_hostile`` sends N of
them to a push endpoint over real UDP and returns, per kind, what came back
(a CoAP response code, or nothing). The datagrams are encoded by hand, not
with aiocoap's codec, because the codec refuses to write most of them.

The campaign asks the product to survive them: valid pushes interleaved with
these must all be accepted, and each hostile datagram must cost only itself.

CLI: ``python -m fieldgate_hwsim.coap_hostile --to 127.0.0.1:5683 --path /t/bin-1 --count 500``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cbor2

CON, NON = 0, 1
POST = 0x02
OPT_URI_PATH, OPT_CONTENT_FORMAT, OPT_URI_QUERY = 11, 12, 15
CF_SENML_JSON, CF_SENML_CBOR, CF_CBOR = 110, 112, 60


def _ext(value: int) -> tuple[int, bytes]:
    """The 4-bit nibble and extended bytes of an option delta or length (RFC 7252 section 3.1)."""
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    return 14, struct.pack(">H", value - 269)


def encode(code: int, mid: int, token: bytes = b"", options: list[tuple[int, bytes]] | None = None,
           payload: bytes = b"", mtype: int = CON, version: int = 1, tkl: int | None = None) -> bytes:
    """One CoAP message from raw parts, with no checks (so it can be wrong on purpose)."""
    tkl = len(token) if tkl is None else tkl
    out = bytearray([(version & 3) << 6 | (mtype & 3) << 4 | (tkl & 0xF), code & 0xFF])
    out += struct.pack(">H", mid & 0xFFFF) + token
    last = 0
    for number, value in sorted(options or [], key=lambda o: o[0]):
        d, dx = _ext(number - last)
        n, nx = _ext(len(value))
        out += bytes([d << 4 | n]) + dx + nx + value
        last = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def path_options(path: str) -> list[tuple[int, bytes]]:
    return [(OPT_URI_PATH, p.encode()) for p in path.split("/") if p]


def _nest(depth: int, leaf: bytes = b"\x00") -> bytes:
    return b"\x81" * depth + leaf  # arrays of one element, nested


def _senml_records(rng: random.Random) -> Any:
    """SenML JSON/CBOR records that break the format (wrong types, bad base fields, duplicates)."""
    picks: list[Callable[[], Any]] = [
        lambda: [{"n": "temp", "v": "hot"}],  # text where a number belongs
        lambda: [{"n": 7, "v": 1}],  # a name that is not text
        lambda: [{"n": "temp", "v": 1, "vs": "x"}],  # two values
        lambda: [{"n": "temp"}],  # no value
        lambda: [{"bn": 5, "n": "temp", "v": 1}],
        lambda: [{"bver": 11, "n": "temp", "v": 1}],
        lambda: [{"bver": 0, "n": "temp", "v": 1}],
        lambda: [{"bver": 2.5, "n": "temp", "v": 1}],
        lambda: [{"bt": "now", "n": "temp", "v": 1}],
        lambda: [{"bu": ["Cel"], "n": "temp", "v": 1}],
        lambda: [{"bv": True, "n": "temp", "v": 1}],
        lambda: [{"n": "temp", "v": 1, "x_": 1}],  # must-understand field
        lambda: [{"n": "temp", "v": 1}, {"n": "temp", "v": 2}],  # duplicate name at one time
        lambda: [{"n": "temp", "v": 1}] * 2000,  # a huge pack
        lambda: {"n": "temp", "v": 1},  # a record, not a pack
        lambda: [[1, 2, 3]],
        lambda: [{"n": "temp", "v": 10**30}],  # an integer no float holds exactly
        lambda: [{"n": "temp", "v": 1.5e308, "bv": 1.5e308}],  # a sum that overflows to inf
        lambda: [{"bt": 1.5e308, "n": "temp", "t": 1.5e308, "v": 1}],  # a time that overflows to inf
        lambda: [{"n": "temp", "v": 10**400}],  # an integer beyond any float (JSON; CBOR as a bignum)
        lambda: [{"n": "x" * 1000, "v": 1}],  # a name no point has, 1000 characters long
    ]
    return rng.choice(picks)()


_LABELS = {"bver": -1, "bn": -2, "bt": -3, "bu": -4, "bv": -5, "bs": -6, "n": 0, "u": 1, "v": 2, "vs": 3,
           "vb": 4, "s": 5, "t": 6, "ut": 7, "vd": 8}


def _cbor_pack(records: Any) -> bytes:
    if isinstance(records, list):
        records = [{_LABELS.get(k, k): v for k, v in r.items()} if isinstance(r, dict) else r for r in records]
    return bytes(cbor2.dumps(records))


def _payload(kind: str, rng: random.Random) -> tuple[bytes, int | None]:
    """(payload, Content-Format) of the payload-borne kinds."""
    if kind == "cbor_nesting_bomb":
        return _nest(rng.choice([200, 1000, 1100])), CF_SENML_CBOR
    if kind == "cbor_indefinite":
        return rng.choice([b"\x9f" * 1000, b"\xbf" * 1000, b"\x9f\x9f\x9f"]), CF_SENML_CBOR
    if kind == "cbor_bignum":
        big = rng.randbytes(rng.choice([9, 200, 1000]))
        return b"\x81\xa2\x00\x64temp\x02\xc2\x59" + struct.pack(">H", len(big)) + big, CF_SENML_CBOR
    if kind == "cbor_huge_length":
        return rng.choice([b"\x9b" + b"\xff" * 8, b"\x9a\xff\xff\xff\xff", b"\x7a\xff\xff\xff\xff",
                           b"\x5b" + b"\x7f" + b"\xff" * 7]), CF_SENML_CBOR
    if kind == "cbor_nan_inf":
        v = rng.choice([b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00", b"\xfb\x7f\xf0\x00\x00\x00\x00\x00\x00",
                        b"\xf9\x7c\x00", b"\xf9\xfc\x00", b"\xf9\x7e\x00"])
        field_ = rng.choice([b"\x02", b"\x06", b"\x22", b"\x24"])  # v, t, bt, bv
        return b"\x81\xa2\x00\x64temp" + field_ + v, CF_SENML_CBOR
    if kind == "cbor_tags":
        tagged = rng.choice([b"\xc1\x1b" + b"\xff" * 8, b"\xc0\x63abc", b"\xd8\x1e\x82\x01\x00",
                             b"\xd8\x1c\x81\xd8\x1d\x00", b"\xc4\x82\x21\x19\x01\x00", b"\xd9\xd9\xf7\x00",
                             b"\xd8\x19\x00"])
        return b"\x81\xa2\x00\x64temp\x02" + tagged, CF_SENML_CBOR
    if kind == "cbor_unknown_label":
        big = rng.randbytes(1000)
        return b"\x81\xa1\xc2\x59" + struct.pack(">H", len(big)) + big + b"\x01", CF_SENML_CBOR
    if kind == "senml_bad":
        records = _senml_records(rng)
        if rng.random() < 0.5:
            return _cbor_pack(records), CF_SENML_CBOR
        return json.dumps(records).encode(), CF_SENML_JSON
    if kind == "senml_time_huge":
        t = rng.choice([1e300, -1e300, 1e16, 2.0**62, 9e18, 1e12])
        records = [{"n": "temp", "u": "Cel", "v": 21.5, "t": t}]
        if rng.random() < 0.5:
            return _cbor_pack(records), CF_SENML_CBOR
        return json.dumps(records).encode(), CF_SENML_JSON
    if kind == "json_deep":
        depth = rng.choice([300, 550])
        return b"[" * depth + b"]" * depth, CF_SENML_JSON
    if kind == "json_not_finite":
        # Python's json reads these words; JSON (RFC 8259) has no such numbers
        return rng.choice([b'[{"n":"temp","v":Infinity}]', b'[{"n":"temp","v":NaN}]',
                           b'[{"n":"temp","v":1,"t":-Infinity}]']), CF_SENML_JSON
    if kind == "json_not_utf8":
        return rng.choice([b'[{"n":"\xff\xfe","v":1}]', b'[{"n":"temp","vs":"\xc3\x28"}]']), CF_SENML_JSON
    if kind == "format_mismatch":
        # CBOR said to be SenML JSON, and JSON said to be SenML CBOR
        return rng.choice([(_cbor_pack([{"n": "temp", "v": 1.0}]), CF_SENML_JSON),
                           (b'[{"n":"temp","v":1}]', CF_SENML_CBOR)])
    if kind == "random_payload":
        # 0xff (a CBOR "break" with nothing to end) starts no JSON or CBOR document: never valid by chance
        return b"\xff" + rng.randbytes(rng.randint(0, 511)), rng.choice([CF_SENML_JSON, CF_SENML_CBOR, CF_CBOR])
    raise ValueError(f"unknown kind {kind!r}")


#: Every kind ``datagrams`` makes, and whether a CoAP response is due (a CON request whose header,
#: message ID and token can be read gets one; RFC 7252 section 4.2 says the rest are dropped).
KINDS: dict[str, bool] = {
    "random_bytes": False, "truncated_header": False, "bad_version": False, "bad_token_length": True,
    "truncated_options": True, "oversized": True, "oversized_64k": True, "uri_path_not_utf8": True,
    "uri_query_not_utf8": True, "content_format_long": True, "content_format_unknown": True,
    "cbor_nesting_bomb": True, "cbor_indefinite": True, "cbor_bignum": True, "cbor_huge_length": True,
    "cbor_nan_inf": True, "cbor_tags": True, "cbor_unknown_label": True, "senml_bad": True,
    "senml_time_huge": True, "json_deep": True, "json_not_finite": True, "json_not_utf8": True,
    "format_mismatch": True, "random_payload": True, "empty": False, "payload_marker_empty": True,
    "device_path_not_utf8": True,
}


def datagram(kind: str, rng: random.Random, path: str, mid: int, token: bytes) -> bytes:
    """One hostile datagram of ``kind`` for a device at ``path``."""
    opts = path_options(path)
    if kind == "random_bytes":
        # random, but never a valid version-1 header (the first two bits are not 01)
        data = bytearray(rng.randbytes(rng.randrange(1, 200)))
        data[0] = (data[0] & 0x3F) | rng.choice([0x00, 0x80, 0xC0])
        return bytes(data)
    if kind == "empty":
        return b""
    if kind == "payload_marker_empty":
        # a payload marker with no payload after it: a message format error (RFC 7252 section 3)
        return encode(POST, mid, token, opts) + b"\xff"
    if kind == "device_path_not_utf8":
        # the device's own path with its last segment spoiled: a route lookup must not see it as the device
        return encode(POST, mid, token, [*opts[:-1], (OPT_URI_PATH, opts[-1][1] + b"\xc3\x28")] if opts else
                      [(OPT_URI_PATH, b"\xc3\x28")], b"[]")
    if kind == "truncated_header":
        return encode(POST, mid, token, opts)[: rng.randrange(0, 4)]
    if kind == "bad_version":
        return encode(POST, mid, token, opts, b"x", version=rng.choice([0, 2, 3]))
    if kind == "bad_token_length":
        return encode(POST, mid, b"", opts, b"x", tkl=rng.randrange(9, 16))
    if kind == "truncated_options":
        whole = encode(POST, mid, token, [*opts, (OPT_URI_QUERY, b"k=" + b"v" * 40)])
        return whole[: len(whole) - rng.randrange(1, 30)]
    if kind == "oversized":
        return encode(POST, mid, token, [*opts, (OPT_CONTENT_FORMAT, bytes([CF_SENML_JSON]))],
                      b"[" + b" " * rng.randrange(1200, 3000) + b"]")
    if kind == "oversized_64k":
        return encode(POST, mid, token, opts, rng.randbytes(65000))
    if kind == "uri_path_not_utf8":
        bad = rng.choice([b"\xff\xfe", b"t\xc3", b"\xed\xa0\x80", b"\x80abc"])
        return encode(POST, mid, token, [(OPT_URI_PATH, b"t"), (OPT_URI_PATH, bad)], b"x")
    if kind == "uri_query_not_utf8":
        return encode(POST, mid, token, [*opts, (OPT_URI_QUERY, b"a=\xff\xfe")], b"x")
    if kind == "content_format_long":
        return encode(POST, mid, token, [*opts, (OPT_CONTENT_FORMAT, rng.randbytes(rng.randrange(3, 9)))], b"x")
    if kind == "content_format_unknown":
        cf = rng.choice([1, 9999, 65535])
        return encode(POST, mid, token, [*opts, (OPT_CONTENT_FORMAT, cf.to_bytes(2, "big"))], b"x")
    payload, cf = _payload(kind, rng)
    if cf is not None:
        opts = [*opts, (OPT_CONTENT_FORMAT, cf.to_bytes(1 if cf < 256 else 2, "big"))]
    return encode(POST, mid, token, opts, payload)


def datagrams(count: int, path: str, seed: int | None = None,
              kinds: list[str] | None = None) -> Iterator[tuple[str, int, bytes]]:
    """``count`` (kind, message ID, datagram) triples, kinds in turn (shuffled per round)."""
    rng = random.Random(seed)
    order = list(kinds or KINDS)
    mid = rng.randrange(0x10000)
    i = 0
    while i < count:
        rng.shuffle(order)
        for kind in order[: count - i]:
            mid = (mid + 1) & 0xFFFF
            yield kind, mid, datagram(kind, rng, path, mid, rng.randbytes(4))
            i += 1


@dataclass
class HostileReport:
    """What ``send_hostile`` sent and what came back, per kind.

    Attributes:
        sent: kind → datagrams sent.
        answers: kind → Counter of response codes (``"4.00"``), ``"RST"``, or ``"none"``.
        diagnostics: kind → the first diagnostic payload that came back (text).
    """

    sent: Counter[str] = field(default_factory=Counter)
    answers: dict[str, Counter[str]] = field(default_factory=dict)
    diagnostics: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def table(self) -> str:
        rows = [f"{'kind':24} {'sent':>5}  answers"]
        for kind in sorted(self.sent):
            ans = ", ".join(f"{c} x{n}" for c, n in sorted(self.answers.get(kind, Counter()).items()))
            rows.append(f"{kind:24} {self.sent[kind]:5d}  {ans}")
        return "\n".join(rows)


class _Listener(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[tuple[str, str]]] = {}

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 4:
            return
        mtype = (data[0] >> 4) & 3
        mid = int.from_bytes(data[2:4], "big")
        fut = self.waiting.get(mid)
        if fut is None or fut.done():
            return
        if mtype == 3:
            fut.set_result(("RST", ""))
            return
        tkl = data[0] & 0xF
        code = data[1]
        text = ""
        marker = data.find(b"\xff", 4 + tkl)
        if marker >= 0:
            text = data[marker + 1:].decode("utf-8", "replace")
        fut.set_result((f"{code >> 5}.{code & 0x1F:02d}", text))


async def send_hostile(host: str, port: int, count: int, *, path: str = "/t/hostile", seed: int | None = None,
                       kinds: list[str] | None = None, wait: float = 1.0,
                       between: Callable[[int], Any] | None = None) -> HostileReport:
    """Send ``count`` hostile datagrams to ``host:port``, one at a time, and record the answers.

    Args:
        path: the Uri-Path the payload-borne kinds are sent to (a real device's path reaches the decoder).
        wait: seconds to wait for each answer (kinds that get none cost this much each).
        between: awaited (if it returns an awaitable) after each datagram with its index, e.g. to
            push a valid report in between.
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transport, proto = await loop.create_datagram_endpoint(
        _Listener, local_addr=("::1" if family == socket.AF_INET6 else "127.0.0.1", 0), family=family)
    report = HostileReport()
    try:
        for i, (kind, mid, data) in enumerate(datagrams(count, path, seed, kinds)):
            fut: asyncio.Future[tuple[str, str]] = loop.create_future()
            proto.waiting[mid] = fut
            try:
                if data:
                    transport.sendto(data, (host, port))
                else:  # asyncio's sendto drops an empty datagram without a word: a plain socket sends it
                    with socket.socket(family, socket.SOCK_DGRAM) as plain:
                        plain.sendto(data, (host, port))
            except OSError:
                # 65000 bytes do not fit an IPv4 datagram with headers on every stack; that is a fault too
                report.sent[kind] += 1
                report.answers.setdefault(kind, Counter())["send_failed"] += 1
                continue
            report.sent[kind] += 1
            try:
                async with asyncio.timeout(wait):
                    code, text = await fut
            except TimeoutError:
                code, text = "none", ""
            finally:
                proto.waiting.pop(mid, None)
            report.answers.setdefault(kind, Counter())[code] += 1
            if text and kind not in report.diagnostics:
                report.diagnostics[kind] = text
            if between is not None:
                res = between(i)
                if asyncio.iscoroutine(res):
                    await res
    finally:
        transport.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fieldgate_hwsim.coap_hostile",
                                     description="Send hostile CoAP datagrams to a push endpoint and print the answers")
    parser.add_argument("--to", default="127.0.0.1:5683", help="host:port of the push endpoint")
    parser.add_argument("--path", default="/t/sim-1", help="a device's push path (payloads reach its decoder)")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--wait", type=float, default=0.5, help="seconds to wait for each answer")
    parser.add_argument("--kinds", default="", help=f"comma-separated subset of: {', '.join(KINDS)}")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k] or None
    unknown = set(kinds or ()) - set(KINDS)
    if unknown:
        parser.error(f"unknown kind(s): {', '.join(sorted(unknown))}")
    host, _, port = args.to.rpartition(":")
    report = asyncio.run(send_hostile(host.strip("[]"), int(port), args.count, path=args.path, seed=args.seed,
                                      kinds=kinds, wait=args.wait))
    print(report.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
