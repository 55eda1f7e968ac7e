"""The SQLite ledger backend: one file, WAL, `synchronous = FULL`, mode 0600, one writer."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from master_station.ledger.models import LedgerError
from master_station.ledger.schema import INSERT_EVENT

__all__ = ["SqliteDb"]

_log = logging.getLogger(__name__)


class SqliteDb:
    """A SQLite connection shared by the listener's threads behind one lock."""

    blob_type = "BLOB"
    real_type = "REAL"
    shared = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        self._lock = threading.RLock()
        self._holds: dict[str, threading.Lock] = {}
        self._conn = _connect(path)

    def create_schema(self, statements: Sequence[str]) -> None:
        """Create missing tables and indexes in one transaction."""
        with self.transaction() as tx:
            for statement in statements:
                tx.execute(statement)

    @contextmanager
    def transaction(self) -> Iterator[_SqliteTx]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield _SqliteTx(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read statement."""
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger {self.location}: {exc}") from exc

    @contextmanager
    def exclusive(self, name: str, *, wait: bool = False) -> Iterator[bool]:
        """Hold `name` against this process's other threads (a SQLite ledger has one master)."""
        with self._lock:
            hold = self._holds.setdefault(name, threading.Lock())
        mine = hold.acquire(blocking=wait)
        try:
            yield mine
        finally:
            if mine:
                hold.release()

    @contextmanager
    def exclusive_many(self, names: Sequence[str]) -> Iterator[set[str]]:
        """Try to hold each name against this process's other threads; yields those held."""
        with self._lock:
            holds = {name: self._holds.setdefault(name, threading.Lock()) for name in names}
        held = {name for name, hold in holds.items() if hold.acquire(blocking=False)}
        try:
            yield held
        finally:
            for name in held:
                holds[name].release()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _SqliteTx:
    """Statements inside a SQLite transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return self._conn.execute(sql, tuple(params)).rowcount
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger write failed: {exc}") from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger read failed: {exc}") from exc

    def insert_events(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        """One INSERT_EVENT per row (in process: no round trips to save)."""
        try:
            return [self._conn.execute(INSERT_EVENT, tuple(row)).rowcount == 1 for row in rows]
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger write failed: {exc}") from exc


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 5000")
        result = conn.execute("PRAGMA quick_check").fetchone()
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
    if result is None or result[0] != "ok":
        conn.close()
        raise LedgerError(f"ledger {path} failed its integrity check: {result}")
    _log.debug("opened ledger %s", path)
    return conn
