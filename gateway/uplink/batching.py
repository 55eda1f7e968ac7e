"""Batch encoding on the uplink: cutting the outgoing events into runs, and the linger.

A run is what one batch message carries (gateway/protocol/batch.py): consecutive seqs of one
priority, at most `max_events` events and `max_bytes` of canonical JSON. The last run of what
was fetched may wait up to `linger_s` for more events to join it, unless it is full, holds
alarms, or the uplink is flushing for a stop.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from gateway.protocol.batch_encode import encode_batch
from gateway.protocol.batch_format import BatchEncodeError
from gateway.protocol.clock import Clock
from gateway.protocol.events import Priority
from gateway.uplink.config import UplinkSection

__all__ = ["BATCH_TOPIC", "BATCH_WINDOW", "BatchPolicy", "Batcher", "Run"]

log = logging.getLogger(__name__)

BATCH_TOPIC = "batch"  # {root}/{gateway}/batch
BATCH_WINDOW = 16  # batch messages in flight at most: each may hold hundreds of events


class PendingPayload(Protocol):
    """An unpublished event as the buffer hands it out (gateway.store.buffer.PendingEvent).

    What a run needs of an event; gateway.uplink.delivery calls it PendingLike.
    """

    @property
    def seq(self) -> int: ...
    @property
    def priority(self) -> Priority: ...
    @property
    def type(self) -> str: ...
    @property
    def payload(self) -> bytes: ...


_Pending = TypeVar("_Pending", bound=PendingPayload)


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """The size and linger bounds of one batch message."""

    max_events: int = 256
    max_bytes: int = 262_144
    linger_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: UplinkSection) -> BatchPolicy | None:
        """The policy of `uplink.encoding = "batch"`, or None for the JSON form."""
        if settings.encoding != "batch":
            return None
        return cls(settings.batch_max_events, settings.batch_max_bytes, settings.batch_linger_s)


@dataclass(frozen=True, slots=True)
class Run:
    """Events for one batch message, and whether it is full."""

    events: tuple[PendingPayload, ...]
    full: bool

    @property
    def priority(self) -> Priority:
        return self.events[0].priority


class Batcher:
    """Cuts events into runs and decides whether the last one waits (the linger)."""

    def __init__(self, policy: BatchPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._held_since: float | None = None
        self._warned = False

    def runs(self, events: Sequence[PendingPayload]) -> list[Run]:
        """Consecutive same-priority runs within the size bounds, in the given order."""
        queue = deque(events)
        runs = []
        while queue:
            run, _ = self.take_run(queue, len(queue), ())
            runs.append(run)
        return runs

    def take_run(
        self, queue: deque[_Pending], limit: int, inflight: Container[int]
    ) -> tuple[Run, bool]:
        """Pop the next run off the front of `queue` (not empty): at most `limit` events.

        Returns the run and whether it is the last of the queue, the one run that may wait for
        more events: it took every event queued and is not full. A run that ends because the
        next event does not join it (another priority, a seq gap, a seq in `inflight`) or at
        `limit` is complete.
        """
        first = queue.popleft()
        events = [first]
        size = len(first.payload)
        max_events = min(self.policy.max_events, max(1, limit))
        max_bytes = self.policy.max_bytes
        seq, priority = first.seq, first.priority
        full = False
        while queue:
            if len(events) >= max_events:
                full = len(events) >= self.policy.max_events
                break
            event = queue[0]
            if event.seq != seq + 1 or event.priority != priority or event.seq in inflight:
                break
            length = len(event.payload)
            if size + length > max_bytes:
                full = True
                break
            queue.popleft()
            events.append(event)
            size += length
            seq += 1
        else:
            full = len(events) >= self.policy.max_events
            return Run(tuple(events), full), not full
        return Run(tuple(events), full), False

    def hold(self, run: Run, flushing: bool) -> float | None:
        """Seconds the last run may still wait for more events, or None to send it now.

        The linger counts from the run's oldest event (its ts), and from when the run was
        first held: a backlog of old events never waits, a fresh reading waits at most
        `linger_s`.
        """
        if flushing or run.full or run.priority is Priority.ALARM or self.policy.linger_s <= 0:
            self._held_since = None
            return None
        now = self._clock.monotonic()
        if self._held_since is None:
            self._held_since = now
        remaining = self._held_since + self.policy.linger_s - now
        created = _event_time(run.events[0].payload)
        if created is not None:
            age = (self._clock.now() - created).total_seconds()
            remaining = min(remaining, self.policy.linger_s - age)
        if remaining <= 0:
            self._held_since = None
            return None
        return remaining

    def released(self) -> None:
        """The held run went out (or was dropped with the read-ahead)."""
        self._held_since = None

    def encode(self, run: Run) -> bytes | None:
        """The batch message of `run`; None (logged) when it must go out as single events."""
        try:
            return encode_batch([event.payload for event in run.events])
        except BatchEncodeError as exc:
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "events %d..%d go out one by one: %s", *_span(run), exc)
            return None


def _event_time(payload: bytes) -> datetime | None:
    """The envelope `ts` of a canonical event payload (the last "ts" member), or None."""
    start = payload.rfind(b',"ts":"')
    if start < 0:
        return None
    try:
        text = payload[start + 7 : start + 31].decode("ascii")
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _span(run: Run) -> tuple[int, int]:
    return run.events[0].seq, run.events[-1].seq
