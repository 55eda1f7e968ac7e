"""The ledger's SQL, shared by the SQLite and PostgreSQL backends (placeholders are `?`).

A backend (`sqlite.SqliteDb`, `postgres.PostgresDb`) supplies connections,
transactions and its column types; everything else, including idempotency and the incremental
chain check, lives here once. Schema and design: docs/master.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.errors import ProtocolError
from gateway.protocol.chain import EPOCH_TYPE, RunLinks, announced_ranges, verify_chain
from gateway.protocol.checkpoint import parse_checkpoint
from gateway.protocol.events import GENESIS_HASH, EventType, event_hash, format_ts
from master_station.ledger.evidence import (
    Finding,
    FindingKind,
    LedgerTrust,
    check_checkpoint,
    check_lock_event,
    index_gaps,
)
from master_station.ledger.models import (
    SCHEMA_VERSION,
    AddOutcome,
    AddResult,
    LedgerError,
    ParsedEvent,
    Problem,
    RetainedState,
    SeqRange,
    StoredEvent,
    TicketRecord,
    VerifyReport,
    parse_event,
)
from master_station.ledger.rows import (
    as_bytes,
    check_row,
    check_runs,
    event_row,
    json_object,
    link_to,
    status_state,
    stored_event,
    subtract_ranges,
    to_ranges,
    where_clause,
)
from master_station.ledger.schema import (
    CLAIM,
    EVENT_COLUMNS,
    GAPS,
    INSERT_EVENT,
    INSERT_LOCK_ENTRY,
    INSERT_PROBLEM,
    UPSERT_HEAD,
    schema_statements,
)

__all__ = ["Db", "SqlLedger", "Tx", "schema_statements"]

_log = logging.getLogger(__name__)

EVICTED_TYPE = "gateway.telemetry_evicted"  # the same string as gateway.protocol.chain.EVICTED_TYPE
CHECKPOINT_TYPE = "gateway.checkpoint"
VERIFY_BATCH = 1000


class Tx(Protocol):
    """Statements inside one transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


class Db(Protocol):
    """A backend: connection, transactions and dialect details."""

    location: str
    shared: bool

    def create_schema(self, statements: Sequence[str]) -> None: ...

    def transaction(self) -> AbstractContextManager[Tx]: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


class SqlLedger:
    """The ledger over a `Db` backend; implements `master_station.ledger.models.Ledger`."""

    def __init__(
        self,
        db: Db,
        *,
        now: Callable[[], datetime] | None = None,
        trust: LedgerTrust | None = None,
    ) -> None:
        self._db = db
        self.db = db  # the console and the rollups (master_station/ledger/rollup.py) query it
        self._now = now or _utcnow
        self._trust = trust
        self.location = db.location
        self.shared = db.shared
        self._check_version()

    # -- writing ---------------------------------------------------------------------------

    def add(self, payload: bytes, *, topic_gateway: str | None = None) -> AddResult:
        """Store one event unless it is already there; classify repeats and conflicts."""
        return self.add_many([payload], [topic_gateway])[0]

    def add_many(
        self, payloads: Sequence[bytes], topic_gateways: Sequence[str | None] | None = None
    ) -> list[AddResult]:
        """Store a batch in one transaction (one commit, one fsync)."""
        expected = list(topic_gateways) if topic_gateways is not None else [None] * len(payloads)
        received = format_ts(self._now())
        with self._db.transaction() as tx:
            return [
                self._add_one(tx, bytes(p), g, received)
                for p, g in zip(payloads, expected, strict=True)
            ]

    def put_seal_state(self, gateway: str, seal: str, payload: bytes) -> None:
        """Upsert the retained state of one seal; an empty payload deletes it."""
        with self._db.transaction() as tx:
            if not payload:
                tx.execute("DELETE FROM seal_state WHERE gateway = ? AND seal = ?", (gateway, seal))
                return
            tx.execute(
                "INSERT INTO seal_state (gateway, seal, payload, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (gateway, seal) DO UPDATE SET payload = excluded.payload,"
                " updated_at = excluded.updated_at",
                (gateway, seal, bytes(payload), format_ts(self._now())),
            )

    def put_status(self, gateway: str, payload: bytes) -> None:
        """Upsert the retained status of a gateway; an empty payload deletes it."""
        with self._db.transaction() as tx:
            if not payload:
                tx.execute("DELETE FROM gateway_status WHERE gateway = ?", (gateway,))
                return
            tx.execute(
                "INSERT INTO gateway_status (gateway, state, payload, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (gateway) DO UPDATE SET state = excluded.state,"
                " payload = excluded.payload, updated_at = excluded.updated_at",
                (gateway, status_state(payload), bytes(payload), format_ts(self._now())),
            )

    def record_problem(
        self,
        gateway: str,
        kind: str,
        detail: str,
        *,
        seq: int | None = None,
        key: str | None = None,
        payload: bytes | None = None,
    ) -> None:
        """Keep a finding once (gateway, seq, kind, key); `key` goes in the event_id column."""
        with self._db.transaction() as tx:
            self._problem(
                tx,
                gateway,
                kind,
                detail,
                seq=seq,
                event_id=key,
                payload=payload,
                received=format_ts(self._now()),
            )

    def claim_resend(
        self, gateway: str, span: SeqRange, *, requester: str, now: float, min_interval_s: float
    ) -> bool:
        """True when this master may ask for `span` now: nobody asked within the interval."""
        params = (gateway, span[0], span[1], requester, now, now - min_interval_s)
        with self._db.transaction() as tx:
            return tx.execute(CLAIM, params) == 1

    def record_ticket(self, ticket: TicketRecord) -> None:
        """Remember an issued ticket's flow and work order (for operations per flow)."""
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO tickets (ticket_id, gateway, flow, work_order, operator, role,"
                " not_before, not_after, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (ticket_id) DO NOTHING",
                (
                    ticket.ticket_id, ticket.gateway, ticket.flow, ticket.work_order,
                    ticket.operator, ticket.role, ticket.not_before, ticket.not_after,
                    ticket.issued_at,
                ),
            )  # fmt: skip

    # -- chain -----------------------------------------------------------------------------

    def gaps(self, gateway: str) -> list[SeqRange]:
        """Missing seq ranges up to the highest stored seq, minus announced evictions."""
        floor = self._head(gateway)[0]
        rows = self._db.query(GAPS, (floor, gateway, floor))
        evicted = self._evicted(gateway)
        return [r for a, b in rows for r in subtract_ranges((int(a), int(b)), evicted)]

    def verify(self, gateway: str, *, full: bool = False) -> VerifyReport:
        """Check the chain from the last verified head on (or all of it, with verify_chain)."""
        if full:
            return self._verify_full(gateway)
        head, checkpoints = self._advance(gateway)
        head_seq, events, repeats = self._stats(gateway)
        return VerifyReport(
            gateway=gateway,
            events=events,
            head_seq=head_seq,
            verified_seq=head[0],
            verified_hash=head[1],
            gaps=tuple(self.gaps(gateway)),
            problems=tuple(self.problems(gateway)),
            duplicates=repeats,
            checkpoints=checkpoints,
            evicted=tuple(self._evicted(gateway)),
            lock_gaps=tuple(self._lock_gaps(gateway)),
        )

    # -- reading ---------------------------------------------------------------------------

    def gateways(self) -> list[str]:
        """Every gateway with events, a status or a seal state."""
        rows = self._db.query(
            "SELECT gateway FROM events UNION SELECT gateway FROM gateway_status"
            " UNION SELECT gateway FROM seal_state"
        )
        return sorted(str(r[0]) for r in rows)

    def count(self, gateway: str | None = None) -> int:
        """Events stored (of one gateway)."""
        where, params = where_clause(gateway=gateway)
        sql = f"SELECT COUNT(*) FROM events{where}"  # noqa: S608 (fixed names; values bound)
        return int(self._db.query(sql, params)[0][0])

    def event_ids(self, gateway: str | None = None) -> set[str]:
        """The ids of the stored events (of one gateway)."""
        where, params = where_clause(gateway=gateway)
        sql = f"SELECT id FROM events{where}"  # noqa: S608 (fixed names; values bound)
        return {str(r[0]) for r in self._db.query(sql, params)}

    def problems(self, gateway: str | None = None) -> list[Problem]:
        """Findings, oldest first."""
        where, params = where_clause(gateway=gateway)
        sql = (
            "SELECT gateway, seq, kind, event_id, detail, received_at FROM problems"  # noqa: S608
            f"{where} ORDER BY received_at, gateway, seq"
        )
        rows = self._db.query(sql, params)
        return [Problem(r[0], None if r[1] is None else int(r[1]), *r[2:]) for r in rows]

    def closed_alarms(self) -> set[str]:
        """Ids of the alarms closed in the console, and of every event filed under them (the
        open-alarms KPI leaves them out)."""
        rows = self._db.query(
            "SELECT alarm_id FROM console_alarms WHERE status = 'closed' UNION SELECT m.event_id"
            " FROM console_alarm_events m JOIN console_alarms a ON a.alarm_id = m.alarm_id"
            " WHERE a.status = 'closed'"
        )
        return {str(r[0]) for r in rows}

    def ticket_flows(self) -> dict[str, str]:
        """ticket id → business flow, for every ticket recorded."""
        return {str(t): str(f) for t, f in self._db.query("SELECT ticket_id, flow FROM tickets")}

    def events(
        self,
        *,
        types: Sequence[str] | None = None,
        priority: str | None = None,
        gateway: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[StoredEvent]:
        """Events matching every filter given, by gateway then seq; `until` is exclusive."""
        where, params = where_clause(gateway=gateway, types=types, priority=priority, since=since,
                               until=until, rejected=True)  # fmt: skip
        sql = f"SELECT {EVENT_COLUMNS} FROM events{where} ORDER BY gateway, seq"  # noqa: S608
        rows = self._db.query(sql, params)
        return [stored_event(row) for row in rows]

    def hourly_counts(self, since: str, until: str) -> list[tuple[str, int, str, int]]:
        """(gateway, hour of day, type, count) for events with since <= ts < until."""
        rows = self._db.query(
            "SELECT gateway, substr(ts, 12, 2), type, COUNT(*) FROM events"
            " WHERE ts >= ? AND ts < ? GROUP BY gateway, substr(ts, 12, 2), type",
            (since, until),
        )
        return [(str(g), int(h), str(t), int(n)) for g, h, t, n in rows]

    def newest_ts(self) -> str | None:
        """The newest event time stored."""
        rows = self._db.query("SELECT MAX(ts) FROM events")
        return None if not rows or rows[0][0] is None else str(rows[0][0])

    def seal_states(self) -> list[RetainedState]:
        """Retained seal states, by gateway and seal."""
        rows = self._db.query(
            "SELECT gateway, seal, payload, updated_at FROM seal_state ORDER BY gateway, seal"
        )
        return [RetainedState(g, s, json_object(p), u) for g, s, p, u in rows]

    def statuses(self) -> list[RetainedState]:
        """Retained gateway statuses."""
        rows = self._db.query(
            "SELECT gateway, payload, updated_at FROM gateway_status ORDER BY gateway"
        )
        return [RetainedState(g, "", json_object(p), u) for g, p, u in rows]

    def close(self) -> None:
        self._db.close()

    # -- adding, private -------------------------------------------------------------------

    def _add_one(self, tx: Tx, payload: bytes, expected: str | None, received: str) -> AddResult:
        try:
            event = parse_event(payload)
        except ValueError as exc:
            return self._invalid(tx, expected or "?", str(exc), payload=payload, received=received)
        if expected is not None and event.gateway != expected:
            detail = f"event of {event.gateway!r} published under {expected!r}"
            return self._invalid(
                tx, expected, detail, payload=payload, received=received, event=event
            )
        if event_hash(event.obj) != event.hash:
            detail = "hash does not match content"
            return self._invalid(
                tx, event.gateway, detail, payload=payload, received=received, event=event,
                kind="edited",
            )  # fmt: skip
        if tx.execute(INSERT_EVENT, event_row(event, received)) == 1:
            if self._trust is not None:
                self._check_evidence(tx, event, self._trust, received)
            return AddResult(AddOutcome.STORED, event.gateway, event.seq, event.id)
        return self._classify(tx, event, received)

    def _check_evidence(
        self, tx: Tx, event: ParsedEvent, trust: LedgerTrust, received: str
    ) -> None:
        """Lock entry audit tag and index, checkpoint signature; findings go to `problems`."""
        evidence = check_lock_event(event.obj, trust)
        findings = list(evidence.findings) + list(check_checkpoint(event.obj, trust))
        claim = evidence.claim
        if claim is not None and not evidence.findings:
            row = (claim.lock_id.hex(), claim.index, event.gateway, event.seq, event.id,
                   claim.entry)  # fmt: skip
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
            self._problem(tx, event.gateway, found.kind, found.detail, seq=seq,
                          event_id=event_id, received=received)  # fmt: skip
            _log.warning("gateway %s seq %d: %s: %s", event.gateway, event.seq, found.kind,
                         found.detail)  # fmt: skip

    def _classify(self, tx: Tx, event: ParsedEvent, received: str) -> AddResult:
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
        self._problem(tx, event.gateway, "conflict", detail, seq=event.seq, event_id=event.id,
                      payload=event.payload, received=received)  # fmt: skip
        _log.warning("gateway %s: conflicting event: %s", event.gateway, detail)
        return AddResult(AddOutcome.CONFLICT, event.gateway, event.seq, event.id, detail)

    def _invalid(
        self,
        tx: Tx,
        gateway: str,
        detail: str,
        *,
        payload: bytes,
        received: str,
        event: ParsedEvent | None = None,
        kind: str = "invalid",
    ) -> AddResult:
        seq, event_id = (event.seq, event.id) if event else (None, None)
        self._problem(tx, gateway, kind, detail, seq=seq, event_id=event_id, payload=payload,
                      received=received)  # fmt: skip
        _log.warning("gateway %s: %s event refused: %s", gateway, kind, detail)
        return AddResult(AddOutcome.INVALID, event.gateway if event else None, seq, event_id,
                         detail)  # fmt: skip

    def _problem(
        self,
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
        tx.execute(
            INSERT_PROBLEM,
            (gateway, seq, kind, event_id, detail, payload, received,
             gateway, seq, kind, event_id or ""),
        )  # fmt: skip

    # -- verification, private -------------------------------------------------------------

    def _advance(self, gateway: str) -> tuple[tuple[int, str], int]:
        """Walk the stored chain past the verified head while it is contiguous and sound."""
        start = head = self._head(gateway)
        evicted = self._evicted(gateway)
        runs = RunLinks(self._notices(gateway))
        findings: list[tuple[int, str, str]] = []
        checkpoints = 0
        for seq, payload, stored_hash in self._rows_after(gateway, head[0]):
            link = link_to(head, seq, evicted)
            if link is None:
                break  # a gap: stop here until it is filled
            finding = check_runs(runs, head, seq) or check_row(
                payload, stored_hash, link or runs.ends.get(seq - 1, "")
            )
            if finding is not None:
                findings.append((seq, *finding))
                break
            checkpoints += self._check_checkpoint(gateway, payload, findings)
            head = (seq, stored_hash)
        self._save_head(gateway, start, head, findings)
        return head, checkpoints

    def _rows_after(self, gateway: str, seq: int) -> Iterator[tuple[int, bytes, str]]:
        while True:
            rows = self._db.query(
                "SELECT seq, payload, hash FROM events WHERE gateway = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (gateway, seq, VERIFY_BATCH),
            )
            for row in rows:
                yield int(row[0]), as_bytes(row[1]), str(row[2])
            if len(rows) < VERIFY_BATCH:
                return
            seq = int(rows[-1][0])

    def _check_checkpoint(
        self, gateway: str, payload: bytes, findings: list[tuple[int, str, str]]
    ) -> int:
        obj = json.loads(payload)
        if obj.get("type") != CHECKPOINT_TYPE:
            return 0
        try:
            claim = parse_checkpoint(obj)
        except ProtocolError as exc:
            findings.append((int(obj["seq"]), "checkpoint", f"malformed checkpoint: {exc}"))
            return 0
        rows = self._db.query(
            "SELECT hash FROM events WHERE gateway = ? AND seq = ?", (gateway, claim.covers_seq)
        )
        if rows and str(rows[0][0]) != claim.covers_hash:
            detail = f"checkpoint covers seq {claim.covers_seq} with a different hash"
            findings.append((claim.seq, "checkpoint", detail))
            return 0
        return 1

    def _save_head(
        self,
        gateway: str,
        start: tuple[int, str],
        head: tuple[int, str],
        findings: list[tuple[int, str, str]],
    ) -> None:
        if head == start and not findings:
            return
        now = format_ts(self._now())
        with self._db.transaction() as tx:
            if head != start:
                tx.execute(UPSERT_HEAD, (gateway, head[0], head[1], now))
            for seq, kind, detail in findings:
                self._problem(tx, gateway, kind, detail, seq=seq, received=now)
                _log.warning("gateway %s: chain problem at seq %d: %s", gateway, seq, detail)

    def _verify_full(self, gateway: str) -> VerifyReport:
        rows = self._db.query("SELECT payload FROM events WHERE gateway = ?", (gateway,))
        objs = [json.loads(as_bytes(r[0])) for r in rows]
        report = verify_chain(objs) if objs else None
        problems = [] if report is None else report.problems
        gaps = to_ranges(p.seq for p in problems if p.kind == "gap")
        found = tuple(
            Problem(gateway, p.seq, p.kind, None, p.detail, "") for p in problems if p.kind != "gap"
        )
        head_seq = report.heads.get(gateway, 0) if report else 0
        bad = [p.seq for p in problems]
        verified = min(bad) - 1 if bad else head_seq
        by_seq = {int(o["seq"]): str(o["hash"]) for o in objs}
        return VerifyReport(
            gateway=gateway,
            events=len(objs),
            head_seq=head_seq,
            verified_seq=verified,
            verified_hash=by_seq.get(verified, GENESIS_HASH),
            gaps=tuple(gaps),
            problems=found,
            duplicates=self._stats(gateway)[2],
            evicted=tuple(self._evicted(gateway)),
        )

    def _lock_gaps(self, gateway: str) -> list[tuple[str, int, int]]:
        """Index runs missing from the locks this gateway relayed, minus announced ring losses."""
        rows = self._db.query(
            "SELECT lock_id, log_index FROM lock_entries WHERE lock_id IN (SELECT DISTINCT"
            " lock_id FROM lock_entries WHERE gateway = ?) ORDER BY lock_id, log_index",
            (gateway,),
        )
        held: dict[str, list[int]] = {}
        for lock, index in rows:
            held.setdefault(str(lock), []).append(int(index))
        lost: dict[str, list[SeqRange]] = {}
        for found in self.events(types=[EventType.SEAL_LOG_GAP]):
            first, last = found.data.get("first"), found.data.get("last")
            if isinstance(first, int) and isinstance(last, int):
                lost.setdefault(str(found.data.get("lock_id")), []).append((first, last))
        return [
            (lock, a, b)
            for lock, indexes in sorted(held.items())
            for a, b in index_gaps(indexes, lost.get(lock, []))
        ]

    def _head(self, gateway: str) -> tuple[int, str]:
        rows = self._db.query(
            "SELECT verified_seq, verified_hash FROM chain_head WHERE gateway = ?", (gateway,)
        )
        return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)

    def _stats(self, gateway: str) -> tuple[int, int, int]:
        row = self._db.query(
            "SELECT COALESCE(MAX(seq), 0), COUNT(*), COALESCE(SUM(repeats), 0) FROM events"
            " WHERE gateway = ?",
            (gateway,),
        )[0]
        return int(row[0]), int(row[1]), int(row[2])

    def _evicted(self, gateway: str) -> list[SeqRange]:
        """Seq ranges announced as absent: evicted telemetry and the lost history of epochs."""
        return sorted(span for obj in self._notices(gateway) for span in announced_ranges(obj))

    def _notices(self, gateway: str) -> list[dict[str, Any]]:
        """The eviction notices and epoch starts of `gateway`, parsed."""
        rows = self._db.query(
            "SELECT payload FROM events WHERE gateway = ? AND type IN (?, ?)",
            (gateway, EVICTED_TYPE, EPOCH_TYPE),
        )
        return [json.loads(as_bytes(payload)) for (payload,) in rows]

    def _check_version(self) -> None:
        self._db.create_schema(schema_statements(*_types(self._db)))
        with self._db.transaction() as tx:
            rows = tx.query("SELECT value FROM ledger_meta WHERE key = 'schema_version'")
            if not rows:
                tx.execute(
                    "INSERT INTO ledger_meta (key, value) VALUES ('schema_version', ?)"
                    " ON CONFLICT (key) DO NOTHING",
                    (str(SCHEMA_VERSION),),
                )
                return
        version = int(rows[0][0])
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.location} has schema {version}; this master station knows"
                f" up to {SCHEMA_VERSION}"
            )


def _types(db: Db) -> tuple[str, str]:
    return str(getattr(db, "blob_type", "BLOB")), str(getattr(db, "real_type", "REAL"))


def _utcnow() -> datetime:
    return datetime.now(UTC)
