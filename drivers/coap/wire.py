"""The datagram check: what the push endpoint refuses before aiocoap parses a message (RFC 7252 section 3).

aiocoap's decoder trusts what it reads: a Uri-Path that is not UTF-8 raises
UnicodeDecodeError out of the socket callback (a traceback per datagram, no
answer), a datagram larger than its 4096-byte receive buffer arrives cut and
its first bytes parse as a whole message, and each unparsable datagram is a
WARNING line. ``check`` reads the header and the options once, cheaply, and
names what is wrong; ``answer`` builds the reply RFC 7252 asks for:

- nothing for what has no readable header or an unknown version (section 3:
  silently ignored), and for anything that is not a request;
- a Reset for a message format error in a confirmable message (section 4.2);
- a piggybacked (or, for a NON request, non-confirmable) error response with a
  diagnostic payload (section 5.5.2) for a request the server will not take:
  4.13 with Size1 for a datagram over ``MAX_DATAGRAM``; 4.02 Bad Option for a
  critical string option that is not UTF-8 (section 5.4.3 treats a malformed
  option as an unrecognized one); 4.00 for a Content-Format or Accept that is
  longer than two bytes or repeated (elective, but a payload read under the
  wrong format is worse than a refusal).

Pure: bytes in, a verdict out; no I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: RFC 7252 section 4.6: without Path MTU knowledge a message should fit 1152 bytes. An NB-IoT report is
#: tens of bytes; anything this large is refused, and a datagram the socket had to cut is never read.
MAX_DATAGRAM = 1152

CON, NON, ACK, RST = 0, 1, 2, 3
BAD_REQUEST, BAD_OPTION, REQUEST_ENTITY_TOO_LARGE = (4 << 5) | 0, (4 << 5) | 2, (4 << 5) | 13
_SIZE1 = 60
# Options whose values are UTF-8 text (RFC 7252 table 4; Proxy-Scheme, Location-*).
_STRING_OPTIONS = {3: "Uri-Host", 8: "Location-Path", 11: "Uri-Path", 15: "Uri-Query", 20: "Location-Query",
                   35: "Proxy-Uri", 39: "Proxy-Scheme"}
_FORMAT_OPTIONS = {12: "Content-Format", 17: "Accept"}  # uint of at most 2 bytes, not repeatable


@dataclass(frozen=True, slots=True)
class Fault:
    """What is wrong with a datagram, and how to answer it.

    Attributes:
        reason: the counter's name (``truncated_header``, ``bad_version``, ``format_error``, ``too_large``,
            ``option_not_utf8``, ``bad_option``).
        text: a diagnostic for the sender and the log (never echoes the sender's bytes).
        code: the response code to send, or None (reset or nothing, by ``reset``).
        reset: answer with a Reset (a format error in a CON message whose ID could be read).
        mtype, mid, token: the header fields, when they could be read.
    """

    reason: str
    text: str
    code: int | None = None
    reset: bool = False
    mtype: int = -1
    mid: int = 0
    token: bytes = b""


def check(data: bytes, truncated: bool = False) -> Fault | None:
    """The fault of one received datagram, or None when aiocoap may parse it.

    Args:
        data: the datagram as received.
        truncated: the socket reported MSG_TRUNC (the datagram was larger than the receive buffer).
    """
    n = len(data)
    if n < 4:
        return Fault("truncated_header", f"{n}-byte datagram: a CoAP header has 4")
    if data[0] >> 6 != 1:
        return Fault("bad_version", f"CoAP version {data[0] >> 6} (only 1 exists)")
    mtype, tkl, code = (data[0] >> 4) & 3, data[0] & 0xF, data[1]
    mid = int.from_bytes(data[2:4], "big")
    is_request = 1 <= code < 32
    con = mtype == CON

    def fault(reason: str, text: str, answer_code: int | None = None, token: bytes = b"") -> Fault:
        if answer_code is not None and is_request and mtype in (CON, NON):
            return Fault(reason, text, answer_code, False, mtype, mid, token)
        return Fault(reason, text, None, con and reason in ("format_error", "bad_token_length"), mtype, mid, token)

    if tkl > 8:
        return fault("bad_token_length", f"token length {tkl} (at most 8)")
    if n < 4 + tkl:
        return fault("format_error", "the datagram ends inside the token")
    token = data[4:4 + tkl]
    if truncated or n > MAX_DATAGRAM:
        size = "more than the receive buffer" if truncated else f"{n} bytes"
        return fault("too_large", f"datagram of {size}: at most {MAX_DATAGRAM} bytes", REQUEST_ENTITY_TOO_LARGE, token)
    i, number = 4 + tkl, 0
    seen_formats: set[int] = set()
    while i < n:
        head = data[i]
        if head == 0xFF:
            if i + 1 == n:
                return fault("format_error", "payload marker with no payload", token=token)
            break
        i += 1
        delta, length = head >> 4, head & 0xF
        if delta == 15 or length == 15:
            return fault("format_error", f"reserved option nibble 15 at byte {i - 1}", token=token)
        ext: list[int] = []
        for nibble in (delta, length):
            if nibble == 13:
                if i >= n:
                    return fault("format_error", "the datagram ends inside an option header", token=token)
                ext.append(data[i] + 13)
                i += 1
            elif nibble == 14:
                if i + 2 > n:
                    return fault("format_error", "the datagram ends inside an option header", token=token)
                ext.append(int.from_bytes(data[i:i + 2], "big") + 269)
                i += 2
            else:
                ext.append(nibble)
        number += ext[0]
        value_len = ext[1]
        if i + value_len > n:
            return fault("format_error", f"option {number} runs past the end of the datagram", token=token)
        value = data[i:i + value_len]
        i += value_len
        if number in _STRING_OPTIONS:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return fault("option_not_utf8", f"{_STRING_OPTIONS[number]} option is not UTF-8", BAD_OPTION, token)
        elif number in _FORMAT_OPTIONS:
            name = _FORMAT_OPTIONS[number]
            if value_len > 2:
                return fault("bad_option", f"{name} option of {value_len} bytes (at most 2)", BAD_REQUEST, token)
            if number in seen_formats:
                return fault("bad_option", f"{name} option repeated", BAD_REQUEST, token)
            seen_formats.add(number)
    return None


def answer(fault: Fault) -> bytes | None:
    """The datagram that answers ``fault`` (an error response or a Reset), or None for silence."""
    if fault.reset:
        return bytes([0x40 | RST << 4, 0]) + fault.mid.to_bytes(2, "big")
    if fault.code is None:
        return None
    if fault.mtype == CON:
        mtype, mid = ACK, fault.mid  # piggybacked on the ACK
    else:
        mtype, mid = NON, random.getrandbits(16)  # a NON request's response is a message of its own
    out = bytearray([0x40 | mtype << 4 | len(fault.token), fault.code]) + mid.to_bytes(2, "big") + fault.token
    if fault.code == REQUEST_ENTITY_TOO_LARGE:
        size = MAX_DATAGRAM.to_bytes(2, "big")
        out += bytes([0xD0 | len(size), _SIZE1 - 13]) + size  # Size1 is option 60: delta nibble 13, then 60 - 13
    text = fault.text.encode("utf-8")[:120].decode("utf-8", "ignore").encode("utf-8")
    return bytes(out + b"\xff" + text)


__all__ = ["MAX_DATAGRAM", "Fault", "answer", "check"]
