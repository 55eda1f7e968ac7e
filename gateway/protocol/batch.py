"""The batch form of the event stream: a run of consecutive events in one compact message.

A batch carries events `first_seq`..`first_seq + n - 1` of one gateway and one priority as
CBOR (RFC 8949), raw-deflated with a preset dictionary when that is smaller. Everything a
receiver can derive is left out: `gateway` (the topic says it), `v` and `priority` (said once),
`seq` beyond the first, every `hash` and every `prev_hash` but the first. Readings send their
value names and units once per batch (a shape) and each value as an integer delta.

`decode_batch` rebuilds every event's canonical JSON byte for byte, recomputes the chain from
the batch's `prev_hash`, and checks it ends at the batch's `last_hash`; so what a master stores
is exactly what the gateway committed and hashed. docs/mqtt.md ("Batch form") specifies the
bytes; this module (with batch_format.py) is the reference decoder and needs only `cbor2` and
the standard library; the gateway's encoder is batch_encode.py.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping
from typing import Any

import cbor2

from gateway.protocol.batch_format import (
    CROCKFORD,
    DICTIONARY,
    DICTIONARY_WORDS,
    HEADER_DEFLATE,
    HEADER_PLAIN,
    MAX_DECODED_BYTES,
    MAX_EVENTS,
    MAX_EXPONENT,
    BatchDecodeError,
    DecodedBatch,
    format_ms,
)
from gateway.protocol.canonical import canonical_json, encode_basestring
from gateway.protocol.events import EVENT_VERSION, Priority

__all__ = [
    "DICTIONARY",
    "DICTIONARY_WORDS",
    "HEADER_DEFLATE",
    "HEADER_PLAIN",
    "BatchDecodeError",
    "DecodedBatch",
    "decode_batch",
]


def decode_batch(message: bytes, gateway: str) -> DecodedBatch:
    """Rebuild the events of a batch published by `gateway`; raise BatchDecodeError.

    The message is untrusted: whatever goes wrong while reading it (a failure of the CBOR or
    deflate library included) is a BatchDecodeError, never another exception.
    """
    try:
        root = cbor2.loads(_unpack(message))
        return _Decoder(gateway).decode(root)
    except BatchDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile input: every failure is a refusal
        raise BatchDecodeError(f"batch does not decode: {exc}") from None


# -- decoding ---------------------------------------------------------------------------------


def _unpack(message: bytes) -> bytes:
    if not message:
        raise BatchDecodeError("empty batch message")
    header, body = message[0], message[1:]
    if header == HEADER_PLAIN:
        if len(body) > MAX_DECODED_BYTES:
            raise BatchDecodeError("batch too large")
        return bytes(body)
    if header != HEADER_DEFLATE:
        raise BatchDecodeError(f"unknown batch header 0x{header:02x}")
    try:
        unpacker = zlib.decompressobj(-15, zdict=DICTIONARY)
        plain = unpacker.decompress(body, MAX_DECODED_BYTES)
    except zlib.error as exc:
        raise BatchDecodeError(f"batch does not inflate: {exc}") from None
    if unpacker.unconsumed_tail:
        raise BatchDecodeError("batch inflates beyond the size limit")
    if not unpacker.eof:
        raise BatchDecodeError("batch deflate stream is truncated")
    return plain


class _Decoder:
    """Rebuilds the events of one batch."""

    def __init__(self, gateway: str) -> None:
        self.gateway = encode_basestring(gateway)

    def decode(self, root: Any) -> DecodedBatch:
        if not isinstance(root, list) or len(root) != 8:
            raise BatchDecodeError("batch is not an array of 8 members")
        version, priority, first_seq, prev_hash, last_hash, types, shapes, rows = root
        if version != EVENT_VERSION:
            raise BatchDecodeError(f"event version {version!r} is not supported")
        wire_priority = Priority(_uint(priority, "priority"))
        first = _uint(first_seq, "first_seq")
        prev = _hash(prev_hash, "prev_hash")
        if not isinstance(rows, list) or not 0 < len(rows) <= MAX_EVENTS:
            raise BatchDecodeError("batch holds no events or too many")
        columns = _Columns(_shapes(shapes))
        type_names = _strings(types, "types")
        payloads, hashes = [], []
        last_ms = 0
        for offset, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != 5:
                raise BatchDecodeError(f"event {offset} is not an array of 5 members")
            ts, last_ms, millis = _decode_ts(row[0], last_ms)
            body = {
                "data": columns.data(row[4]),
                "id": _decode_id(row[1], millis),
                "priority": wire_priority.wire_name,
                "subject": _text(row[3], "subject"),
                "ts": ts,
                "type": type_names[_uint(row[2], "type")],
            }
            payload, prev = self._seal(body, first + offset, prev)
            payloads.append(payload)
            hashes.append(prev)
        if prev != _hash(last_hash, "last_hash"):
            raise BatchDecodeError("the rebuilt chain does not end at the batch's last hash")
        return DecodedBatch(wire_priority, first, tuple(payloads), tuple(hashes))

    def _seal(self, body: Mapping[str, Any], seq: int, prev_hash: str) -> tuple[bytes, str]:
        """The event's canonical payload and hash, as gateway.protocol.events.seal_event."""
        head = f'{{"data":{canonical_json(body["data"])},"gateway":{self.gateway}'
        tail = (
            f',"id":{encode_basestring(body["id"])},"prev_hash":"{prev_hash}"'
            f',"priority":"{body["priority"]}","seq":{seq}'
            f',"subject":{encode_basestring(body["subject"])},"ts":{encode_basestring(body["ts"])}'
            f',"type":{encode_basestring(body["type"])},"v":{EVENT_VERSION}}}'
        )
        digest = hashlib.sha256((head + tail).encode("utf-8")).hexdigest()
        return f'{head},"hash":"{digest}"{tail}'.encode(), digest


class _Columns:
    """The shapes of a batch and each column's running value."""

    def __init__(self, shapes: list[tuple[list[str], list[str | None], list[int]]]) -> None:
        self.shapes = shapes
        self.previous = [[0] * len(names) for names, _, _ in shapes]

    def data(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict):
            return data
        if not isinstance(data, list) or len(data) != 3 or not isinstance(data[1], dict):
            raise BatchDecodeError("event data is neither an object nor a reading")
        names, units, exps = self.shapes[_uint(data[0], "shape")]
        nums, previous = data[2], self.previous[data[0]]
        if not isinstance(nums, list) or len(nums) != len(names) or "values" in data[1]:
            raise BatchDecodeError("a reading does not match its shape")
        values: dict[str, Any] = {}
        for col, name in enumerate(names):
            previous[col] += _int(nums[col], "value")
            entry: dict[str, Any] = {"value": _number(previous[col], exps[col])}
            if units[col] is not None:
                entry["unit"] = units[col]
            values[name] = entry
        return {**data[1], "values": values}


def _shapes(shapes: Any) -> list[tuple[list[str], list[str | None], list[int]]]:
    if not isinstance(shapes, list):
        raise BatchDecodeError("shapes is not an array")
    out = []
    for shape in shapes:
        if not isinstance(shape, list) or len(shape) != 3:
            raise BatchDecodeError("a shape is not an array of 3 members")
        names, units, exps = _strings(shape[0], "names"), shape[1], shape[2]
        if not (isinstance(units, list) and isinstance(exps, list)):
            raise BatchDecodeError("shape units and exponents must be arrays")
        if not len(names) == len(units) == len(exps) or len(set(names)) != len(names):
            raise BatchDecodeError("a shape's names, units and exponents differ in length")
        if any(unit is not None and not isinstance(unit, str) for unit in units):
            raise BatchDecodeError("a unit is neither text nor null")
        if any(not isinstance(e, int) or abs(e) > MAX_EXPONENT for e in exps):
            raise BatchDecodeError("a shape exponent is out of range")
        out.append((names, units, exps))
    return out


def _number(mantissa: int, exponent: int) -> int | float:
    """The value mantissa * 10**exponent, as JSON would parse its canonical text."""
    if exponent >= 0:
        whole: int = mantissa * 10**exponent
        return whole
    return float(f"{mantissa}e{exponent}")


def _decode_ts(ts: Any, last_ms: int) -> tuple[str, int, int | None]:
    if isinstance(ts, str):
        return ts, last_ms, None
    millis = last_ms + _int(ts, "ts")
    return format_ms(millis), millis, millis


def _decode_id(event_id: Any, millis: int | None) -> str:
    if isinstance(event_id, str):
        return event_id
    if not isinstance(event_id, bytes) or len(event_id) not in (10, 16):
        raise BatchDecodeError("an id is neither text nor 10 or 16 bytes")
    if len(event_id) == 10:
        if millis is None:
            raise BatchDecodeError("a 10-byte id needs a numeric ts")
        event_id = millis.to_bytes(6, "big") + event_id
    value = int.from_bytes(event_id, "big")
    return "".join(CROCKFORD[(value >> shift) & 0x1F] for shift in range(125, -1, -5))


def _uint(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BatchDecodeError(f"{what} is not an unsigned integer")
    return value


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BatchDecodeError(f"{what} is not an integer")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BatchDecodeError(f"{what} is not text")
    return value


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BatchDecodeError(f"{what} is not an array of text")
    return value


def _hash(value: Any, what: str) -> str:
    if not isinstance(value, bytes) or len(value) != 32:
        raise BatchDecodeError(f"{what} is not 32 bytes")
    return value.hex()
