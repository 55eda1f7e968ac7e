"""The batch form of the event stream: a run of consecutive events in one compact message.

A batch carries events `first_seq`..`first_seq + n - 1` of one gateway and one priority as
CBOR (RFC 8949), raw-deflated with a preset dictionary when that is smaller. Everything a
receiver can derive is left out: `gateway` (the topic says it), `v` and `priority` (said once),
`seq` beyond the first, every `hash` and every `prev_hash` but the first. Readings send their
value names and units once per batch (a shape) and each value as an integer delta.

`decode_batch` rebuilds every event's canonical JSON byte for byte, recomputes the chain from
the batch's `prev_hash`, and checks it ends at the batch's `last_hash`; so what a master stores
is exactly what the gateway committed and hashed. docs/mqtt.md ("Batch form") specifies the
bytes; this module is the reference codec and needs only `cbor2` and the standard library.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import itemgetter, sub
from typing import Any

import cbor2

from gateway.errors import ProtocolError
from gateway.protocol.canonical import (
    canonical_json,
    encode_basestring,
)
from gateway.protocol.events import EVENT_VERSION, Priority

__all__ = [
    "DICTIONARY",
    "HEADER_DEFLATE",
    "HEADER_PLAIN",
    "BatchDecodeError",
    "BatchEncodeError",
    "DecodedBatch",
    "decode_batch",
    "encode_batch",
]

HEADER_PLAIN = 0x10  # batch format 1, CBOR as is
HEADER_DEFLATE = 0x11  # batch format 1, CBOR in raw deflate (RFC 1951) with DICTIONARY
MAX_DECODED_BYTES = 8 * 1024 * 1024
MAX_EVENTS = 65_536
MAX_EXPONENT = 400
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_BASE32 = str.maketrans(_CROCKFORD, "0123456789abcdefghijklmnopqrstuv")
_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

DICTIONARY_WORDS = (
    "meter.reading", "meter.event", "meter.read_failed", "meter.read_recovered",
    "gateway.health", "gateway.checkpoint", "gateway.started", "gateway.stopped",
    "gateway.command", "gateway.telemetry_evicted", "seal.sealed", "seal.unsealed",
    "seal.op_requested", "seal.op_allowed", "seal.op_denied", "seal.op_failed", "seal.tamper",
    "seal.battery_low", "seal.log_entry", "seal.online", "seal.offline", "theft.suspected",
    "handheld.request", "handheld.session_opened", "handheld.session_closed",
    "meter", "protocol", "modbus", "dlt645", "seal", "values", "value", "unit", "source",
    "lock_id", "log_index", "operator", "ticket_id", "ticket_tag", "operator_tag", "audit_tag",
    "work_order", "result", "state", "wire", "entry", "rtc", "event", "tag", "ok", "log",
    "answer", "advert", "sealed", "unsealed", "intact", "covers_seq", "covers_hash", "sig",
    "key_id", "uptime_s", "buffer_depth", "drain_rate_per_s", "broker_connected", "locks",
    "meters", "polls", "configured", "failing", "never_read", "read_success_rate",
    "disk_free_mb", "cpu_temp_c", "cpu_pct", "rss_mb", "tasks", "storage_full",
    "operations_refused", "alarm", "audit", "telemetry", "voltage_l1", "voltage_l2",
    "voltage_l3", "voltage_l1_l2", "voltage_l2_l3", "voltage_l3_l1", "current_l1",
    "current_l2", "current_l3", "power_total", "power_l1", "power_l2", "power_l3",
    "reactive_power_total", "reactive_power_l1", "reactive_power_l2", "reactive_power_l3",
    "power_factor_total", "power_factor_l1", "power_factor_l2", "power_factor_l3",
    "frequency", "energy_import", "energy_export", "energy_total", "voltage", "current",
    "power", "power_factor", "kWh", "kvarh", "var", "Hz", "W", "V", "A",
)  # fmt: skip
"""The preset dictionary's words; never change them for format 1 (a new header byte would)."""

DICTIONARY = cbor2.dumps(list(DICTIONARY_WORDS))
"""The deflate preset dictionary: the CBOR encoding of DICTIONARY_WORDS (1,293 bytes)."""


class BatchEncodeError(ValueError):
    """These events cannot be put in one batch (not a run); send them one by one instead."""


class BatchDecodeError(ProtocolError):
    """A batch message that does not decode to a verified run of events."""


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """The events of one batch, rebuilt: canonical JSON payloads in seq order, and the hash
    each one's content gives (computed while rebuilding them, so a reader need not again)."""

    priority: Priority
    first_seq: int
    payloads: tuple[bytes, ...]
    hashes: tuple[str, ...] = ()

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.payloads) - 1


def encode_batch(payloads: Sequence[bytes], *, compress: bool = True) -> bytes:
    """One message for a run of committed events (their canonical JSON payloads, seq order).

    Raise BatchEncodeError when the events are not one gateway's consecutive, linked events
    of one priority, or one of them has a form this codec cannot carry exactly.
    """
    if not payloads:
        raise BatchEncodeError("an empty batch")
    events = [_parse(payload) for payload in payloads]
    _check_run(events)
    body = _Encoder().encode(events)
    if compress:
        packer = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        packed = packer.compress(body) + packer.flush()
        if len(packed) < len(body):
            return bytes((HEADER_DEFLATE,)) + packed
    return bytes((HEADER_PLAIN,)) + body


def decode_batch(message: bytes, gateway: str) -> DecodedBatch:
    """Rebuild the events of a batch published by `gateway`; raise BatchDecodeError."""
    try:
        root = cbor2.loads(_unpack(message))
        return _Decoder(gateway).decode(root)
    except BatchDecodeError:
        raise
    except (
        cbor2.CBORError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        OverflowError,
        RecursionError,
    ) as exc:
        raise BatchDecodeError(f"batch does not decode: {exc}") from None


# -- encoding ---------------------------------------------------------------------------------


def _parse(payload: bytes) -> dict[str, Any]:
    """The envelope members, with `data` kept as its canonical text (`data_text`).

    In canonical JSON `data` is the first member and `gateway` the second; a quote inside a
    string is always escaped, so the last `,"gateway":` is where the envelope resumes.
    """
    try:
        text = payload.decode("utf-8")
        cut = text.rfind(',"gateway":')
        if not text.startswith('{"data":') or cut < 0:
            raise BatchEncodeError("not a canonical event payload")
        obj = json.loads("{" + text[cut + 1 :])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchEncodeError(f"not an event payload: {exc}") from None
    if not isinstance(obj, dict) or obj.get("v") != EVENT_VERSION:
        raise BatchEncodeError("not a version 1 event")
    obj["data_text"] = text[8:cut]
    return obj


def _check_run(events: Sequence[Mapping[str, Any]]) -> None:
    first = events[0]
    for index, event in enumerate(events):
        if set(event) != _ENVELOPE or not isinstance(event["seq"], int):
            raise BatchEncodeError("event envelope is not the version 1 envelope")
        if event["gateway"] != first["gateway"] or event["priority"] != first["priority"]:
            raise BatchEncodeError("a batch holds one gateway's events of one priority")
        if event["seq"] != first["seq"] + index:
            raise BatchEncodeError("a batch holds consecutive seqs")
        if index and event["prev_hash"] != events[index - 1]["hash"]:
            raise BatchEncodeError(f"seq {event['seq']} does not link to its predecessor")
        if not (_HEX64.match(str(event["prev_hash"])) and _HEX64.match(str(event["hash"]))):
            raise BatchEncodeError("hashes are not 64 lowercase hex digits")
    try:
        Priority.from_wire(first["priority"])
    except (ValueError, AttributeError):
        raise BatchEncodeError(f"unknown priority {first['priority']!r}") from None


_ENVELOPE = frozenset(
    (
        "v",
        "data_text",
        "gateway",
        "hash",
        "id",
        "prev_hash",
        "priority",
        "seq",
        "subject",
        "ts",
        "type",
    )
)


class _Encoder:
    """Builds the CBOR body of one batch; shapes and their value rows live for one batch.

    Reading values are kept as their canonical number texts, row by row, and turned into
    per-column integer deltas once the batch is complete (see _column).
    """

    def __init__(self) -> None:
        self.types: dict[str, int] = {}
        self.shapes: dict[tuple[tuple[str, str], ...], int] = {}
        self.shape_rows: list[list[list[Any]]] = []
        self.texts: list[list[Sequence[str]]] = []  # per shape, per reading: number texts
        self.slots: list[list[list[Any]]] = []  # per shape, the data cells to fill in
        self.last_ms = 0
        self.pattern: _ShapePattern | None = None  # the last reading's shape, tried first

    def encode(self, events: Sequence[Mapping[str, Any]]) -> bytes:
        rows = [self._event(event) for event in events]
        shapes = []
        for index, (names, units) in enumerate(self.shape_rows):
            columns = [_column(texts) for texts in zip(*self.texts[index], strict=True)]
            shapes.append([names, units, [exp for exp, _ in columns]])
            deltas = zip(*(d for _, d in columns), strict=True)
            for cell, nums in zip(self.slots[index], deltas, strict=True):
                cell[2] = list(nums)
        first = events[0]
        return cbor2.dumps([
            EVENT_VERSION,
            int(Priority.from_wire(first["priority"])),
            first["seq"],
            bytes.fromhex(first["prev_hash"]),
            bytes.fromhex(events[-1]["hash"]),
            list(self.types),
            shapes,
            rows,
        ])  # fmt: skip

    def _event(self, event: Mapping[str, Any]) -> list[Any]:
        ts, millis = self._ts(event["ts"])
        type_index = self.types.setdefault(event["type"], len(self.types))
        return [ts, _id(event["id"], millis), type_index, event["subject"], self._data(event)]

    def _ts(self, ts: Any) -> tuple[Any, int | None]:
        millis = _ts_millis(ts)
        if millis is None:
            return ts, None
        delta, self.last_ms = millis - self.last_ms, millis
        return delta, millis

    def _data(self, event: Mapping[str, Any]) -> Any:
        data_text = event["data_text"]
        fast = self._fast_reading(data_text)
        if fast is not None:
            return self._cell(*fast)
        try:
            data = json.loads(data_text)
        except json.JSONDecodeError as exc:
            raise BatchEncodeError(f"event data is not JSON: {exc}") from None
        if type(data) is not dict:
            raise BatchEncodeError("event data is not an object")
        reading = _reading(data)
        if reading is None:
            return data
        rest = {key: value for key, value in data.items() if key != "values"}
        return self._cell(*reading, rest)

    def _fast_reading(self, data_text: str) -> tuple[ShapeKey, Sequence[str], Any] | None:
        """A reading in its common form, read from its text by the last shape's pattern (a
        literal skeleton with the numbers as groups) or else by the general one."""
        if self.pattern is not None:
            match = self.pattern.regex.fullmatch(data_text)
            if match is not None:
                groups = match.groups()
                return self.pattern.key, groups[1:-1], _members(groups[0], groups[-1])
        general = _reading_text(data_text)
        if general is not None:
            self.pattern = _shape_pattern(general[0])
        return general

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

_STR = r'"[^"\\]*"'  # a JSON string without escapes
_NUM = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:e[-+][0-9]+)?"
_ENTRY = rf'{_STR}:\{{(?:"unit":{_STR},)?"value":{_NUM}\}}'
_READING_TEXT = re.compile(
    rf'\{{(?P<pre>(?:{_STR}:{_STR},)*)"values":\{{(?P<vals>{_ENTRY}(?:,{_ENTRY})*)\}}'
    rf"(?P<post>(?:,{_STR}:{_STR})*)\}}"
)
_ENTRY_PARTS = re.compile(rf'"([^"\\]*)":\{{((?:"unit":{_STR},)?)"value":({_NUM})\}}')
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


def _members(pre: str, post: str) -> Any:
    """The members around `values` (`"a":"x",` before, `,"z":"y"` after) as a dict."""
    return json.loads("{" + (pre[:-1] + post if pre else post[1:]) + "}")


@dataclass(frozen=True, slots=True)
class _ShapePattern:
    key: ShapeKey
    regex: re.Pattern[str]


@lru_cache(maxsize=64)
def _shape_pattern(key: ShapeKey) -> _ShapePattern:
    """A regex for readings of one shape: its names and units literal, its numbers groups."""
    parts = [rf'\{{((?:{_STR}:{_STR},)*)"values":\{{']
    for index, (name, unit) in enumerate(key):
        prefix = "," if index else ""
        parts.append(re.escape(f'{prefix}"{name}":{{{unit}"value":') + f"({_NUM})" + r"\}")
    parts.append(rf"\}}((?:,{_STR}:{_STR})*)\}}")
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
        factor = float(10**decimals)
        scaled = list(map(round, map(factor.__mul__, map(float, texts))))
        if max(map(abs, scaled)) >= _EXACT_LIMIT:
            scaled = None
    exponent = -decimals
    if scaled is None:
        pairs = [_text_decimal(text) for text in texts]
        exponent = min(e for _, e in pairs)
        scaled = [m * 10 ** (e - exponent) for m, e in pairs]
    return exponent, list(map(sub, scaled, [0, *scaled[:-1]]))


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


def _ts_millis(ts: Any) -> int | None:
    """Milliseconds since the epoch of an RFC 3339 `...T..:..:..mmmZ` ts, else None."""
    if not isinstance(ts, str) or not _TS.match(ts):
        return None
    millis = _parse_ts(ts)
    return millis if _format_ms(millis) == ts else None


def _id(event_id: Any, millis: int | None) -> Any:
    """A ULID as 10 bytes (its time is the ts) or 16 bytes; anything else as text."""
    if not isinstance(event_id, str) or not _ULID.match(event_id):
        return event_id
    value = int(event_id.translate(_TO_BASE32), 32)
    raw = value.to_bytes(16, "big")
    if millis is not None and value >> 80 == millis:
        return raw[6:]
    return raw


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
    return _format_ms(millis), millis, millis


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
    return "".join(_CROCKFORD[(value >> shift) & 0x1F] for shift in range(125, -1, -5))


def _parse_ts(ts: str) -> int:
    moment = datetime.fromisoformat(ts[:-1] + "+00:00")
    return (moment - _EPOCH) // _MILLISECOND


def _format_ms(millis: int) -> str:
    moment = _EPOCH + timedelta(milliseconds=millis)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


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
