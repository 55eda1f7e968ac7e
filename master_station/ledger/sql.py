"""The ledger over either backend (placeholders are `?`): `SqlLedger`.

A backend (`sqlite.SqliteDb`, `postgres.PostgresDb`) supplies connections, transactions, bulk
inserts, exclusive holds and its column types; everything else lives once above it: adding
events in `ingest`, the incremental chain check in `walk`, and here the retained state, the
queries and the reports. Schema and design: docs/master.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from gateway.protocol.events import EventType, format_ts
from master_station.ledger.backend import Db, insert_problem
from master_station.ledger.evidence import LedgerTrust, index_gaps
from master_station.ledger.ingest import add_events
from master_station.ledger.models import (
    SCHEMA_VERSION,
    AddResult,
    LedgerError,
    Problem,
    RetainedState,
    SeqRange,
    StoredEvent,
    TicketRecord,
    VerifyReport,
)
from master_station.ledger.recent import RecentlyVerified
from master_station.ledger.rows import (
    json_object,
    status_state,
    stored_event,
    subtract_ranges,
    where_clause,
)
from master_station.ledger.schema import CLAIM, EVENT_COLUMNS, GAPS, schema_statements
from master_station.ledger.walk import ChainWalk

__all__ = ["SqlLedger"]

_log = logging.getLogger(__name__)


class SqlLedger:
    """The ledger over a `Db` backend; implements `master_station.ledger.models.Ledger`."""

    def __init__(
        self,
        db: Db,
        *,
        now: Callable[[], datetime] | None = None,
        trust: LedgerTrust | None = None,
        recent: RecentlyVerified | None = None,
    ) -> None:
        """`recent`: shared with the process's other ledger objects on the same ledger (the
        listener's writer and chain keeper), so the walk need not re-read what was checked."""
        self._db = db
        self.db = db  # the console and the rollups (master_station/ledger/rollup.py) query it
        self._now = now or _utcnow
        self._trust = trust
        self.location = db.location
        self.shared = db.shared
        self._recent = recent
        self._walk = ChainWalk(db, self._now, recent)
        self._check_version()

    # -- writing ---------------------------------------------------------------------------

    def add(self, payload: bytes, *, topic_gateway: str | None = None) -> AddResult:
        """Store one event unless it is already there; classify repeats and conflicts."""
        return self.add_many([payload], [topic_gateway])[0]

    def add_many(
        self,
        payloads: Sequence[bytes],
        topic_gateways: Sequence[str | None] | None = None,
        *,
        content_hashes: Sequence[str | None] | None = None,
    ) -> list[AddResult]:
        """Store a batch in one transaction (one commit, one fsync); see `ingest`.

        `content_hashes`: for payloads the caller built and hashed itself (a decoded batch,
        DecodedBatch.hashes), the hash each one's content gives; None where unknown.
        """
        expected = list(topic_gateways) if topic_gateways is not None else [None] * len(payloads)
        received = format_ts(self._now())
        return add_events(self._db, payloads, expected, received=received, trust=self._trust,
                          recent=self._recent, content_hashes=content_hashes)  # fmt: skip

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
            insert_problem(tx, gateway, kind, detail, seq=seq, event_id=key, payload=payload,
                           received=format_ts(self._now()))  # fmt: skip

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
        floor = self._walk.head(gateway)[0]
        rows = self._db.query(GAPS, (floor, gateway, floor))
        evicted = self._walk.evicted(gateway)
        return [r for a, b in rows for r in subtract_ranges((int(a), int(b)), evicted)]

    def check_chain(self, gateway: str) -> list[SeqRange] | None:
        """Verify what arrived since the last check and return the gaps (the listener's tick).

        None when another master is walking this gateway's chain right now (shared ledger):
        ask again later.
        """
        return self.check_chains([gateway])[gateway]

    def check_chains(self, gateways: Sequence[str]) -> dict[str, list[SeqRange] | None]:
        """`check_chain` for several gateways, with a few statements for them all."""
        names = {gateway: f"chain:{gateway}" for gateway in gateways}
        with self._db.exclusive_many(list(names.values())) as held:
            walked = self._walk.advance_many(gw for gw, name in names.items() if name in held)
        return {
            gateway: None
            if gateway not in walked
            else []
            if walked[gateway].at_end
            else self.gaps(gateway)
            for gateway in names
        }

    def verify(self, gateway: str, *, full: bool = False) -> VerifyReport:
        """Check the chain from the last verified head on (or all of it, with verify_chain)."""
        if full:
            return self._walk.full(gateway, self._stats(gateway)[2])
        with self._db.exclusive(f"chain:{gateway}", wait=True):
            walked = self._walk.advance(gateway)
        head, checkpoints = walked.head, walked.checkpoints
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
            evicted=tuple(self._walk.evicted(gateway)),
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

    # -- private ---------------------------------------------------------------------------

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

    def _stats(self, gateway: str) -> tuple[int, int, int]:
        row = self._db.query(
            "SELECT COALESCE(MAX(seq), 0), COUNT(*), COALESCE(SUM(repeats), 0) FROM events"
            " WHERE gateway = ?",
            (gateway,),
        )[0]
        return int(row[0]), int(row[1]), int(row[2])

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
