"""What the gateway believes about each seal, and the small durable store behind it.

`SealStates` is the in-memory model: state, wire loop, battery, tamper, log head, when the lock
was last heard, whether it is online, and the open window of an authorized unseal. It implements
`SealStateView` for the meter and theft code and renders the retained `seals/{seal}/state`
payload. Only authenticated inputs update it: verified adverts, verified answers and verified
log entries.

`LockStore` is `locks.db` in the state dir (SQLite, WAL): per lock the reconciliation cursor,
the highest challenge counter seen (so a cloned or rolled-back lock is caught), the last
accepted advert (the replay high-water mark), the log indexes whose event was already committed
ahead of the cursor, and the authorized-unseal window. Calls are short and synchronous.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gateway.drivers.sqlite_util import execute_script, transaction
from gateway.errors import StorageError
from gateway.protocol.canonical import JSONValue
from gateway.protocol.events import format_ts
from gateway.protocol.seal_advert import Advert, decode_advert, encode_advert
from gateway.protocol.seal_frames import LockState, StatusFlags, WireLoop
from gateway.store.state_files import CorruptFile, move_aside

__all__ = ["LOCKS_DB_FILE", "LockRecord", "LockSpec", "LockStore", "SealRecord", "SealStates"]

_log = logging.getLogger(__name__)

LOCKS_DB_FILE = "locks.db"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS locks (
    lock_id TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL DEFAULT 0,
    counter INTEGER,
    advert BLOB,
    unseal_from INTEGER,
    unseal_until INTEGER
);
CREATE TABLE IF NOT EXISTS seeds (
    lock_id TEXT PRIMARY KEY,
    counter INTEGER NOT NULL,
    log_head INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS emitted (
    lock_id TEXT NOT NULL,
    log_index INTEGER NOT NULL,
    PRIMARY KEY (lock_id, log_index)
) WITHOUT ROWID;
"""
_LOST = "reconciliation cursors and replay marks start again from the locks' own logs"
_SET_COUNTER = "UPDATE locks SET counter = max(coalesce(counter, 0), ?) WHERE lock_id = ?"
_SET_ADVERT = "UPDATE locks SET advert = ? WHERE lock_id = ?"


@dataclass(frozen=True, slots=True)
class LockSpec:
    """One lock the gateway serves: its seal, lock id, address and the two keys it may hold."""

    seal_id: str
    lock_id: bytes
    address: str
    k_adv: bytes = field(repr=False)
    k_log: bytes = field(repr=False)
    adv_counter_floor: int = 0  # the advert counter of MS's provisioning record


@dataclass(frozen=True, slots=True)
class LockRecord:
    """The durable part of one lock's state."""

    cursor: int = 0
    counter: int | None = None
    advert: Advert | None = None
    unseal_window: tuple[int, int] | None = None
    emitted: frozenset[int] = frozenset()
    seed: tuple[int, int] | None = None  # (advert counter, log head) floor before any advert


class LockStore:
    """Reconciliation cursors and replay high-water marks, per lock id."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.corrupt: CorruptFile | None = None

    @classmethod
    def open(cls, path: Path) -> LockStore:
        """Open (creating) the store; a corrupt file is moved aside and a new one started.

        Losing it is safe: cursors restart at 0 (reconciliation refetches the lock logs, whose
        entries are MAC'd), and the replay marks are re-learned from the locks' next answers.
        """
        try:
            return cls._open(path)
        except StorageError as exc:
            if not isinstance(exc.__cause__, sqlite3.DatabaseError):
                raise
            corrupt = move_aside(path, str(exc.__cause__), _LOST)
        store = cls._open(path)
        store.corrupt = corrupt
        return store

    @classmethod
    def _open(cls, path: Path) -> LockStore:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for pragma in ("journal_mode = WAL", "synchronous = FULL"):
                conn.execute(f"PRAGMA {pragma}")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StorageError(f"{path.name} schema {version} is newer than this gateway")
            with transaction(conn):
                execute_script(conn, _SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StorageError(f"{path}: {exc}") from exc
        return cls(conn)

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    def load(self, lock_id: bytes) -> LockRecord:
        """Everything stored for one lock (defaults for a lock never seen)."""
        key = lock_id.hex()
        row = self._conn.execute(
            "SELECT cursor, counter, advert, unseal_from, unseal_until FROM locks"
            " WHERE lock_id = ?",
            (key,),
        ).fetchone()
        emitted = self._conn.execute(
            "SELECT log_index FROM emitted WHERE lock_id = ?", (key,)
        ).fetchall()
        seed_row = self._conn.execute(
            "SELECT counter, log_head FROM seeds WHERE lock_id = ?", (key,)
        ).fetchone()
        seed = (int(seed_row[0]), int(seed_row[1])) if seed_row is not None else None
        if row is None:
            return LockRecord(emitted=frozenset(int(r[0]) for r in emitted), seed=seed)
        cursor, counter, advert, since, until = row
        window = (int(since), int(until)) if since is not None and until is not None else None
        return LockRecord(
            cursor=int(cursor),
            counter=None if counter is None else int(counter),
            advert=_advert(advert),
            unseal_window=window,
            emitted=frozenset(int(r[0]) for r in emitted),
            seed=seed,
        )

    def advance(self, lock_id: bytes, cursor: int) -> None:
        """Move the cursor forward (never back) and forget emitted marks it passed."""
        key = lock_id.hex()
        with transaction(self._conn):
            self._ensure(key)
            self._conn.execute(
                "UPDATE locks SET cursor = max(cursor, ?) WHERE lock_id = ?", (cursor, key)
            )
            self._conn.execute(
                "DELETE FROM emitted WHERE lock_id = ? AND log_index <= ?", (key, cursor)
            )

    def mark_emitted(self, lock_id: bytes, indexes: Iterable[int]) -> None:
        """Record log indexes whose operation outcome was committed from the answer.

        The entries themselves stay pending: reconciliation still commits each (as
        `seal.log_entry`) when it is fetched.
        """
        key = lock_id.hex()
        with transaction(self._conn):
            self._conn.executemany(
                "INSERT OR IGNORE INTO emitted VALUES (?, ?)", [(key, i) for i in indexes]
            )

    def set_seed(self, lock_id: bytes, counter: int, log_head: int) -> None:
        """Keep the advert floor of a lock with no accepted advert yet (re-applied at start)."""
        with transaction(self._conn):
            self._conn.execute(
                "INSERT OR REPLACE INTO seeds VALUES (?, ?, ?)", (lock_id.hex(), counter, log_head)
            )

    def set_counter(self, lock_id: bytes, counter: int) -> None:
        """Raise the highest challenge counter seen from the lock."""
        self._update(lock_id, _SET_COUNTER, counter)

    def set_advert(self, lock_id: bytes, advert: Advert) -> None:
        """Keep the last accepted advert (the replay high-water mark)."""
        self._update(lock_id, _SET_ADVERT, encode_advert(advert))

    def set_unseal_window(self, lock_id: bytes, window: tuple[int, int] | None) -> None:
        """Open (from, until Unix seconds) or close the authorized-unseal window."""
        since, until = window if window is not None else (None, None)
        key = lock_id.hex()
        with transaction(self._conn):
            self._ensure(key)
            self._conn.execute(
                "UPDATE locks SET unseal_from = ?, unseal_until = ? WHERE lock_id = ?",
                (since, until, key),
            )

    def _update(self, lock_id: bytes, statement: str, value: object) -> None:
        key = lock_id.hex()
        with transaction(self._conn):
            self._ensure(key)
            self._conn.execute(statement, (value, key))

    def _ensure(self, key: str) -> None:
        self._conn.execute("INSERT OR IGNORE INTO locks (lock_id) VALUES (?)", (key,))


@dataclass(slots=True)
class SealRecord:
    """The gateway's belief about one seal (mutable; owned by SealStates)."""

    seal_id: str
    lock_id: bytes
    state: LockState = LockState.UNKNOWN
    wire: WireLoop | None = None
    flags: int = 0
    log_head: int = 0
    last_seen: float | None = None
    last_fresh: float | None = None
    last_seen_at: datetime | None = None
    online: bool | None = None
    unseal_window: tuple[int, int] | None = None
    published: bytes = field(default=b"", repr=False)
    published_at: float = 0.0

    @property
    def tamper(self) -> bool:
        """The lock reports a tamper not yet cleared by an authorized seal."""
        return bool(self.flags & StatusFlags.TAMPER) or self.state is LockState.TAMPERED

    @property
    def battery_low(self) -> bool:
        """The lock reports a low battery."""
        return bool(self.flags & StatusFlags.BATTERY_LOW)


class SealStates:
    """Per-seal beliefs; the SealStateView the meter and theft code consume."""

    def __init__(self, records: Iterable[SealRecord]) -> None:
        self._by_seal = {record.seal_id: record for record in records}

    def __iter__(self) -> Iterator[SealRecord]:
        return iter(self._by_seal.values())

    def get(self, seal_id: str) -> SealRecord | None:
        """The record of a configured seal, or None."""
        return self._by_seal.get(seal_id)

    # -- SealStateView -------------------------------------------------------------------------

    def seal_state(self, seal_id: str) -> str | None:
        """ "sealed", "unsealed", "tampered" or "fault"; None when unknown."""
        record = self._by_seal.get(seal_id)
        if record is None or record.state is LockState.UNKNOWN or not record.state.known:
            return None
        return record.state.name.lower()

    def unseal_authorized(self, seal_id: str, at: datetime) -> bool:
        """True inside an allowed unseal's ticket window until a seal operation follows it."""
        record = self._by_seal.get(seal_id)
        if record is None or record.unseal_window is None:
            return False
        since, until = record.unseal_window
        return since <= at.timestamp() <= until

    # -- updates --------------------------------------------------------------------------------

    def heard(self, record: SealRecord, mono: float, wall: datetime, *, fresh: bool) -> bool:
        """The lock was heard (verified); True when it comes back online."""
        record.last_seen = mono
        record.last_seen_at = wall
        if fresh:
            record.last_fresh = mono
        came_back = record.online is False
        record.online = True
        return came_back

    def going_offline(self, mono: float, silent_s: float, stale_s: float) -> list[SealRecord]:
        """Records just gone offline: unheard for `silent_s`, or no fresh advert for `stale_s`."""
        gone = []
        for record in self._by_seal.values():
            if record.online is False or record.last_seen is None:
                continue
            fresh = record.last_fresh if record.last_fresh is not None else record.last_seen
            if mono - record.last_seen > silent_s or mono - fresh > stale_s:
                record.online = False
                gone.append(record)
        return gone

    def payload(self, record: SealRecord) -> dict[str, JSONValue]:
        """The retained `seals/{seal}/state` document."""
        return {
            "seal": record.seal_id,
            "lock_id": record.lock_id.hex(),
            "state": _name(record.state),
            "wire": _name(record.wire) if record.wire is not None else "unknown",
            "battery": "low" if record.battery_low else "ok",
            "tamper": record.tamper,
            "online": bool(record.online),
            "log_head": record.log_head,
            "last_seen": format_ts(record.last_seen_at) if record.last_seen_at else None,
        }


def unix_now(moment: datetime) -> int:
    """Whole Unix seconds of an aware datetime."""
    return int(moment.astimezone(UTC).timestamp())


def _name(value: LockState | WireLoop) -> str:
    return value.name.lower()


def _advert(blob: bytes | None) -> Advert | None:
    if blob is None:
        return None
    try:
        return decode_advert(bytes(blob))
    except ValueError:
        _log.warning("stored advert is unreadable; the replay mark starts over")
        return None
