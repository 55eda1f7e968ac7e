"""`open_ledger`: a SQLite ledger for a path, a PostgreSQL ledger for a `postgresql://` DSN.

The top of master_station/ledger/. psycopg is an optional dependency (`sealgw[master]`), so the
PostgreSQL backend is imported only when a DSN asks for it.
"""

from __future__ import annotations

from pathlib import Path

from master_station.ledger.evidence import LedgerTrust
from master_station.ledger.models import Ledger, is_postgres_dsn
from master_station.ledger.recent import RecentlyVerified
from master_station.ledger.sql import SqlLedger
from master_station.ledger.sqlite import SqliteDb

__all__ = ["open_ledger"]


def open_ledger(
    target: str | Path,
    *,
    trust: LedgerTrust | None = None,
    recent: RecentlyVerified | None = None,
) -> Ledger:
    """A SQLite ledger at a path, or a PostgreSQL ledger for a DSN; create the schema.

    With `trust` (a MasterAuthority), lock log entries and checkpoint signatures are verified
    as events are added (master_station.ledger.evidence). `recent` is shared by the ledger
    objects of one process that write and walk the same ledger (ledger/recent.py).
    """
    if is_postgres_dsn(target):
        from master_station.ledger.postgres import PostgresDb  # noqa: PLC0415 - psycopg is optional (the master extra)

        return SqlLedger(PostgresDb(str(target)), trust=trust, recent=recent)
    return SqlLedger(SqliteDb(Path(target)), trust=trust, recent=recent)
