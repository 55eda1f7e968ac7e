"""Audit a gateway's trail from events as received: the hash chain plus its signed checkpoints.

Input is JSON lines of event payloads (any order, duplicates allowed) or a master-station ledger
(SQLite, table `events` with a `payload` column). Records that are not events are reported,
never fatal. The chain is checked by gateway.protocol.chain.verify_chain, window by window so that a
huge hole is one range (gateway.audit.chain_windows). Each `gateway.checkpoint` is checked against
the chain (its covered hash) and, given the gateway's public key, its signature.
Usage and report: docs/audit.md; `sealgw audit verify` (gateway.cli.audit) prints the report.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.audit.chain_windows import verify_sparse_chain
from gateway.errors import AuditInputError, ProtocolError
from gateway.protocol.chain import ChainReport, ProblemKind
from gateway.protocol.checkpoint import (
    CHECKPOINT_TYPE,
    CheckpointClaim,
    parse_checkpoint,
    public_key_fingerprint,
    verify_checkpoint,
)
from gateway.protocol.events import EVENT_FIELDS, EVENT_VERSION
from gateway.protocol.strict_json import loads_strict

__all__ = [
    "LEDGER_SCHEMA",
    "AuditOutcome",
    "AuditProblem",
    "AuditReport",
    "CheckpointSummary",
    "GatewayKeys",
    "Record",
    "audit_events",
    "load_public_key",
    "parse_key_args",
    "parse_records",
    "read_records",
    "verify_file",
]

SQLITE_MAGIC = b"SQLite format 3\x00"
LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    gateway TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at TEXT
);
CREATE INDEX IF NOT EXISTS events_by_gateway_seq ON events (gateway, seq);
"""
_FIELDS: Mapping[str, type] = {"v": int, **EVENT_FIELDS}
_LEDGER_COLUMNS = ("gateway", "seq", "id")
_GATEWAY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RAW_KEY = re.compile(r"^[0-9a-fA-F]{64}$")

EventObj = Mapping[str, Any]


class AuditOutcome(StrEnum):
    """The verdict of an audit, worst first; `sealgw audit verify` exits with it (docs/audit.md)."""

    BROKEN = "broken"  # a gap, an edit, a broken link, a conflict, a bad checkpoint, junk
    UNSIGNED = "unsigned"  # intact, but some events are not covered by a verified checkpoint
    VERIFIED = "verified"  # intact, and every event is covered by a checkpoint a given key signed


class AuditExit(IntEnum):
    """Exit codes of `sealgw audit verify`, one per outcome (2 stays usage or I/O error)."""

    VERIFIED = 0
    BROKEN = 1
    USAGE = 2
    UNSIGNED = 3


@dataclass(frozen=True, slots=True)
class Record:
    """One input record: where it came from, its payload, and any ledger columns beside it."""

    where: str
    payload: bytes
    columns: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """One finding; `seq`..`last_seq` is the range it concerns (0 when it has no seq)."""

    kind: ProblemKind
    gateway: str
    seq: int
    last_seq: int
    detail: str

    def to_json(self) -> dict[str, Any]:
        """The problem as a JSON object."""
        return {
            "kind": self.kind,
            "gateway": self.gateway,
            "seq": self.seq,
            "last_seq": self.last_seq,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class CheckpointSummary:
    """Per gateway: checkpoints by outcome and the highest seq a good signature covers."""

    verified: int = 0
    unverified: int = 0
    bad: int = 0
    unanchored: int = 0
    signed_through: int | None = None
    unsigned: int = 0
    unsigned_from: int | None = None


@dataclass(frozen=True, slots=True)
class GatewayKeys:
    """Gateway public keys: some for every gateway, some for one named gateway."""

    common: tuple[Ed25519PublicKey, ...] = ()
    by_gateway: Mapping[str, tuple[Ed25519PublicKey, ...]] = field(default_factory=dict)

    def for_gateway(self, gateway: str) -> tuple[Ed25519PublicKey, ...]:
        """The keys a checkpoint of `gateway` may be signed with."""
        return self.by_gateway.get(gateway, ()) + self.common


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Everything `sealgw audit verify` found."""

    source: str
    records: int
    chain: ChainReport
    problems: tuple[AuditProblem, ...]
    checkpoints: Mapping[str, CheckpointSummary]
    keys_given: bool

    @property
    def ok(self) -> bool:
        """True when the trail is intact: no problem found (it may still be unsigned)."""
        return not self.problems

    @property
    def outcome(self) -> AuditOutcome:
        """BROKEN with any problem; else UNSIGNED unless every event of every gateway is signed.

        An eviction notice without exact runs (an old gateway's) also makes the trail UNSIGNED:
        it excuses a whole seq range, so a deleted audit event inside it cannot be ruled out.
        """
        if self.problems:
            return AuditOutcome.BROKEN
        if not self.chain.heads or self.chain.weak or any(s.unsigned for s in self._summaries()):
            return AuditOutcome.UNSIGNED
        return AuditOutcome.VERIFIED

    @property
    def exit_code(self) -> AuditExit:
        """The exit code of `sealgw audit verify` for this report."""
        return AuditExit[self.outcome.name]

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON object (`ok`, true only when verified, last)."""
        return {
            "source": self.source,
            "records": self.records,
            "duplicates": self.chain.duplicates,
            "keys_given": self.keys_given,
            "gateways": {gw: self._gateway_json(gw) for gw in sorted(self.chain.heads)},
            "problems": [problem.to_json() for problem in self.problems],
            "outcome": str(self.outcome),
            "ok": self.outcome is AuditOutcome.VERIFIED,
        }

    def _summaries(self) -> list[CheckpointSummary]:
        return [self.checkpoints.get(gw, CheckpointSummary()) for gw in self.chain.heads]

    def _gateway_json(self, gateway: str) -> dict[str, Any]:
        summary = self.checkpoints.get(gateway, CheckpointSummary())
        return {
            "events": self.chain.events[gateway],
            "head_seq": self.chain.heads[gateway],
            "checkpoints_verified": summary.verified,
            "checkpoints_unverified": summary.unverified,
            "checkpoints_bad": summary.bad,
            "checkpoints_unanchored": summary.unanchored,
            "signed_through_seq": summary.signed_through,
            "unsigned_events": summary.unsigned,
            "unsigned_from_seq": summary.unsigned_from,
            "unverifiable_evictions": [
                [w.seq, w.first, w.last] for w in self.chain.weak if w.gateway == gateway
            ],
        }


def verify_file(path: Path, keys: GatewayKeys | None = None) -> AuditReport:
    """Read `path` (JSON lines or a ledger) and audit it; AuditInputError if it cannot be read."""
    source, records = read_records(path)
    events, unreadable = parse_records(records)
    return audit_events(
        events, keys or GatewayKeys(), source=source, records=len(records), unreadable=unreadable
    )


def read_records(path: Path) -> tuple[str, list[Record]]:
    """("ledger" | "jsonl", records) of a file, told apart by the SQLite magic header."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(SQLITE_MAGIC))
            if magic == SQLITE_MAGIC:
                return "ledger", _ledger_records(path)
            handle.seek(0)
            return "jsonl", list(_line_records(handle))
    except OSError as exc:
        raise AuditInputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def parse_records(records: Iterable[Record]) -> tuple[list[EventObj], list[AuditProblem]]:
    """Events parsed from records, and one `unreadable` problem for each record that is not."""
    events: list[EventObj] = []
    unreadable: list[AuditProblem] = []
    for record in records:
        try:
            obj = _parse_event(record.payload)
        except ProtocolError as exc:
            unreadable.append(
                AuditProblem(ProblemKind.UNREADABLE, "", 0, 0, f"{record.where}: {exc}")
            )
            continue
        mismatch = _column_mismatch(record.columns, obj)
        if mismatch:
            detail = f"{record.where}: ledger {mismatch} differs from the payload's"
            seq = obj["seq"]
            unreadable.append(
                AuditProblem(ProblemKind.UNREADABLE, obj["gateway"], seq, seq, detail)
            )
        events.append(obj)
    return events, unreadable


def audit_events(
    events: Sequence[EventObj],
    keys: GatewayKeys,
    *,
    source: str = "events",
    records: int | None = None,
    unreadable: Sequence[AuditProblem] = (),
) -> AuditReport:
    """Verify the chain and every checkpoint of parsed events."""
    chain, wide_gaps = verify_sparse_chain(events)
    by_gateway = _first_by_seq(events)
    problems = list(unreadable) + _chain_problems(chain)
    problems += [
        AuditProblem(ProblemKind.GAP, g.gateway, g.first, g.last, "missing") for g in wide_gaps
    ]
    summaries: dict[str, CheckpointSummary] = {}
    for gateway, seqs in sorted(by_gateway.items()):
        found, summaries[gateway] = _audit_checkpoints(gateway, seqs, keys.for_gateway(gateway))
        problems.extend(found)
    problems.sort(key=lambda p: (p.gateway, p.seq, p.kind))
    return AuditReport(
        source=source,
        records=len(events) if records is None else records,
        chain=chain,
        problems=tuple(problems),
        checkpoints=summaries,
        keys_given=bool(keys.common or keys.by_gateway),
    )


def load_public_key(text: str) -> Ed25519PublicKey:
    """A gateway public key from 64 hex digits (raw) or a PEM file (e.g. identity.pub)."""
    if _RAW_KEY.match(text):
        return _raw_key(text, text)
    try:
        data = Path(text).read_bytes()
    except OSError as exc:
        raise AuditInputError(f"cannot read key {text}: {exc.strerror or exc}") from exc
    stripped = data.strip().decode("ascii", "replace")
    if _RAW_KEY.match(stripped):
        return _raw_key(stripped, text)
    try:
        key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AuditInputError(f"{text} is not a PEM public key or 64 hex digits") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise AuditInputError(f"{text} is not an Ed25519 public key")
    return key


def parse_key_args(values: Iterable[str]) -> GatewayKeys:
    """`[GATEWAY=]PEM_OR_HEX` arguments: a GATEWAY= prefix limits a key to that gateway."""
    common: list[Ed25519PublicKey] = []
    scoped: dict[str, tuple[Ed25519PublicKey, ...]] = {}
    for value in values:
        gateway, _, rest = value.partition("=")
        if rest and _GATEWAY_ID.match(gateway) and not Path(value).exists():
            scoped[gateway] = (*scoped.get(gateway, ()), load_public_key(rest))
        else:
            common.append(load_public_key(value))
    return GatewayKeys(tuple(common), scoped)


# -- reading ----------------------------------------------------------------------------------


def _raw_key(hex_text: str, name: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_text))
    except ValueError as exc:
        raise AuditInputError(f"{name} is not an Ed25519 public key") from exc


def _line_records(handle: Iterable[bytes]) -> Iterator[Record]:
    for number, line in enumerate(handle, start=1):
        payload = line.strip()
        if payload:
            yield Record(f"line {number}", payload)


def _ledger_records(path: Path) -> list[Record]:
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise AuditInputError(f"cannot open ledger {path}: {exc}") from exc
    try:
        return _ledger_rows(conn, path)
    except sqlite3.Error as exc:
        raise AuditInputError(f"cannot read ledger {path}: {exc}") from exc
    finally:
        conn.close()


def _ledger_rows(conn: sqlite3.Connection, path: Path) -> list[Record]:
    columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(events)")}
    if "payload" not in columns:
        raise AuditInputError(f"{path} has no events table with a payload column (docs/audit.md)")
    extra = [name for name in _LEDGER_COLUMNS if name in columns]
    query = f"SELECT {', '.join(['payload', *extra])} FROM events"  # noqa: S608 (fixed names)
    records = []
    for number, row in enumerate(conn.execute(query), start=1):
        payload = row[0].encode("utf-8") if isinstance(row[0], str) else bytes(row[0] or b"")
        records.append(Record(f"row {number}", payload, dict(zip(extra, row[1:], strict=True))))
    return records


def _parse_event(payload: bytes) -> dict[str, Any]:
    obj = loads_strict(
        payload,
        not_json="not JSON ({})",
        duplicate="a member name appears twice",
        constant="{} is not JSON",
    )
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    for name, kind in _FIELDS.items():
        if name not in obj:
            raise ProtocolError(f"not an event: no {name!r}")
        if not isinstance(obj[name], kind) or isinstance(obj[name], bool):
            raise ProtocolError(f"not an event: {name!r} is not a {kind.__name__}")
    if obj["v"] != EVENT_VERSION:
        raise ProtocolError(f"unsupported event version {obj['v']}")
    if obj["seq"] < 1:
        raise ProtocolError(f"seq {obj['seq']} is not positive")
    return obj


def _column_mismatch(columns: Mapping[str, Any], obj: Mapping[str, Any]) -> str:
    wrong = [name for name, value in columns.items() if str(value) != str(obj[name])]
    return ", ".join(wrong)


# -- checking ---------------------------------------------------------------------------------


def _first_by_seq(events: Iterable[EventObj]) -> dict[str, dict[int, EventObj]]:
    """Per gateway, the first event seen at each seq (as verify_chain keeps it)."""
    by_gateway: dict[str, dict[int, EventObj]] = {}
    for obj in events:
        by_gateway.setdefault(obj["gateway"], {}).setdefault(obj["seq"], obj)
    return by_gateway


def _chain_problems(chain: ChainReport) -> list[AuditProblem]:
    problems: list[AuditProblem] = []
    for item in chain.problems:
        last = problems[-1] if problems else None
        if (
            item.kind is ProblemKind.GAP
            and last is not None
            and (last.kind, last.gateway, last.last_seq + 1)
            == (ProblemKind.GAP, item.gateway, item.seq)
        ):
            problems[-1] = AuditProblem(
                ProblemKind.GAP, item.gateway, last.seq, item.seq, "missing"
            )
            continue
        problems.append(AuditProblem(item.kind, item.gateway, item.seq, item.seq, item.detail))
    return problems


def _audit_checkpoints(
    gateway: str, chain: Mapping[int, EventObj], keys: Sequence[Ed25519PublicKey]
) -> tuple[list[AuditProblem], CheckpointSummary]:
    problems: list[AuditProblem] = []
    counts = {"verified": 0, "unverified": 0, "bad": 0, "unanchored": 0}
    signed_through: int | None = None
    signatures: set[int] = set()
    for seq in sorted(s for s, obj in chain.items() if obj["type"] == CHECKPOINT_TYPE):
        outcome, detail, covers = _check_one(chain, chain[seq], keys)
        counts[outcome] += 1
        if outcome == "bad":
            problems.append(AuditProblem(ProblemKind.BAD_CHECKPOINT, gateway, seq, seq, detail))
        elif outcome == "verified" and covers is not None:
            signed_through = max(signed_through or 0, covers)
            signatures.add(seq)
        elif outcome == "unanchored":
            signatures.add(seq)
    unsigned = _unsigned(chain, signed_through or 0, signatures)
    return problems, CheckpointSummary(
        **counts,
        signed_through=signed_through,
        unsigned=len(unsigned),
        unsigned_from=min(unsigned) if unsigned else None,
    )


def _unsigned(
    chain: Mapping[int, EventObj], signed_through: int, signatures: set[int]
) -> list[int]:
    """Seqs past the newest verified checkpoint's cover, except checkpoints that verified.

    A checkpoint signed by a given key is itself a signature, so the final checkpoint (which
    covers the seq just before it) leaves nothing unsigned.
    """
    return [seq for seq in chain if seq > signed_through and seq not in signatures]


def _check_one(
    chain: Mapping[int, EventObj], obj: EventObj, keys: Sequence[Ed25519PublicKey]
) -> tuple[str, str, int | None]:
    """(outcome, detail, covered seq when anchored) for one checkpoint event."""
    try:
        claim = parse_checkpoint(obj)
    except ProtocolError as exc:
        return "bad", f"malformed checkpoint: {exc}", None
    anchored = _anchor(chain, claim)
    if anchored is False:
        return "bad", f"covers_hash is not the chain's hash at seq {claim.covers_seq}", None
    if not keys:
        return "unverified", "no gateway key given", None
    key = next((k for k in keys if public_key_fingerprint(k) == claim.key_id), None)
    if key is None:
        return "bad", f"signed by an unknown key {claim.key_id}", None
    if not verify_checkpoint(obj, key):
        return "bad", "signature does not verify", None
    if anchored is None:
        return "unanchored", f"seq {claim.covers_seq} is not in the input", None
    return "verified", "", claim.covers_seq


def _anchor(chain: Mapping[int, EventObj], claim: CheckpointClaim) -> bool | None:
    """Whether the claimed hash is the chain's at covers_seq; None when the input cannot tell."""
    covered = chain.get(claim.covers_seq)
    if covered is not None:
        return bool(covered["hash"] == claim.covers_hash)
    following = chain.get(claim.covers_seq + 1)
    if following is not None:
        return bool(following["prev_hash"] == claim.covers_hash)
    return None
