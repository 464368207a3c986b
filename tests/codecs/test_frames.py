"""Framers: resynchronization, partial and split frames, checksums, bounded buffers."""

from __future__ import annotations

from typing import Any

import pytest
from fieldgate.codecs.frames import (
    BinaryFramer,
    FrameSpec,
    LineFramer,
    make_framer,
    parse_hex,
    parse_payload,
    parse_text,
)
from fieldgate_hwsim.serial_sim import nmea_sentence, pms5003_frame, sds011_frame
from pydantic import ValidationError

SDS = FrameSpec(kind="fixed", header="AA C0", footer="AB", length=10, byte_order="little",
                checksum={"type": "sum8", "over": [2, 8], "at": 8})
PMS = FrameSpec(kind="length_prefixed", header="42 4D", length_at=2, min_length=8, max_length=64,
                checksum={"type": "sum16", "over": [0, -2], "at": -2})
NMEA = FrameSpec(kind="line", start="$", checksum="nmea", max_length=90, patterns=[r"^\$"])
GOOD = bytes.fromhex("AA C0 D4 04 3A 0A A1 60 1D AB")


def test_byte_notations() -> None:
    assert parse_hex("AA C0") == parse_hex("aac0") == parse_hex("0xAA 0xC0") == parse_hex([170, 192]) == b"\xaa\xc0"
    assert parse_text(r"SEND\r\n") == b"SEND\r\n"
    assert parse_text("\\x02A\\\\") == b"\x02A\\"
    assert parse_payload({"hex": "42 4D"}) == b"BM"
    with pytest.raises(ValueError, match="not hex"):
        parse_hex("AG")
    with pytest.raises(ValueError, match="unknown escape"):
        parse_text(r"\q")


def test_fixed_frame_found_after_garbage_and_partial_header() -> None:
    f = BinaryFramer(SDS)
    assert f.feed(b"\x00\x13\xaa") == []
    assert f.feed(b"\x55" + GOOD[:4]) == []
    assert f.feed(GOOD[4:] + GOOD) == [GOOD, GOOD]
    assert f.stats.frames == 2 and f.stats.garbage_bytes == 4 and f.buffered == 0


def test_fixed_frame_split_byte_by_byte() -> None:
    f = BinaryFramer(SDS)
    out = [frame for b in GOOD * 3 for frame in f.feed(bytes([b]))]
    assert out == [GOOD] * 3


def test_bad_checksum_is_counted_and_the_next_frame_still_decodes() -> None:
    f = BinaryFramer(SDS)
    bad = GOOD[:8] + b"\x00" + GOOD[9:]
    assert f.feed(bad + GOOD) == [GOOD]
    assert f.stats.bad_checksums == 1


def test_wrong_footer_is_a_bad_frame_and_a_real_frame_inside_it_is_found() -> None:
    f = BinaryFramer(SDS)
    # a false header whose "frame" would swallow the start of a real one
    assert f.feed(b"\xaa\xc0\x01" + GOOD) == [GOOD]
    assert f.stats.bad_frames == 1


def test_length_prefixed_frames_and_implausible_lengths() -> None:
    f = BinaryFramer(PMS)
    frame = pms5003_frame(list(range(13)))
    assert f.feed(b"BM\xff\xff" + frame[:10]) == []   # length 65535: skipped
    assert f.feed(frame[10:] + frame) == [frame, frame]
    assert f.stats.bad_frames == 1


def test_length_prefixed_waits_for_the_length_field() -> None:
    f = BinaryFramer(PMS)
    frame = pms5003_frame([7] * 13)
    assert f.feed(frame[:3]) == []
    assert f.feed(frame[3:]) == [frame]


def test_line_framer_nmea() -> None:
    f = LineFramer(NMEA)
    gga = nmea_sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    bad = nmea_sentence("GPGGA,1,2,3", corrupt=True)
    out = f.feed(b"\x00\xffnoise" + gga[:20]) + f.feed(gga[20:] + bad + b"$GPXXX,no checksum\r\n" + gga)
    assert out == [gga.decode().strip()] * 2
    assert f.stats.bad_checksums == 2


def test_overlong_line_is_dropped_whole_and_the_buffer_stays_bounded() -> None:
    f = LineFramer(NMEA)
    for _ in range(100):
        assert f.feed(b"x" * 1000) == []
        assert f.buffered <= NMEA.max_length + 1
    good = nmea_sentence("GPRMC,1,A")
    assert f.feed(b"tail of the long line\r\n" + good) == [good.decode().strip()]
    assert f.stats.oversize == 1


def test_terminator_split_across_reads() -> None:
    f = make_framer(FrameSpec(kind="line", terminator="\r\n", patterns=["x"]))
    assert f.feed(b"RH= 1\r") == []
    assert f.feed(b"\nT= 2\r\n") == ["RH= 1", "T= 2"]


def test_undecodable_text_is_garbage() -> None:
    f = make_framer(FrameSpec(kind="line", patterns=["x"]))
    assert f.feed(b"\xff\xfe\n ok \n") == ["ok"]
    assert f.stats.garbage_bytes == 2


def test_reset_forgets_a_partial_frame() -> None:
    f = BinaryFramer(SDS)
    f.feed(GOOD[:5])
    f.reset()
    assert f.feed(GOOD[5:]) == [] and f.buffered < 10


@pytest.mark.parametrize(("spec", "message"), [
    ({"kind": "fixed", "length": 10}, "needs 'header'"),
    ({"kind": "fixed", "header": "AA"}, "needs 'length'"),
    ({"kind": "length_prefixed", "header": "AA"}, "needs 'length_at'"),
    ({"kind": "line"}, "needs 'pattern'"),
    ({"kind": "line", "pattern": "(unclosed"}, "not a valid regular expression"),
    ({"kind": "line", "pattern": "x", "checksum": "crc16-modbus"}, "only the nmea checksum"),
    ({"kind": "fixed", "header": "AA", "length": 4, "checksum": {"type": "sum16", "at": 3}}, "does not fit"),
    ({"kind": "fixed", "header": "AA", "length": 4, "checksum": "crc16-modbis"}, "did you mean 'crc16-modbus'"),
    ({"kind": "line", "pattern": "x", "patterns": ["y"]}, "not both"),
])
def test_invalid_frame_specs(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FrameSpec(**spec)


def test_sim_frames_match_the_datasheet_example() -> None:
    assert sds011_frame(123.6, 261.8) == GOOD
