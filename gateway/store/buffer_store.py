"""The synchronous SQLite layer of the event buffer.

Every method of `BufferStore` runs in the buffer's one writer thread, which owns the
connection (sqlite3's same-thread check enforces it). `gateway.store.buffer` is the asyncio face.
Capacity: telemetry and state may fill `max_bytes - audit_reserve_bytes`; alarm and audit
events may fill `max_bytes`, which `PRAGMA max_page_count` enforces like a full disk would.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import (
    DatabaseCorruptError,
    DuplicateEventError,
    StorageError,
    StorageFullError,
)
from gateway.protocol.clock import Clock
from gateway.protocol.events import Event, EventDraft, EventType, Priority, seal_event
from gateway.store.buffer_file import connect_checked, migrate, prepare_file
from gateway.store.config import BufferSection

__all__ = [
    "BatchOutcome",
    "BufferStats",
    "BufferStore",
    "LatencyHistogram",
    "PendingEvent",
]

log = logging.getLogger(__name__)

_ROW_OVERHEAD = 96  # rowid, record header, id and pending index entries, page slack
_INSERT_SIZES = (1024, 256, 64, 16, 4, 1)  # rows per INSERT statement; few distinct SQL texts
_CHUNK = 256  # rows deleted per statement when making room
_BULK = Priority.STATE  # this priority and lower ones are held to the telemetry limit

_INSERT = "INSERT INTO events (seq, id, priority, type, payload) VALUES (?, ?, ?, ?, ?)"
_USED_PAGES = (
    "SELECT p.page_count - f.freelist_count FROM pragma_page_count p, pragma_freelist_count f"
)
_SET_HEAD = "UPDATE meta SET value = ? WHERE key = ?"
_FETCH = (
    "SELECT seq, type, payload FROM events"
    " WHERE published = 0 AND priority = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_MARK = (
    "UPDATE events SET published = 1, published_at = ?"
    " WHERE seq IN (SELECT value FROM json_each(?)) AND published = 0 RETURNING priority"
)
_REQUEUE = (
    "UPDATE events SET published = 0, published_at = NULL"
    " WHERE published = 1 AND seq BETWEEN ? AND ? RETURNING priority"
)
_PRUNE_OLD = (
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events"
    " WHERE published = 1 AND published_at < ? ORDER BY published_at LIMIT ?)"
)
_PRUNE_ANY = (
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events"
    " WHERE published = 1 ORDER BY published_at LIMIT ?)"
)
_EVICT = (
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE published = 0"
    " AND priority = 3 AND seq <= ? ORDER BY seq LIMIT ?) RETURNING seq"  # 3: TELEMETRY
)


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
    commit_latency: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass(slots=True)
class BatchOutcome:
    """One batch's result: per draft an Event or the error, and everything committed in order."""

    results: list[Event | StorageError]
    committed: list[Event]


@dataclass(slots=True)
class _Scratch:
    """What one write transaction did, applied to the store only after COMMIT."""

    head: tuple[int, str]
    events: list[Event] = field(default_factory=list)
    depth: list[int] = field(default_factory=lambda: [0] * len(Priority))
    evicted: list[int] = field(default_factory=list)
    pruned: int = 0
    bulk_blocked: bool = False

    def add(self, event: Event) -> None:
        self.events.append(event)
        self.depth[event.priority] += 1
        self.head = (event.seq, event.hash)


class _OverLimitError(Exception):
    """Internal: the rows fit the file but not the telemetry limit."""


class _AbortedError(Exception):
    """Internal: SQLite rolled the whole transaction back while inserting draft `index`."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class BufferStore:
    """The SQLite file: chain head, pending counters and the capacity policy."""

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
        self._clear_bytes = 0

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> list[Event]:
        """Open, check, migrate and restore; return events committed while doing so."""
        prepare_file(self.path)
        reason = ""
        try:
            self._conn = connect_checked(self.path, self.clock.now())
        except DatabaseCorruptError as exc:
            reason = self._recover(exc)
        try:
            self._configure(self._db)
            migrate(self._db, self.migrations)
            self._restore(self._db)
        except BaseException:
            self.close()
            raise
        return self._commit_recovered(reason) if self.recovered_from else []

    def _recover(self, exc: DatabaseCorruptError) -> str:
        """Start a fresh file after the corrupt one was moved aside; return the reason."""
        log.error("buffer %s is corrupt (%s); moved aside to %s", self.path, exc, exc.moved_to)
        self.recovered_from = Path(exc.moved_to)
        prepare_file(self.path)
        self._conn = connect_checked(self.path, self.clock.now())
        return str(exc)

    def close(self) -> None:
        """Checkpoint the WAL into the file and close; safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("buffer checkpoint at close failed: %s", exc)
        finally:
            conn.close()

    def used_bytes(self) -> int:
        """Bytes in use: (page_count - freelist_count) * page_size, transaction included."""
        return int(self._db.execute(_USED_PAGES).fetchone()[0]) * self._page_size

    # -- commits ---------------------------------------------------------------------------

    def commit(self, drafts: Sequence[EventDraft]) -> BatchOutcome:
        """Seal and store `drafts` in one transaction; refused drafts take no seq."""
        outcome = self._commit_fast(drafts)
        if outcome is None:
            outcome = self._commit_slow(drafts)
        self._refresh_full()
        return outcome

    def _commit_fast(self, drafts: Sequence[EventDraft]) -> BatchOutcome | None:
        """All drafts at once; None when some do not fit and the batch must go row by row."""
        scratch = _Scratch(self.head)
        events = self._seal(drafts, scratch.head)
        bulk = any(d.priority >= _BULK for d in drafts)
        limit = self._limit(bulk)
        need = _estimate(events)
        self._begin()
        try:
            if self.used_bytes() + need > limit:
                self._make_room(scratch, limit - need - self._slack)
            self._insert_many(events)
            self._check_limit(bulk)
            for event in events:
                scratch.add(event)
            self._finish(scratch)
        except (sqlite3.Error, _OverLimitError) as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error) and not _is_refusal(exc):
                return self._failed(drafts, exc)
            return None
        return BatchOutcome(list(events), scratch.events)

    def _commit_slow(self, drafts: Sequence[EventDraft]) -> BatchOutcome:
        """Row by row under savepoints, so a refused draft leaves no gap in seq.

        SQLite may roll the whole transaction back when a page cannot be allocated; then the
        batch is redone with the draft that caused it refused up front.
        """
        refused: dict[int, StorageError] = {}
        while True:
            try:
                return self._slow_attempt(drafts, refused)
            except _AbortedError as abort:
                refused[abort.index] = self._refuse(drafts[abort.index], "no space left")

    def _slow_attempt(
        self, drafts: Sequence[EventDraft], refused: dict[int, StorageError]
    ) -> BatchOutcome:
        """One row-by-row pass in one transaction."""
        scratch = _Scratch(self.head)
        self._begin()
        try:
            results = [
                refused.get(index) or self._insert_one(index, draft, scratch)
                for index, draft in enumerate(drafts)
            ]
            self._finish(scratch)
        except sqlite3.Error as exc:
            self._rollback()
            return self._failed(drafts, exc)
        return BatchOutcome(results, scratch.events)

    def _insert_one(self, index: int, draft: EventDraft, scratch: _Scratch) -> Event | StorageError:
        """Insert one draft inside the open transaction, making room if policy allows."""
        bulk = draft.priority >= _BULK
        if bulk and scratch.bulk_blocked:
            return self._refuse(draft, "telemetry limit reached")
        event = seal_event(draft, self.gateway_id, scratch.head[0] + 1, scratch.head[1])
        limit, need = self._limit(bulk), _estimate((event,))
        if self.used_bytes() + need > limit:
            self._make_room(scratch, limit - need - self._slack)
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
            db.execute(_INSERT, _row(event))
            self._check_limit(bulk)
        except (sqlite3.Error, _OverLimitError) as exc:
            if not db.in_transaction:
                raise _AbortedError(index) from exc
            db.execute("ROLLBACK TO draft")
            db.execute("RELEASE draft")
            if isinstance(exc, sqlite3.Error) and not _is_refusal(exc):
                raise
            return exc
        db.execute("RELEASE draft")
        return None

    def _limit(self, bulk: bool) -> int:
        """Bytes the rows may fill, less a margin for the pages a b-tree split allocates."""
        return (self._soft if bulk else self._hard) - self._margin

    def _insert_many(self, events: Sequence[Event]) -> None:
        """Insert rows with multi-row statements: one GIL release per chunk, not per row."""
        db, start = self._db, 0
        while start < len(events):
            size = next(s for s in _INSERT_SIZES if s <= len(events) - start)
            chunk = events[start : start + size]
            db.execute(_insert_sql(size), [value for event in chunk for value in _row(event)])
            start += size

    def _check_limit(self, bulk: bool) -> None:
        """Raise _OverLimitError when telemetry rows pushed the file past the telemetry limit."""
        if bulk and self.used_bytes() > self._soft:
            raise _OverLimitError

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

    def _failed(self, drafts: Sequence[EventDraft], exc: sqlite3.Error) -> BatchOutcome:
        """The batch could not be written at all; every draft fails, nothing took a seq."""
        log.warning("buffer commit of %d events failed: %s", len(drafts), exc)
        if _is_refusal(exc):
            return BatchOutcome([self._refuse(d, str(exc)) for d in drafts], [])
        return BatchOutcome([StorageError(f"buffer commit failed: {exc}") for _ in drafts], [])

    def _finish(self, scratch: _Scratch) -> None:
        """Record evictions in the chain, write the head, COMMIT, then apply the scratch."""
        if scratch.evicted:
            draft = self._internal_draft(
                EventType.GATEWAY_TELEMETRY_EVICTED, _evicted_data(scratch)
            )
            event = seal_event(draft, self.gateway_id, scratch.head[0] + 1, scratch.head[1])
            self._db.execute(_INSERT, _row(event))
            scratch.add(event)
        self._db.execute(_SET_HEAD, (str(scratch.head[0]), "head_seq"))
        self._db.execute(_SET_HEAD, (scratch.head[1], "head_hash"))
        self._db.execute("COMMIT")
        self._apply(scratch)

    def _apply(self, scratch: _Scratch) -> None:
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

    def _internal_draft(self, kind: EventType, data: dict[str, int | str]) -> EventDraft:
        """A draft for an event the buffer itself reports."""
        priority = Priority.ALARM if kind == EventType.GATEWAY_BUFFER_RECOVERED else Priority.STATE
        return EventDraft(kind, self.gateway_id, data, priority, self.clock.now())

    def _commit_recovered(self, reason: str) -> list[Event]:
        """Commit the buffer_recovered alarm as the first event of the fresh file."""
        data: dict[str, int | str] = {"moved_to": str(self.recovered_from), "reason": reason[:500]}
        outcome = self.commit([self._internal_draft(EventType.GATEWAY_BUFFER_RECOVERED, data)])
        if not isinstance(outcome.results[0], Event):
            raise StorageError(f"cannot record the buffer recovery: {outcome.results[0]}")
        return outcome.committed

    # -- capacity --------------------------------------------------------------------------

    def _make_room(self, scratch: _Scratch, target: int) -> bool:
        """Prune published rows, then evict old telemetry, until used <= target."""
        while self.used_bytes() > target:
            if not (self._prune_any(scratch) or self._evict(scratch)):
                return False
        return True

    def _prune_any(self, scratch: _Scratch) -> bool:
        """Delete the oldest published rows regardless of retention; True if any."""
        count = self._db.execute(_PRUNE_ANY, (_CHUNK,)).rowcount
        scratch.pruned += count
        return count > 0

    def _evict(self, scratch: _Scratch) -> bool:
        """Delete the oldest unpublished telemetry committed before this batch; True if any."""
        rows = self._db.execute(_EVICT, (self.head[0], _CHUNK)).fetchall()
        scratch.evicted.extend(seq for (seq,) in rows)
        return bool(rows)

    def _refresh_full(self) -> None:
        """Clear `full` once an alarm or audit event has room again."""
        if self.full and self._hard - self.used_bytes() >= self._clear_bytes:
            self.full = False
            log.warning("buffer has room again for alarm and audit events")

    # -- delivery --------------------------------------------------------------------------

    def fetch_pending(
        self, after: Mapping[int, int], limit: int, priorities: Sequence[Priority]
    ) -> list[PendingEvent]:
        """Unpublished rows, by priority then seq, each past its priority's cursor."""
        found: list[PendingEvent] = []
        for priority in priorities:
            rows = self._db.execute(_FETCH, (priority, after.get(priority, 0), limit - len(found)))
            found.extend(PendingEvent(seq, priority, kind, payload) for seq, kind, payload in rows)
            if len(found) >= limit:
                break
        return found

    def mark_published(self, seqs: Sequence[int]) -> int:
        """Mark rows delivered; under storage pressure prune at once. Return rows marked."""
        scratch = _Scratch(self.head)
        now = self.clock.now().timestamp()
        self._relaxed_sync(relaxed=True)
        self._begin()
        try:
            rows = self._db.execute(_MARK, (now, json.dumps(list(seqs)))).fetchall()
            if self.full:
                self._make_room(scratch, self._hard - self._clear_bytes)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StorageError(f"buffer mark_published failed: {exc}") from exc
        finally:
            self._relaxed_sync(relaxed=False)
        for (priority,) in rows:
            scratch.depth[priority] -= 1
        self._apply(scratch)
        self._refresh_full()
        return len(rows)

    def requeue(self, first: int, last: int | None) -> tuple[int, int | None]:
        """Make retained published rows in [first, last] pending again."""
        upper = self.head[0] if last is None else last
        self._begin()
        try:
            rows = self._db.execute(_REQUEUE, (first, upper)).fetchall()
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
            count = self._db.execute(_PRUNE_OLD, (cutoff, limit)).rowcount
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StorageError(f"buffer prune failed: {exc}") from exc
        self.stats.pruned_published += count
        self._refresh_full()
        return int(count)

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
        conn.execute("PRAGMA journal_size_limit = 8388608")
        conn.execute("PRAGMA cache_size = -2048")  # 2 MiB: a Pi has little memory to spare
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count = {max(1, self._hard // self._page_size)}")
        self._slack = max(8 * self._page_size, self._hard // 64)
        self._margin = 8 * self._page_size
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
        if newest is not None and newest != self.head[0]:
            raise StorageError(f"buffer head {self.head[0]} disagrees with newest row {newest}")


@functools.lru_cache(maxsize=len(_INSERT_SIZES))
def _insert_sql(rows: int) -> str:
    """INSERT with `rows` value tuples."""
    return _INSERT + ", (?, ?, ?, ?, ?)" * (rows - 1)


def _row(event: Event) -> tuple[int, str, int, str, bytes]:
    return (event.seq, event.id, event.priority, event.type, event.payload)


def _estimate(events: Iterable[Event]) -> int:
    """Bytes the rows will take, pessimistically."""
    return sum(len(e.payload) + len(e.id) + _ROW_OVERHEAD for e in events)


def _evicted_data(scratch: _Scratch) -> dict[str, int | str]:
    seqs = scratch.evicted
    return {"first_seq": min(seqs), "last_seq": max(seqs), "count": len(seqs)}


def _is_refusal(exc: sqlite3.Error) -> bool:
    """A full file or disk, or a duplicate id: the drafts are refused, the database is fine."""
    if isinstance(exc, sqlite3.IntegrityError):
        return True
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL
