"""The batch encoder: a run of committed events (their canonical JSON) in one batch message.

The gateway's side of gateway/protocol/batch.py (the reference codec, whose `encode_batch` this
is). Events are read from their canonical payloads, never re-serialised: a reading of a shape
seen before in the batch is read whole by one pattern (its names and units literal, its numbers
and envelope strings as groups), anything else envelope first (one pattern, or JSON when a
string has escapes) and then its data. The run is checked as it is read.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, repeat
from operator import itemgetter, mul, sub
from typing import Any, NamedTuple

import cbor2

from gateway.protocol.batch_format import (
    CROCKFORD,
    DICTIONARY,
    HEADER_DEFLATE,
    HEADER_PLAIN,
    BatchEncodeError,
    format_ms,
    parse_ms,
)
from gateway.protocol.canonical import canonical_json, encode_basestring
from gateway.protocol.events import EVENT_VERSION, Priority

__all__ = ["encode_batch"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_TO_BASE32 = str.maketrans(CROCKFORD, "0123456789abcdefghijklmnopqrstuv")
_TS_SECOND = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")


def encode_batch(payloads: Sequence[bytes], *, compress: bool = True) -> bytes:
    """One message for a run of committed events (their canonical JSON payloads, seq order).

    Raise BatchEncodeError when the events are not one gateway's consecutive, linked events
    of one priority, or one of them has a form this codec cannot carry exactly.
    """
    if not payloads:
        raise BatchEncodeError("an empty batch")
    body = _Encoder().encode(payloads)
    if compress:
        packer = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        packed = packer.compress(body) + packer.flush()
        if len(packed) < len(body):
            return bytes((HEADER_DEFLATE,)) + packed
    return bytes((HEADER_PLAIN,)) + body


class _Envelope(NamedTuple):
    """An event's envelope members, with `data` kept as its canonical text."""

    gateway: str
    hash: str
    id: str
    prev_hash: str
    priority: str
    seq: int
    subject: str
    ts: str
    type: str
    data_text: str


_PLAIN = r'"([^"\\\x00-\x1f]*)"'  # a JSON string without escapes: its text is its value
_ENVELOPE_TAIL = re.compile(
    rf',"gateway":{_PLAIN},"hash":"([0-9a-f]{{64}})","id":{_PLAIN}'
    rf',"prev_hash":"([0-9a-f]{{64}})","priority":"(alarm|audit|state|telemetry)"'
    rf',"seq":(0|[1-9][0-9]*),"subject":{_PLAIN},"ts":{_PLAIN},"type":{_PLAIN},"v":1\}}'
)
"""The envelope after `data`, as seal_event writes it with plain strings (the common case)."""

_ENVELOPE_NAMES = frozenset(_Envelope._fields) - {"data_text"} | {"v"}
_PRIORITIES = {priority.wire_name: int(priority) for priority in Priority}


def _decode_text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchEncodeError(f"not an event payload: {exc}") from None


def _parse(text: str) -> _Envelope:
    """The envelope of a canonical event payload.

    In canonical JSON `data` is the first member and `gateway` the second; a quote inside a
    string is always escaped, so the last `,"gateway":` is where the envelope resumes. The
    envelope is read by one pattern when its strings have no escapes, else parsed as JSON.
    """
    cut = text.rfind(',"gateway":')
    if not text.startswith('{"data":') or cut < 0:
        raise BatchEncodeError("not a canonical event payload")
    match = _ENVELOPE_TAIL.fullmatch(text, cut)
    if match is None:
        return _parse_general(text, cut)
    return _envelope(match.groups(), text[8:cut])


def _envelope(groups: Sequence[str], data_text: str) -> _Envelope:
    """The envelope of the groups of _ENVELOPE_TAIL."""
    gateway, digest, event_id, prev_hash, priority, seq, subject, ts, kind = groups
    return _Envelope(
        gateway, digest, event_id, prev_hash, priority, int(seq), subject, ts, kind, data_text
    )


def _parse_general(text: str, cut: int) -> _Envelope:
    """The envelope of a payload whose strings have escapes, checked member by member."""
    try:
        obj = json.loads("{" + text[cut + 1 :])
    except json.JSONDecodeError as exc:
        raise BatchEncodeError(f"not an event payload: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != _ENVELOPE_NAMES:
        raise BatchEncodeError("event envelope is not the version 1 envelope")
    if type(obj["v"]) is not int or obj["v"] != EVENT_VERSION or type(obj["seq"]) is not int:
        raise BatchEncodeError("not a version 1 event")
    texts = ("gateway", "id", "subject", "ts", "type")
    if not all(type(obj[name]) is str for name in texts):
        raise BatchEncodeError("event envelope members are not text")
    if not (_is_hash(obj["hash"]) and _is_hash(obj["prev_hash"])):
        raise BatchEncodeError("hashes are not 64 lowercase hex digits")
    if obj["priority"] not in _PRIORITIES:
        raise BatchEncodeError(f"unknown priority {obj['priority']!r}")
    return _Envelope(**{name: obj[name] for name in _ENVELOPE_NAMES - {"v"}}, data_text=text[8:cut])


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


class _Encoder:
    """Builds the CBOR body of one batch; shapes and their value rows live for one batch.

    The run is checked as it is read: one gateway, one priority, consecutive seqs, each
    `prev_hash` the hash before it. Reading values are kept as their canonical number texts,
    row by row, and turned into per-column integer deltas once the batch is complete (see
    _column).
    """

    def __init__(self) -> None:
        self.types: dict[str, int] = {}
        self.shapes: dict[tuple[tuple[str, str], ...], int] = {}
        self.shape_rows: list[list[list[Any]]] = []
        self.texts: list[list[Sequence[str]]] = []  # per shape, per reading: number texts
        self.slots: list[list[list[Any]]] = []  # per shape, the data cells to fill in
        self.last_ms = 0
        self.pattern: _ShapePattern | None = None  # the last reading's shape, tried first
        self.first: _Envelope | None = None
        self.last: _Envelope | None = None

    def encode(self, payloads: Sequence[bytes]) -> bytes:
        rows = [self._event(_decode_text(payload)) for payload in payloads]
        shapes = []
        for index, (names, units) in enumerate(self.shape_rows):
            columns = [_column(texts) for texts in zip(*self.texts[index], strict=True)]
            shapes.append([names, units, [exp for exp, _ in columns]])
            deltas = zip(*(d for _, d in columns), strict=True)
            for cell, nums in zip(self.slots[index], deltas, strict=True):
                cell[2] = nums  # a tuple is a CBOR array too
        first, last = self.first, self.last
        assert first is not None and last is not None
        return cbor2.dumps([
            EVENT_VERSION,
            _PRIORITIES[first.priority],
            first.seq,
            bytes.fromhex(first.prev_hash),
            bytes.fromhex(last.hash),
            list(self.types),
            shapes,
            rows,
        ])  # fmt: skip

    def _event(self, text: str) -> list[Any]:
        """One event's row. A reading of the last reading's shape, with plain strings, is
        read whole by that shape's pattern; anything else envelope first, then its data."""
        pattern = self.pattern
        match = pattern.regex.fullmatch(text) if pattern is not None else None
        if match is not None:
            assert pattern is not None
            groups = match.groups()
            width = len(pattern.key)
            rest = _members(groups[0], groups[width + 1])
            data = self._cell(pattern.key, groups[1 : width + 1], rest)
            event = _envelope(groups[width + 2 :], "")
        else:
            event = _parse(text)
            data = self._data(event.data_text)
        self._link(event)
        ts, millis = self._ts(event.ts)
        type_index = self.types.setdefault(event.type, len(self.types))
        return [ts, _id(event.id, millis), type_index, event.subject, data]

    def _link(self, event: _Envelope) -> None:
        """Check that `event` continues the run."""
        first, last = self.first, self.last
        self.last = event
        if first is None or last is None:
            self.first = event
            return
        if event.gateway != first.gateway or event.priority != first.priority:
            raise BatchEncodeError("a batch holds one gateway's events of one priority")
        if event.seq != last.seq + 1:
            raise BatchEncodeError("a batch holds consecutive seqs")
        if event.prev_hash != last.hash:
            raise BatchEncodeError(f"seq {event.seq} does not link to its predecessor")

    def _ts(self, ts: str) -> tuple[Any, int | None]:
        millis = _ts_millis(ts)
        if millis is None:
            return ts, None
        delta, self.last_ms = millis - self.last_ms, millis
        return delta, millis

    def _data(self, data_text: str) -> Any:
        reading = _reading_text(data_text)
        if reading is not None:
            self.pattern = _shape_pattern(reading[0])
            return self._cell(*reading)
        try:
            data = json.loads(data_text)
        except json.JSONDecodeError as exc:
            raise BatchEncodeError(f"event data is not JSON: {exc}") from None
        if type(data) is not dict:
            raise BatchEncodeError("event data is not an object")
        parsed = _reading(data)
        if parsed is None:
            return data
        rest = {key: value for key, value in data.items() if key != "values"}
        return self._cell(*parsed, rest)

    def _cell(self, shape: ShapeKey, texts: Sequence[str], rest: dict[str, Any]) -> list[Any]:
        index = self.shapes.get(shape)
        if index is None:
            index = self.shapes[shape] = len(self.shapes)
            names = [name for name, _ in shape]
            units = [json.loads(unit[7:-1]) if unit else None for _, unit in shape]
            self.shape_rows.append([names, units])
            self.texts.append([])
            self.slots.append([])
        cell = [index, rest, None]  # the deltas are filled in once every row is known
        self.texts[index].append(texts)
        self.slots[index].append(cell)
        return cell


ShapeKey = tuple[tuple[str, str], ...]
"""(name, unit member text) per value: '"unit":"V",', or '' when the value has no unit."""

_STR = r'"[^"\\\x00-\x1f]*"'  # a JSON string without escapes
_NUM = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:e[-+][0-9]+)?"
_ENTRY = rf'{_STR}:\{{(?:"unit":{_STR},)?"value":{_NUM}\}}'
_READING_TEXT = re.compile(
    rf'\{{(?P<pre>(?:{_STR}:{_STR},)*)"values":\{{(?P<vals>{_ENTRY}(?:,{_ENTRY})*)\}}'
    rf"(?P<post>(?:,{_STR}:{_STR})*)\}}"
)
_ENTRY_PARTS = re.compile(rf'"([^"\\\x00-\x1f]*)":\{{((?:"unit":{_STR},)?)"value":({_NUM})\}}')
_FRACTION = re.compile(r"\.([0-9]+)")
_NAME_UNIT = itemgetter(0, 1)
_NUMBER = itemgetter(2)
_EXACT_LIMIT = 2**50  # below this, round(float(text) * 10**d) is the exact scaled integer


def _reading_text(data_text: str) -> tuple[ShapeKey, list[str], Any] | None:
    """The common reading read straight from its canonical text: plain text members around
    a `values` object of plain names, units and numbers. None for anything else."""
    match = _READING_TEXT.fullmatch(data_text)
    if match is None:
        return None
    entries = _ENTRY_PARTS.findall(match["vals"])
    rest = _members(match["pre"], match["post"])
    return tuple(map(_NAME_UNIT, entries)), list(map(_NUMBER, entries)), rest


@lru_cache(maxsize=4096)
def _members(pre: str, post: str) -> Any:
    """The members around `values` (`"a":"x",` before, `,"z":"y"` after) as a dict.

    Cached (a meter's members are the same in every reading): never change what it returns.
    """
    return json.loads("{" + (pre[:-1] + post if pre else post[1:]) + "}")


@dataclass(frozen=True, slots=True)
class _ShapePattern:
    key: ShapeKey
    regex: re.Pattern[str]


@lru_cache(maxsize=64)
def _shape_pattern(key: ShapeKey) -> _ShapePattern:
    """A regex for whole reading payloads of one shape, with plain strings: the names and
    units literal; the members around `values`, the numbers and the envelope as groups."""
    parts = [rf'\{{"data":\{{((?:{_STR}:{_STR},)*)"values":\{{']
    for index, (name, unit) in enumerate(key):
        prefix = "," if index else ""
        parts.append(re.escape(f'{prefix}"{name}":{{{unit}"value":') + f"({_NUM})" + r"\}")
    parts.append(rf"\}}((?:,{_STR}:{_STR})*)\}}")
    parts.append(_ENVELOPE_TAIL.pattern)
    return _ShapePattern(key, re.compile("".join(parts)))


def _reading(data: Mapping[str, Any]) -> tuple[ShapeKey, list[str]] | None:
    """A parsed reading's shape key and number texts; None if it has not the reading form.

    `values` must map names to {"value": number} or {"value": number, "unit": text}.
    """
    values = data.get("values")
    if type(values) is not dict or not values:
        return None
    shape: list[tuple[str, str]] = []
    texts = []
    for name, entry in values.items():
        if type(entry) is not dict:
            return None
        number = entry.get("value", entry)
        if type(number) not in (int, float):
            return None
        texts.append(canonical_json(number))
        if len(entry) == 1:
            shape.append((name, ""))
            continue
        unit = entry.get("unit", entry)
        if len(entry) != 2 or type(unit) is not str:
            return None
        shape.append((name, f'"unit":{encode_basestring(unit)},'))
    return tuple(shape), texts


def _column(texts: Sequence[str]) -> tuple[int, list[int]]:
    """A column of number texts as (exponent, deltas): text i = (d_0 + .. + d_i) * 10**exp.

    The common case (plain decimals of moderate size) runs in C: the scale is the most
    decimals in the column, and round(float(text) * 10**decimals) is exact below 2**50.
    """
    joined = ",".join(texts)
    decimals = max(map(len, _FRACTION.findall(joined)), default=0)
    scaled: list[int] | None = None
    if "e" not in joined and decimals <= 15:
        factor = repeat(float(10**decimals))
        scaled = list(map(float.__round__, map(mul, map(float, texts), factor)))
        if max(scaled) >= _EXACT_LIMIT or min(scaled) <= -_EXACT_LIMIT:
            scaled = None
    exponent = -decimals
    if scaled is None:
        pairs = [_text_decimal(text) for text in texts]
        exponent = min(e for _, e in pairs)
        scaled = [m * 10 ** (e - exponent) for m, e in pairs]
    return exponent, list(map(sub, scaled, chain((0,), scaled)))


def _text_decimal(text: str) -> tuple[int, int]:
    """(m, e) with the canonical number text = m * 10**e."""
    exponent = 0
    if "e" in text:
        text, _, power = text.partition("e")
        exponent = int(power)
    whole, dot, fraction = text.partition(".")
    if not dot:
        return int(whole), exponent
    return int(whole + fraction), exponent - len(fraction)


def _ts_millis(ts: str) -> int | None:
    """Milliseconds since the epoch of an RFC 3339 `...T..:..:..mmmZ` ts, else None.

    None too when that form would not give `ts` back (a leap second, a day 31 of a short
    month, a digit outside ASCII): such a ts is sent as text.
    """
    if len(ts) != 24 or ts[19] != "." or ts[23] != "Z":
        return None
    second = _second_millis(ts[:19])
    fraction = ts[20:23]
    if second is None or not (fraction.isascii() and fraction.isdigit()):
        return None
    return second + int(fraction)


@lru_cache(maxsize=1024)
def _second_millis(text: str) -> int | None:
    """Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS` if it round-trips, else None."""
    if _TS_SECOND.fullmatch(text) is None:
        return None
    try:
        millis = parse_ms(text + ".000Z")
    except ValueError:
        return None
    return millis if format_ms(millis) == text + ".000Z" else None


def _id(event_id: str, millis: int | None) -> Any:
    """A ULID as 10 bytes (its time is the ts) or 16 bytes; anything else as text."""
    if _ULID.fullmatch(event_id) is None:
        return event_id
    value = int(event_id.translate(_TO_BASE32), 32)
    raw = value.to_bytes(16, "big")
    if millis is not None and value >> 80 == millis:
        return raw[6:]
    return raw
