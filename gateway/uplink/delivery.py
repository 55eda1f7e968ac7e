"""Delivery bookkeeping of the uplink: what it needs from the buffer, the window, the acks."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from gateway.protocol.events import Priority

__all__ = ["AckBatcher", "DeliveryWindow", "EventSource", "PendingLike"]

log = logging.getLogger(__name__)


class PendingLike(Protocol):
    """An unpublished event as the buffer hands it out (gateway.store.buffer.PendingEvent)."""

    @property
    def seq(self) -> int: ...
    @property
    def priority(self) -> Priority: ...
    @property
    def type(self) -> str: ...
    @property
    def payload(self) -> bytes: ...


class EventSource(Protocol):
    """What the uplink needs from the durable buffer (gateway.store.buffer.EventBuffer)."""

    async def fetch_pending(
        self, after: Mapping[Priority, int], limit: int
    ) -> Sequence[PendingLike]:
        """Unpublished events, priority then seq order, with seq > after[priority]."""
        ...

    async def mark_published(self, seqs: Sequence[int]) -> None:
        """Record that the broker acknowledged `seqs`."""
        ...

    async def requeue(self, from_seq: int, to_seq: int | None = None) -> tuple[int, int | None]:
        """Make published events unpublished again: (count, lowest seq still stored)."""
        ...


class DeliveryWindow:
    """The in-flight window and per-priority cursors of one connection."""

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, window: int) -> None:
        """Forget the window and the cursors: everything unacked will be fetched again."""
        self.window = window
        self.refill_at = max(1, window // 4)
        self.inflight: dict[int, PendingLike] = {}
        self.seqs: set[int] = set()
        self.cursors: dict[Priority, int] = dict.fromkeys(Priority, -1)
        self.ahead: deque[PendingLike] = deque()
        self.generation = getattr(self, "generation", 0) + 1

    def read_ahead(self, batch: Sequence[PendingLike], generation: int) -> None:
        """Queue fetched events to send next, unless the window was reset or rewound since."""
        if generation != self.generation:
            return
        for event in batch:
            self.advance(event)
        self.ahead.extend(batch)

    def take(self, count: int) -> list[PendingLike]:
        """Up to `count` read-ahead events, in the order they were fetched."""
        return [self.ahead.popleft() for _ in range(min(count, len(self.ahead)))]

    @property
    def size(self) -> int:
        return len(self.inflight)

    @property
    def free(self) -> int:
        return self.window - len(self.inflight)

    def advance(self, event: PendingLike) -> None:
        """Move the event's priority cursor past it."""
        self.cursors[event.priority] = max(self.cursors[event.priority], event.seq)

    def rewind(self, seq: int) -> None:
        """Let every priority be fetched again from just after `seq`."""
        for event in self.ahead:  # read ahead but never sent: fetch those again too
            seq = min(seq, event.seq - 1)
        for priority, cursor in self.cursors.items():
            self.cursors[priority] = min(cursor, seq)
        self.ahead.clear()
        self.generation += 1

    def has_seq(self, seq: int) -> bool:
        return seq in self.seqs

    def add(self, mid: int, event: PendingLike) -> None:
        self.inflight[mid] = event
        self.seqs.add(event.seq)

    def pop(self, mid: int) -> PendingLike | None:
        event = self.inflight.pop(mid, None)
        if event is not None:
            self.seqs.discard(event.seq)
        return event


class AckBatcher:
    """Coalesces PUBACKed seqs into mark_published calls: every `batch` acks or `delay_s`."""

    def __init__(
        self, mark: Callable[[Sequence[int]], Awaitable[None]], batch: int, delay_s: float
    ) -> None:
        self._mark = mark
        self._batch = batch
        self._delay_s = delay_s
        self._seqs: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def add(self, seq: int) -> None:
        """Record one acknowledged seq (on the loop thread)."""
        self._seqs.append(seq)
        if len(self._seqs) >= self._batch:
            self._start()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay_s, self._start)

    async def flush(self) -> None:
        """Hand every recorded seq to the buffer now and wait until it has them."""
        self._start()
        if self._task is not None:
            await asyncio.shield(self._task)

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._seqs and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._seqs:
            seqs, self._seqs = self._seqs, []
            try:
                await self._mark(seqs)
            except Exception:
                log.exception("could not mark %d events published; they will be resent", len(seqs))
