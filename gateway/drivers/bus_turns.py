"""Turn-taking on one shared meter line, for the Modbus and DL/T 645 bus owners.

A bus owner holds a BusTurns: one transaction at a time under an asyncio lock, the inter-frame
gap kept after each on the injected clock, and each device's first failure logged at WARNING
with its repeats at DEBUG until it answers again. The counters are gateway.drivers.bus.BusStats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

from gateway.protocol.clock import Clock, SystemClock

__all__ = ["BusTurns"]

K = TypeVar("K", bound=Hashable)


class BusTurns(Generic[K]):
    """The lock, the inter-frame gap and the per-device failure log of one line."""

    def __init__(
        self, log: logging.Logger, *, inter_frame_gap: float, clock: Clock | None = None
    ) -> None:
        self.inter_frame_gap = inter_frame_gap
        self.lock = asyncio.Lock()
        self._log = log
        self._clock: Clock = clock or SystemClock()
        self._ready_at = 0.0
        self._failing: set[K] = set()

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold the line for one transaction, after the gap; the gap restarts when it ends."""
        async with self.lock:
            delay = self._ready_at - self._clock.monotonic()
            if delay > 0:
                await self._clock.sleep(delay)
            try:
                yield
            finally:
                self._ready_at = self._clock.monotonic() + self.inter_frame_gap

    def succeeded(self, device: K) -> None:
        """The device answered: its next failure is news again."""
        self._failing.discard(device)

    def failed(self, device: K, line: str, exc: Exception) -> None:
        """Log a device's failure: WARNING the first time, DEBUG while it keeps failing."""
        level = logging.DEBUG if device in self._failing else logging.WARNING
        self._failing.add(device)
        self._log.log(level, "%s: %s", line, exc)
