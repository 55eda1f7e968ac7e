"""Canonical JSON (RFC 8785) and the event hash chain."""

from __future__ import annotations

import json
import re
import struct
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol.canonical import canonical_json, format_number
from gateway.protocol.events import (
    GENESIS_HASH,
    Event,
    EventDraft,
    Priority,
    event_hash,
    new_event_id,
    seal_event,
)

# Number vectors from RFC 8785 appendix B: IEEE 754 bits -> ECMAScript text.
RFC8785_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]
ES_NUMBER = re.compile(r"^-?(0|[1-9]\d*)(\.\d*[1-9])?(e[+-][1-9]\d*)?$")
NOW = datetime(2026, 11, 22, 10, 45, 14, 123000, tzinfo=UTC)


@pytest.mark.parametrize(("bits", "text"), RFC8785_NUMBERS)
def test_rfc8785_number_vectors(bits: str, text: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    assert format_number(value) == text


def test_integers_beyond_the_double_range_are_written_as_the_double_they_denote() -> None:
    assert canonical_json([2**53 - 1, 2**53 + 1]) == "[9007199254740991,9007199254740992]"


def test_object_members_sort_by_utf16_code_units() -> None:
    value = {"\ufb01": 2, "\U0001f600": 1, "é": True, "b": [1, 2.0, "x\n"], "a": None}
    assert canonical_json(value) == '{"a":null,"b":[1,2,"x\\n"],"é":true,"😀":1,"ﬁ":2}'


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2**1100, {1: 2}, {"a": object()}])
def test_values_without_an_exact_json_form_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"JSON|integer|keys"):
        canonical_json(bad)


@settings(max_examples=400)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_text_round_trips_and_has_ecmascript_shape(value: float) -> None:
    text = format_number(value)
    assert ES_NUMBER.match(text), text
    assert float(text) == value or (value == 0 and float(text) == 0)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200)
@given(json_values)
def test_canonical_form_is_stable_through_a_parse(value: object) -> None:
    text = canonical_json(value)
    assert canonical_json(json.loads(text)) == text


def draft(n: int = 1, priority: Priority = Priority.TELEMETRY) -> EventDraft:
    data = {"energy_kwh": 1234.5 + n, "phase": "A", "n": n}
    return EventDraft("meter.reading", "M-01", data, priority, NOW + timedelta(seconds=n))


def test_sealed_event_payload_verifies_and_parses_back() -> None:
    event = seal_event(draft(), "gw-1", 1, GENESIS_HASH)
    obj = json.loads(event.payload)
    assert event_hash(obj) == event.hash == obj["hash"]
    assert obj["ts"] == "2026-11-22T10:45:15.123Z"
    assert obj["priority"] == "telemetry"
    assert canonical_json(obj).encode() == event.payload
    parsed = Event.from_payload(event.payload)
    assert (parsed.seq, parsed.id, parsed.priority) == (1, event.id, Priority.TELEMETRY)


def test_chain_links_and_any_edit_breaks_the_hash() -> None:
    first = seal_event(draft(1), "gw-1", 1, GENESIS_HASH)
    second = seal_event(draft(2), "gw-1", 2, first.hash)
    assert json.loads(second.payload)["prev_hash"] == first.hash
    edited = json.loads(second.payload)
    edited["data"]["energy_kwh"] = 1.0
    assert event_hash(edited) != second.hash


def test_payload_is_exactly_the_published_keys() -> None:
    obj = json.loads(seal_event(draft(), "gw-1", 7, GENESIS_HASH).payload)
    assert sorted(obj) == sorted(
        [
            "v",
            "id",
            "gateway",
            "seq",
            "ts",
            "type",
            "subject",
            "priority",
            "data",
            "prev_hash",
            "hash",
        ]
    )


def test_event_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_event_id(NOW + timedelta(milliseconds=i)) for i in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)


@pytest.mark.parametrize(
    ("type_", "subject"),
    [
        ("Seal.Sealed", "S1"),
        ("seal", "S1"),
        ("seal/x.y", "S1"),
        ("seal.sealed", "S 1"),
        ("seal.sealed", ""),
        ("seal.sealed", "S/1"),
    ],
)
def test_bad_type_or_subject_is_refused(type_: str, subject: str) -> None:
    with pytest.raises(ValueError, match=r"type|subject"):
        EventDraft(type_, subject, {}, Priority.AUDIT, NOW)


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        EventDraft("seal.sealed", "S1", {}, Priority.AUDIT, datetime(2026, 1, 1))


def test_priority_wire_names_round_trip() -> None:
    for priority in Priority:
        assert Priority.from_wire(priority.wire_name) is priority
    with pytest.raises(ValueError, match="unknown priority"):
        Priority.from_wire("urgent")


def test_data_without_a_json_form_fails_at_the_producer_not_in_a_batch() -> None:
    from decimal import Decimal

    with pytest.raises(ValueError, match="canonical JSON"):
        EventDraft("meter.reading", "M-1", {"kwh": Decimal("1.5")}, Priority.TELEMETRY, NOW)
    ok = EventDraft("meter.reading", "M-1", {"kwh": 1.5}, Priority.TELEMETRY, NOW)
    assert ok.canonical_data == '{"kwh":1.5}'


def test_replace_recomputes_the_canonical_data() -> None:
    import dataclasses

    first = EventDraft("meter.reading", "M-1", {"kwh": 1}, Priority.TELEMETRY, NOW)
    second = dataclasses.replace(first, data={"kwh": 2})
    assert second.canonical_data == '{"kwh":2}'
