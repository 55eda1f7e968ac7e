"""Wall-clock guards: jump detection, the monotonic-bounded cutoff, derived event ids."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.protocol.clock import ManualClock
from gateway.protocol.events import derived_event_id
from gateway.protocol.wallclock import (
    SYNCED_ENV,
    JumpDetector,
    MonotonicCutoff,
    OffsetClock,
    clock_synchronized,
)


def test_jump_detector_sees_steps_not_time_passing() -> None:
    clock = ManualClock()
    detector = JumpDetector(clock, threshold_s=10)
    clock.advance(3600)
    assert detector.check() is None
    clock.jump_wall(-4 * 86400)
    found = detector.check()
    assert found is not None and found[0] == pytest.approx(-4 * 86400)
    assert detector.check() is None  # reported once, then the new time is the reference


def test_cutoff_advances_no_faster_than_the_monotonic_clock() -> None:
    clock = ManualClock()
    cutoff = MonotonicCutoff(clock, slack_s=0)
    start = clock.now().timestamp()
    clock.advance(100)
    assert cutoff.cutoff(3600) == pytest.approx(start + 100 - 3600)
    clock.jump_wall(4 * 86400)
    assert cutoff.cutoff(3600) == pytest.approx(start + 100 - 3600)
    clock.jump_wall(-8 * 86400)  # backwards: the wall time itself is the lower one
    assert cutoff.cutoff(3600) == pytest.approx(start + 100 - 4 * 86400 - 3600)


def test_derived_ids_are_deterministic_ulids() -> None:
    moment = datetime(2026, 5, 1, tzinfo=UTC)
    first = derived_event_id(moment, "meter.event|M-1|cover_opened|counter|3")
    assert first == derived_event_id(moment, "meter.event|M-1|cover_opened|counter|3")
    assert first != derived_event_id(moment, "meter.event|M-1|cover_opened|counter|4")
    assert len(first) == 26


def test_offset_clock_reads_its_offset_file(tmp_path: Path) -> None:
    base = ManualClock()
    offset = tmp_path / "offset"
    offset.write_text("-86400")
    clock = OffsetClock(base, offset)
    assert (base.now() - clock.now()).total_seconds() == pytest.approx(86400)


def test_the_sync_flag_can_be_forced_for_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SYNCED_ENV, "0")
    assert clock_synchronized() is False
    monkeypatch.setenv(SYNCED_ENV, "1")
    assert clock_synchronized() is True
