"""The event buffer's connection and capacity policy, under its commits (gateway.store.buffer_core).

`StoreCapacity` owns the SQLite connection, the page cap and the limits rows may fill:
telemetry and state up to `max_bytes - audit_reserve_bytes`, alarm and audit events up to
`max_bytes` less a headroom (max_bytes / 64) kept for delivery marks and pruning, each less a
margin for the pages a b-tree split allocates. It makes room inside a transaction (published
rows first, then the oldest unpublished telemetry), and it meets a full disk (SQLITE_FULL below
the cap) as it meets `max_bytes`: the file is held at the size it had and the reserve file is
released (gateway.store.disk). Every method runs in the buffer's one writer thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from gateway.errors import StorageError
from gateway.protocol.events import Priority
from gateway.store.buffer_model import BufferStats
from gateway.store.buffer_sql import (
    EVICT,
    PRUNE_ANY,
    USED_PAGES,
    OverLimitError,
    Scratch,
    evicted_links,
    reserve_size,
)
from gateway.store.config import BufferSection
from gateway.store.disk import ReserveFile, disk_free

__all__ = ["BULK", "StoreCapacity"]

log = logging.getLogger(__name__)

_CHUNK = 256  # rows deleted per statement when making room
BULK = Priority.STATE
"""This priority and lower ones are held to the telemetry limit."""


class StoreCapacity:
    """The connection, and how full the file may get: limits, room making, a full disk."""

    def __init__(self, path: Path, settings: BufferSection) -> None:
        self.path = path
        self.settings = settings
        self.head: tuple[int, str] = (0, "")
        self.full = False
        self.stats = BufferStats()
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
        self._reserve = ReserveFile(
            path.with_name(f"{path.stem}.reserve"), reserve_size(self._hard)
        )
        self._disk_limit: int | None = None

    def used_bytes(self) -> int:
        """Bytes in use: (page_count - freelist_count) * page_size, transaction included."""
        return int(self._db.execute(USED_PAGES).fetchone()[0]) * self._page_size

    # -- limits -----------------------------------------------------------------------------

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

    def _check_limit(self, bulk: bool) -> None:
        """Raise OverLimitError when the rows pushed the file past their limit."""
        if self.used_bytes() > self._limit(bulk) + self._margin:
            raise OverLimitError

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
