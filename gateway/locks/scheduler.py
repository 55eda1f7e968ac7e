"""The BLE connection scheduler: a budget of simultaneous links, one connect at a time, priority.

Every lock session goes through `ConnectionScheduler.run`: wait for a slot of the budget
(handheld operations before alarms before background reconciliation, FIFO within one urgency),
connect while holding the single connect gate (BlueZ fails parallel connects), run the action,
disconnect. Failures the action marks as retryable (and failed connects) are retried with
jittered exponential backoff on the injected clock; anything else is the caller's to handle.
Only one link per lock exists at a time, so two sessions never race on one lock's log cursor.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Generic, Protocol, TypeVar

from gateway.drivers.pacing import Backoff
from gateway.errors import GatewayError, RetryableError, TransientError
from gateway.protocol.clock import Clock

__all__ = [
    "ConnectionScheduler",
    "Connector",
    "PriorityGate",
    "SchedulerSettings",
    "SchedulerStats",
    "Urgency",
]

_log = logging.getLogger(__name__)

LinkT = TypeVar("LinkT")
LinkT_co = TypeVar("LinkT_co", covariant=True)
ResultT = TypeVar("ResultT")


class Urgency(IntEnum):
    """Who is waiting for a session; lower values are served first."""

    HANDHELD = 0
    ALARM = 1
    BACKGROUND = 2


class Connector(Protocol[LinkT]):
    """Opens and closes links to locks (the BLE one wraps bleak; tests use fakes)."""

    async def connect(self, seal_id: str, timeout_s: float) -> LinkT:
        """A ready link to the seal's lock; raise TransientError (or TimeoutError) on failure."""
        ...

    async def disconnect(self, link: LinkT) -> None:
        """Close the link; never raises for a link that is already gone."""
        ...


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """Budget, timeouts and retry policy."""

    max_connections: int = 5
    connect_timeout_s: float = 10.0
    retries: int = 2
    backoff_min_s: float = 1.0  # BUSY answers and failed connects: never retry sooner
    backoff_max_s: float = 8.0


@dataclass(slots=True)
class SchedulerStats:
    """Counters for the health snapshot."""

    connects: int = 0
    connect_failures: int = 0
    retries: int = 0
    sessions_ok: int = 0
    sessions_failed: int = 0


class PriorityGate:
    """A counting semaphore whose waiters are served by (urgency, arrival)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a gate needs a capacity of at least 1")
        self._free = capacity
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        """Callers queued for a slot."""
        return sum(1 for _, _, future in self._waiters if not future.done())

    @property
    def free(self) -> int:
        """Slots not held."""
        return self._free

    async def acquire(self, urgency: int) -> None:
        """Wait for a slot; the most urgent, then the oldest, waiter goes first."""
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (urgency, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over as we were cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a slot back, handing it straight to the best waiter."""
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1


class ConnectionScheduler(Generic[LinkT]):
    """Runs lock sessions under the connection budget, serializing connects."""

    def __init__(
        self,
        connector: Connector[LinkT],
        settings: SchedulerSettings,
        clock: Clock,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._connector = connector
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._budget = PriorityGate(settings.max_connections)
        self._connect_gate = PriorityGate(1)
        self._per_lock: dict[str, asyncio.Lock] = {}
        self._connected: set[str] = set()
        self.stats = SchedulerStats()

    @property
    def budget(self) -> PriorityGate:
        """The link budget; other BLE links (handhelds) hold slots of it too."""
        return self._budget

    @property
    def connected(self) -> frozenset[str]:
        """Seals with a link open right now."""
        return frozenset(self._connected)

    @property
    def queued(self) -> int:
        """Sessions waiting for a slot of the budget."""
        return self._budget.waiting

    async def run(
        self,
        seal_id: str,
        urgency: Urgency,
        action: Callable[[LinkT], Awaitable[ResultT]],
        *,
        retries: int | None = None,
    ) -> ResultT:
        """Connect to the seal, run `action` on the link, disconnect; retry retryable failures."""
        attempts = 1 + (self._settings.retries if retries is None else retries)
        backoff = Backoff(self._settings.backoff_min_s, self._settings.backoff_max_s, self._rng)
        for attempt in range(1, attempts + 1):
            try:
                result = await self._once(seal_id, urgency, action)
            except RetryableError as exc:
                if attempt == attempts:
                    self.stats.sessions_failed += 1
                    raise
                await self._pause(seal_id, attempt, backoff, exc)
            except BaseException:
                self.stats.sessions_failed += 1
                raise
            else:
                self.stats.sessions_ok += 1
                return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _pause(self, seal_id: str, attempt: int, backoff: Backoff, exc: Exception) -> None:
        self.stats.retries += 1
        delay = backoff.next_delay()
        (_log.warning if attempt == 1 else _log.debug)(
            "seal %s: session attempt %d failed (%s); retrying in %.2f s",
            seal_id,
            attempt,
            exc,
            delay,
        )
        await self._clock.sleep(delay)

    async def _once(
        self, seal_id: str, urgency: Urgency, action: Callable[[LinkT], Awaitable[ResultT]]
    ) -> ResultT:
        lock = self._per_lock.setdefault(seal_id, asyncio.Lock())
        async with lock:
            await self._budget.acquire(urgency)
            try:
                link = await self._connect(seal_id, urgency)
                self._connected.add(seal_id)
                try:
                    return await action(link)
                finally:
                    self._connected.discard(seal_id)
                    await self._disconnect(seal_id, link)
            finally:
                self._budget.release()

    async def _connect(self, seal_id: str, urgency: Urgency) -> LinkT:
        await self._connect_gate.acquire(urgency)
        try:
            self.stats.connects += 1
            timeout = self._settings.connect_timeout_s
            async with asyncio.timeout(timeout + 1.0):  # the connector has its own timeout too
                return await self._connector.connect(seal_id, timeout)
        except (TimeoutError, TransientError) as exc:
            self.stats.connect_failures += 1
            raise RetryableError(f"connect to seal {seal_id} failed: {exc}") from exc
        finally:
            self._connect_gate.release()

    async def _disconnect(self, seal_id: str, link: LinkT) -> None:
        try:
            await self._connector.disconnect(link)
        except (GatewayError, OSError, TimeoutError) as exc:
            _log.debug("seal %s: disconnect failed: %s", seal_id, exc)
