"""Turn-taking on one shared meter line, for the Modbus and DL/T 645 bus owners.

A bus owner holds a BusTurns: one transaction at a time under an asyncio lock, the inter-frame
gap kept after each on the injected clock, and each device's first failure logged at WARNING
with its repeats at DEBUG until it answers again. The counters are gateway.drivers.bus.BusStats.
TurnTakingBus is the part both owners share: the counters, the turns and their bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

from gateway.drivers.bus import BusStats
from gateway.errors import GatewayError
from gateway.protocol.clock import Clock, SystemClock

__all__ = ["BusTurns", "TurnTakingBus"]

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


class TurnTakingBus(Generic[K]):
    """A line owner's counters and turns; subclasses give the line's `name`."""

    def __init__(
        self, log: logging.Logger, *, inter_frame_gap: float, clock: Clock | None = None
    ) -> None:
        self.stats = BusStats()
        self._turns: BusTurns[K] = BusTurns(log, inter_frame_gap=inter_frame_gap, clock=clock)

    @property
    def name(self) -> str:
        """The line's description, for logs."""
        raise NotImplementedError

    @property
    def inter_frame_gap(self) -> float:
        """Seconds of silence kept after each transaction."""
        return self._turns.inter_frame_gap

    def _count_ok(self, device: K) -> None:
        """A good reply from `device`: counted, and its next failure is news again."""
        self.stats.ok += 1
        self._turns.succeeded(device)

    def _count_failure(self, device: K, exc: GatewayError) -> None:
        """A failed request to `device`: counted by kind and logged once per failing spell."""
        self.stats.count_failure(exc)
        self._turns.failed(device, self.name, exc)
