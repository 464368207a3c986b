"""Fuzzing every framer and decoder: random and mutated streams never raise, hang or grow memory."""

from __future__ import annotations

from datetime import timedelta

from fieldgate.codecs.checksums import CHECKSUMS
from fieldgate.codecs.fields import BinaryDecoder, TextDecoder
from fieldgate.codecs.frames import FrameSpec, make_framer
from fieldgate_hwsim.serial_sim import nmea_sentence, pms5003_frame, sds011_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import load_serial_profile, serial_profiles

FUZZ = settings(max_examples=120, deadline=timedelta(milliseconds=800),
                suppress_health_check=[HealthCheck.too_slow])

SPECS = {
    "sds011": FrameSpec(kind="fixed", header="AA C0", footer="AB", length=10,
                        checksum={"type": "sum8", "over": [2, 8], "at": 8}),
    "pms5003": FrameSpec(kind="length_prefixed", header="42 4D", length_at=2, min_length=8, max_length=64,
                         checksum={"type": "sum16", "over": [0, -2], "at": -2}),
    "crc-u8-len": FrameSpec(kind="length_prefixed", header="7E", length_at=1, length_type="u8", length_adjust=2,
                            max_length=40, checksum={"type": "crc16-modbus", "over": [1, -2], "byte_order": "little"}),
    "nmea": FrameSpec(kind="line", start="$", checksum="nmea", max_length=90, patterns=["^"]),
    "crlf": FrameSpec(kind="line", terminator="\r\n", max_length=60, patterns=["^"]),
}


def crc_frame(payload: bytes) -> bytes:
    body = b"\x7e" + bytes([len(payload)]) + payload
    return body + CHECKSUMS["crc16-modbus"].compute(body[1:]).to_bytes(2, "little")


def valid_frames(kind: str) -> st.SearchStrategy[bytes]:
    """Well-formed frames of one framing, as the devices send them."""
    if kind == "sds011":
        return st.builds(sds011_frame, st.integers(0, 9999).map(lambda v: v / 10),
                         st.integers(0, 9999).map(lambda v: v / 10), st.integers(0, 0xFFFF))
    if kind == "pms5003":
        return st.builds(pms5003_frame, st.lists(st.integers(0, 0xFFFF), min_size=13, max_size=13))
    if kind == "crc-u8-len":
        return st.builds(crc_frame, st.binary(min_size=0, max_size=30))
    text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="$*"), max_size=60)
    if kind == "nmea":
        return st.builds(nmea_sentence, text)
    return text.map(lambda s: s.strip() + "\r\n").filter(lambda s: s != "\r\n").map(str.encode)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def bound(kind: str) -> int:
    spec = SPECS[kind]
    return spec.max_length if spec.kind != "fixed" else spec.length or 0


def frame_ok(kind: str, frame: bytes | str) -> bool:
    """Every frame a framer hands out must verify on its own."""
    spec = SPECS[kind]
    if spec.is_text:
        assert isinstance(frame, str)
        return spec.terminator.decode() not in frame and len(frame) <= spec.max_length
    assert isinstance(frame, bytes)
    again = make_framer(spec)
    return again.feed(frame) == [frame]


@FUZZ
@given(kind=st.sampled_from(sorted(SPECS)), chunks=st.lists(st.binary(max_size=300), max_size=20))
def test_random_bytes_never_raise_and_memory_stays_bounded(kind: str, chunks: list[bytes]) -> None:
    framer = make_framer(SPECS[kind])
    for chunk in chunks:
        for frame in framer.feed(chunk):
            assert frame_ok(kind, frame)
        assert framer.buffered <= bound(kind) + 2


@FUZZ
@given(data=st.data(), kind=st.sampled_from(sorted(SPECS)))
def test_valid_frames_survive_any_split(data: st.DataObject, kind: str) -> None:
    frames = data.draw(st.lists(valid_frames(kind), min_size=1, max_size=8))
    stream = b"".join(frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    framer = make_framer(SPECS[kind])
    out = [f for chunk in chunked(stream, cuts) for f in framer.feed(chunk)]
    expected = [f.decode().strip() if SPECS[kind].is_text else f for f in frames]
    assert out == expected
    assert framer.stats.bad_checksums == 0


@FUZZ
@given(data=st.data(), kind=st.sampled_from(sorted(SPECS)))
def test_mutated_streams_resync_and_only_verified_frames_come_out(data: st.DataObject, kind: str) -> None:
    frames = data.draw(st.lists(valid_frames(kind), min_size=1, max_size=8))
    stream = bytearray(b"".join(frames))
    for _ in range(data.draw(st.integers(0, 6))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "garbage"]))
        pos = data.draw(st.integers(0, max(0, len(stream) - 1)))
        if op == "flip" and stream:
            stream[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            stream[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and stream:
            del stream[pos]
        else:
            stream[pos:pos] = data.draw(st.binary(min_size=1, max_size=200))
    # Clean frames after the damage must be found once the damage is flushed out:
    # a false header may hold a partial "frame" of up to max_length bytes.
    tail = data.draw(valid_frames(kind))
    repeats = bound(kind) // len(tail) + 2
    separator = b"\n" if SPECS[kind].is_text else b""
    stream_end = bytes(stream) + separator + tail * repeats
    cuts = data.draw(st.lists(st.integers(0, len(stream_end)), max_size=8))
    framer = make_framer(SPECS[kind])
    out = [f for chunk in chunked(stream_end, cuts) for f in framer.feed(chunk)]
    for frame in out:
        assert frame_ok(kind, frame)
    assert framer.buffered <= bound(kind) + 2
    last = tail.decode().strip() if SPECS[kind].is_text else tail
    assert out and out[-1] == last


def _decoders() -> list[TextDecoder | BinaryDecoder]:
    out: list[TextDecoder | BinaryDecoder] = []
    for path in serial_profiles():
        profile = load_serial_profile(path)
        points = [(p.name, p) for p in profile.points]
        out.append(TextDecoder(profile.frame.patterns, points) if profile.frame.is_text
                   else BinaryDecoder(points, profile.frame.byte_order))
    return out


DECODERS = _decoders()


@FUZZ
@given(blob=st.binary(max_size=64), text=st.text(max_size=120))
def test_every_shipped_profile_decoder_accepts_anything(blob: bytes, text: str) -> None:
    for decoder in DECODERS:
        decoder.decode(text if isinstance(decoder, TextDecoder) else blob)
