"""The batch encoder worker's framing and answers, driven through in-memory streams."""

from __future__ import annotations

import io
import struct

import pytest

from gateway.protocol.batch_encode import encode_batch
from gateway.protocol.events import Priority
from gateway.uplink.encoder_worker import (
    MAX_REQUEST_BYTES,
    READY,
    STATUS_OK,
    STATUS_REFUSED,
    FramingError,
    encode_request,
    parse_request,
    serve,
)
from tests.fixtures.fake_buffer import FakeEventBuffer


def _payloads(count: int, priority: Priority = Priority.TELEMETRY) -> list[bytes]:
    buf = FakeEventBuffer()
    return [
        buf.add(priority, "meter.reading", {"meter": "M-1", "n": n}).payload for n in range(count)
    ]


def _replies(stream: bytes) -> list[tuple[int, bytes]]:
    assert stream[:1] == READY
    replies, offset = [], 1
    while offset < len(stream):
        status, length = struct.unpack_from(">BI", stream, offset)
        offset += 5
        replies.append((status, stream[offset : offset + length]))
        offset += length
    return replies


def test_a_request_round_trips_its_payloads() -> None:
    payloads = [b"", b"x", "数据".encode(), bytes(range(256))]
    assert parse_request(encode_request(payloads)) == payloads


@pytest.mark.parametrize("cut", [3, 6, 9, 12])
def test_a_torn_request_is_a_framing_error(cut: int) -> None:
    request = encode_request([b"abc", b"defgh"])
    with pytest.raises(FramingError):
        parse_request(request[:cut])
    with pytest.raises(FramingError):
        serve(io.BytesIO(request[:cut]), io.BytesIO())


def test_bytes_after_the_last_payload_are_a_framing_error() -> None:
    with pytest.raises(FramingError, match="after its last payload"):
        parse_request(encode_request([b"abc"]) + b"!")


def test_a_request_over_the_cap_ends_the_worker_before_it_reads_the_payload() -> None:
    request = struct.pack(">II", 1, MAX_REQUEST_BYTES)  # claims 64 MiB, sends none
    with pytest.raises(FramingError, match="over"):
        serve(io.BytesIO(request), io.BytesIO())


def test_the_worker_answers_each_run_with_the_uplinks_own_bytes_in_order() -> None:
    runs = [_payloads(40), _payloads(3), _payloads(1)]
    replies = io.BytesIO()
    serve(io.BytesIO(b"".join(encode_request(run) for run in runs)), replies)
    assert _replies(replies.getvalue()) == [(STATUS_OK, encode_batch(run)) for run in runs]


def test_a_run_that_cannot_be_one_batch_is_refused_with_its_reason() -> None:
    mixed = _payloads(2) + _payloads(1, Priority.ALARM)  # another priority: not one run
    good = _payloads(2)
    replies = io.BytesIO()
    serve(io.BytesIO(encode_request(mixed) + encode_request(good)), replies)
    (refused, reason), (status, message) = _replies(replies.getvalue())
    assert refused == STATUS_REFUSED
    assert b"one priority" in reason  # the encoder's own words
    assert (status, message) == (STATUS_OK, encode_batch(good))  # and it goes on
