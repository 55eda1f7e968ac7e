"""Injectable time, so windows, backoff and retention are tested without sleeping."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Wall time for timestamps and monotonic time for intervals."""

    def now(self) -> datetime:
        """Current UTC wall time, timezone-aware."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock tests move by hand; sleepers wake when `advance` passes their deadline."""

    def __init__(self, start: datetime | None = None) -> None:
        self._wall = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._mono + seconds, future))
        await future

    def jump_wall(self, seconds: float) -> None:
        """Step the wall clock alone, as NTP or `date -s` does; monotonic time stays put."""
        self._wall += timedelta(seconds=seconds)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward and wake every sleeper now due."""
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)
        due = [f for deadline, f in self._sleepers if deadline <= self._mono]
        self._sleepers = [(d, f) for d, f in self._sleepers if d > self._mono]
        for future in due:
            if not future.done():
                future.set_result(None)
