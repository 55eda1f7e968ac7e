"""The synchronous SQLite layer of the event buffer: StoreCore plus delivery (marks, requeue,
retention pruning). Every method runs in the buffer's one writer thread; see buffer_core.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence

from gateway.errors import StorageError
from gateway.protocol.events import Priority
from gateway.store.buffer_core import StoreCore
from gateway.store.buffer_model import BatchOutcome, BufferStats, LatencyHistogram, PendingEvent
from gateway.store.buffer_sql import FETCH, MARK, PRUNE_OLD, REQUEUE, Scratch, seq_ranges
from gateway.store.disk import is_full_error

__all__ = [
    "BatchOutcome",
    "BufferStats",
    "BufferStore",
    "LatencyHistogram",
    "PendingEvent",
]

log = logging.getLogger(__name__)

MARK_PRUNE_CHUNKS = 4  # prune statements a delivery mark may add to its transaction


class BufferStore(StoreCore):
    """The buffer's SQLite file, with the delivery side: what to send and what was sent."""

    # -- delivery --------------------------------------------------------------------------

    def fetch_pending(
        self, after: Mapping[int, int], limit: int, priorities: Sequence[Priority]
    ) -> list[PendingEvent]:
        """Unpublished rows, by priority then seq, each past its priority's cursor."""
        found: list[PendingEvent] = []
        for priority in priorities:
            rows = self._db.execute(FETCH, (priority, after.get(priority, 0), limit - len(found)))
            found.extend(PendingEvent(seq, priority, kind, payload) for seq, kind, payload in rows)
            if len(found) >= limit:
                break
        return found

    def mark_published(self, seqs: Sequence[int]) -> int:
        """Mark rows delivered; near the limit prune published rows at once. Return rows marked.

        A full disk on the way is handled like a commit's, then the mark is tried once more.
        """
        try:
            rows, scratch = self._mark(seqs)
        except sqlite3.Error as exc:
            if not is_full_error(exc):
                raise StorageError(f"buffer mark_published failed: {exc}") from exc
            self._disk_full()
            pruned = self._free_pages()
            try:
                rows, scratch = self._mark(seqs)
            except sqlite3.Error as again:
                raise StorageError(f"buffer mark_published failed: {again}") from again
            scratch.pruned += pruned
        self._acked = max(self._acked, max(seqs, default=0))
        for (priority,) in rows:
            scratch.depth[priority] -= 1
        self._apply(scratch)
        self._refresh_full()
        return len(rows)

    def _free_pages(self) -> int:
        """Prune published rows in a transaction of their own, for a mark that found no page."""
        scratch = Scratch(self.head)
        self._begin()
        try:
            self._prune_to(scratch, 0, MARK_PRUNE_CHUNKS)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            log.debug("buffer could not prune to make room for a mark: %s", exc)
            return 0
        return scratch.pruned

    def _mark(self, seqs: Sequence[int]) -> tuple[list[tuple[int]], Scratch]:
        """One delivery-mark transaction: the rows marked, and what pruning did."""
        scratch = Scratch(self.head)
        now = self.clock.now().timestamp()
        self._relaxed_sync(relaxed=True)
        self._begin()
        try:
            rows: list[tuple[int]] = []
            for first, last in seq_ranges(seqs):
                rows += self._db.execute(MARK, (now, first, last)).fetchall()
            target = self._limit(False) + self._margin - self._clear()
            if self.used_bytes() > target:
                self._prune_to(scratch, target, MARK_PRUNE_CHUNKS)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
            raise
        finally:
            self._relaxed_sync(relaxed=False)
        return rows, scratch

    def requeue(self, first: int, last: int | None) -> tuple[int, int | None]:
        """Make retained published rows in [first, last] pending again."""
        upper = self.head[0] if last is None else last
        self._begin()
        try:
            rows = self._db.execute(REQUEUE, (first, upper)).fetchall()
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StorageError(f"buffer requeue failed: {exc}") from exc
        for (priority,) in rows:
            self.pending[priority] += 1
        lowest = self._db.execute(
            "SELECT MIN(seq) FROM events WHERE seq BETWEEN ? AND ?", (first, upper)
        ).fetchone()[0]
        return len(rows), lowest

    def prune(self, cutoff: float, limit: int) -> int:
        """Delete up to `limit` rows published before `cutoff` (epoch seconds)."""
        self._begin()
        try:
            count = self._db.execute(PRUNE_OLD, (cutoff, limit)).rowcount
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StorageError(f"buffer prune failed: {exc}") from exc
        self.stats.pruned_published += count
        self._check_disk()
        self._refresh_full()
        return int(count)
