"""Chunking handheld frames to the ATT MTU and reassembling them (docs/handheld.md, section 8)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ProtocolError
from gateway.protocol.handheld import (
    FRAME_HEADER_LEN,
    MAX_FRAME,
    PairHello,
    decode_message,
    encode_frame,
    encode_message,
)
from gateway.protocol.handheld_gatt import (
    DEFAULT_ATT_MTU,
    MAX_BUFFERED,
    FrameReassembler,
    chunk_frame,
)

HELLO = PairHello(certificate="c" * 900, pake=b"A" + bytes(32), nonce=bytes(16))


def _frame(message: PairHello = HELLO) -> bytes:
    return encode_frame(encode_message(message))


def test_chunks_fit_the_mtu_and_rebuild_the_frame() -> None:
    frame = _frame()
    chunks = chunk_frame(frame, DEFAULT_ATT_MTU)
    assert all(len(c) <= DEFAULT_ATT_MTU - 3 for c in chunks)
    assert b"".join(chunks) == frame
    assert len(chunk_frame(frame, 247)[0]) == 244
    assert max(len(c) for c in chunk_frame(frame, 4000)) == 512  # an ATT value is at most 512


def test_whole_frame_in_one_chunk() -> None:
    reassembler = FrameReassembler()
    (payload,) = reassembler.feed(_frame())
    assert decode_message(payload) == HELLO
    assert reassembler.buffered == 0


def test_byte_by_byte() -> None:
    reassembler = FrameReassembler()
    frame = _frame()
    out: list[bytes] = []
    for i in range(len(frame)):
        out += reassembler.feed(frame[i : i + 1])
        assert (len(out) == 1) == (i == len(frame) - 1)
    assert decode_message(out[0]) == HELLO


def test_five_frames_at_once_and_a_split_tail() -> None:
    reassembler = FrameReassembler()
    frames = b"".join(_frame() for _ in range(5))
    tail = _frame()
    assert len(reassembler.feed(frames + tail[:7])) == 5
    assert reassembler.buffered == 7
    assert [decode_message(p) for p in reassembler.feed(tail[7:])] == [HELLO]


def test_overlong_length_is_refused_before_its_body() -> None:
    reassembler = FrameReassembler()
    with pytest.raises(ProtocolError, match="cap"):
        reassembler.feed((MAX_FRAME + 1).to_bytes(FRAME_HEADER_LEN, "big"))
    assert reassembler.buffered == 0


def test_a_smaller_cap_refuses_frames_above_it() -> None:
    reassembler = FrameReassembler(max_buffered=64)
    reassembler.feed((60).to_bytes(4, "big") + b"x" * 60)
    with pytest.raises(ProtocolError):
        reassembler.feed((61).to_bytes(4, "big"))


def test_mtu_below_the_minimum_and_empty_frames_are_refused() -> None:
    with pytest.raises(ProtocolError):
        chunk_frame(b"abc", 22)
    with pytest.raises(ProtocolError):
        chunk_frame(b"", 23)
    with pytest.raises(ValueError):
        FrameReassembler(max_buffered=FRAME_HEADER_LEN)


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=0, max_size=600), min_size=1, max_size=6),
    mtu=st.integers(min_value=DEFAULT_ATT_MTU, max_value=600),
    cuts=st.lists(st.integers(min_value=1, max_value=300), max_size=40),
)
def test_fuzz_any_chunking_gives_back_the_frames(
    payloads: list[bytes], mtu: int, cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    reassembler = FrameReassembler()
    out: list[bytes] = []
    position = 0
    for size in cuts:
        out += reassembler.feed(stream[position : position + size])
        position += size
    for chunk in chunk_frame(stream[position:], mtu) if position < len(stream) else []:
        out += reassembler.feed(chunk)
    assert out == payloads
    assert reassembler.buffered == 0


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(min_size=0, max_size=2000))
def test_fuzz_garbage_never_buffers_beyond_the_cap(garbage: bytes) -> None:
    reassembler = FrameReassembler(max_buffered=256)
    try:
        for chunk in chunk_frame(garbage, DEFAULT_ATT_MTU) if garbage else []:
            reassembler.feed(chunk)
            assert reassembler.buffered <= 256 + DEFAULT_ATT_MTU
    except ProtocolError:
        assert reassembler.buffered == 0
    assert MAX_BUFFERED == FRAME_HEADER_LEN + MAX_FRAME
