"""Is this the answer to my request? A byte-level check of Modbus answers (pure: no I/O, no pymodbus).

pymodbus silently skips answers with another unit or transaction id and
cannot parse junk, so each of those used to end as "no answer within 1s";
and an FC4 answer to an FC3 request, with the right number of registers,
was taken as data. ``check`` looks at everything received since a request
was sent and says, as early as the bytes allow, whether it holds the
answer, a fault to report now, or nothing decisive yet; ``at_timeout``
names what came instead of an answer when the time is up.

Modbus TCP frames carry their length (MBAP header), so a bad one is known
at once. RTU frames carry none: a frame ends where its CRC is right, and a
stray byte before an answer must not cost it, so RTU faults (junk, a bad
CRC, a lying byte count, another unit's answer) are named at the timeout,
never guessed from a prefix (a random prefix has a valid CRC once in 65536
tries: guessing on every arriving byte would call good devices faulty
every few minutes). Only a sound frame of the unit that answers another
request (a late answer) is reported early, as ``stale``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BAD_FRAME = "bad_frame"
BAD_CRC = "bad_crc"
BAD_LENGTH = "bad_length"
WRONG_UNIT = "wrong_unit"
WRONG_TRANSACTION = "wrong_transaction"
WRONG_FUNCTION = "wrong_function"
INCOMPLETE = "incomplete_frame"
TIMEOUT = "timeout"

#: Function codes of the reads, and the tables they read.
READ_FUNCTIONS = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
#: Function codes of the writes (single coil, single register, coils, registers): the answer echoes
#: the address and the value or quantity, 4 bytes after the function code, with no byte count.
WRITE_FUNCTIONS = (5, 6, 15, 16)
_BIT_FUNCTIONS = (1, 2)
_MAX_MBAP_LENGTH = 254  # unit id + the largest PDU (253 bytes)


@dataclass(frozen=True, slots=True)
class Expect:
    """The request an answer must fit.

    Attributes:
        unit: unit id asked.
        function: function code asked (1..4).
        count: registers or bits asked.
        tid: Modbus TCP transaction id; ``None`` for RTU framing (no id on the wire).
    """

    unit: int
    function: int
    count: int
    tid: int | None = None

    @property
    def byte_count(self) -> int:
        """Data bytes a correct answer carries."""
        return (self.count + 7) // 8 if self.function in _BIT_FUNCTIONS else 2 * self.count

    @property
    def what(self) -> str:
        return f"{self.count} {'bit' if self.function in _BIT_FUNCTIONS else 'register'}(s)"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the bytes received so far say.

    Attributes:
        kind: ``answer`` (``data[start:end]`` is the answer, normal or exception), ``fault`` (report
            ``reason`` now), ``stale`` (RTU: a sound frame from the unit that answers another request,
            e.g. a late answer; drain the line and ask again), ``wait`` (nothing decisive yet).
        reason: the quality reason of a fault (``bad_frame``, ``wrong_unit``, ...).
        detail: one phrase for a person.
        note: for ``wait``: the reason and detail to give if the time runs out now.
    """

    kind: Literal["answer", "fault", "stale", "wait"]
    start: int = 0
    end: int = 0
    reason: str = ""
    detail: str = ""
    note: tuple[str, str] | None = None


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()  # one lookup per byte instead of eight shifts: every RTU answer passes here


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF), as sent: low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return ((crc & 0xFF) << 8) | (crc >> 8)


def _crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "big")


def _wait(note: tuple[str, str] | None) -> Verdict:
    return Verdict("wait", note=note)


def _pdu_fault(expect: Expect, pdu: bytes) -> tuple[str, str] | None:
    """Why a complete PDU (function code onwards) does not answer ``expect``, or None if it does."""
    fc = pdu[0]
    if fc == expect.function | 0x80:
        return None if len(pdu) == 2 else (BAD_LENGTH, f"exception answer of {len(pdu)} bytes, not 2")
    if fc != expect.function:
        return WRONG_FUNCTION, f"answer with function code {fc} to a request with function code {expect.function}"
    if fc in WRITE_FUNCTIONS:
        return None if len(pdu) == 5 else (BAD_LENGTH, f"write answer of {len(pdu)} bytes, not 5")
    if len(pdu) < 2 or len(pdu) != 2 + pdu[1]:
        return BAD_LENGTH, f"byte count {pdu[1] if len(pdu) > 1 else 'missing'} but {len(pdu) - 2} data byte(s)"
    if pdu[1] != expect.byte_count:
        return BAD_LENGTH, f"{pdu[1]} data byte(s) to a request for {expect.what} ({expect.byte_count} bytes)"
    return None


def check(expect: Expect, data: bytes) -> Verdict:
    """Look at everything received since the request was sent."""
    return _check_rtu(expect, data) if expect.tid is None else _check_tcp(expect, data)


def _check_tcp(expect: Expect, data: bytes) -> Verdict:
    pos, note = 0, None
    while pos < len(data):
        rest = len(data) - pos
        if rest >= 4 and data[pos + 2:pos + 4] != b"\0\0":
            pid = int.from_bytes(data[pos + 2:pos + 4], "big")
            return Verdict("fault", reason=BAD_FRAME,
                           detail=f"protocol id {pid:#06x}, not 0: the bytes are not a Modbus TCP answer")
        if rest < 6:
            return _wait(note or (INCOMPLETE, f"answer incomplete: {rest} byte(s) of a Modbus TCP header"))
        length = int.from_bytes(data[pos + 4:pos + 6], "big")
        if not 2 <= length <= _MAX_MBAP_LENGTH:
            return Verdict("fault", reason=BAD_LENGTH, detail=f"MBAP length {length} (2..254 allowed)")
        total = 6 + length
        if rest < total:
            return _wait(note or _short_tcp(expect, data[pos:], total))
        tid, unit = int.from_bytes(data[pos:pos + 2], "big"), data[pos + 6]
        if tid != expect.tid:
            # A late answer to an earlier request, maybe: skip it and wait for ours.
            note = (WRONG_TRANSACTION, f"answer with transaction id {tid} to request {expect.tid}")
            pos += total
            continue
        if unit != expect.unit:
            return Verdict("fault", reason=WRONG_UNIT,
                           detail=f"answer from unit {unit} to a request for unit {expect.unit}")
        fault = _pdu_fault(expect, data[pos + 7:pos + total])
        if fault is not None:
            return Verdict("fault", reason=fault[0], detail=fault[1])
        return Verdict("answer", start=pos, end=pos + total)
    return _wait(note)


def _short_tcp(expect: Expect, frame: bytes, total: int) -> tuple[str, str]:
    """Why a Modbus TCP answer is still short of its MBAP length, as said if nothing more comes.

    When the bytes received already form a whole answer by the PDU's own count (an exception, or a
    read answer whose byte count is all there), the MBAP length is what is wrong, not the line.
    """
    pdu = frame[7:]
    whole = len(pdu) == 2 if pdu and pdu[0] & 0x80 else len(pdu) >= 2 and len(pdu) == 2 + pdu[1]
    if whole and pdu[0] & 0x7F == expect.function:
        return BAD_LENGTH, (f"MBAP length {total - 6} claims {total} byte(s), but the answer's own byte count "
                            f"ends it at {len(frame)}")
    return INCOMPLETE, f"answer incomplete: {len(frame)} of {total} byte(s)"


def _rtu_size(frame: bytes) -> int | None:
    """Bytes of the read answer or exception ``frame`` starts with (by its byte count), None if unknown yet."""
    fc = frame[1]
    if fc & 0x80 and (fc & 0x7F in READ_FUNCTIONS.values() or fc & 0x7F in WRITE_FUNCTIONS):
        return 5
    if fc in WRITE_FUNCTIONS:
        return 8
    if fc in READ_FUNCTIONS.values():
        return 5 + frame[2] if len(frame) >= 3 else None
    return None


def _check_rtu(expect: Expect, data: bytes) -> Verdict:
    ours = (expect.function, expect.function | 0x80)
    # The answer anywhere: a master hunts past stray bytes (noise, the tail of a late frame) to a frame
    # with our unit, our function, the right byte count and a right CRC.
    for pos in range(len(data) - 3):
        if data[pos] != expect.unit or data[pos + 1] not in ours:
            continue
        size = _rtu_size(data[pos:])
        if size is None or pos + size > len(data):
            continue
        frame = data[pos:pos + size]
        if _crc_ok(frame) and _pdu_fault(expect, frame[1:-2]) is None:
            return Verdict("answer", start=pos, end=pos + size)
    # Sound frames from the start: other units' (noted), or ours answering another request (stale).
    pos, note = 0, None
    while len(data) - pos >= 4:
        size = _rtu_size(data[pos:])
        if size is None or pos + size > len(data) or not _crc_ok(data[pos:pos + size]):
            break
        if data[pos] != expect.unit:
            note = (WRONG_UNIT, f"answer from unit {data[pos]} to a request for unit {expect.unit}")
            pos += size
            continue
        fault = _pdu_fault(expect, data[pos + 1:pos + size - 2])
        reason, detail = fault or (BAD_FRAME, "unexpected frame")
        return Verdict("stale", reason=reason, detail=detail)
    return _wait(note)


def at_timeout(expect: Expect, data: bytes, note: tuple[str, str] | None) -> tuple[str, str]:
    """What to call it when the time is up and ``data`` (all received since the request) holds no answer.

    Returns:
        ``(reason, detail)``; ``("timeout", ...)`` when nothing came at all.
    """
    if not data:
        return note or (TIMEOUT, "no answer")
    if expect.tid is not None:
        verdict = _check_tcp(expect, data)
        return verdict.note or (BAD_FRAME, f"{len(data)} byte(s) that are not a Modbus TCP answer")
    # Sound frames of other units first, then the first byte nothing explains.
    pos, note = 0, None
    while len(data) - pos >= 4 and data[pos] != expect.unit:
        size = _rtu_size(data[pos:])
        if size is None or len(data) - pos < size or not _crc_ok(data[pos:pos + size]):
            break
        note = (WRONG_UNIT, f"answer from unit {data[pos]} to a request for unit {expect.unit}")
        pos += size
    frame = data[pos:]
    if not frame and note is not None:
        return note
    if len(frame) >= 2 and frame[0] == expect.unit and frame[1] in (expect.function, expect.function | 0x80):
        size = _rtu_size(frame)
        if any(_crc_ok(frame[:n]) for n in range(4, len(frame) + 1)):
            return BAD_LENGTH, f"byte count {frame[2] if len(frame) > 2 else '?'} does not match the frame"
        if size is not None and len(frame) >= size:
            return BAD_CRC, "answer with a wrong CRC"
        return INCOMPLETE, f"answer incomplete: {len(frame)} of {size or '?'} byte(s)"
    return BAD_FRAME, f"{len(data)} byte(s) that are not a Modbus RTU answer"
