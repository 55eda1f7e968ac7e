"""Chain verification finds gaps, edits, re-hashed forgeries and conflicts; tolerates order."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

from gateway.protocol.chain import verify_chain
from gateway.protocol.events import GENESIS_HASH, EventDraft, Priority, event_hash, seal_event

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def make_chain(count: int, gateway: str = "gw-1") -> list[dict[str, Any]]:
    events, prev = [], GENESIS_HASH
    for seq in range(1, count + 1):
        draft = EventDraft("meter.reading", "M-1", {"n": seq}, Priority.TELEMETRY, NOW)
        event = seal_event(draft, gateway, seq, prev)
        events.append(json.loads(event.payload))
        prev = event.hash
    return events


def test_shuffled_chain_with_duplicates_verifies() -> None:
    events = make_chain(30) + make_chain(5, "gw-2")
    received = events + events[3:9]
    random.Random(7).shuffle(received)
    report = verify_chain(received)
    assert report.ok, report.problems
    assert report.duplicates == 6
    assert report.heads == {"gw-1": 30, "gw-2": 5}


def test_missing_event_is_a_gap() -> None:
    events = make_chain(10)
    del events[4]
    report = verify_chain(events)
    assert [(p.kind, p.seq) for p in report.problems] == [("gap", 5)]


def test_edited_event_is_named() -> None:
    events = make_chain(10)
    events[6]["data"]["n"] = 999
    report = verify_chain(events)
    assert [(p.kind, p.seq) for p in report.problems] == [("edited", 7)]


def test_rehashed_forgery_breaks_the_next_link() -> None:
    events = make_chain(10)
    events[6]["data"]["n"] = 999
    events[6]["hash"] = event_hash(events[6])
    report = verify_chain(events)
    assert [(p.kind, p.seq) for p in report.problems] == [("broken_link", 8)]


def test_two_events_with_one_seq_conflict() -> None:
    events = make_chain(4)
    other = make_chain(4)[2]
    other["id"] = "01ZZZZZZZZZZZZZZZZZZZZZZZZ"
    other["hash"] = event_hash(other)
    report = verify_chain([*events, other])
    assert [(p.kind, p.seq) for p in report.problems] == [("conflict", 3)]


def test_announced_eviction_is_not_a_gap() -> None:
    events = make_chain(10)
    notice = EventDraft(
        "gateway.telemetry_evicted",
        "gw-1",
        {"first_seq": 3, "last_seq": 5, "count": 3},
        Priority.STATE,
        NOW,
    )
    sealed = json.loads(seal_event(notice, "gw-1", 11, events[-1]["hash"]).payload)
    kept = [e for e in events if e["seq"] not in (3, 4, 5)] + [sealed]
    report = verify_chain(kept)
    assert report.ok, report.problems
    assert not verify_chain(kept[:-1]).ok
