"""The event buffer's plain models: pending rows, counters, commit latencies, batch outcomes."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.errors import StorageError
from gateway.protocol.events import Event, Priority

__all__ = ["BatchOutcome", "BufferStats", "LatencyHistogram", "PendingEvent"]


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """A committed row waiting for the broker."""

    seq: int
    priority: Priority
    type: str
    payload: bytes


class LatencyHistogram:
    """Commit latencies (submit to durable) in fixed millisecond buckets."""

    BOUNDS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS_MS) + 1)
        self.count = 0
        self.max_ms = 0.0

    def observe_many(self, seconds: Iterable[float]) -> None:
        """Count each latency, given in seconds."""
        bounds, counts = self.BOUNDS_MS, self.counts
        for value in seconds:
            millis = value * 1000.0
            counts[bisect.bisect_left(bounds, millis)] += 1
            self.count += 1
            self.max_ms = max(self.max_ms, millis)

    def quantile(self, q: float) -> float:
        """Upper bound in ms of the bucket holding quantile `q`; `max_ms` past the last bound."""
        rank, seen = q * self.count, 0
        for index, number in enumerate(self.counts):
            seen += number
            if number and seen >= rank:
                return self.BOUNDS_MS[index] if index < len(self.BOUNDS_MS) else self.max_ms
        return 0.0


@dataclass(slots=True)
class BufferStats:
    """Counters of the buffer; each field has one writer (the writer thread or the loop)."""

    committed: int = 0
    batches: int = 0
    evicted_telemetry: int = 0
    pruned_published: int = 0
    rejected_bulk: int = 0
    rejected_important: int = 0
    disk_full_errors: int = 0  # writes that failed with SQLITE_FULL/ENOSPC below max_bytes
    rollbacks: int = 0  # chain breaks found at open (the durable mark was ahead)
    commit_latency: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass(slots=True)
class BatchOutcome:
    """One batch's result: per draft an Event or the error, and everything committed in order."""

    results: list[Event | StorageError]
    committed: list[Event]
