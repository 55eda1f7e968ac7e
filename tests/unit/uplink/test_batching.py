"""Cutting events into batch runs, and the linger that lets the last run grow."""

from __future__ import annotations

from collections import deque

import pytest

from gateway.protocol.batch import decode_batch
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import Priority
from gateway.uplink.batching import Batcher, BatchPolicy
from gateway.uplink.config import UplinkSection
from tests.fixtures.fake_buffer import FakeEventBuffer, PendingEvent


def _events(*priorities: Priority) -> list[PendingEvent]:
    buf = FakeEventBuffer()
    return [buf.add(priority) for priority in priorities]


def test_runs_are_consecutive_seqs_of_one_priority_within_the_bounds() -> None:
    t, a = Priority.TELEMETRY, Priority.ALARM
    events = _events(t, t, t, a, t, t, t, t, t)
    batcher = Batcher(BatchPolicy(max_events=3), ManualClock())
    ordered = sorted(events, key=lambda e: (e.priority, e.seq))  # as the buffer hands them out
    runs = batcher.runs(ordered)
    assert [[e.seq for e in run.events] for run in runs] == [[4], [1, 2, 3], [5, 6, 7], [8, 9]]
    assert [run.full for run in runs] == [False, True, True, False]


def test_the_byte_bound_cuts_a_run() -> None:
    events = _events(*[Priority.TELEMETRY] * 6)
    size = len(events[0].payload)
    batcher = Batcher(BatchPolicy(max_bytes=2 * size + 10), ManualClock())
    assert [len(run.events) for run in batcher.runs(events)] == [2, 2, 2]


def test_a_run_is_taken_off_the_read_ahead_and_only_the_last_one_may_wait() -> None:
    t, s = Priority.TELEMETRY, Priority.STATE
    batcher = Batcher(BatchPolicy(max_events=4), ManualClock())
    events = _events(t, t, t, s, s, s, s, s, t)
    queue = deque(sorted(events, key=lambda e: (e.priority, e.seq)))  # as the buffer does
    taken = []
    while queue:
        run, last = batcher.take_run(queue, 100, ())
        taken.append(([e.seq for e in run.events], run.full, last))
    assert taken == [
        ([4, 5, 6, 7], True, False),
        ([8], False, False),  # the next event is of another priority: complete
        ([1, 2, 3], False, False),  # a seq gap ends it too
        ([9], False, True),  # took the rest of the queue and is not full: may wait
    ]


def test_a_run_stops_at_the_limit_and_before_a_seq_in_flight() -> None:
    batcher = Batcher(BatchPolicy(max_events=100), ManualClock())
    queue = deque(_events(*[Priority.AUDIT] * 6))
    run, last = batcher.take_run(queue, 2, ())  # a paced drain grants two events
    assert ([e.seq for e in run.events], run.full, last) == ([1, 2], False, False)
    run, last = batcher.take_run(queue, 100, {5})  # seq 5 was sent already
    assert ([e.seq for e in run.events], last) == ([3, 4], False)


def test_the_last_run_lingers_until_full_or_due_and_alarms_never_do() -> None:
    clock = ManualClock()
    batcher = Batcher(BatchPolicy(max_events=4, linger_s=2.0), clock)
    (partial,) = batcher.runs(_events(Priority.TELEMETRY, Priority.TELEMETRY))
    assert batcher.hold(partial, flushing=False) == 2.0
    clock.advance(1.5)
    assert batcher.hold(partial, flushing=False) == 0.5
    clock.advance(0.5)
    assert batcher.hold(partial, flushing=False) is None  # due: send it
    assert batcher.hold(partial, flushing=True) is None
    (alarm,) = batcher.runs(_events(Priority.ALARM))
    assert batcher.hold(alarm, flushing=False) is None
    (full,) = batcher.runs(_events(*[Priority.STATE] * 4))
    assert batcher.hold(full, flushing=False) is None


def test_a_run_encodes_to_one_batch_of_the_same_events() -> None:
    events = _events(*[Priority.AUDIT] * 5)
    batcher = Batcher(BatchPolicy(), ManualClock())
    (run,) = batcher.runs(events)
    message = batcher.encode(run)
    assert message is not None
    assert decode_batch(message, "gw-test").payloads == tuple(e.payload for e in events)


def test_a_backlog_of_old_events_does_not_linger() -> None:
    clock = ManualClock()
    batcher = Batcher(BatchPolicy(max_events=100, linger_s=2.0), clock)
    (fresh,) = batcher.runs(_events(Priority.TELEMETRY))  # ts = the clock's start
    clock.advance(1.0)
    assert batcher.hold(fresh, flushing=False) == pytest.approx(1.0, abs=0.01)  # from its ts
    clock.advance(3600)
    (old,) = batcher.runs(_events(Priority.TELEMETRY))
    assert batcher.hold(old, flushing=False) is None


def test_json_is_the_default_encoding() -> None:
    assert BatchPolicy.from_settings(UplinkSection()) is None
    policy = BatchPolicy.from_settings(UplinkSection(encoding="batch", batch_linger_s=0.5))
    assert policy == BatchPolicy(256, 262_144, 0.5)
