"""Adding received events to the ledger: idempotent, classified, evidence checked, in bulk.

The work is split so the transaction holds only database work:

1. outside any transaction, every payload is parsed strictly and its content hash recomputed
   (gateway.protocol.event_payload: C-speed for the canonical payloads gateways send);
2. in one transaction, the events that passed are inserted in arrival order with one bulk call
   (`Tx.insert_events`: executemany in a pipeline on PostgreSQL), `ON CONFLICT DO NOTHING`;
3. in the same transaction, in arrival order: an inserted event has its lock evidence and
   checkpoint signature checked (with a `LedgerTrust`); one that was not inserted is a
   duplicate or a conflict, classified against what is stored; a refused payload becomes a
   problem.

The outcome of every payload is what adding them one by one, in arrival order, would give.
Several masters may add to one PostgreSQL ledger at once: the unique keys decide, and a
transaction that waits on another's uncommitted row sees it once that commits.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.protocol.chain import EPOCH_TYPE
from gateway.protocol.checkpoint import CHECKPOINT_TYPE
from master_station.ledger.backend import Db, Tx, insert_problem
from master_station.ledger.evidence import (
    Finding,
    FindingKind,
    LedgerTrust,
    check_checkpoint,
    check_lock_event,
)
from master_station.ledger.models import AddOutcome, AddResult, ParsedEvent, parse_event
from master_station.ledger.recent import RecentlyVerified, VerifiedRow
from master_station.ledger.rows import event_row
from master_station.ledger.schema import INSERT_LOCK_ENTRY

__all__ = ["add_events"]

_log = logging.getLogger(__name__)

_NOT_PLAIN = frozenset({CHECKPOINT_TYPE, EPOCH_TYPE})  # what the walk must read again


@dataclass(frozen=True, slots=True)
class _Checked:
    """One payload after the checks that need no database."""

    payload: bytes
    gateway: str  # as far as known: the event's, else the topic's, else "?"
    event: ParsedEvent | None
    refusal: tuple[str, str] | None = None  # (problem kind, detail)


def add_events(
    db: Db,
    payloads: Sequence[bytes],
    topic_gateways: Sequence[str | None],
    *,
    received: str,
    trust: LedgerTrust | None,
    recent: RecentlyVerified | None = None,
    content_hashes: Sequence[str | None] | None = None,
) -> list[AddResult]:
    """Store a batch in one transaction; one result per payload, in order.

    `content_hashes` as `parse_event` takes them; with `recent`, each stored plain event is
    noted there once committed (ledger/recent.py).
    """
    hashes = content_hashes if content_hashes is not None else [None] * len(payloads)
    checked = [
        _check(bytes(p), g, h) for p, g, h in zip(payloads, topic_gateways, hashes, strict=True)
    ]
    fresh = [c.event for c in checked if c.refusal is None and c.event is not None]
    with db.transaction() as tx:
        inserted = iter(tx.insert_events([event_row(e, received) for e in fresh]) if fresh else [])
        results = [_outcome(tx, c, inserted, received, trust) for c in checked]
    if recent is not None:
        _note(recent, checked, results)
    return results


def _note(recent: RecentlyVerified, checked: list[_Checked], results: list[AddResult]) -> None:
    for item, result in zip(checked, results, strict=True):
        event = item.event
        if result.stored and event is not None and event.obj["type"] not in _NOT_PLAIN:
            row = VerifiedRow(hashlib.sha256(item.payload).digest(), event.hash,
                              str(event.obj["prev_hash"]))  # fmt: skip
            recent.note(event.gateway, event.seq, row)


def _check(payload: bytes, expected: str | None, content_hash: str | None) -> _Checked:
    try:
        event = parse_event(payload, content_hash)
    except ValueError as exc:
        return _Checked(payload, expected or "?", None, ("invalid", str(exc)))
    if expected is not None and event.gateway != expected:
        detail = f"event of {event.gateway!r} published under {expected!r}"
        return _Checked(payload, expected, event, ("invalid", detail))
    if event.content_hash != event.hash:
        return _Checked(payload, event.gateway, event, ("edited", "hash does not match content"))
    return _Checked(payload, event.gateway, event)


def _outcome(
    tx: Tx, item: _Checked, inserted: Iterator[bool], received: str, trust: LedgerTrust | None
) -> AddResult:
    event = item.event
    if item.refusal is not None or event is None:
        return _refuse(tx, item, received)
    if next(inserted):
        if trust is not None:
            _check_evidence(tx, event, trust, received)
        return AddResult(AddOutcome.STORED, event.gateway, event.seq, event.id)
    return _classify(tx, event, received)


def _refuse(tx: Tx, item: _Checked, received: str) -> AddResult:
    kind, detail = item.refusal or ("invalid", "not an event")
    event = item.event
    seq, event_id = (event.seq, event.id) if event else (None, None)
    insert_problem(tx, item.gateway, kind, detail, seq=seq, event_id=event_id,
                   payload=item.payload, received=received)  # fmt: skip
    _log.warning("gateway %s: %s event refused: %s", item.gateway, kind, detail)
    return AddResult(AddOutcome.INVALID, event.gateway if event else None, seq, event_id, detail)


def _classify(tx: Tx, event: ParsedEvent, received: str) -> AddResult:
    same_id = tx.query("SELECT gateway, seq, hash FROM events WHERE id = ?", (event.id,))
    if same_id and tuple(same_id[0]) == (event.gateway, event.seq, event.hash):
        tx.execute("UPDATE events SET repeats = repeats + 1 WHERE id = ?", (event.id,))
        return AddResult(AddOutcome.DUPLICATE, event.gateway, event.seq, event.id)
    if same_id:
        detail = f"id {event.id} already stored for {same_id[0][0]} seq {same_id[0][1]}"
    else:
        other = tx.query(
            "SELECT id FROM events WHERE gateway = ? AND seq = ?", (event.gateway, event.seq)
        )
        detail = f"seq {event.seq} already stored as event {other[0][0] if other else '?'}"
    insert_problem(tx, event.gateway, "conflict", detail, seq=event.seq, event_id=event.id,
                   payload=event.payload, received=received)  # fmt: skip
    _log.warning("gateway %s: conflicting event: %s", event.gateway, detail)
    return AddResult(AddOutcome.CONFLICT, event.gateway, event.seq, event.id, detail)


def _check_evidence(tx: Tx, event: ParsedEvent, trust: LedgerTrust, received: str) -> None:
    """Lock entry audit tag and index, checkpoint signature; findings go to `problems`."""
    evidence = check_lock_event(event.obj, trust)
    findings = list(evidence.findings) + list(check_checkpoint(event.obj, trust))
    claim = evidence.claim
    if claim is not None and not evidence.findings:
        row = (claim.lock_id.hex(), claim.index, event.gateway, event.seq, event.id, claim.entry)
        if tx.execute(INSERT_LOCK_ENTRY, row) != 1:
            held = tx.query(
                "SELECT gateway, seq, event_id FROM lock_entries WHERE lock_id = ?"
                " AND log_index = ?",
                row[:2],
            )
            where = f"{held[0][0]} seq {held[0][1]}" if held else "?"
            detail = f"lock {row[0]} entry {claim.index} already recorded ({where})"
            findings.append(Finding(FindingKind.LOCK_DUPLICATE, detail))
    for found in findings:
        seq, event_id = (event.seq, event.id) if found.per_event else (None, None)
        insert_problem(tx, event.gateway, found.kind, found.detail, seq=seq, event_id=event_id,
                       received=received)  # fmt: skip
        _log.warning("gateway %s seq %d: %s: %s", event.gateway, event.seq, found.kind,
                     found.detail)  # fmt: skip
