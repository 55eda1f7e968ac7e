"""The PostgreSQL ledger backend (psycopg 3): one database shared by several master processes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from master_station.ledger.models import LedgerError
from master_station.ledger.schema import INSERT_EVENT

__all__ = ["PostgresDb", "redact_dsn"]

_log = logging.getLogger(__name__)

SCHEMA_LOCK_KEY = 0x5EA1_6A7E  # pg_advisory_xact_lock key: one master creates the schema at a time
HOLD_NAMESPACE = 0x5EA1  # first key of the two-key advisory locks of `exclusive`
_INSERT_RETURNING = INSERT_EVENT.replace("?", "%s") + " RETURNING 1"


class PostgresDb:
    """A psycopg connection (autocommit; explicit transactions) behind one lock."""

    blob_type = "BYTEA"
    real_type = "DOUBLE PRECISION"
    shared = True

    def __init__(self, dsn: str, *, connect_timeout_s: int = 10) -> None:
        self.location = redact_dsn(dsn)
        self._lock = threading.RLock()
        self._holds: dict[str, threading.Lock] = {}
        try:
            self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout_s)
        except psycopg.Error as exc:
            raise LedgerError(
                f"cannot connect to ledger {self.location}: {_first_line(exc)}"
            ) from None
        _log.debug("opened ledger %s", self.location)

    def create_schema(self, statements: Sequence[str]) -> None:
        """Create missing tables under an advisory lock, so concurrent masters do not race."""
        with self.transaction() as tx:
            tx.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))
            for statement in statements:
                tx.execute(statement)

    @contextmanager
    def transaction(self) -> Iterator[_PostgresTx]:
        """One transaction; rolled back on any error."""
        with self._lock:
            try:
                with self._conn.transaction():
                    yield _PostgresTx(self._conn)
            except psycopg.Error as exc:
                raise LedgerError(f"ledger {self.location}: {_first_line(exc)}") from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read statement."""
        with self._lock:
            try:
                return self._conn.execute(_pg(sql), tuple(params)).fetchall()
            except psycopg.Error as exc:
                raise LedgerError(f"ledger {self.location}: {_first_line(exc)}") from exc

    @contextmanager
    def exclusive(self, name: str, *, wait: bool = False) -> Iterator[bool]:
        """Hold `name` against every master on this database: a session advisory lock (and a
        thread lock, since a session may take its own advisory lock twice)."""
        with self._lock:
            local = self._holds.setdefault(name, threading.Lock())
        if not local.acquire(blocking=wait):
            yield False
            return
        try:
            mine = self._advisory("pg_advisory_lock" if wait else "pg_try_advisory_lock", name)
            try:
                yield mine
            finally:
                if mine:
                    self._advisory("pg_advisory_unlock", name)
        finally:
            local.release()

    @contextmanager
    def exclusive_many(self, names: Sequence[str]) -> Iterator[set[str]]:
        """Try to hold each name (thread lock, then one statement of advisory locks)."""
        with self._lock:
            holds = {name: self._holds.setdefault(name, threading.Lock()) for name in set(names)}
        local = [name for name, hold in holds.items() if hold.acquire(blocking=False)]
        try:
            held = self._advisory_many("pg_try_advisory_lock", local) if local else set()
            try:
                yield held
            finally:
                if held:
                    self._advisory_many("pg_advisory_unlock", sorted(held))
        finally:
            for name in local:
                holds[name].release()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _advisory_many(self, function: str, names: Sequence[str]) -> set[str]:
        """Call an advisory lock function for each name in one statement; the names it granted."""
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT name FROM unnest(%s::text[]) AS name"  # noqa: S608 - a function name of ours
                    f" WHERE {function}(%s, hashtext(name))",
                    (list(names), HOLD_NAMESPACE),
                ).fetchall()
            except psycopg.Error as exc:
                raise LedgerError(f"ledger {self.location}: {_first_line(exc)}") from exc
        return {str(row[0]) for row in rows}

    def _advisory(self, function: str, name: str) -> bool:
        """Call one of PostgreSQL's two-key advisory lock functions; False when refused."""
        with self._lock:
            try:
                row = self._conn.execute(
                    f"SELECT {function}(%s, hashtext(%s))", (HOLD_NAMESPACE, name)
                ).fetchone()
            except psycopg.Error as exc:
                raise LedgerError(f"ledger {self.location}: {_first_line(exc)}") from exc
        return row is None or row[0] is None or bool(row[0])


class _PostgresTx:
    """Statements inside a PostgreSQL transaction."""

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(_pg(sql), tuple(params)).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(_pg(sql), tuple(params)).fetchall()

    def insert_events(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        """All rows in one pipeline (prepared once), each row's RETURNING telling if it went in."""
        inserted = []
        with self._conn.cursor() as cur:
            cur.executemany(_INSERT_RETURNING, rows, returning=True)
            while True:
                inserted.append(cur.fetchone() is not None)
                if not cur.nextset():
                    break
        return inserted


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _pg(sql: str) -> str:
    """psycopg placeholders; the shared SQL uses `?` and never contains `%`."""
    return sql.replace("?", "%s")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
