"""The batch codec: every event rebuilt byte for byte, hostile messages refused cleanly."""

from __future__ import annotations

import contextlib
import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocol.batch import (
    DICTIONARY,
    DICTIONARY_WORDS,
    HEADER_DEFLATE,
    HEADER_PLAIN,
    BatchDecodeError,
    decode_batch,
)
from gateway.protocol.batch_encode import encode_batch
from gateway.protocol.batch_format import BatchEncodeError
from gateway.protocol.chain import verify_chain
from gateway.protocol.events import GENESIS_HASH, Event, EventDraft, Priority, seal_event

GATEWAY = "gw-0001"
T0 = datetime(2026, 11, 22, 10, 45, 14, 123000, tzinfo=UTC)
EDGE_FLOATS = [
    0.1 + 0.2, 1e21, 1e20, 123456789012345680000.0, 1e-6, 1e-7, 5e-324, 1.7976931348623157e308,
    -0.0, 0.0, -1.5, 2.0**53, 2.0**53 + 2, 1 / 3, -1e-300, 9.999999999999999e22, 100.0, 230.1,
]  # fmt: skip
EDGE_INTS = [0, -1, 2**53 - 1, 2**53, 2**53 + 1, -(2**53) - 1, 2**63, -(2**64), 10**21, 10**30]


def sealed(
    specs: Sequence[tuple[str, str, Mapping[str, Any]]],
    *,
    priority: Priority = Priority.TELEMETRY,
    first_seq: int = 1,
    prev_hash: str = GENESIS_HASH,
    step: timedelta = timedelta(milliseconds=7),
    ids: Sequence[str] | None = None,
) -> list[Event]:
    """Events sealed into a chain the way the buffer does it."""
    events = []
    ts = T0
    for index, (type_, subject, data) in enumerate(specs):
        ts += step
        draft_id = ids[index] if ids else ""
        draft = EventDraft(type_, subject, data, priority, ts, id=draft_id)
        event = seal_event(draft, GATEWAY, first_seq + index, prev_hash)
        prev_hash = event.hash
        events.append(event)
    return events


def reading(meter: str, values: Mapping[str, float | int], unit: str | None = "V") -> Any:
    entries = {
        name: ({"value": value, "unit": unit} if unit is not None else {"value": value})
        for name, value in values.items()
    }
    return ("meter.reading", meter, {"meter": meter, "protocol": "modbus", "values": entries})


def round_trip(events: Sequence[Event], *, compress: bool = True) -> tuple[bytes, ...]:
    message = encode_batch([e.payload for e in events], compress=compress)
    decoded = decode_batch(message, GATEWAY)
    assert decoded.first_seq == events[0].seq
    assert decoded.priority is events[0].priority
    return decoded.payloads


# -- round trips ------------------------------------------------------------------------------


def test_readings_are_rebuilt_byte_for_byte_and_much_smaller() -> None:
    events = sealed([
        reading(f"M-{n:03d}", {"voltage_l1": 230.1 + n / 10, "current_l1": 5.123, "pf": 0.98})
        for n in range(50)
    ])  # fmt: skip
    message = encode_batch([e.payload for e in events])
    assert message[0] == HEADER_DEFLATE
    assert decode_batch(message, GATEWAY).payloads == tuple(e.payload for e in events)
    assert len(message) * 8 < sum(len(e.payload) for e in events)


@pytest.mark.parametrize("compress", [True, False])
def test_mixed_events_with_edge_numbers_round_trip(compress: bool) -> None:
    events = sealed([
        reading("M-1", {f"f{i}": value for i, value in enumerate(EDGE_FLOATS)}),
        reading("M-2", {f"i{i}": value for i, value in enumerate(EDGE_INTS)}, unit=None),
        ("gateway.health", GATEWAY, {"floats": EDGE_FLOATS, "ints": EDGE_INTS, "none": None}),
        ("seal.sealed", "SL-0001", {"text": "封印 ✓ \u2028 \"q\" \\ \x01", "nested": {"a": [{}]}}),
        ("gateway.stopped", GATEWAY, {}),
        ("meter.reading", "M-3", {"values": {}}),
        ("meter.reading", "M-4", {"values": {"x": {"value": True}}}),
        ("meter.reading", "M-5", {"values": {"x": {"value": 1, "unit": 2}}}),
    ], priority=Priority.AUDIT)  # fmt: skip
    assert round_trip(events, compress=compress) == tuple(e.payload for e in events)


def test_ids_and_timestamps_of_any_form_survive() -> None:
    ids = ["", "not-a-ulid", "01KQ8ZJ7Y3M2V5T0W9X4C6B8N1", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ", "ü"]
    events = sealed([("seal.sealed", "SL-1", {"n": n}) for n in range(5)], ids=ids)
    assert round_trip(events) == tuple(e.payload for e in events)


def test_a_batch_mid_chain_verifies_with_the_rest_of_the_chain() -> None:
    events = sealed([reading(f"M-{n}", {"v": n}) for n in range(30)])
    first, second = events[:12], events[12:]
    rebuilt = round_trip(first) + round_trip(second)
    report = verify_chain(json.loads(payload) for payload in rebuilt)
    assert report.ok
    assert report.heads == {GATEWAY: 30}


def test_a_resend_recreates_exactly_the_same_events() -> None:
    events = sealed([reading(f"M-{n}", {"v": n * 1.5}) for n in range(20)])
    once = encode_batch([e.payload for e in events])
    again = encode_batch([e.payload for e in events])
    assert once == again
    assert decode_batch(again, GATEWAY).payloads == tuple(e.payload for e in events)


# -- what the encoder refuses -----------------------------------------------------------------


def test_the_encoder_refuses_what_is_not_one_run() -> None:
    events = sealed([reading(f"M-{n}", {"v": n}) for n in range(4)])
    with pytest.raises(BatchEncodeError, match="consecutive"):
        encode_batch([events[0].payload, events[2].payload])
    with pytest.raises(BatchEncodeError, match="empty"):
        encode_batch([])
    other = sealed([("seal.tamper", "SL-1", {})], priority=Priority.ALARM, first_seq=5)
    with pytest.raises(BatchEncodeError, match="one priority"):
        encode_batch([events[3].payload, other[0].payload])
    forked = sealed([reading("M-9", {"v": 1})], first_seq=2, prev_hash="ab" * 32)
    with pytest.raises(BatchEncodeError, match="link"):
        encode_batch([events[0].payload, forked[0].payload])


# -- hostile messages -------------------------------------------------------------------------


def test_a_tampered_batch_does_not_decode() -> None:
    events = sealed([reading(f"M-{n}", {"v": n}) for n in range(5)])
    root = cbor2.loads(encode_batch([e.payload for e in events], compress=False)[1:])
    root[7][2][4][2][0] += 1  # one value of the third reading
    tampered = bytes((HEADER_PLAIN,)) + cbor2.dumps(root)
    with pytest.raises(BatchDecodeError, match="last hash"):
        decode_batch(tampered, GATEWAY)
    with pytest.raises(BatchDecodeError, match="last hash"):
        decode_batch(encode_batch([e.payload for e in events]), "gw-other")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\x00",
        b"\x12abc",
        bytes((HEADER_PLAIN,)),
        bytes((HEADER_PLAIN,)) + cbor2.dumps([1, 2, 3]),
        bytes((HEADER_PLAIN,)) + cbor2.dumps({"a": 1}),
        bytes((HEADER_DEFLATE,)) + b"not deflate",
        bytes((HEADER_PLAIN,)) + cbor2.dumps([1, 3, 1, b"\0" * 32, b"\0" * 32, [], [], []]),
        bytes((HEADER_PLAIN,)) + cbor2.dumps([1, 9, 1, b"\0" * 32, b"\0" * 32, ["a.b"], [], [[0]]]),
        bytes((HEADER_PLAIN,))
        + cbor2.dumps([1, 3, 1, b"\0" * 32, b"\0" * 32, ["a.b"], [], [[0, "x", 0, "S", [5]]]]),
        bytes((HEADER_PLAIN,))
        + cbor2.dumps([1, 3, 1, b"\0" * 32, b"\0" * 32, ["a.b"], [], [[0, "x", 0, "S", {1: 2}]]]),
        bytes((HEADER_PLAIN,))
        + cbor2.dumps(
            [
                1,
                3,
                1,
                b"\0" * 32,
                b"\0" * 32,
                ["a.b"],
                [[["v"], [None], [9999]]],
                [[0, "x", 0, "S", [0, {}, [1]]]],
            ]
        ),
    ],
)
def test_malformed_messages_raise_batch_decode_error(message: bytes) -> None:
    with pytest.raises(BatchDecodeError):
        decode_batch(message, GATEWAY)


def test_a_deflate_bomb_is_refused() -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    bomb = packer.compress(b"\0" * (64 * 1024 * 1024)) + packer.flush()
    with pytest.raises(BatchDecodeError, match="size limit"):
        decode_batch(bytes((HEADER_DEFLATE,)) + bomb, GATEWAY)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_batch_decode_error(noise: bytes) -> None:
    for message in (noise, bytes((HEADER_PLAIN,)) + noise, bytes((HEADER_DEFLATE,)) + noise):
        with contextlib.suppress(BatchDecodeError):
            decode_batch(message, GATEWAY)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_a_flipped_byte_is_refused_or_changes_nothing(position: int, value: int) -> None:
    events = sealed([reading(f"M-{n}", {"v": n / 10, "w": n}) for n in range(6)])
    message = bytearray(encode_batch([e.payload for e in events]))
    message[position % len(message)] = value
    try:
        rebuilt = decode_batch(bytes(message), GATEWAY).payloads
    except BatchDecodeError:
        return
    assert rebuilt == tuple(e.payload for e in events)


def test_the_dictionary_is_frozen() -> None:
    """Changing the preset dictionary breaks every deployed decoder: it needs a new header."""
    assert len(DICTIONARY_WORDS) == len(set(DICTIONARY_WORDS))
    assert hashlib.sha256(DICTIONARY).hexdigest() == (
        "3d10592a1c35ee57db7ad21b61fde25da00b977279cb8e065d5dc836ff6aa5ef"
    )


# -- the property -----------------------------------------------------------------------------

finite_floats = st.one_of(
    st.sampled_from(EDGE_FLOATS), st.floats(allow_nan=False, allow_infinity=False)
)
numbers = st.one_of(
    finite_floats, st.integers(min_value=-(10**40), max_value=10**40), st.sampled_from(EDGE_INTS)
)
keys = st.text(max_size=8)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
units = st.one_of(st.none(), st.sampled_from(["V", "A", "kWh", ""]), st.text(max_size=3))
reading_values = st.dictionaries(
    keys,
    st.tuples(numbers, units).map(
        lambda pair: {"value": pair[0]} if pair[1] is None else {"value": pair[0], "unit": pair[1]}
    ),
    min_size=1,
    max_size=6,
)
subjects = st.from_regex(r"\A[A-Za-z0-9._:-]{1,12}\Z")
types = st.sampled_from(["meter.reading", "gateway.health", "seal.sealed", "x.y_z"])
datas = st.one_of(
    st.dictionaries(keys, json_values, max_size=5),
    st.builds(lambda values, meter: {"meter": meter, "values": values}, reading_values, subjects),
    st.just({}),
)
moments = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
)
ids = st.one_of(st.just(""), st.text(max_size=30))


@st.composite
def event_runs(draw: st.DrawFn) -> list[Event]:
    count = draw(st.integers(min_value=1, max_value=12))
    priority = draw(st.sampled_from(list(Priority)))
    first_seq = draw(st.integers(min_value=1, max_value=2**40))
    prev_hash = draw(st.binary(min_size=32, max_size=32)).hex()
    events, ts = [], draw(moments)
    for index in range(count):
        if draw(st.booleans()):
            ts = draw(moments)  # timestamps may jump back and forth
        draft = EventDraft(draw(types), draw(subjects), draw(datas), priority, ts, id=draw(ids))
        event = seal_event(draft, GATEWAY, first_seq + index, prev_hash)
        prev_hash = event.hash
        events.append(event)
    return events


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_runs(), st.booleans())
def test_property_batch_then_decode_gives_identical_canonical_json(
    events: list[Event], compress: bool
) -> None:
    message = encode_batch([e.payload for e in events], compress=compress)
    decoded = decode_batch(message, GATEWAY)
    assert decoded.payloads == tuple(e.payload for e in events)
    assert [json.loads(p)["hash"] for p in decoded.payloads] == [e.hash for e in events]
    assert decoded.last_seq == events[-1].seq


@st.composite
def reading_runs(draw: st.DrawFn) -> list[Event]:
    """Runs of readings of one shape (the encoder reads those whole by one pattern), now and
    then with names, meters or ids that need escapes, and other events in between."""
    plain = st.from_regex(r"\A[a-z][a-z0-9_]{0,11}\Z")
    names = draw(
        st.lists(st.one_of(plain, plain, plain, keys), min_size=1, max_size=5, unique=True)
    )
    plain_units = st.sampled_from(["V", "A", "kWh", "Hz", "", "°C"])
    shape = {name: draw(st.one_of(st.none(), plain_units, plain_units, units)) for name in names}
    count = draw(st.integers(min_value=1, max_value=16))
    first_seq = draw(st.integers(min_value=1, max_value=2**40))
    prev_hash, events, ts = GENESIS_HASH, [], draw(moments)
    for index in range(count):
        ts += timedelta(milliseconds=draw(st.integers(min_value=-5000, max_value=90_000)))
        values = {
            name: {"value": draw(numbers)}
            if unit is None
            else {"value": draw(numbers), "unit": unit}
            for name, unit in shape.items()
        }
        meter = draw(st.one_of(*[st.from_regex(r"\AM-[0-9]{4}\Z")] * 3, st.text(max_size=6)))
        data: dict[str, Any] = {"meter": meter, "protocol": "modbus", "values": values}
        kind = "meter.reading"
        if draw(st.integers(min_value=0, max_value=9)) == 0:
            kind, data = "gateway.health", draw(st.dictionaries(keys, json_values, max_size=3))
        event_id = draw(st.one_of(st.just(""), st.just(""), ids))  # "": a ULID of the ts
        draft = EventDraft(kind, draw(subjects), data, Priority.TELEMETRY, ts, id=event_id)
        event = seal_event(draft, GATEWAY, first_seq + index, prev_hash)
        prev_hash = event.hash
        events.append(event)
    return events


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reading_runs())
def test_property_readings_of_one_shape_give_identical_canonical_json(
    events: list[Event],
) -> None:
    decoded = decode_batch(encode_batch([e.payload for e in events]), GATEWAY)
    assert decoded.payloads == tuple(e.payload for e in events)
    assert [json.loads(p)["hash"] for p in decoded.payloads] == [e.hash for e in events]


# -- the worked example of docs/mqtt.md -------------------------------------------------------

DOC = Path(__file__).resolve().parents[3] / "docs" / "mqtt.md"
EXAMPLE_HEX = (
    "1088010319126758204e07000000000000000000000000000000000000000000"
    "00000000000000000058209d6e772cea5392d6832be810c6cc692c4c6da3dbc0"
    "349c6d6190ad11b0a5df84816d6d657465722e72656164696e67818383696375"
    "7272656e745f61781b666f72776172645f6163746976655f656e657267795f74"
    "6f74616c69766f6c746167655f61836141636b576861568322212082851b0000"
    "01a202dc32f34a0123456789abcdef012300644d2d30318300a2656d65746572"
    "644d2d30316870726f746f636f6c66646c74363435831914031a0001e29e1908"
    "fd8518284a0123456789abcdef012400644d2d30328300a2656d65746572644d"
    "2d30326870726f746f636f6c66646c743634358338fc398bf022"
)


def _ulid(millis: int, randomness: int) -> str:
    value = millis << 80 | randomness
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "".join(alphabet[(value >> shift) & 31] for shift in range(125, -1, -5))


def test_the_worked_example_of_the_docs_is_what_the_codec_produces() -> None:
    prev_hash, events = "4e07" + "0" * 60, []
    for index, (meter, volts, amps, kwh) in enumerate(
        [("M-01", 230.1, 5.123, 1235.5), ("M-02", 229.8, 4.87, 877.25)]
    ):
        ts = datetime(2026, 11, 22, 10, 45, 15, 123000, tzinfo=UTC) + timedelta(
            milliseconds=40 * index
        )
        values = {
            "voltage_a": {"value": volts, "unit": "V"},
            "current_a": {"value": amps, "unit": "A"},
            "forward_active_energy_total": {"value": kwh, "unit": "kWh"},
        }
        data = {"meter": meter, "protocol": "dlt645", "values": values}
        ulid = _ulid(int(ts.timestamp() * 1000), 0x0123456789ABCDEF0123 + index)
        draft = EventDraft("meter.reading", meter, data, Priority.TELEMETRY, ts, id=ulid)
        event = seal_event(draft, "gw-0001", 4711 + index, prev_hash)
        prev_hash = event.hash
        events.append(event)
    doc = DOC.read_text(encoding="utf-8")
    for event in events:
        assert event.payload.decode() in doc
    plain = encode_batch([e.payload for e in events], compress=False)
    packed = encode_batch([e.payload for e in events])
    assert plain.hex() == EXAMPLE_HEX
    assert f"is {len(plain)} bytes (deflated, header `0x11`: {len(packed)})" in doc
    assert decode_batch(packed, "gw-0001").payloads == tuple(e.payload for e in events)
