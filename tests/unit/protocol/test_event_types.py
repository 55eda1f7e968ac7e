"""docs/events.md's event-type table and the EventType enum name the same set of types."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.protocol.events import EVENT_TYPE_PATTERN, EventType

DOC = Path(__file__).resolve().parents[3] / "docs" / "events.md"
_NAME = re.compile(r"`([^`]+)`")


def _documented_types() -> list[str]:
    """The backticked names in the first column of the table under `## Event types`."""
    section = DOC.read_text(encoding="utf-8").split("\n## Event types\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in _NAME.findall(row.split("|")[1])]


def test_the_doc_lists_exactly_the_event_types() -> None:
    documented = _documented_types()
    assert len(documented) == len(set(documented)), "a type is listed twice"
    assert set(documented) == {member.value for member in EventType}


def test_the_doc_names_each_type_rather_than_a_wildcard() -> None:
    for name in _documented_types():
        assert EVENT_TYPE_PATTERN.match(name), name


def test_event_types_are_their_wire_strings() -> None:
    assert EventType.SEAL_SEALED == "seal.sealed"
    assert f"{EventType.METER_READ_FAILED}" == "meter.read_failed"
    for member in EventType:
        assert EVENT_TYPE_PATTERN.match(member.value), member
        assert member.name == member.value.upper().replace(".", "_")
