"""The durable event buffer: asyncio front of the SQLite store, with group commit.

Services `submit` drafts without waiting; one writer task takes everything queued (up to
`batch_max`), and the one writer thread seals it into the hash chain and commits it in one
transaction, so a slow fsync is paid once per batch. Futures resolve after the commit.
Every database operation, reads included, runs in that thread; see gateway.store.buffer_store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import StorageError, StorageFullError
from gateway.protocol.clock import Clock
from gateway.protocol.events import Event, EventDraft, Priority
from gateway.protocol.wallclock import MonotonicCutoff
from gateway.store.buffer_file import load_migrations
from gateway.store.buffer_store import (
    BatchOutcome,
    BufferStats,
    BufferStore,
    LatencyHistogram,
    PendingEvent,
)
from gateway.store.config import BufferSection

__all__ = ["BufferStats", "EventBuffer", "LatencyHistogram", "PendingEvent"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Item = tuple[EventDraft, "asyncio.Future[Event]", float]
PRUNE_CHUNK = 500  # published rows deleted per transaction by retention pruning
PRUNE_INTERVAL_S = 60.0


class _State(Enum):
    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class EventBuffer:
    """Durable, hash-chained, prioritised store of events waiting for the broker."""

    def __init__(
        self,
        path: Path,
        gateway_id: str,
        settings: BufferSection,
        clock: Clock,
        *,
        migrations: Mapping[int, str] | None = None,
    ) -> None:
        self.path = path
        self.settings = settings
        self.clock = clock
        self.on_commit: Callable[[Sequence[Event]], None] | None = None
        self.on_storage_full: Callable[[bool], None] | None = None
        self._store = BufferStore(
            path, gateway_id, settings, clock, migrations or load_migrations()
        )
        self.stats: BufferStats = self._store.stats
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._state = _State.NEW
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._full_reported = False
        self._errors = 0  # batches the writer failed on: the first is logged, then a count
        self._cutoff = MonotonicCutoff(clock, slack_s=PRUNE_INTERVAL_S)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (check, migrate, recover) the file and start the writer."""
        if self._state is not _State.NEW:
            raise StorageError("buffer was already opened")
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sealgw-buffer")
        try:
            committed = await self._run(self._store.open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._state = _State.CLOSED
            raise
        self._state = _State.OPEN
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="sealgw-buffer-writer"),
            asyncio.create_task(self._prune_loop(), name="sealgw-buffer-pruner"),
        ]
        self._after_write(committed)

    async def close(self) -> None:
        """Stop accepting, commit what is queued, checkpoint and close. Idempotent."""
        if self._state is not _State.OPEN:
            self._state = _State.CLOSED if self._state is _State.NEW else self._state
            return
        self._state = _State.CLOSING
        self._wake.set()
        writer, pruner = self._tasks
        pruner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pruner
        await writer
        await self._run(self._store.close)
        assert self._executor is not None
        self._executor.shutdown(wait=True)
        self._state = _State.CLOSED

    @property
    def recovered_from(self) -> Path | None:
        """Where a corrupt file was moved aside at open, or None."""
        return self._store.recovered_from

    # -- writing ---------------------------------------------------------------------------

    def submit(self, draft: EventDraft) -> asyncio.Future[Event]:
        """Queue a draft; the future resolves with the Event once it is durably committed."""
        if self._state is not _State.OPEN or self._loop is None:
            raise StorageError(f"buffer is {self._state.value}, not accepting events")
        future: asyncio.Future[Event] = self._loop.create_future()
        self._queue.append((draft, future, time.monotonic()))
        if not self._wake.is_set():
            self._wake.set()
        return future

    async def append(self, draft: EventDraft) -> Event:
        """Commit one draft and return its Event."""
        return await self.submit(draft)

    # -- delivery --------------------------------------------------------------------------

    async def fetch_pending(self, after: Mapping[Priority, int], limit: int) -> list[PendingEvent]:
        """Up to `limit` unpublished rows, alarm first, seq > after[priority] within each."""
        pending = self._store.pending
        priorities = [p for p in Priority if pending[p] > 0]
        if not priorities or limit <= 0:
            return []
        cursors = {int(p): seq for p, seq in after.items()}
        return await self._run(self._store.fetch_pending, cursors, limit, priorities)

    async def mark_published(self, seqs: Sequence[int]) -> None:
        """Record broker acknowledgements; only published rows may later be pruned."""
        if seqs:
            await self._run(self._store.mark_published, list(seqs))
            self._sync_full()

    async def requeue(self, from_seq: int, to_seq: int | None = None) -> tuple[int, int | None]:
        """Make retained published rows in the range pending again (cmd/resend).

        Returns (rows requeued, lowest seq of the range still stored or None). The uplink
        must rewind its `after` cursors, as requeued rows lie behind them.
        """
        return await self._run(self._store.requeue, from_seq, to_seq)

    async def prune(self) -> int:
        """Delete rows published longer ago than retain_published_s, in small transactions."""
        cutoff = self._cutoff.cutoff(self.settings.retain_published_s)  # jump-proof
        total = 0
        while True:
            count = await self._run(self._store.prune, cutoff, PRUNE_CHUNK)
            total += count
            if count < PRUNE_CHUNK:
                break
        self._sync_full()
        return total

    # -- state -----------------------------------------------------------------------------

    def depth(self) -> dict[Priority, int]:
        """Unpublished rows per priority."""
        pending = self._store.pending
        return {priority: pending[priority] for priority in Priority}

    @property
    def storage_full(self) -> bool:
        """True while alarm and audit events cannot be stored."""
        return self._store.full

    @property
    def head(self) -> tuple[int, str]:
        """The last committed seq and hash."""
        return self._store.head

    # -- internals -------------------------------------------------------------------------

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run a store method in the writer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, func, *args)

    async def _write_loop(self) -> None:
        """Group commit: take everything queued, commit it, repeat; drain the queue at close."""
        queue = self._queue
        while True:
            while not queue:
                if self._state is not _State.OPEN:
                    return
                self._wake.clear()
                await self._wake.wait()
            count = min(len(queue), self.settings.batch_max)
            await self._commit([queue.popleft() for _ in range(count)])

    async def _commit(self, batch: list[_Item]) -> None:
        """Commit one batch and settle its futures."""
        try:
            outcome = await self._run(self._store.commit, [item[0] for item in batch])
        except Exception as exc:
            self._errors += 1
            if self._errors == 1:
                log.exception("buffer writer failed on a batch of %d events", len(batch))
            else:
                log.debug("buffer writer failed again (%d so far): %s", self._errors, exc)
            errors: list[Event | StorageError] = [StorageError(f"{exc}") for _ in batch]
            outcome = BatchOutcome(errors, [])
        _settle(batch, outcome.results)
        now = time.monotonic()
        self.stats.commit_latency.observe_many(now - item[2] for item in batch)
        self._after_write(outcome.committed)

    def _after_write(self, committed: Sequence[Event]) -> None:
        """Report the full flag and wake whoever waits for new events."""
        self._sync_full()
        if committed and self.on_commit is not None:
            try:
                self.on_commit(committed)
            except Exception:
                log.exception("buffer on_commit callback failed")

    def _sync_full(self) -> None:
        """Call on_storage_full when the store's full flag changed."""
        full = self._store.full
        if full == self._full_reported:
            return
        self._full_reported = full
        if self.on_storage_full is not None:
            try:
                self.on_storage_full(full)
            except Exception:
                log.exception("buffer on_storage_full callback failed")

    async def _prune_loop(self) -> None:
        """Retention pruning, every PRUNE_INTERVAL_S of the injected clock."""
        failures = 0
        while True:
            await self.clock.sleep(PRUNE_INTERVAL_S)
            try:
                await self.prune()
                failures = 0
            except StorageError as exc:
                failures += 1
                (log.warning if failures == 1 else log.debug)("buffer prune failed: %s", exc)


def _settle(batch: list[_Item], results: list[Event | StorageError]) -> None:
    """Resolve each future with its Event or error; refused telemetry needs no reader."""
    for (draft, future, _), result in zip(batch, results, strict=True):
        if future.done():
            continue
        if isinstance(result, Event):
            future.set_result(result)
            continue
        future.set_exception(result)
        if isinstance(result, StorageFullError) and draft.priority >= Priority.STATE:
            future.exception()  # counted in stats; fire-and-forget callers get no log noise
