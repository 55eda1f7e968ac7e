"""The buffer's SQL statements, its per-transaction scratch record and small row helpers."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.protocol.canonical import JSONValue
from gateway.protocol.events import Event, Priority
from gateway.store.disk import is_full_error

ROW_OVERHEAD = 96  # rowid, record header, id and pending index entries, page slack
INSERT_SIZES = (1024, 256, 64, 16, 4, 1)  # rows per INSERT statement; few distinct SQL texts

INSERT = "INSERT INTO events (seq, id, priority, type, payload) VALUES (?, ?, ?, ?, ?)"
USED_PAGES = (
    "SELECT p.page_count - f.freelist_count FROM pragma_page_count p, pragma_freelist_count f"
)
SET_HEAD = "UPDATE meta SET value = ? WHERE key = ?"
FETCH = (
    "SELECT seq, type, payload FROM events"
    " WHERE published = 0 AND priority = ? AND seq > ? ORDER BY seq LIMIT ?"
)
MARK = (
    "UPDATE events SET published = 1, published_at = ?"
    " WHERE seq BETWEEN ? AND ? AND published = 0 RETURNING priority"
)
REQUEUE = (
    "UPDATE events SET published = 0, published_at = NULL"
    " WHERE published = 1 AND seq BETWEEN ? AND ? RETURNING priority"
)
PRUNE_OLD = (
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events"
    " WHERE published = 1 AND published_at < ? ORDER BY published_at LIMIT ?)"
)
PRUNE_ANY = (
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events"
    " WHERE published = 1 ORDER BY published_at LIMIT ?)"
)
EVICT = (
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE published = 0"
    " AND priority = 3 AND seq <= ? ORDER BY seq LIMIT ?) RETURNING seq, payload"  # 3: TELEMETRY
)


@dataclass(slots=True)
class Scratch:
    """What one write transaction did, applied to the store only after COMMIT."""

    head: tuple[int, str]
    events: list[Event] = field(default_factory=list)
    depth: list[int] = field(default_factory=lambda: [0] * len(Priority))
    evicted: list[int] = field(default_factory=list)
    links: dict[int, tuple[str, str]] = field(default_factory=dict)  # seq: (prev_hash, hash)
    pruned: int = 0
    bulk_blocked: bool = False

    def add(self, event: Event) -> None:
        self.events.append(event)
        self.depth[event.priority] += 1
        self.head = (event.seq, event.hash)


class OverLimitError(Exception):
    """Internal: the rows fit the file but not the telemetry limit."""


class AbortedError(Exception):
    """Internal: the transaction was rolled back while inserting draft `index` (-1: after).

    `disk` tells a full disk (worth a retry under a lower limit) from the size cap.
    """

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index)
        self.index = index
        self.error = error
        self.disk = is_full_error(error)


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """The seqs as (first, last) ranges of consecutive seqs, in order.

    Acknowledged seqs come in long runs (a batch message is one), so a mark is a handful of
    range updates rather than one lookup per seq.
    """
    ranges: list[tuple[int, int]] = []
    first = last = None
    for seq in sorted(set(seqs)):
        if last is not None and seq == last + 1:
            last = seq
            continue
        if first is not None and last is not None:
            ranges.append((first, last))
        first = last = seq
    if first is not None and last is not None:
        ranges.append((first, last))
    return ranges


@functools.lru_cache(maxsize=len(INSERT_SIZES))
def insert_sql(rows: int) -> str:
    """INSERT with `rows` value tuples."""
    return INSERT + ", (?, ?, ?, ?, ?)" * (rows - 1)


def row_of(event: Event) -> tuple[int, str, int, str, bytes]:
    return (event.seq, event.id, event.priority, event.type, event.payload)


def estimate(events: Iterable[Event]) -> int:
    """Bytes the rows will take, pessimistically."""
    return sum(len(e.payload) + len(e.id) + ROW_OVERHEAD for e in events)


def evicted_data(scratch: Scratch) -> dict[str, JSONValue]:
    """The gateway.telemetry_evicted data: exact runs and the hashes that keep links checkable."""
    seqs = sorted(scratch.evicted)
    runs: list[JSONValue] = []
    hashes: list[JSONValue] = []
    start = previous = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and seq == previous + 1:
            previous = seq
            continue
        runs.append([start, previous])
        hashes.append([scratch.links[start][0], scratch.links[previous][1]])
        if seq is not None:
            start = previous = seq
    return {
        "first_seq": seqs[0],
        "last_seq": seqs[-1],
        "count": len(seqs),
        "runs": runs,
        "run_hashes": hashes,
    }


def evicted_links(payload: bytes) -> tuple[str, str]:
    """(prev_hash, hash) of an evicted row's payload."""
    obj = json.loads(payload)
    return str(obj["prev_hash"]), str(obj["hash"])


def reserve_size(max_bytes: int) -> int:
    """The full-disk reserve: max_bytes / 64, at least 256 KiB and at most 4 MiB."""
    return min(max(256 * 1024, max_bytes // 64), 4 * 1024 * 1024)


def is_refusal(exc: sqlite3.Error) -> bool:
    """A full file or disk, or a duplicate id: the drafts are refused, the database is fine."""
    if isinstance(exc, sqlite3.IntegrityError):
        return True
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL
