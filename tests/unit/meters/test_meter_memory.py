"""meters.json: last state per meter and pending events survive a reload; corrupt is moved aside."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gateway.meters.memory import MeterMemory
from gateway.meters.model import MeterEventKind
from gateway.protocol.events import EventDraft, EventType, Priority

TS = datetime(2026, 5, 1, 12, tzinfo=UTC)


def _draft() -> EventDraft:
    data = {"meter": "M-1", "event": "cover_opened", "source": "counter", "count": 1}
    return EventDraft(EventType.METER_EVENT, "M-1", data, Priority.AUDIT, TS, id="01" + "A" * 24)


def test_state_and_pending_events_survive_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "meters.json"
    memory = MeterMemory.load(path)
    active = frozenset({MeterEventKind.COVER_OPENED})
    memory.remember("M-1", active, {MeterEventKind.COVER_OPENED: 3}, [_draft()])

    again = MeterMemory.load(path)
    assert again.state("M-1") == (active, {MeterEventKind.COVER_OPENED: 3})
    assert again.state("M-2") is None
    [pending] = again.pending()
    assert pending == _draft() and pending.id == _draft().id
    again.settle(pending.id)
    assert MeterMemory.load(path).pending() == []


def test_a_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "meters.json"
    path.write_text("{not json")
    memory = MeterMemory.load(path)
    assert memory.corrupt is not None and memory.corrupt.moved_to is not None
    assert memory.corrupt.moved_to.read_text() == "{not json"
    assert not path.exists() and memory.state("M-1") is None
