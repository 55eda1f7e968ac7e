"""The buffer's SQLite file: permissions, integrity check, moving a corrupt file aside, and
the numbered schema migrations (gateway/store/schema/vN.sql, applied in one transaction)."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from gateway.errors import DatabaseCorruptError, StorageError

__all__ = ["connect_checked", "load_migrations", "migrate", "prepare_file"]

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^v(\d+)\.sql$")
_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def load_migrations() -> dict[int, str]:
    """The numbered schema files shipped in gateway/store/schema, by version."""
    found: dict[int, str] = {}
    for entry in resources.files("gateway.store").joinpath("schema").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found[int(match.group(1))] = entry.read_text(encoding="utf-8")
    return found


def migrate(conn: sqlite3.Connection, migrations: Mapping[int, str]) -> int:
    """Bring the schema to the newest version in one transaction; return that version."""
    latest = max(migrations)
    if sorted(migrations) != list(range(1, latest + 1)):
        raise StorageError(f"schema migrations must be numbered 1..n, got {sorted(migrations)}")
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > latest:
        raise StorageError(f"buffer schema v{current} is newer than this gateway's v{latest}")
    if current < latest:
        _apply(conn, [migrations[v] for v in range(current + 1, latest + 1)], latest)
        log.info("buffer schema migrated from v%d to v%d", current, latest)
    return latest


def _apply(conn: sqlite3.Connection, scripts: list[str], version: int) -> None:
    """Run `scripts` and set user_version, all or nothing."""
    body = "\n".join(scripts)
    try:
        conn.executescript(f"BEGIN IMMEDIATE;\n{body}\n;PRAGMA user_version = {version};\nCOMMIT;")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.rollback()
        raise StorageError(f"buffer schema migration to v{version} failed: {exc}") from exc


def connect_checked(path: Path, now: datetime) -> sqlite3.Connection:
    """Connect and run the integrity check; move a corrupt file aside and say so."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, cached_statements=32)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open buffer {path}: {exc}") from exc
    problem = _integrity_problem(conn)
    if problem is None:
        return conn
    conn.close()
    moved = _move_aside(path, now)
    raise DatabaseCorruptError(problem, moved_to=str(moved))


def _integrity_problem(conn: sqlite3.Connection) -> str | None:
    """None when the file passes PRAGMA integrity_check, else what is wrong with it."""
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _CORRUPTION_CODES:
            conn.close()
            raise StorageError(f"cannot check buffer: {exc}") from exc
        return str(exc)
    if rows == [("ok",)]:
        return None
    return "integrity_check: " + "; ".join(str(row[0]) for row in rows[:5])


def prepare_file(path: Path) -> None:
    """Create the parent directory (0700) and the file (0600) if they are missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def _move_aside(path: Path, now: datetime) -> Path:
    """Rename the file and its -wal/-shm to `<name>.corrupt-<UTC timestamp>`; never overwrite."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}.{counter}")
        counter += 1
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{target}{suffix}")
    _fsync_dir(path.parent)
    return target


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
