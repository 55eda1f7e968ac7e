"""What the ledger's SQL needs of a backend (`Db`, `Tx`), and the one statement every part uses.

`sqlite.SqliteDb` and `postgres.PostgresDb` implement the protocols; `ingest`, `walk` and `sql`
use them. Placeholders are `?` everywhere (the PostgreSQL backend rewrites them).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from master_station.ledger.schema import INSERT_PROBLEM

__all__ = ["Db", "Tx", "insert_problem"]


class Tx(Protocol):
    """Statements inside one transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def insert_events(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        """INSERT_EVENT for each row, in order; True for each row that was inserted."""
        ...


class Db(Protocol):
    """A backend: connection, transactions and dialect details."""

    location: str
    shared: bool

    def create_schema(self, statements: Sequence[str]) -> None: ...

    def transaction(self) -> AbstractContextManager[Tx]: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def exclusive(self, name: str, *, wait: bool = False) -> AbstractContextManager[bool]:
        """Hold `name` against every other user of the ledger: wait for it, or try once and
        yield False when it is taken."""
        ...

    def exclusive_many(self, names: Sequence[str]) -> AbstractContextManager[set[str]]:
        """Try to hold each of `names` (without waiting); yields the ones held."""
        ...

    def close(self) -> None: ...


def insert_problem(
    tx: Tx,
    gateway: str,
    kind: str,
    detail: str,
    *,
    seq: int | None = None,
    event_id: str | None = None,
    payload: bytes | None = None,
    received: str,
) -> None:
    """Keep a finding once per (gateway, seq, kind, event_id)."""
    tx.execute(
        INSERT_PROBLEM,
        (gateway, seq, kind, event_id, detail, payload, received,
         gateway, seq, kind, event_id or ""),
    )  # fmt: skip
