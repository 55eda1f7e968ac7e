"""Guards around wall time: jump detection, a jump-proof retention cutoff, the kernel's sync flag.

The gateway stamps events and checks ticket windows with wall time, and measures intervals with
the monotonic clock (docs/deploy.md lists every use). Wall time can jump: NTP stepping a Pi
that booted at its last shutdown time, an RTC battery gone flat, an operator's `date -s`.
- `JumpDetector` compares how far each clock moved since the last look; a difference beyond a
  threshold is a jump (the daemon raises gateway.clock_jump).
- `MonotonicCutoff` lets a wall-clock retention cutoff advance no faster than the monotonic
  clock, so a jump forward does not make every retained row look old at once.
- `clock_synchronized()` asks the kernel (adjtimex) whether NTP (or chrony) has the clock in
  sync; DL/T 645 meters are never time-synced from a clock that is not.
- `OffsetClock` adds an offset read from a file to the wall time: only tests use it (the daemon
  installs it when SEALGW_TEST_CLOCK_OFFSET_FILE is set), to jump the daemon's clock at will.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

from gateway.protocol.clock import Clock

__all__ = [
    "OFFSET_FILE_ENV",
    "SYNCED_ENV",
    "JumpDetector",
    "MonotonicCutoff",
    "OffsetClock",
    "clock_synchronized",
]

_log = logging.getLogger(__name__)

OFFSET_FILE_ENV = "SEALGW_TEST_CLOCK_OFFSET_FILE"
"""Tests only: a file holding seconds (float) added to the daemon's wall clock."""
SYNCED_ENV = "SEALGW_TEST_CLOCK_SYNCED"
"""Tests only: "1" or "0" overrides the kernel's clock-synchronised flag."""

_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised (STA_UNSYNC)
_TIMEX_BYTES = 512  # larger than struct timex on every Linux ABI; modes = 0 only reads


class JumpDetector:
    """Finds wall-clock jumps: wall and monotonic time moving apart by more than a threshold."""

    def __init__(self, clock: Clock, threshold_s: float) -> None:
        self.clock = clock
        self.threshold_s = threshold_s
        self._wall = clock.now()
        self._mono = clock.monotonic()

    def check(self) -> tuple[float, datetime, datetime] | None:
        """(jump in seconds, wall time expected, wall time found) when the clock jumped."""
        wall, mono = self.clock.now(), self.clock.monotonic()
        expected = self._wall + timedelta(seconds=mono - self._mono)
        self._wall, self._mono = wall, mono
        jump = (wall - expected).total_seconds()
        if abs(jump) <= self.threshold_s:
            return None
        return jump, expected, wall


class MonotonicCutoff:
    """A retention cutoff in wall seconds that never runs ahead of the monotonic clock."""

    def __init__(self, clock: Clock, slack_s: float = 60.0) -> None:
        self.clock = clock
        self.slack_s = slack_s
        self._wall = clock.now().timestamp()
        self._mono = clock.monotonic()

    def cutoff(self, age_s: float) -> float:
        """Wall time before which rows are `age_s` old, bounded by the monotonic elapsed time.

        After a jump forward the bound holds the cutoff back, so rows age at the real rate;
        after a jump back the wall time itself is lower, and nothing is pruned early either.
        """
        wanted = self.clock.now().timestamp() - age_s
        elapsed = self.clock.monotonic() - self._mono
        bound = self._wall + elapsed + self.slack_s - age_s
        return min(wanted, bound)


def clock_synchronized() -> bool | None:
    """Whether the kernel says the clock is synchronised; None when it cannot be asked."""
    forced = os.environ.get(SYNCED_ENV)
    if forced is not None:
        return forced.strip() not in ("0", "no", "false")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        timex = ctypes.create_string_buffer(_TIMEX_BYTES)  # modes = 0: read only
        state = int(libc.adjtimex(timex))
    except (OSError, AttributeError) as exc:
        _log.debug("adjtimex unavailable: %s", exc)
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


class OffsetClock:
    """Another clock plus an offset read from a file (re-read at most once a second); tests only."""

    def __init__(self, base: Clock, offset_file: Path) -> None:
        self.base = base
        self.offset_file = offset_file
        self._offset = 0.0
        self._read_at: float | None = None

    def now(self) -> datetime:
        return self.base.now() + timedelta(seconds=self._current_offset())

    def monotonic(self) -> float:
        return self.base.monotonic()

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)

    def _current_offset(self) -> float:
        mono = self.base.monotonic()
        if self._read_at is None or mono - self._read_at >= 1.0:
            self._read_at = mono
            with contextlib.suppress(OSError, ValueError):
                self._offset = float(self.offset_file.read_text().strip() or 0)
        return self._offset
