"""Delivery in the batch encoding: runs of consecutive events, one message each, at least once.

BatchPump is the DeliveryPump (delivery.py) with another refill. It cuts the next run off the
read-ahead (batching.py), encodes it and publishes it on `{root}/{gw}/batch`; the run's events
are marked published together at its PUBACK, and after a dropped connection they are fetched
again and cut into runs again (each event rebuilt to the same bytes).

- **Full runs.** A run that takes the whole read-ahead without being full is cut short only by
  what was fetched; the pump reads on first, and only a run that is still short once the
  buffer has nothing more is the last one, which may wait for the linger.
- **Pacing.** The drain rate counts events. A run goes whenever the token bucket is not in
  debt and pays for all its events at once (the debt then delays the next run), so a paced
  backlog still goes out in full runs rather than in runs of the few tokens at hand. An alarm
  run goes at once and pays afterwards.
- **Alarms** are never held by the linger (Batcher.hold), and a committed alarm drops the
  read-ahead, held runs included (DeliveryPump.wake), so it is fetched and sent next.
- **Encoder workers.** With `uplink.batch_workers` > 0 a run of at least OFFLOAD_MIN_EVENTS
  events (never an alarm run) is encoded in a worker process (encoder_pool.py) while the loop
  goes on cutting, publishing and marking. The run holds its place in the window, and its seqs
  count as in flight, from the moment it is cut; the encoded runs of a priority are published
  in the order they were cut. A run whose worker died is encoded here instead, so a worker
  changes where the CPU is spent, never what is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.errors import TransientError
from gateway.protocol.clock import Clock
from gateway.protocol.events import Priority
from gateway.uplink.batching import BATCH_TOPIC, BATCH_WINDOW, Batcher, BatchPolicy, Run
from gateway.uplink.connection import FailureLog, UplinkConnection, UplinkStats
from gateway.uplink.delivery import DeliveryPump, EventSource, PendingLike
from gateway.uplink.encoder_pool import EncoderPool, WorkerGone

__all__ = ["BatchPump"]

log = logging.getLogger(__name__)

_READ_ON = None  # _send_batch: the run was cut short by the read-ahead; read on first
OFFLOAD_MIN_EVENTS = 32  # a smaller run is encoded here: the trip to a worker costs more


@dataclass(slots=True)
class _Encoding:
    """A run cut and handed to the encoder, not published yet."""

    key: int  # its place in the window: a negative number, never an MQTT message id
    run: Run
    future: asyncio.Future[bytes | None]
    conn: UplinkConnection
    epoch: int


class BatchPump(DeliveryPump):
    """Sends buffered events as batch messages, one run per message."""

    def __init__(  # noqa: PLR0917 - the uplink wires these once
        self,
        source: EventSource,
        topic: Callable[[str], str],
        clock: Clock,
        stats: UplinkStats,
        failures: FailureLog,
        drain_rate_per_s: float,
        policy: BatchPolicy,
        pool: EncoderPool | None = None,
    ) -> None:
        super().__init__(source, topic, clock, stats, failures, drain_rate_per_s)
        self._batcher = Batcher(policy, clock)
        self._linger: asyncio.TimerHandle | None = None
        self._pool = pool
        self._encoding: deque[_Encoding] = deque()
        self._epoch = 0  # a new one per connection: older encodings are forgotten
        self._last_key = 0

    @property
    def pool(self) -> EncoderPool | None:
        """The encoder workers (None: runs are encoded in this process)."""
        return self._pool

    async def open(self) -> None:
        if self._pool is not None:
            await self._pool.start()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def start(self, window: int) -> None:
        """A new connection: at most BATCH_WINDOW batch messages in flight."""
        self._flushing = False
        self._delivery.reset(min(window, BATCH_WINDOW), self._batcher.policy.max_events)
        self._forget_encodings()

    def stop(self) -> None:
        super().stop()
        self._cancel_linger()
        self._forget_encodings()

    async def _refill(self, conn: UplinkConnection) -> None:
        """Send runs while the window has room, highest priority first, within the drain rate."""
        per_message = self._delivery.per_message
        while conn.connected and self._delivery.free > 0:
            if not self._delivery.ahead and not await self._fetch_ahead(per_message):
                self._note_if_drained()
                return
            urgent = self._delivery.ahead[0].priority is Priority.ALARM
            granted = self._bucket.borrow(per_message, now=urgent)
            if granted == 0:
                await self._clock.sleep(self._bucket.wait_time())
                continue
            outcome = self._send_batch(conn, granted)
            if outcome is _READ_ON:
                self._bucket.give_back(granted)
                await self._read_on()
                continue
            sent, held = outcome
            self._bucket.give_back(granted - sent)
            if self._reads_ahead or held:
                self._prefetch()
            if held:
                return  # the last run waits for more events or its linger
            await asyncio.sleep(0)  # one message at a time: let PUBACKs in between

    async def _read_on(self) -> None:
        """Fetch the events after the read-ahead (or wait for the prefetch doing so)."""
        running = self._prefetching
        if running is not None and not running.done():
            await asyncio.shield(running)
            return
        limit = self._delivery.per_message
        if self._reads_ahead:
            limit = max(limit, 2 * self._delivery.event_window - len(self._delivery.ahead))
        self._prefetching = asyncio.create_task(self._fetch(limit))
        await asyncio.shield(self._prefetching)

    def _send_batch(self, conn: UplinkConnection, limit: int) -> tuple[int, bool] | None:
        """Send the next run of the read-ahead (at most `limit` events) as one message:
        (events sent, held back for the linger), or _READ_ON."""
        ahead = self._delivery.ahead
        while ahead and self._delivery.has_seq(ahead[0].seq):  # in flight already
            self._delivery.advance(ahead.popleft())
        if not ahead:
            return 0, False
        run, last = self._batcher.take_run(ahead, limit, self._delivery.seqs)
        self._delivery.advance(run.events[-1])  # a run: consecutive seqs of one priority
        if last and not self._delivery.exhausted:
            self._delivery.hold(run.events)
            return _READ_ON
        if last:
            wait = self._batcher.hold(run, self._flushing)
            if wait is not None:
                self._delivery.hold(run.events)
                self._arm_linger(wait)
                return 0, True
        self._batcher.released()
        if not conn.connected:
            self._delivery.hold(run.events)
            return 0, False
        sent = self._send_run(conn, run)
        if sent < len(run.events):  # the connection failed mid-way: fetch the rest again
            self._delivery.hold(run.events[sent:])
        if sent:
            self._drained.clear()
        return sent, False

    def _send_run(self, conn: UplinkConnection, run: Run) -> int:
        """One batch message, or the run's events one by one if it cannot be encoded."""
        pool = self._pool
        urgent = run.priority is Priority.ALARM
        if pool is not None and not urgent and len(run.events) >= OFFLOAD_MIN_EVENTS and pool.ready:
            future = pool.submit([event.payload for event in run.events])
            return self._queue(conn, run, future)
        message = self._batcher.encode(run)
        if not urgent and any(item.run.priority is run.priority for item in self._encoding):
            done: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            done.set_result(message)  # behind the runs of its priority still being encoded
            return self._queue(conn, run, done)
        if message is None:
            return self._send(conn, run.events)
        return self._publish(conn, run.events, message)

    def _publish(
        self, conn: UplinkConnection, events: Sequence[PendingLike], message: bytes
    ) -> int:
        try:
            mid = conn.publish_event(self._topic(BATCH_TOPIC), message)
        except TransientError:
            return 0
        self._delivery.add(mid, events)
        self._stats.published += len(events)
        return len(events)

    def _queue(self, conn: UplinkConnection, run: Run, future: asyncio.Future[bytes | None]) -> int:
        """Hold the run's place in the window until its message is ready (_encoded)."""
        self._last_key -= 1
        self._delivery.add(self._last_key, run.events)
        self._encoding.append(_Encoding(self._last_key, run, future, conn, self._epoch))
        future.add_done_callback(self._encoded)
        return len(run.events)

    def _encoded(self, _future: asyncio.Future[bytes | None]) -> None:
        """An encoding finished: publish the finished runs at the front, in the order cut."""
        queue = self._encoding
        while queue and queue[0].future.done():
            item = queue.popleft()
            events = self._delivery.pop(item.key)
            if item.epoch != self._epoch or not events:
                continue
            message = self._message(item)
            if not item.conn.connected:
                sent = 0
            elif message is None:
                sent = self._send(item.conn, events)
            else:
                sent = self._publish(item.conn, events, message)
            if sent < len(events):  # the connection is failing: fetch the rest again
                self._delivery.rewind(events[sent].seq - 1)
        self._wake.set()

    def _message(self, item: _Encoding) -> bytes | None:
        """The run's batch message (None: send its events one by one)."""
        try:
            message = item.future.result()
        except WorkerGone:
            return self._batcher.encode(item.run)
        if message is None:  # the worker could not encode it: say why, as in process
            return self._batcher.encode(item.run)
        return message

    def _forget_encodings(self) -> None:
        """A connection ended or began: runs still being encoded are fetched again."""
        self._epoch += 1
        self._encoding.clear()

    def _arm_linger(self, wait: float) -> None:
        self._cancel_linger()
        self._linger = asyncio.get_running_loop().call_later(wait, self._wake.set)

    def _cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
