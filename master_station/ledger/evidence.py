"""Evidence a gateway cannot forge, checked as events arrive (pure; the ledger stores findings).

- **Lock log entries.** An event that relays a lock log entry carries the whole 44-byte record
  (`data.entry`), whose audit tag is an HMAC under K_audit = HKDF(K_lock, "audit" || lock id).
  Only the lock and the master station hold K_lock, so a gateway cannot make one up. The master
  derives K_audit exactly as the lock does (gateway.protocol.seal_crypto.derive_lock_keys),
  verifies the tag, and checks that the event's own claims (type, lock, index, rtc, state,
  result, wire) are the entry's. An opening, closing or clock set with no entry is unattested.
- **Checkpoint signatures.** A `gateway.checkpoint` must verify under one of the identity keys
  enrolled for its gateway (`sealgw master enroll-gateway`).

Which events carry what: docs/locks.md ("What the master station checks"); findings: docs/master.md.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.errors import AuthError, ProtocolError
from gateway.protocol.checkpoint import (
    CHECKPOINT_TYPE,
    parse_checkpoint,
    public_key_fingerprint,
    verify_checkpoint,
)
from gateway.protocol.events import EventType
from gateway.protocol.seal_crypto import verify_audit_tag
from gateway.protocol.seal_frames import LOG_ENTRY_LEN, LogEntry, LogEvent, decode_log_entry

__all__ = [
    "ACTUATIONS",
    "LOCK_EVENT_TYPES",
    "REJECTING",
    "Finding",
    "FindingKind",
    "LedgerTrust",
    "LockClaim",
    "LockEvidence",
    "check_checkpoint",
    "check_lock_event",
    "index_gaps",
]

_LOCK_ID = re.compile(r"^[0-9a-f]{16}$")
_ANY: frozenset[LogEvent] = frozenset(LogEvent)
_OUTCOMES = _ANY - {LogEvent.SEALED, LogEvent.UNSEALED, LogEvent.TIME_SET}
_UNKNOWN_OK = frozenset({EventType.SEAL_LOG_ENTRY, EventType.SEAL_OP_FAILED})  # newer firmware

LOCK_EVENT_TYPES: Mapping[str, frozenset[LogEvent]] = {
    EventType.SEAL_SEALED: frozenset({LogEvent.SEALED}),
    EventType.SEAL_UNSEALED: frozenset({LogEvent.UNSEALED}),
    EventType.SEAL_TIME_SET: frozenset({LogEvent.TIME_SET}),
    EventType.SEAL_OP_REJECTED: frozenset({LogEvent.OP_REJECTED}),
    EventType.SEAL_TAMPER: frozenset({LogEvent.TAMPER_WIRE_CUT, LogEvent.TAMPER_SHELL_OPEN}),
    EventType.SEAL_BATTERY_LOW: frozenset({LogEvent.BATTERY_LOW}),
    EventType.SEAL_FAULT: frozenset({LogEvent.FAULT}),
    EventType.SEAL_BOOT: frozenset({LogEvent.BOOT}),
    EventType.SEAL_OP_FAILED: _OUTCOMES,
    EventType.SEAL_LOG_ENTRY: _ANY,
}
"""Event types that may relay a lock log entry, and the entry kinds each may relay."""

ACTUATIONS = frozenset({EventType.SEAL_SEALED, EventType.SEAL_UNSEALED, EventType.SEAL_TIME_SET})
"""Claims that a lock acted: without the lock's entry they are unattested."""


class FindingKind(StrEnum):
    """The `kind` of a problem row recorded for evidence (docs/master.md)."""

    LOCK_FORGED = "lock_forged"  # the audit tag does not verify: the lock did not write it
    LOCK_MISMATCH = "lock_mismatch"  # malformed entry, or the event claims other than its entry
    LOCK_UNATTESTED = "lock_unattested"  # an opening/closing/clock set without the lock's entry
    LOCK_UNKNOWN = "lock_unknown"  # no K_lock for this lock at this master
    LOCK_DUPLICATE = "lock_duplicate"  # (lock, index) already recorded under another event
    CHECKPOINT = "checkpoint"  # bad signature, or signed by a key not enrolled for the gateway
    UNENROLLED = "unenrolled"  # a checkpoint from a gateway with no enrolled identity key


REJECTING = frozenset(
    {
        FindingKind.LOCK_FORGED,
        FindingKind.LOCK_MISMATCH,
        FindingKind.LOCK_UNATTESTED,
        FindingKind.LOCK_UNKNOWN,
        FindingKind.LOCK_DUPLICATE,
    }
)
"""Findings that keep an event out of the lock history and the KPIs (it stays in the chain)."""


class LedgerTrust(Protocol):
    """What the master knows that a gateway does not: K_audit per lock, identity per gateway."""

    def lock_audit_key(self, lock_id: bytes) -> bytes | None:
        """K_audit of a provisioned lock, None when this master has no K_lock for it."""
        ...

    def gateway_keys(self, gateway: str) -> Sequence[Ed25519PublicKey]:
        """The identity keys enrolled for `gateway` (old ones kept after a re-provisioning)."""
        ...


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found; `per_event` False means once per gateway (an unenrolled gateway)."""

    kind: FindingKind
    detail: str
    per_event: bool = True


@dataclass(frozen=True, slots=True)
class LockClaim:
    """A verified lock log entry: which lock, which index, the record itself."""

    lock_id: bytes
    index: int
    entry: bytes


@dataclass(frozen=True, slots=True)
class LockEvidence:
    """The entry an event relays (None when it relays none) and what is wrong with it."""

    claim: LockClaim | None
    findings: tuple[Finding, ...] = ()


def check_lock_event(obj: Mapping[str, Any], trust: LedgerTrust) -> LockEvidence:
    """Check the lock log entry an event relays against the lock's audit key."""
    kind = str(obj.get("type"))
    allowed = LOCK_EVENT_TYPES.get(kind)
    data = obj.get("data")
    if allowed is None or not isinstance(data, Mapping):
        return LockEvidence(None)
    if data.get("entry") is None:
        if kind in ACTUATIONS or data.get("source") == "log":
            detail = (
                f"{kind} carries no lock log entry (data.entry): the lock does not vouch for it"
            )
            return LockEvidence(None, (Finding(FindingKind.LOCK_UNATTESTED, detail),))
        return LockEvidence(None)
    try:
        lock_id, entry, raw = _read_entry(data)
    except ProtocolError as exc:
        return LockEvidence(None, (Finding(FindingKind.LOCK_MISMATCH, str(exc)),))
    claim = LockClaim(lock_id, entry.index, raw)
    where = f"lock {lock_id.hex()} entry {entry.index}"
    key = trust.lock_audit_key(lock_id)
    if key is None:
        detail = f"{where}: this master holds no K_lock for the lock"
        return LockEvidence(claim, (Finding(FindingKind.LOCK_UNKNOWN, detail),))
    try:
        verify_audit_tag(key, lock_id, entry)
    except AuthError:
        detail = f"{where}: audit tag does not verify (the lock did not write this entry)"
        return LockEvidence(claim, (Finding(FindingKind.LOCK_FORGED, detail),))
    wrong = _claims_differ(kind, allowed, data, entry)
    if wrong:
        detail = f"{where}: the event's {wrong} differ from the lock's entry"
        return LockEvidence(claim, (Finding(FindingKind.LOCK_MISMATCH, detail),))
    return LockEvidence(claim)


def check_checkpoint(obj: Mapping[str, Any], trust: LedgerTrust) -> tuple[Finding, ...]:
    """Verify a checkpoint's signature under its gateway's enrolled identity keys."""
    if obj.get("type") != CHECKPOINT_TYPE:
        return ()
    try:
        claim = parse_checkpoint(obj)
    except ProtocolError as exc:
        return (Finding(FindingKind.CHECKPOINT, f"malformed checkpoint: {exc}"),)
    keys = list(trust.gateway_keys(claim.gateway))
    if not keys:
        detail = "no identity key enrolled for this gateway: its checkpoints cannot be verified"
        return (Finding(FindingKind.UNENROLLED, detail, per_event=False),)
    key = next((k for k in keys if public_key_fingerprint(k) == claim.key_id), None)
    if key is None:
        return (Finding(FindingKind.CHECKPOINT, f"signed by a key not enrolled: {claim.key_id}"),)
    if not verify_checkpoint(obj, key):
        return (Finding(FindingKind.CHECKPOINT, "checkpoint signature does not verify"),)
    return ()


def index_gaps(
    indexes: Iterable[int], announced: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Missing runs between the lowest and highest index held, minus announced ring losses."""
    held = sorted(set(indexes))
    lost = sorted(announced)
    gaps: list[tuple[int, int]] = []
    for low, high in itertools.pairwise(held):
        if high > low + 1:
            gaps.extend(_minus((low + 1, high - 1), lost))
    return gaps


def _read_entry(data: Mapping[str, Any]) -> tuple[bytes, LogEntry, bytes]:
    lock_hex, entry_hex = data.get("lock_id"), data.get("entry")
    if not isinstance(lock_hex, str) or not _LOCK_ID.match(lock_hex):
        raise ProtocolError("data.lock_id is not 16 lowercase hex digits")
    if not isinstance(entry_hex, str) or len(entry_hex) != 2 * LOG_ENTRY_LEN:
        raise ProtocolError(f"data.entry is not {LOG_ENTRY_LEN} bytes of hex")
    try:
        raw = bytes.fromhex(entry_hex)
        entry = decode_log_entry(raw)
    except ValueError as exc:
        raise ProtocolError(f"data.entry is not a lock log entry: {exc}") from None
    return bytes.fromhex(lock_hex), entry, raw


def _claims_differ(
    kind: str, allowed: frozenset[LogEvent], data: Mapping[str, Any], entry: LogEntry
) -> str:
    """The names of the event's claims that disagree with the entry, comma-separated."""
    fits = entry.event in allowed if entry.event.known else kind in _UNKNOWN_OK
    wrong = [] if fits else [f"type ({kind} for a {entry.event.name} entry)"]
    expected: dict[str, Any] = {
        "log_index": entry.index,
        "rtc": entry.rtc,
        "event": entry.event.name.lower(),
        "result": entry.result.name.lower(),
        "state": entry.state.name.lower(),
        "wire": entry.wire.name.lower(),
        "audit_tag": entry.audit_tag.hex(),
    }
    wrong += [name for name, value in expected.items() if name in data and data[name] != value]
    if "log_index" not in data:
        wrong.append("log_index (missing)")
    return ", ".join(wrong)


def _minus(span: tuple[int, int], holes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    pieces = [span]
    for lo, hi in holes:
        pieces = [
            piece
            for a, b in pieces
            for piece in ((a, min(b, lo - 1)), (max(a, hi + 1), b))
            if piece[0] <= piece[1]
        ]
    return pieces
