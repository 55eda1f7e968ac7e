"""The synchronous SQLite layer of the event buffer: opening, the chain and its commits.

Every method of `BufferStore` runs in the buffer's one writer thread, which owns the
connection (sqlite3's same-thread check enforces it). `gateway.store.buffer` is the asyncio face.
How full the file may get, and what gives way when it is, is `gateway.store.buffer_capacity`
underneath: a commit that does not fit makes room there or refuses drafts without giving them a
seq. After every commit the head goes to the durable mark (gateway.store.seq_mark); a database
found behind it at open continues above it in a new chain epoch (gateway.store.recovery).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.errors import (
    DatabaseCorruptError,
    DuplicateEventError,
    StorageError,
    StorageFullError,
)
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.protocol.events import GENESIS_HASH, Event, EventDraft, EventType, Priority, seal_event
from gateway.store.buffer_capacity import BULK, StoreCapacity
from gateway.store.buffer_file import connect_checked, migrate, prepare_file
from gateway.store.buffer_model import BatchOutcome
from gateway.store.buffer_sql import (
    INSERT,
    INSERT_SIZES,
    SET_HEAD,
    AbortedError,
    OverLimitError,
    Scratch,
    estimate,
    evicted_data,
    insert_sql,
    is_refusal,
    row_of,
)
from gateway.store.config import BufferSection
from gateway.store.disk import is_full_error
from gateway.store.recovery import BreakReason, ChainBreak, file_state, find_break
from gateway.store.seq_mark import MarkFile, SeqMark, mark_path

__all__ = ["StoreCore"]

log = logging.getLogger(__name__)

_DISK_RETRIES = 3  # batch retries after a full disk, each under a lower limit
_ALARMS = frozenset({EventType.GATEWAY_BUFFER_RECOVERED, EventType.GATEWAY_CHAIN_EPOCH})


class StoreCore(StoreCapacity):
    """The SQLite file: chain head, pending counters, the durable mark and the commits."""

    def __init__(
        self,
        path: Path,
        gateway_id: str,
        settings: BufferSection,
        clock: Clock,
        migrations: Mapping[int, str],
    ) -> None:
        super().__init__(path, settings)
        self.gateway_id = gateway_id
        self.clock = clock
        self.migrations = migrations
        self.pending = [0] * len(Priority)
        self.recovered_from: Path | None = None
        self._marks = MarkFile(mark_path(path))
        self._mark_ready = False
        self._mark_failures = 0
        self._epoch = 0
        self._acked = 0
        self._failures = 0

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> list[Event]:
        """Open, check, migrate and restore; return events committed while doing so."""
        state = file_state(self.path)
        prepare_file(self.path)
        reason = ""
        try:
            self._conn = connect_checked(self.path, self.clock.now())
        except DatabaseCorruptError as exc:
            reason, state = self._recover(exc), BreakReason.CORRUPT
        try:
            self._configure(self._db)
            migrate(self._db, self.migrations)
            self._restore(self._db)
            found = find_break(self.head, self._open_mark(), state)
            self._mark_ready = True
            self._reserve.ensure()
            if found is not None:
                return self._commit_break(found, reason)
            if self.recovered_from:
                return self._commit_recovered(reason)
            self._save_mark()
        except BaseException:
            self._mark_ready = False  # a failed open must not move the mark
            self.close()
            raise
        return []

    def _recover(self, exc: DatabaseCorruptError) -> str:
        """Start a fresh file after the corrupt one was moved aside; return the reason."""
        log.error("buffer %s is corrupt (%s); moved aside to %s", self.path, exc, exc.moved_to)
        self.recovered_from = Path(exc.moved_to)
        prepare_file(self.path)
        self._conn = connect_checked(self.path, self.clock.now())
        return str(exc)

    def close(self) -> None:
        """Checkpoint the WAL into the file, write the mark and close; safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("buffer checkpoint at close failed: %s", exc)
        finally:
            conn.close()
        self._save_mark()
        self._mark_ready = False
        self._marks.close()

    # -- the durable mark ------------------------------------------------------------------

    def _open_mark(self) -> SeqMark | None:
        """The mark of this gateway's buffer, or None (none yet, unreadable, another gateway's)."""
        try:
            mark = self._marks.open()
        except OSError as exc:
            log.warning("buffer mark %s cannot be opened: %s", self._marks.path, exc)
            return None
        if mark is not None and mark.gateway != self.gateway_id:
            log.warning("buffer mark %s is gateway %s's; not used", self._marks.path, mark.gateway)
            return None
        if mark is not None:
            self._epoch, self._acked = mark.epoch, mark.acked_seq
        return mark

    def _save_mark(self) -> None:
        """Durably record the head (and the last acknowledged seq) outside the database."""
        if not self._mark_ready:
            return
        seq, digest = self.head
        mark = SeqMark(self.gateway_id, seq, digest, min(self._acked, seq), self._epoch)
        try:
            self._marks.write(mark)
        except OSError as exc:
            self._mark_failures += 1
            log_at = log.warning if self._mark_failures == 1 else log.debug
            log_at(
                "buffer mark %s not written (%d so far): %s",
                self._marks.path,
                self._mark_failures,
                exc,
            )

    def _commit_break(self, found: ChainBreak, reason: str) -> list[Event]:
        """Continue above the mark: commit the gateway.chain_epoch alarm that opens a new epoch."""
        mark = found.mark
        log.error(
            "buffer %s lost committed events %d..%d (%s); seq continues at %d in chain epoch %d",
            self.path, found.kept_seq + 1, mark.committed_seq, found.reason.value,
            mark.committed_seq + 1, found.epoch,
        )  # fmt: skip
        self.stats.rollbacks += 1
        self._epoch = found.epoch
        self.head = (mark.committed_seq, GENESIS_HASH)
        drafts = [self._internal_draft(EventType.GATEWAY_CHAIN_EPOCH, found.epoch_data())]
        if found.reason is not BreakReason.ROLLBACK:
            drafts.append(self._recovered_draft(found.reason, reason))
        outcome = self.commit(drafts)
        failed = [r for r in outcome.results if not isinstance(r, Event)]
        if failed:
            raise StorageError(f"cannot record the lost buffer history: {failed[0]}")
        return outcome.committed

    # -- commits ---------------------------------------------------------------------------

    def commit(self, drafts: Sequence[EventDraft]) -> BatchOutcome:
        """Seal and store `drafts` in one transaction; refused drafts take no seq."""
        outcome = self._commit_fast(drafts)
        if outcome is None:
            outcome = self._commit_slow(drafts)
        if outcome.committed and self._failures:
            log.warning("buffer commits succeed again after %d failed batches", self._failures)
            self._failures = 0
        self._refresh_full()
        return outcome

    def _commit_fast(self, drafts: Sequence[EventDraft]) -> BatchOutcome | None:
        """All drafts at once; None when some do not fit and the batch must go row by row."""
        scratch = Scratch(self.head)
        events = self._seal(drafts, scratch.head)
        bulk = any(d.priority >= BULK for d in drafts)
        limit = self._limit(bulk)
        need = estimate(events)
        self._begin()
        try:
            if self.used_bytes() + need > limit:
                self._make_room(scratch, limit - need - self._room_slack())
            self._insert_many(events)
            self._check_limit(bulk)
            for event in events:
                scratch.add(event)
            self._finish(scratch)
        except (sqlite3.Error, OverLimitError) as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error) and is_full_error(exc):
                self._disk_full()
            elif isinstance(exc, sqlite3.Error) and not is_refusal(exc):
                return self._failed(drafts, exc)
            return None
        return BatchOutcome(list(events), scratch.events)

    def _commit_slow(self, drafts: Sequence[EventDraft]) -> BatchOutcome:
        """Row by row under savepoints, so a refused draft leaves no gap in seq.

        SQLite may roll the whole transaction back when a page cannot be allocated; then the
        batch is redone with the draft that caused it refused up front.
        """
        refused: dict[int, StorageError] = {}
        retries = 0
        while True:
            try:
                return self._slow_attempt(drafts, refused)
            except AbortedError as abort:
                if abort.disk and retries < _DISK_RETRIES and self._disk_full():
                    retries += 1
                    continue
                if abort.index < 0:
                    return self._failed(drafts, abort.error)
                refused[abort.index] = self._refuse(drafts[abort.index], "no space left")

    def _slow_attempt(
        self, drafts: Sequence[EventDraft], refused: dict[int, StorageError]
    ) -> BatchOutcome:
        """One row-by-row pass in one transaction."""
        scratch = Scratch(self.head)
        self._begin()
        try:
            results = [
                refused.get(index) or self._insert_one(index, draft, scratch)
                for index, draft in enumerate(drafts)
            ]
            self._finish(scratch)
        except sqlite3.Error as exc:
            self._rollback()
            if is_full_error(exc):
                raise AbortedError(-1, exc) from exc
            return self._failed(drafts, exc)
        return BatchOutcome(results, scratch.events)

    def _insert_one(self, index: int, draft: EventDraft, scratch: Scratch) -> Event | StorageError:
        """Insert one draft inside the open transaction, making room if policy allows."""
        bulk = draft.priority >= BULK
        if bulk and scratch.bulk_blocked:
            return self._refuse(draft, "telemetry limit reached")
        event = seal_event(draft, self.gateway_id, scratch.head[0] + 1, scratch.head[1])
        limit, need = self._limit(bulk), estimate((event,))
        if self.used_bytes() + need > limit:
            self._make_room(scratch, limit - need - self._room_slack())
        error = None
        if self.used_bytes() + need <= limit:
            error = self._try_insert(index, event, bulk)
            if error is None:
                scratch.add(event)
                return event
        if isinstance(error, sqlite3.IntegrityError):
            message = f"{draft.type} not stored: duplicate event id {draft.id}"
            return DuplicateEventError(message, event_id=draft.id)
        scratch.bulk_blocked = scratch.bulk_blocked or bulk
        return self._refuse(draft, "no space left in the buffer")

    def _try_insert(self, index: int, event: Event, bulk: bool) -> Exception | None:
        """Insert under a savepoint; the refusal when it does not fit, None when it did."""
        db = self._db
        db.execute("SAVEPOINT draft")
        try:
            db.execute(INSERT, row_of(event))
            self._check_limit(bulk)
        except (sqlite3.Error, OverLimitError) as exc:
            if not db.in_transaction or (is_full_error(exc) and self._below_cap()):
                self._rollback()
                raise AbortedError(index, exc) from exc
            db.execute("ROLLBACK TO draft")
            db.execute("RELEASE draft")
            if isinstance(exc, sqlite3.Error) and not is_refusal(exc):
                raise
            return exc
        db.execute("RELEASE draft")
        return None

    def _insert_many(self, events: Sequence[Event]) -> None:
        """Insert rows with multi-row statements: one GIL release per chunk, not per row."""
        db, start = self._db, 0
        while start < len(events):
            size = next(s for s in INSERT_SIZES if s <= len(events) - start)
            chunk = events[start : start + size]
            db.execute(insert_sql(size), [value for event in chunk for value in row_of(event)])
            start += size

    def _refuse(self, draft: EventDraft, reason: str) -> StorageError:
        """Count a refused draft; an alarm or audit refusal makes the buffer full."""
        if draft.priority >= BULK:
            self.stats.rejected_bulk += 1
            log_first = self.stats.rejected_bulk == 1
        else:
            self.stats.rejected_important += 1
            log_first = not self.full
            self.full = True
        (log.warning if log_first else log.debug)("buffer refused %s: %s", draft.type, reason)
        return StorageFullError(f"{draft.type} not stored: {reason}")

    def _failed(self, drafts: Sequence[EventDraft], exc: Exception) -> BatchOutcome:
        """The batch could not be written at all; every draft fails, nothing took a seq."""
        self._failures += 1
        log_at = log.warning if self._failures == 1 else log.debug
        log_at(
            "buffer commit of %d events failed (%d in a row): %s", len(drafts), self._failures, exc
        )
        if isinstance(exc, sqlite3.Error) and is_refusal(exc):
            return BatchOutcome([self._refuse(d, str(exc)) for d in drafts], [])
        return BatchOutcome([StorageError(f"buffer commit failed: {exc}") for _ in drafts], [])

    def _finish(self, scratch: Scratch) -> None:
        """Record evictions in the chain, write the head, COMMIT, then apply the scratch."""
        if scratch.evicted:
            draft = self._internal_draft(EventType.GATEWAY_TELEMETRY_EVICTED, evicted_data(scratch))
            event = seal_event(draft, self.gateway_id, scratch.head[0] + 1, scratch.head[1])
            self._db.execute(INSERT, row_of(event))
            scratch.add(event)
        self._db.execute(SET_HEAD, (str(scratch.head[0]), "head_seq"))
        self._db.execute(SET_HEAD, (scratch.head[1], "head_hash"))
        self._db.execute("COMMIT")
        self._apply(scratch)
        if scratch.events:
            self._save_mark()

    def _apply(self, scratch: Scratch) -> None:
        """Make a committed transaction's effects visible."""
        self.head = scratch.head
        for priority, delta in enumerate(scratch.depth):
            self.pending[priority] += delta
        self.pending[Priority.TELEMETRY] -= len(scratch.evicted)
        stats = self.stats
        stats.committed += len(scratch.events)
        stats.batches += 1 if scratch.events else 0
        stats.evicted_telemetry += len(scratch.evicted)
        stats.pruned_published += scratch.pruned

    def _seal(self, drafts: Sequence[EventDraft], head: tuple[int, str]) -> list[Event]:
        """Seal drafts into the chain after `head`."""
        seq, prev = head
        events = []
        gateway = self.gateway_id
        for draft in drafts:
            seq += 1
            event = seal_event(draft, gateway, seq, prev)
            prev = event.hash
            events.append(event)
        return events

    def _internal_draft(self, kind: str, data: Mapping[str, JSONValue]) -> EventDraft:
        """A draft for an event the buffer itself reports."""
        priority = Priority.ALARM if kind in _ALARMS else Priority.STATE
        return EventDraft(kind, self.gateway_id, data, priority, self.clock.now())

    def _recovered_draft(self, state: BreakReason, reason: str) -> EventDraft:
        """The gateway.buffer_recovered alarm: where the old file went, and why."""
        moved = "" if self.recovered_from is None else str(self.recovered_from)
        why = reason or {BreakReason.MISSING: "buffer file missing"}.get(state, "buffer file empty")
        data = {"moved_to": moved, "reason": why[:500], "state": state.value}
        return self._internal_draft(EventType.GATEWAY_BUFFER_RECOVERED, data)

    def _commit_recovered(self, reason: str) -> list[Event]:
        """Commit the buffer_recovered alarm as the first event of the fresh file (no mark)."""
        outcome = self.commit([self._recovered_draft(BreakReason.CORRUPT, reason)])
        if not isinstance(outcome.results[0], Event):
            raise StorageError(f"cannot record the buffer recovery: {outcome.results[0]}")
        return outcome.committed

    def _restore(self, conn: sqlite3.Connection) -> None:
        """Load the chain head and the pending counters."""
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.head = (int(meta["head_seq"]), str(meta["head_hash"]))
        self.pending = [0] * len(Priority)
        counts = "SELECT priority, COUNT(*) FROM events WHERE published = 0 GROUP BY priority"
        for priority, count in conn.execute(counts):
            self.pending[priority] = count
        newest = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
        if newest is not None and newest > self.head[0]:
            raise StorageError(f"buffer head {self.head[0]} disagrees with newest row {newest}")
