"""Event drafts as JSON lines (`sealgw probe drain --drafts`): round trip, strictness, caps."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ProtocolError
from gateway.protocol.draft_lines import decode_draft_line, encode_draft_line, read_draft_lines
from gateway.protocol.events import GENESIS_HASH, EventDraft, Priority, seal_event

MOMENT = datetime(2026, 1, 1, 8, 30, 15, 123000, tzinfo=UTC)


def _draft(**data: object) -> EventDraft:
    values = data or {"energy_kwh": 1000.25, "voltage_v": 229.7, "n": 7}
    return EventDraft("meter.reading", "M-0001", values, Priority.TELEMETRY, MOMENT)


def test_a_draft_read_back_seals_to_the_same_payload() -> None:
    draft = _draft()
    line = encode_draft_line(draft)
    again = decode_draft_line(line)

    assert again == draft
    assert seal_event(again, "gw-1", 1, GENESIS_HASH).payload == (
        seal_event(draft, "gw-1", 1, GENESIS_HASH).payload
    )


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.one_of(
            st.integers(-(2**53) + 1, 2**53 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=16),
            st.booleans(),
        ),
        max_size=6,
    )
)
def test_any_json_data_reads_back_to_the_same_canonical_data(data: dict[str, object]) -> None:
    draft = EventDraft("synthetic.sample", "SYNTHETIC", data, Priority.ALARM, MOMENT)  # type: ignore[arg-type]
    again = decode_draft_line(encode_draft_line(draft))

    # 4.5e16 reads back as the integer it is canonically written as: same bytes, same hash
    assert again.canonical_data == draft.canonical_data
    assert (again.id, again.ts, again.type, again.priority) == (
        draft.id,
        draft.ts,
        draft.type,
        draft.priority,
    )


def test_a_missing_id_gets_a_new_one() -> None:
    line = (
        '{"type":"meter.reading","subject":"M-1","priority":"state",'
        '"ts":"2026-01-01T00:00:00.000Z","data":{}}'
    )
    draft = decode_draft_line(line)

    assert len(draft.id) == 26 and draft.priority is Priority.STATE


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("[]", "not a JSON object"),
        ('{"type":"a.b"}', "missing"),
        (encode_draft_line(_draft())[:-1] + ',"extra":1}', "unknown ['extra']"),
        (encode_draft_line(_draft()).replace('"telemetry"', '"urgent"'), "unknown priority"),
        (encode_draft_line(_draft()).replace('"M-0001"', "7"), "subject is not a string"),
        (encode_draft_line(_draft()).replace(".123Z", ".123"), "timezone-aware"),
        (encode_draft_line(_draft()).replace("meter.reading", "Meter Reading"), "dotted"),
        ('{"data":{"a":1,"a":2}}', "duplicate"),
        ('{"data":' + "[" * 40 + "]" * 40 + "}", "deeper"),
    ],
)
def test_a_bad_line_is_refused_with_what_is_wrong(line: str, says: str) -> None:
    with pytest.raises(ProtocolError, match=says.replace("[", r"\[").replace("]", r"\]")):
        decode_draft_line(line)


def test_a_file_skips_blank_lines_and_names_the_bad_one() -> None:
    good = encode_draft_line(_draft())

    assert len(list(read_draft_lines([good, "\n", good.encode()]))) == 2
    with pytest.raises(ProtocolError, match="line 3: "):
        list(read_draft_lines([good, "", "{}"]))
