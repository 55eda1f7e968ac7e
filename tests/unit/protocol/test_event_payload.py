"""The fast event reader gives exactly what the reference path gives, for any payload."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ProtocolError
from gateway.protocol.canonical import canonical_json
from gateway.protocol.event_payload import _read_canonical, read_event_payload
from gateway.protocol.events import GENESIS_HASH, EventDraft, Priority, event_hash, seal_event
from gateway.protocol.strict_json import check_shape, load_object

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def reference_shape(data: bytes, max_depth: int = 32) -> str | None:
    """check_shape as it was written first: one token at a time."""
    depth = 0
    for match in _TOKENS.finditer(data):
        token = match.group()[0]
        if token in b"[{":
            depth += 1
            if depth > max_depth:
                return f"nesting deeper than {max_depth}"
        elif token != ord('"'):
            depth -= 1
    return None


def reference_read(payload: bytes) -> tuple[str, Any]:
    """("ok", (object, hash)) or ("error", exception type) from the reference path."""
    try:
        obj = load_object(payload, "event")
        return "ok", (obj, event_hash(obj))
    except (ProtocolError, ValueError, UnicodeError) as exc:
        return "error", type(exc)


def fast_read(payload: bytes) -> tuple[str, Any]:
    try:
        return "ok", read_event_payload(payload)
    except (ProtocolError, ValueError, UnicodeError) as exc:
        return "error", type(exc)


KEYS = st.sampled_from(["a", "hash", "b", "é", "\ue000", "\U0001f600", "\U00010000x", "z"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 5.0, 1e16, 1e21, 1e-7, 1e-5, 0.000001, 123.456]),
    st.text(max_size=6),
    st.sampled_from(['"', "\\", "\n", "\x00", "\ud800", ',"hash":"x"']),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(KEYS | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)
OBJECTS = st.dictionaries(KEYS, VALUES, max_size=5).map(lambda d: {**d, "data": d.get("data", {})})
TAME_SCALARS = st.one_of(
    st.integers(-(10**6), 10**6),
    st.integers(-(10**4), 10**4).map(lambda n: n / 8 + 0.125 if n % 8 == 0 else n / 8),
    st.text(alphabet='abcé\u4e2d"\\\n', max_size=5),
    st.booleans(),
)
TAME = st.dictionaries(
    st.sampled_from(["data", "gateway", "id", "seq", "ts", "type", "zz"]),
    st.recursive(
        TAME_SCALARS,
        lambda inner: st.dictionaries(st.text("abc", max_size=2), inner, max_size=3),
        max_leaves=8,
    ),
    max_size=6,
).map(lambda d: {**d, "data": d.get("data", {})})


def spellings(obj: dict[str, Any]) -> list[bytes]:
    """The same object written several ways: canonical (with its hash), Python's, spaced."""
    withhash = {**obj, "hash": obj.get("hash", GENESIS_HASH)}
    out = []
    for value in (obj, withhash):
        for text in (
            _try(lambda v=value: canonical_json(v)),
            json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
            json.dumps(value, sort_keys=True),
            json.dumps(value, separators=(",", ":"), ensure_ascii=False),
        ):
            if text is not None:
                out.append(text.encode("utf-8", "surrogatepass"))
    return out


def _try(make: Any) -> str | None:
    try:
        return str(make())
    except ValueError:
        return None


@settings(max_examples=400, deadline=None)
@given(OBJECTS)
def test_the_fast_reader_agrees_with_the_reference(obj: dict[str, Any]) -> None:
    for payload in spellings(obj):
        assert fast_read(payload) == reference_read(payload), payload


@settings(max_examples=300, deadline=None)
@given(TAME)
def test_the_fast_reader_agrees_on_ordinary_events(obj: dict[str, Any]) -> None:
    canonical = canonical_json({**obj, "hash": "0" * 64}).encode()
    assert _read_canonical(canonical) is not None  # the fast path is the one tested here
    for payload in spellings(obj):
        assert fast_read(payload) == reference_read(payload), payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80) | st.text(alphabet='[]{}"\\a,:0', max_size=80).map(str.encode))
def test_the_fast_reader_agrees_on_junk(data: bytes) -> None:
    assert fast_read(data) == reference_read(data)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='[]{}"\\a', max_size=120).map(str.encode), st.integers(1, 6))
def test_check_shape_agrees_with_the_token_walk(data: bytes, depth: int) -> None:
    assert check_shape(data, max_depth=depth) == reference_shape(data, depth)


def test_a_sealed_event_takes_the_fast_path_and_its_hash_verifies() -> None:
    data = {"values": {"voltage": {"value": 229.7, "unit": "V"}}, "meter": "M-1", "n": 3}
    event = seal_event(EventDraft("meter.reading", "M-1", data, Priority.TELEMETRY, T0), "gw-1", 7,
                       GENESIS_HASH)  # fmt: skip
    assert _read_canonical(event.payload) is not None
    obj, digest = read_event_payload(event.payload)
    assert digest == event.hash == obj["hash"]
    assert obj == json.loads(event.payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"data":{},"a":1,"a":2,"hash":"x"}',  # a repeated name
        b'{"data":{"x":NaN},"hash":"x"}',
        b'{"data":' * 40 + b"1" + b"}" * 40,
        b'{"data":{"x":5.0},"gateway":"g","hash":"x"}',  # Python's text, not JCS's
    ],
)
def test_payloads_the_fast_path_must_not_take(payload: bytes) -> None:
    assert fast_read(payload) == reference_read(payload)
