"""The ledger's models: results, rows and reports, the `Ledger` protocol, and `parse_event`.

The bottom of master_station/ledger/: models <- schema, sqlite, postgres <- sql <- factory
(`open_ledger`). Nothing here imports a backend. Design and schema: docs/master.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import GatewayError, ProtocolError
from gateway.protocol.event_payload import read_event_payload
from gateway.protocol.events import EVENT_FIELDS, EVENT_VERSION
from gateway.protocol.strict_json import check_shape

__all__ = [
    "SCHEMA_VERSION",
    "AddOutcome",
    "AddResult",
    "Ledger",
    "LedgerError",
    "ParsedEvent",
    "Problem",
    "RetainedState",
    "StoredEvent",
    "TicketRecord",
    "VerifyReport",
    "is_postgres_dsn",
    "parse_event",
]

SCHEMA_VERSION = 1
SeqRange = tuple[int, int]


class LedgerError(GatewayError):
    """The ledger cannot be opened, read or written."""


class AddOutcome(StrEnum):
    """What happened to one received event."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # the same event again: counted, not stored twice
    CONFLICT = "conflict"  # same id or same (gateway, seq) but different content: a problem
    INVALID = "invalid"  # not an event, or its own hash does not match: a problem


@dataclass(frozen=True, slots=True)
class AddResult:
    """The outcome of `Ledger.add` for one payload."""

    outcome: AddOutcome
    gateway: str | None = None
    seq: int | None = None
    id: str | None = None
    detail: str = ""

    @property
    def stored(self) -> bool:
        return self.outcome is AddOutcome.STORED


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """A received payload parsed and type-checked, with the hash its content gives.

    `content_hash` is `event_hash(obj)`; the event's own claim is `hash`. They differ for an
    edited event, which the ledger refuses.
    """

    obj: Mapping[str, Any]
    payload: bytes
    content_hash: str

    @property
    def id(self) -> str:
        return str(self.obj["id"])

    @property
    def gateway(self) -> str:
        return str(self.obj["gateway"])

    @property
    def seq(self) -> int:
        return int(self.obj["seq"])

    @property
    def hash(self) -> str:
        return str(self.obj["hash"])


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event row, with its data parsed; what KPI queries return."""

    gateway: str
    seq: int
    id: str
    type: str
    ts: str
    priority: str
    subject: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Problem:
    """A finding kept in the ledger: conflict, invalid, edited, broken_link, checkpoint, gone,
    unenrolled and the lock_* evidence findings (master_station.ledger.evidence)."""

    gateway: str
    seq: int | None
    kind: str
    event_id: str | None
    detail: str
    received_at: str


@dataclass(frozen=True, slots=True)
class RetainedState:
    """The latest retained document of a gateway (`key` "") or of one of its seals."""

    gateway: str
    key: str
    payload: Mapping[str, Any]
    updated_at: str


@dataclass(frozen=True, slots=True)
class TicketRecord:
    """What KPIs need to know about an issued ticket (no credentials)."""

    ticket_id: str
    gateway: str
    flow: str
    work_order: str
    operator: str
    role: str
    not_before: int
    not_after: int
    issued_at: int


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """A gateway's chain as the ledger holds it."""

    gateway: str
    events: int
    head_seq: int
    verified_seq: int
    verified_hash: str
    gaps: tuple[SeqRange, ...] = ()
    problems: tuple[Problem, ...] = ()
    duplicates: int = 0
    checkpoints: int = 0
    evicted: tuple[SeqRange, ...] = field(default=())
    lock_gaps: tuple[tuple[str, int, int], ...] = ()  # (lock id hex, first, last) not received

    @property
    def ok(self) -> bool:
        return not self.gaps and not self.problems and not self.lock_gaps

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "gateway": self.gateway,
            "events": self.events,
            "head_seq": self.head_seq,
            "verified_seq": self.verified_seq,
            "gaps": [list(r) for r in self.gaps],
            "duplicates": self.duplicates,
            "checkpoints": self.checkpoints,
            "problems": [{"kind": p.kind, "seq": p.seq, "detail": p.detail} for p in self.problems],
            "lock_gaps": [
                {"lock_id": lock, "first": a, "last": b} for lock, a, b in self.lock_gaps
            ],
            "ok": self.ok,
        }


class Ledger(Protocol):
    """What the listener, the KPIs and the CLI use; both backends implement it."""

    location: str
    shared: bool  # True when several master processes may write to it (PostgreSQL)

    def add(self, payload: bytes, *, topic_gateway: str | None = None) -> AddResult: ...

    def add_many(
        self,
        payloads: Sequence[bytes],
        topic_gateways: Sequence[str | None] | None = None,
        *,
        content_hashes: Sequence[str | None] | None = None,
    ) -> list[AddResult]: ...

    def put_seal_state(self, gateway: str, seal: str, payload: bytes) -> None: ...

    def put_status(self, gateway: str, payload: bytes) -> None: ...

    def gateways(self) -> list[str]: ...

    def count(self, gateway: str | None = None) -> int: ...

    def event_ids(self, gateway: str | None = None) -> set[str]: ...

    def gaps(self, gateway: str) -> list[SeqRange]: ...

    def verify(self, gateway: str, *, full: bool = False) -> VerifyReport: ...

    def check_chain(self, gateway: str) -> list[SeqRange] | None:
        """Verify what arrived since the last check; the gaps, or None if another master is."""
        ...

    def check_chains(self, gateways: Sequence[str]) -> dict[str, list[SeqRange] | None]:
        """`check_chain` for several gateways at once (a few statements for them all)."""
        ...

    def problems(self, gateway: str | None = None) -> list[Problem]: ...

    def record_problem(
        self,
        gateway: str,
        kind: str,
        detail: str,
        *,
        seq: int | None = None,
        key: str | None = None,
        payload: bytes | None = None,
    ) -> None: ...

    def claim_resend(
        self, gateway: str, span: SeqRange, *, requester: str, now: float, min_interval_s: float
    ) -> bool: ...

    def record_ticket(self, ticket: TicketRecord) -> None: ...

    def ticket_flows(self) -> dict[str, str]: ...

    def closed_alarms(self) -> set[str]: ...

    def events(
        self,
        *,
        types: Sequence[str] | None = None,
        priority: str | None = None,
        gateway: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[StoredEvent]: ...

    def hourly_counts(self, since: str, until: str) -> list[tuple[str, int, str, int]]: ...

    def newest_ts(self) -> str | None: ...

    def seal_states(self) -> list[RetainedState]: ...

    def statuses(self) -> list[RetainedState]: ...

    def close(self) -> None: ...


def is_postgres_dsn(target: str | Path) -> bool:
    """True for `postgresql://...` and `postgres://...` targets."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def parse_event(payload: bytes, content_hash: str | None = None) -> ParsedEvent:
    """Parse and type-check an event payload; raise ValueError when it is not an event.

    `content_hash`: the hash the payload's content gives, when the caller built the payload
    itself with the canonical encoder and hashed it (a decoded batch); else it is computed.
    """
    if content_hash is not None:
        return _typed(_load_built(payload), payload, content_hash)
    try:
        obj, content_hash = read_event_payload(payload)  # capped depth and size, strict
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None
    except UnicodeError as exc:  # a lone surrogate has no canonical UTF-8 form to hash
        raise ValueError(f"event text cannot be hashed: {exc}") from None
    return _typed(obj, payload, content_hash)


def _load_built(payload: bytes) -> dict[str, Any]:
    """A payload our canonical encoder wrote: no repeated names or NaN; size and depth capped."""
    problem = check_shape(payload)
    if problem is not None:
        raise ValueError(f"event is not JSON: {problem}")
    obj = json.loads(payload)
    if not isinstance(obj, dict):
        raise ValueError("event is not a JSON object")
    return obj


def _typed(obj: dict[str, Any], payload: bytes, content_hash: str) -> ParsedEvent:
    for name, kind in EVENT_FIELDS.items():
        value = obj.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"not an event: {name!r} missing or not a {kind.__name__}")
    if obj.get("v") != EVENT_VERSION:
        raise ValueError(f"unsupported event version {obj.get('v')!r}")
    if obj["seq"] < 1:
        raise ValueError(f"seq {obj['seq']} is not positive")
    return ParsedEvent(obj, bytes(payload), content_hash)
