"""The synchronous SQLite layer of the event buffer: opening, commits and capacity.

Every method of `BufferStore` runs in the buffer's one writer thread, which owns the
connection (sqlite3's same-thread check enforces it). `gateway.store.buffer` is the asyncio face.
Capacity: telemetry and state may fill `max_bytes - audit_reserve_bytes`; alarm and audit
events may fill `max_bytes` less a headroom (max_bytes / 64) kept for delivery marks and
pruning; `PRAGMA max_page_count` enforces max_bytes. A full disk (SQLITE_FULL below that) is
met the same way, with the file held at the size it had (gateway.store.disk). After every
commit the head goes to the durable mark (gateway.store.seq_mark); a database found behind it
at open continues above it in a new chain epoch (gateway.store.recovery).
"""

from __future__ import annotations

import logging
import os
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
from gateway.store.buffer_file import connect_checked, migrate, prepare_file
from gateway.store.buffer_model import BatchOutcome, BufferStats
from gateway.store.buffer_sql import (
    EVICT,
    INSERT,
    INSERT_SIZES,
    PRUNE_ANY,
    SET_HEAD,
    USED_PAGES,
    AbortedError,
    OverLimitError,
    Scratch,
    estimate,
    evicted_data,
    evicted_links,
    insert_sql,
    is_refusal,
    reserve_size,
    row_of,
)
from gateway.store.config import BufferSection
from gateway.store.disk import ReserveFile, disk_free, is_full_error
from gateway.store.recovery import BreakReason, ChainBreak, file_state, find_break
from gateway.store.seq_mark import MarkFile, SeqMark, mark_path

__all__ = ["StoreCore"]

log = logging.getLogger(__name__)

_CHUNK = 256  # rows deleted per statement when making room
_BULK = Priority.STATE  # this priority and lower ones are held to the telemetry limit
_DISK_RETRIES = 3  # batch retries after a full disk, each under a lower limit
_ALARMS = frozenset({EventType.GATEWAY_BUFFER_RECOVERED, EventType.GATEWAY_CHAIN_EPOCH})


class StoreCore:
    """The SQLite file: chain head, pending counters, the durable mark and the capacity policy."""

    def __init__(
        self,
        path: Path,
        gateway_id: str,
        settings: BufferSection,
        clock: Clock,
        migrations: Mapping[int, str],
    ) -> None:
        self.path = path
        self.gateway_id = gateway_id
        self.settings = settings
        self.clock = clock
        self.migrations = migrations
        self.head: tuple[int, str] = (0, "")
        self.pending = [0] * len(Priority)
        self.full = False
        self.stats = BufferStats()
        self.recovered_from: Path | None = None
        self._conn: sqlite3.Connection | None = None
        self._page_size = 4096
        self._hard = settings.max_bytes
        self._soft = settings.max_bytes - settings.audit_reserve_bytes
        self._slack = 0
        self._margin = 0
        self._headroom = 0
        self._max_pages = 0
        self._page_cap = 0
        self._clear_bytes = 0
        self._marks = MarkFile(mark_path(path))
        self._mark_ready = False
        self._mark_failures = 0
        self._epoch = 0
        self._acked = 0
        self._reserve = ReserveFile(
            path.with_name(f"{path.stem}.reserve"), reserve_size(self._hard)
        )
        self._disk_limit: int | None = None
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

    def used_bytes(self) -> int:
        """Bytes in use: (page_count - freelist_count) * page_size, transaction included."""
        return int(self._db.execute(USED_PAGES).fetchone()[0]) * self._page_size

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
        bulk = any(d.priority >= _BULK for d in drafts)
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
        bulk = draft.priority >= _BULK
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

    def _limit(self, bulk: bool) -> int:
        """Bytes the rows may fill, less a margin for the pages a b-tree split allocates.

        Alarm and audit rows stop `headroom` short of max_bytes, so delivery marks, pruning and
        the chain head always find pages. On a full disk the file may not grow past where it
        was; telemetry then keeps a quarter of that (at most the audit reserve) free for audit.
        """
        cap, soft = self._hard - self._headroom, self._soft
        if self._disk_limit is not None:
            cap = min(cap, self._disk_limit)
            soft = min(soft, cap - min(self._hard - self._soft, cap // 4))
        return (soft if bulk else cap) - self._margin

    def _insert_many(self, events: Sequence[Event]) -> None:
        """Insert rows with multi-row statements: one GIL release per chunk, not per row."""
        db, start = self._db, 0
        while start < len(events):
            size = next(s for s in INSERT_SIZES if s <= len(events) - start)
            chunk = events[start : start + size]
            db.execute(insert_sql(size), [value for event in chunk for value in row_of(event)])
            start += size

    def _check_limit(self, bulk: bool) -> None:
        """Raise OverLimitError when the rows pushed the file past their limit."""
        if self.used_bytes() > self._limit(bulk) + self._margin:
            raise OverLimitError

    def _refuse(self, draft: EventDraft, reason: str) -> StorageError:
        """Count a refused draft; an alarm or audit refusal makes the buffer full."""
        if draft.priority >= _BULK:
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

    # -- capacity --------------------------------------------------------------------------

    def _make_room(self, scratch: Scratch, target: int) -> bool:
        """Prune published rows, then evict old telemetry, until used <= target."""
        while self.used_bytes() > target:
            if not (self._prune_any(scratch) or self._evict(scratch)):
                return False
        return True

    def _prune_any(self, scratch: Scratch) -> bool:
        """Delete the oldest published rows regardless of retention; True if any."""
        count = self._db.execute(PRUNE_ANY, (_CHUNK,)).rowcount
        scratch.pruned += count
        return count > 0

    def _evict(self, scratch: Scratch) -> bool:
        """Delete the oldest unpublished telemetry committed before this batch; True if any."""
        rows = self._db.execute(EVICT, (self.head[0], _CHUNK)).fetchall()
        for seq, payload in rows:
            scratch.evicted.append(seq)
            scratch.links[seq] = evicted_links(payload)
        return bool(rows)

    def _prune_to(self, scratch: Scratch, target: int, chunks: int) -> None:
        """Delete published rows, oldest delivery first, until used <= target (no eviction).

        At most `chunks` statements, so one transaction stays small enough for a full disk's WAL.
        """
        for _ in range(chunks):
            if self.used_bytes() <= target or not self._prune_any(scratch):
                return

    def _room_slack(self) -> int:
        """How far below the limit making room goes, so that it is not done for every batch."""
        if self._disk_limit is None:
            return self._slack
        return min(self._slack, max(8 * self._page_size, self._disk_limit // 32))

    def _clear(self) -> int:
        """Room alarm and audit events need before `full` clears (an eighth on a full disk)."""
        if self._disk_limit is None:
            return self._clear_bytes
        return min(self._clear_bytes, max(16 * self._page_size, self._disk_limit // 8))

    def _refresh_full(self) -> None:
        """Clear `full` once an alarm or audit event has room again."""
        room = self._limit(False) + self._margin - self.used_bytes()
        if self.full and room >= self._clear():
            self.full = False
            log.warning("buffer has room again for alarm and audit events")

    def _below_cap(self) -> bool:
        """True while the file is short of max_page_count: SQLITE_FULL then means the disk."""
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        return pages < self._page_cap - 1

    def _set_page_cap(self, pages: int) -> None:
        """PRAGMA max_page_count: max_bytes, or the file's size while the disk is full."""
        self._page_cap = pages
        self._db.execute(f"PRAGMA max_page_count = {pages}")

    def _disk_full(self) -> bool:
        """React to a full disk as to max_bytes: hold the file where it is, free the reserve.

        Returns False when the SQLITE_FULL came from the size cap (the limits handle that).
        Deleting the reserve file and checkpointing the WAL give the pruning, eviction and
        delivery marks that follow the space they need.
        """
        if not self._below_cap():
            return False
        self.stats.disk_full_errors += 1
        first = self._disk_limit is None
        released = self._reserve.release()
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.debug("buffer checkpoint on a full disk failed: %s", exc)
        pages = max(1, os.stat(self.path).st_size // self._page_size)
        self._set_page_cap(min(self._max_pages, pages))  # the file may not grow on this disk
        limit = pages * self._page_size - self._headroom
        if self._disk_limit is not None:  # it happened again: hold the rows a little lower
            limit = min(limit, self._disk_limit - self._headroom // 4)
        self._disk_limit = max(limit, self._headroom)
        log_at = log.warning if first else log.debug
        log_at(
            "disk full under buffer %s (%d so far): events limited to %d bytes%s",
            self.path, self.stats.disk_full_errors, self._disk_limit,
            ", reserve file released" if released else "",
        )  # fmt: skip
        return True

    def _check_disk(self) -> None:
        """Lift the full-disk limit once the file system has room again; remake the reserve."""
        if self._disk_limit is not None:
            if disk_free(self.path.parent) < 4 * self._reserve.size + self._headroom:
                return
            self._disk_limit = None
            self._set_page_cap(self._max_pages)
            log.warning(
                "disk under buffer %s has room again after %d failed writes",
                self.path, self.stats.disk_full_errors,
            )  # fmt: skip
        self._reserve.ensure()

    # -- connection ------------------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("buffer is not open")
        return self._conn

    def _relaxed_sync(self, *, relaxed: bool) -> None:
        """Delivery marks skip the fsync: a mark lost to a power cut only means a duplicate.

        The next durable commit (synchronous FULL) syncs the WAL, marks included.
        """
        level = "NORMAL" if relaxed else self.settings.synchronous.upper()
        self._db.execute(f"PRAGMA synchronous = {level}")

    def _begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _configure(self, conn: sqlite3.Connection) -> None:
        """WAL, durability, size cap and the derived capacity thresholds."""
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"buffer {self.path} cannot use WAL (journal_mode={mode})")
        conn.execute(f"PRAGMA synchronous = {self.settings.synchronous.upper()}")
        # The WAL stays no larger than the full-disk reserve, so that freeing the reserve always
        # lets a checkpoint move the WAL into the file (gateway.store.disk).
        wal_pages = max(64, min(1000, self._reserve.size // 4096))
        conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
        conn.execute(f"PRAGMA journal_size_limit = {self._reserve.size}")
        conn.execute("PRAGMA cache_size = -2048")  # 2 MiB: a Pi has little memory to spare
        # Debian builds SQLite with secure_delete on, which writes every freed page again: a
        # prune to make room on a full disk then needs as much WAL as it frees. The rows are
        # published events, not secrets; FAST still zeroes what costs no extra I/O.
        conn.execute("PRAGMA secure_delete = FAST")
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self._max_pages = max(1, self._hard // self._page_size)
        self._page_cap = self._max_pages
        conn.execute(f"PRAGMA max_page_count = {self._max_pages}")
        self._slack = max(8 * self._page_size, self._hard // 64)
        self._margin = 8 * self._page_size
        self._headroom = max(8 * self._page_size, self._hard // 64)
        reserve = min(self._hard - self._soft, self._hard)
        self._clear_bytes = max(16 * self._page_size, reserve // 4)

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
