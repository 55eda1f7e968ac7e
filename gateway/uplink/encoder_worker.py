"""The batch encoder's worker process: encodes runs for the uplink on another CPU core.

`python -m gateway.uplink.encoder_worker` reads requests on stdin and writes one reply per
request on stdout, in order. The uplink (encoder_pool.py) starts it when `uplink.encoding =
"batch"` and `uplink.batch_workers` > 0, so a backlog's encoding (most of the CPU a batch drain
takes) runs beside the event loop instead of inside it. The worker holds no state between
requests: a reply depends only on its request, so a run encoded here is byte for byte the run
the uplink would encode itself (gateway.protocol.batch_encode.encode_batch).

Framing (all integers big-endian, unsigned):

- ready, once at start:   the byte 0x52 ("R"), when the encoder is imported;
- request:                u32 count, then count times (u32 length, that many payload bytes);
- reply:                  u8 status (0: a batch message follows; 1: the run cannot be encoded
                          as one batch, a UTF-8 reason follows), u32 length, that many bytes.

A request larger than MAX_REQUEST_BYTES, or a torn one, ends the worker (exit status 2): the
uplink then encodes in its own process. End of input ends it cleanly (status 0): the worker
never outlives the daemon whose pipe feeds it.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from typing import BinaryIO

from gateway.protocol.batch_encode import encode_batch
from gateway.protocol.batch_format import BatchEncodeError

__all__ = [
    "MAX_REQUEST_BYTES",
    "READY",
    "STATUS_OK",
    "STATUS_REFUSED",
    "FramingError",
    "encode_request",
    "main",
    "parse_request",
    "reply_header",
]

READY = b"R"
STATUS_OK = 0
STATUS_REFUSED = 1
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # the largest run is uplink.batch_max_bytes (4 MiB at most)
_U32 = struct.Struct(">I")
_REPLY = struct.Struct(">BI")


class FramingError(ValueError):
    """A request that is not framed as the module docstring says."""


def encode_request(payloads: Sequence[bytes]) -> bytes:
    """A request for the run of `payloads` (the uplink's side)."""
    parts = [_U32.pack(len(payloads))]
    for payload in payloads:
        parts.append(_U32.pack(len(payload)))
        parts.append(payload)
    return b"".join(parts)


def parse_request(body: bytes) -> list[bytes]:
    """The payloads of a request body (what follows its u32 count), `count` of them."""
    view = memoryview(body)
    if len(view) < 4:
        raise FramingError("a request ends inside its count")
    (count,) = _U32.unpack_from(view, 0)
    payloads, offset = [], 4
    for _ in range(count):
        if offset + 4 > len(view):
            raise FramingError("a request ends inside a length")
        (length,) = _U32.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise FramingError("a request ends inside a payload")
        payloads.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise FramingError("a request has bytes after its last payload")
    return payloads


def reply_header(status: int, length: int) -> bytes:
    return _REPLY.pack(status, length)


def _read_request(stream: BinaryIO) -> bytes | None:
    """One whole request (count included), or None at a clean end of input."""
    head = stream.read(4)
    if not head:
        return None
    if len(head) != 4:
        raise FramingError("input ended inside a request's count")
    (count,) = _U32.unpack(head)
    parts, size = [head], 4
    for _ in range(count):
        length_bytes = stream.read(4)
        if len(length_bytes) != 4:
            raise FramingError("input ended inside a length")
        (length,) = _U32.unpack(length_bytes)
        size += 4 + length
        if size > MAX_REQUEST_BYTES:
            raise FramingError(f"a request over {MAX_REQUEST_BYTES} bytes")
        payload = stream.read(length)
        if len(payload) != length:
            raise FramingError("input ended inside a payload")
        parts.append(length_bytes)
        parts.append(payload)
    return b"".join(parts)


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer requests until the end of input."""
    replies.write(READY)
    replies.flush()
    while (request := _read_request(requests)) is not None:
        payloads = parse_request(request)
        try:
            status, body = STATUS_OK, encode_batch(payloads)
        except BatchEncodeError as exc:
            status, body = STATUS_REFUSED, str(exc).encode("utf-8", "replace")
        replies.write(reply_header(status, len(body)) + body)
        replies.flush()


def main() -> int:
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except FramingError as exc:
        print(f"sealgw encoder worker: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0  # the uplink went away while we answered
    return 0


if __name__ == "__main__":
    sys.exit(main())
