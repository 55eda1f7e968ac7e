"""Delivery: drains the event buffer over the current connection, at least once.

A window of at most `max_inflight` messages is unacknowledged at any time; it is refilled from
the buffer with one cursor per priority, so alarms go first and each priority goes out in seq
order. Seqs are marked published only after their PUBACK, in batches. When the connection
drops, the window and the cursors are forgotten and whatever was not acknowledged is fetched
again after the reconnect: a duplicate carries the same id and seq.

A message is one event (`uplink.encoding = "json"`); the batch encoding (`"batch"`) sends runs
of consecutive events per message with BatchPump (batch_delivery.py), built on this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol

from gateway.drivers.pacing import TokenBucket
from gateway.errors import TransientError
from gateway.protocol.clock import Clock
from gateway.protocol.events import Priority
from gateway.uplink.batching import PendingPayload
from gateway.uplink.connection import FailureLog, UplinkConnection, UplinkStats

__all__ = ["AckBatcher", "DeliveryPump", "DeliveryWindow", "EventSource", "PendingLike"]

log = logging.getLogger(__name__)

ACK_BATCH = 2048  # mark_published after this many PUBACKs ...
ACK_DELAY_S = 0.05  # ... or this long after the first unflushed one
IDLE_POLL_S = 1.0  # refill now and then even without a wake(), in case one was missed


PendingLike = PendingPayload  # the uplink's name for an unpublished event


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

    def reset(self, window: int, per_message: int = 1) -> None:
        """Forget the window and the cursors: everything unacked will be fetched again.

        `window` counts messages; each carries up to `per_message` events.
        """
        self.window = window
        self.per_message = per_message
        self.refill_at = max(1, window // 4)
        self.inflight: dict[int, Sequence[PendingLike]] = {}
        self.seqs: set[int] = set()
        self.cursors: dict[Priority, int] = dict.fromkeys(Priority, -1)
        self.ahead: deque[PendingLike] = deque()
        self.exhausted = False  # the last fetch found fewer events than it asked for
        self.generation = getattr(self, "generation", 0) + 1

    def read_ahead(self, batch: Sequence[PendingLike], generation: int, limit: int) -> None:
        """Queue fetched events to send next, unless the window was reset or rewound since."""
        if generation != self.generation:
            return
        cursors = self.cursors
        for event in batch:  # advance() inline: this runs for every event fetched
            cursors[event.priority] = max(cursors[event.priority], event.seq)
        self.ahead.extend(batch)
        self.exhausted = len(batch) < limit

    def take(self, count: int) -> list[PendingLike]:
        """Up to `count` read-ahead events, in the order they were fetched."""
        return [self.ahead.popleft() for _ in range(min(count, len(self.ahead)))]

    @property
    def size(self) -> int:
        return len(self.inflight)

    @property
    def free(self) -> int:
        """Messages that may still be sent before the window is full."""
        return self.window - len(self.inflight)

    @property
    def event_window(self) -> int:
        """The window in events: what a read-ahead is sized by."""
        return self.window * self.per_message

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
        self.exhausted = False
        self.generation += 1

    def has_seq(self, seq: int) -> bool:
        return seq in self.seqs

    def add(self, mid: int, events: Sequence[PendingLike]) -> None:
        """Message `mid` carries `events`."""
        self.inflight[mid] = events
        self.seqs.update(event.seq for event in events)

    def pop(self, mid: int) -> Sequence[PendingLike]:
        """The events of message `mid` (none if it is not ours)."""
        events = self.inflight.pop(mid, ())
        self.seqs.difference_update(event.seq for event in events)
        return events

    def hold(self, events: Sequence[PendingLike]) -> None:
        """Put taken events back in front of the read-ahead: they wait for the linger."""
        self.ahead.extendleft(reversed(events))


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

    def add(self, seqs: Iterable[int]) -> None:
        """Record acknowledged seqs (on the loop thread)."""
        self._seqs.extend(seqs)
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


class DeliveryPump:
    """Sends buffered events over one connection at a time and records their PUBACKs."""

    def __init__(  # noqa: PLR0917 - the uplink wires these once
        self,
        source: EventSource,
        topic: Callable[[str], str],
        clock: Clock,
        stats: UplinkStats,
        failures: FailureLog,
        drain_rate_per_s: float,
    ) -> None:
        self._source = source
        self._flushing = False
        self._topic = topic
        self._clock = clock
        self._stats = stats
        self._failures = failures
        self._reads_ahead = drain_rate_per_s <= 0  # a paced drain fetches only what may go
        self._bucket = TokenBucket(drain_rate_per_s, clock)
        self._delivery = DeliveryWindow()
        self._acks = AckBatcher(source.mark_published, ACK_BATCH, ACK_DELAY_S)
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        # A read answers from the buffer as it was when the read was asked, so only a read
        # asked after drain() began may show that the buffer holds nothing more to send.
        self._reads = 0  # reads asked so far
        self._drain_from = 0  # reads up to this one were asked before the drain began
        self._empty_read = 0  # the latest read that found nothing
        self._prefetching: asyncio.Task[None] | None = None

    @property
    def inflight(self) -> int:
        """Messages sent over the current connection and not acknowledged yet."""
        return self._delivery.size

    async def open(self) -> None:
        """The uplink starts (BatchPump starts its encoder workers here)."""

    async def close(self) -> None:
        """The uplink has stopped."""

    def start(self, window: int) -> None:
        """A new connection: an empty window of `window` messages, cursors from the start."""
        self._flushing = False
        self._delivery.reset(window)

    def stop(self) -> None:
        """The connection is gone: forget the window; the unacked are fetched again later."""
        self._delivery.reset(0)
        if self._prefetching is not None:
            self._prefetching.cancel()

    def wake(self, urgent: bool) -> None:
        """New events were committed (on the loop thread); `urgent` drops the read-ahead."""
        if urgent and self._delivery.ahead:
            self._delivery.rewind(self._delivery.ahead[0].seq - 1)
        self._delivery.exhausted = False
        self._wake.set()

    def rewind(self, seq: int) -> None:
        """Fetch every priority again from just after `seq` (cmd/resend)."""
        self._delivery.rewind(seq)
        self._wake.set()

    async def flush_acks(self) -> None:
        """Hand every acknowledged seq to the buffer now."""
        await self._acks.flush()

    async def run(self, conn: UplinkConnection) -> None:
        """Keep the window full while the connection is up."""
        while conn.connected:
            try:
                await self._refill(conn)
            except Exception:  # a buffer failure must not take the connection down
                log.exception("uplink could not fetch events from the buffer; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_S):
                    await self._wake.wait()
            self._wake.clear()

    async def drain(self, conn: UplinkConnection, timeout: float) -> None:  # noqa: ASYNC109
        """Wait (with run() going) until the buffer is drained and acked, the connection
        closes, or `timeout` passes."""
        self._drained.clear()  # only a refill that finds nothing more may set it now
        self._drain_from = self._reads  # ... with a read asked from now on
        self._flushing = True  # nothing waits for a linger now
        self._wake.set()
        drained = asyncio.ensure_future(self._drained.wait())
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, timeout)):
                    await asyncio.wait((drained, conn.closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()

    def on_ack(self, mid: int, ok: bool) -> None:
        """A message's PUBACK (on the loop thread): record its events, top the window up."""
        events = self._delivery.pop(mid)
        if not events:
            return
        if ok:
            self._stats.acked += len(events)
            self._acks.add(event.seq for event in events)
        else:
            self._stats.refused += len(events)
            self._failures.failed(
                f"broker refused event seq {events[0].seq} (retried after reconnect)"
            )
        if self._delivery.size == 0 or self._delivery.free >= self._delivery.refill_at:
            self._wake.set()

    async def _refill(self, conn: UplinkConnection) -> None:
        """Fill the window, highest priority first, within the drain rate."""
        while conn.connected:
            free = self._delivery.free
            if free <= 0:
                return
            granted = self._bucket.take(free)
            if granted == 0:
                await self._clock.sleep(self._bucket.wait_time())
                continue
            if not self._delivery.ahead and not await self._fetch_ahead(granted):
                self._bucket.give_back(granted)
                self._note_if_drained()
                return
            sent = self._send(conn, self._delivery.take(granted))
            self._bucket.give_back(granted - sent)
            if self._reads_ahead:
                self._prefetch()

    async def _fetch_ahead(self, wanted: int) -> bool:
        """Wait for events to send: the running prefetch, then if need be a fetch of our own.

        A prefetch that was already running may have read the buffer before the latest commit,
        so an empty answer from it proves nothing; only a fetch started now may say "drained".
        """
        running = self._prefetching
        if running is not None and not running.done():
            await asyncio.shield(running)
            if self._delivery.ahead:
                return True
        limit = max(wanted, 2 * self._delivery.event_window) if self._reads_ahead else wanted
        self._prefetching = asyncio.create_task(self._fetch(limit))
        await asyncio.shield(self._prefetching)
        return bool(self._delivery.ahead)

    def _prefetch(self) -> None:
        """Read the next events in the background while the window drains.

        Sending then never waits for the database, whose one thread also commits and marks.
        The read-ahead is two windows deep; a committed alarm drops it (see wake), so the
        alarm is fetched next.
        """
        limit = 2 * self._delivery.event_window
        running = self._prefetching is not None and not self._prefetching.done()
        if not running and len(self._delivery.ahead) < limit // 2:
            self._prefetching = asyncio.create_task(self._fetch(limit - len(self._delivery.ahead)))

    def _note_if_drained(self) -> None:
        """Set `_drained` if nothing is in flight and a read asked since drain() began found
        nothing; else wake the pump, which then reads again."""
        if self._delivery.size:
            return
        if self._empty_read > self._drain_from:
            self._drained.set()
        elif not self._drained.is_set():
            self._wake.set()

    async def _fetch(self, limit: int) -> None:
        generation = self._delivery.generation
        limit = max(1, limit)
        self._reads += 1
        read = self._reads
        try:
            batch = await self._source.fetch_pending(self._delivery.cursors, limit)
        except Exception:  # a buffer failure must not take the connection down
            log.exception("uplink could not fetch events from the buffer; retrying")
            self._delivery.exhausted = True  # read on at the next refill, not in a loop
            return
        if not batch:
            self._empty_read = max(self._empty_read, read)
        self._delivery.read_ahead(batch, generation, limit)
        if batch:
            self._wake.set()

    def _send(self, conn: UplinkConnection, batch: Sequence[PendingLike]) -> int:
        sent = 0
        for event in batch:
            self._delivery.advance(event)
            if self._delivery.has_seq(event.seq) or not conn.connected:
                continue
            try:
                mid = conn.publish_event(self._topic(f"events/{event.type}"), event.payload)
            except TransientError:
                return sent
            self._delivery.add(mid, (event,))
            self._stats.published += 1
            sent += 1
        if sent:
            self._drained.clear()
        return sent
