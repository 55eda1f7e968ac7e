"""Row helpers of the ledger's SQL: event rows, chain links, ranges, filters, decoding.

Pure (no connection): master_station.ledger.sql uses them; see docs/master.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.errors import ProtocolError
from gateway.protocol.chain import RunLinks, link_ok
from gateway.protocol.event_payload import read_event_payload
from gateway.protocol.strict_json import load_object
from master_station.ledger.evidence import REJECTING
from master_station.ledger.models import ParsedEvent, SeqRange, StoredEvent

__all__ = [
    "as_bytes",
    "check_row",
    "event_row",
    "json_object",
    "link_to",
    "status_state",
    "stored_event",
    "subtract_ranges",
    "to_ranges",
    "where_clause",
]

# One placeholder per REJECTING kind. NOT IN needs IS NOT NULL: one NULL would hide every row.
_NOT_REJECTED = (
    "id NOT IN (SELECT event_id FROM problems WHERE event_id IS NOT NULL"
    " AND kind IN (?, ?, ?, ?, ?))"
)


def event_row(event: ParsedEvent, received: str) -> tuple[Any, ...]:
    obj = event.obj
    return (
        event.id, event.gateway, event.seq, event.payload, obj["type"], obj["ts"],
        obj["priority"], obj["subject"], event.hash, obj["prev_hash"], received,
    )  # fmt: skip


def link_to(head: tuple[int, str], seq: int, evicted: Sequence[SeqRange]) -> str | None:
    """The prev_hash `seq` must carry, "" when unknowable (evicted before it), None: a gap."""
    if seq == head[0] + 1:
        return head[1]
    missing = (head[0] + 1, seq - 1)
    return "" if not subtract_ranges(missing, evicted) else None


def check_runs(runs: RunLinks, head: tuple[int, str], seq: int) -> tuple[str, str] | None:
    """A broken link when the verified head disagrees with the run evicted right after it."""
    before = runs.starts.get(head[0] + 1)
    if seq != head[0] + 1 and head[0] > 0 and before is not None and before != head[1]:
        return (
            "broken_link",
            "hash differs from the prev_hash announced for the evicted event after it",
        )
    return None


def check_row(
    payload: bytes, stored_hash: str, link: str
) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """(the stored event, what is wrong with it): its content must give its stored hash."""
    try:
        obj, content_hash = read_event_payload(payload, "stored event")
    except (ProtocolError, UnicodeError) as exc:
        return None, ("edited", f"stored payload is not an event: {exc}")
    if content_hash != stored_hash or obj.get("hash") != stored_hash:
        return obj, ("edited", "stored payload does not match its hash")
    if not link_ok(obj, link or None):
        return obj, ("broken_link", "prev_hash differs from the previous event's hash")
    return obj, None


def subtract_ranges(span: SeqRange, holes: Iterable[SeqRange]) -> list[SeqRange]:
    """`span` minus every range in `holes` (sorted), as ranges."""
    pieces = [span]
    for lo, hi in holes:
        next_pieces = []
        for a, b in pieces:
            if hi < a or lo > b:
                next_pieces.append((a, b))
                continue
            if a < lo:
                next_pieces.append((a, lo - 1))
            if hi < b:
                next_pieces.append((hi + 1, b))
        pieces = next_pieces
    return pieces


def to_ranges(seqs: Iterable[int]) -> list[SeqRange]:
    spans: list[SeqRange] = []
    for seq in sorted(set(seqs)):
        if spans and spans[-1][1] == seq - 1:
            spans[-1] = (spans[-1][0], seq)
        else:
            spans.append((seq, seq))
    return spans


def where_clause(
    *,
    gateway: str | None = None,
    types: Sequence[str] | None = None,
    priority: str | None = None,
    since: str | None = None,
    until: str | None = None,
    rejected: bool = False,
) -> tuple[str, tuple[Any, ...]]:
    """WHERE for the filters given; `rejected` drops events whose lock evidence was refused."""
    clauses: list[str] = []
    params: list[Any] = []
    if rejected:
        clauses.append(_NOT_REJECTED)
        params.extend(sorted(REJECTING))
    for clause, value in (("gateway = ?", gateway), ("priority = ?", priority),
                          ("ts >= ?", since), ("ts < ?", until)):  # fmt: skip
        if value is not None:
            clauses.append(clause)
            params.append(value)
    if types is not None:
        clauses.append(f"type IN ({', '.join('?' for _ in types) or 'NULL'})")
        params.extend(types)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def stored_event(row: Sequence[Any]) -> StoredEvent:
    gateway, seq, event_id, type_, ts, priority, subject, payload = row
    data = json.loads(as_bytes(payload)).get("data")
    return StoredEvent(
        str(gateway), int(seq), str(event_id), str(type_), str(ts), str(priority), str(subject),
        data if isinstance(data, dict) else {},
    )  # fmt: skip


def as_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def json_object(value: Any) -> dict[str, Any]:
    try:
        return load_object(as_bytes(value), "retained message")
    except ProtocolError:  # also too deep or too large: never a RecursionError
        return {}


def status_state(payload: bytes) -> str:
    state = json_object(payload).get("state")
    return state if isinstance(state, str) else "unknown"
