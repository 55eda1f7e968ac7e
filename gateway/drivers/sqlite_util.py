"""Small SQLite helpers shared by the gateway's state stores (lock state, tickets)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["execute_script", "transaction"]


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection is in autocommit mode)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def execute_script(conn: sqlite3.Connection, script: str) -> None:
    """Run `;`-separated statements one by one, inside the caller's transaction."""
    for statement in filter(str.strip, script.split(";")):
        conn.execute(statement)
