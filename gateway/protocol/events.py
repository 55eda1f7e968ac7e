"""The event model: drafts made by services, events sealed into the hash chain at commit.

An event is committed once; its JSON payload (canonical, see docs/events.md) is what is stored
and published, byte for byte, so a duplicate after a restart is identical to the original.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from gateway.protocol.canonical import JSONValue, canonical_json, encode_basestring

if TYPE_CHECKING:
    import asyncio

EVENT_VERSION = 1
EVENT_FIELDS: Mapping[str, type] = {
    "id": str,
    "gateway": str,
    "seq": int,
    "ts": str,
    "type": str,
    "subject": str,
    "priority": str,
    "data": dict,
    "prev_hash": str,
    "hash": str,
}
"""The members of an event payload besides `v`, with their JSON types."""

GENESIS_HASH = "0" * 64
EVENT_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
SUBJECT_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class EventType(StrEnum):
    """Every event type the gateway emits; docs/events.md lists the same set (a test checks).

    A StrEnum, so a member is the dotted wire string itself. Readers of events (the master, an
    audit) must still accept names they do not know: newer gateways add types.
    """

    GATEWAY_STARTED = "gateway.started"
    GATEWAY_STOPPED = "gateway.stopped"
    GATEWAY_HEALTH = "gateway.health"
    GATEWAY_CHECKPOINT = "gateway.checkpoint"
    GATEWAY_COMMAND = "gateway.command"
    GATEWAY_TELEMETRY_EVICTED = "gateway.telemetry_evicted"
    GATEWAY_BUFFER_RECOVERED = "gateway.buffer_recovered"
    GATEWAY_STORAGE_FULL = "gateway.storage_full"
    GATEWAY_CHAIN_EPOCH = "gateway.chain_epoch"
    GATEWAY_RADIO_DOWN = "gateway.radio_down"
    GATEWAY_RADIO_UP = "gateway.radio_up"
    GATEWAY_STATE_CORRUPT = "gateway.state_corrupt"
    GATEWAY_CLOCK_JUMP = "gateway.clock_jump"
    SEAL_SEALED = "seal.sealed"
    SEAL_UNSEALED = "seal.unsealed"
    SEAL_TIME_SET = "seal.time_set"
    SEAL_OP_REQUESTED = "seal.op_requested"
    SEAL_OP_ALLOWED = "seal.op_allowed"
    SEAL_OP_DENIED = "seal.op_denied"
    SEAL_OP_FAILED = "seal.op_failed"
    SEAL_OP_UNCONFIRMED = "seal.op_unconfirmed"
    SEAL_OP_REJECTED = "seal.op_rejected"
    SEAL_TAMPER = "seal.tamper"
    SEAL_BATTERY_LOW = "seal.battery_low"
    SEAL_FAULT = "seal.fault"
    SEAL_BOOT = "seal.boot"
    SEAL_LOG_ENTRY = "seal.log_entry"
    SEAL_LOG_GAP = "seal.log_gap"
    SEAL_OFFLINE = "seal.offline"
    SEAL_ONLINE = "seal.online"
    SEAL_UNREACHABLE = "seal.unreachable"
    METER_READING = "meter.reading"
    METER_EVENT = "meter.event"
    METER_READ_FAILED = "meter.read_failed"
    METER_READ_RECOVERED = "meter.read_recovered"
    THEFT_SUSPECTED = "theft.suspected"
    DISTRICT_LINE_LOSS = "district.line_loss"
    DISTRICT_LINE_LOSS_ALARM = "district.line_loss_alarm"
    HANDHELD_PAIRING_CODE_ISSUED = "handheld.pairing_code_issued"
    HANDHELD_PAIRING_ATTEMPT = "handheld.pairing_attempt"
    HANDHELD_PAIRING_FAILED = "handheld.pairing_failed"
    HANDHELD_PAIRED = "handheld.paired"
    HANDHELD_SESSION_OPENED = "handheld.session_opened"
    HANDHELD_SESSION_DENIED = "handheld.session_denied"
    HANDHELD_SESSION_CLOSED = "handheld.session_closed"
    HANDHELD_REQUEST = "handheld.request"
    SYNTHETIC_SAMPLE = "synthetic.sample"


class Priority(IntEnum):
    """Delivery and retention priority; lower values go first and are kept longest."""

    ALARM = 0
    AUDIT = 1
    STATE = 2
    TELEMETRY = 3

    @property
    def wire_name(self) -> str:
        return self.name.lower()

    @classmethod
    def from_wire(cls, name: str) -> Priority:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown priority {name!r}") from None


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event as a service creates it, before the buffer gives it a seq and a hash."""

    type: str
    subject: str
    data: Mapping[str, JSONValue]
    priority: Priority
    ts: datetime
    id: str = field(default="")
    canonical_data: str = field(default="", init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Validate, and encode `data` now: a bad value fails its producer, not a batch."""
        if not EVENT_TYPE_PATTERN.match(self.type):
            raise ValueError(f"event type {self.type!r} is not dotted lowercase (seal.sealed)")
        if not SUBJECT_PATTERN.match(self.subject):
            raise ValueError(f"subject {self.subject!r} is not an id like SL-0001")
        if self.ts.tzinfo is None:
            raise ValueError("event ts must be timezone-aware")
        if not self.id:
            object.__setattr__(self, "id", new_event_id(self.ts))
        object.__setattr__(self, "canonical_data", canonical_json(self.data))


@dataclass(frozen=True, slots=True)
class Event:
    """A committed event: part of the gateway's hash chain."""

    id: str
    gateway: str
    seq: int
    ts: str
    type: str
    subject: str
    priority: Priority
    data: Mapping[str, Any]
    prev_hash: str
    hash: str
    payload: bytes

    @classmethod
    def from_payload(cls, payload: bytes) -> Event:
        """Parse a stored or received payload; raise ValueError when it is not an event."""
        obj = json.loads(payload)
        if not isinstance(obj, dict):
            raise ValueError("event payload is not a JSON object")
        try:
            return cls(
                id=obj["id"],
                gateway=obj["gateway"],
                seq=int(obj["seq"]),
                ts=obj["ts"],
                type=obj["type"],
                subject=obj["subject"],
                priority=Priority.from_wire(obj["priority"]),
                data=obj["data"],
                prev_hash=obj["prev_hash"],
                hash=obj["hash"],
                payload=payload,
            )
        except KeyError as exc:
            raise ValueError(f"event payload lacks {exc.args[0]!r}") from None


class Emit(Protocol):
    """How every service records an event: hand a draft to the buffer, get the commit's future.

    The future resolves to the sealed `Event` once it is durable, or fails with StorageError.
    This is the one signature every producer (locks, meters, handheld, audit, remote, health)
    is given; the daemon passes the buffer's `submit`.
    """

    def __call__(self, draft: EventDraft, /) -> asyncio.Future[Event]: ...


def make_draft(
    clock_now: datetime,
    type: str,
    subject: str,
    data: Mapping[str, JSONValue],
    priority: Priority,
) -> EventDraft:
    """Build a draft stamped with `clock_now`."""
    return EventDraft(type=type, subject=subject, data=data, priority=priority, ts=clock_now)


def seal_event(draft: EventDraft, gateway: str, seq: int, prev_hash: str) -> Event:
    """Give a draft its place in the chain: seq, prev_hash, hash and the final payload.

    The envelope's member names are fixed, so their canonical (sorted) order is written out
    here once; only `data` and the strings go through the general encoder.
    """
    ts = format_ts(draft.ts)
    head = f'{{"data":{draft.canonical_data},"gateway":{encode_basestring(gateway)}'
    tail = (
        f',"id":{encode_basestring(draft.id)},"prev_hash":"{prev_hash}"'
        f',"priority":"{draft.priority.wire_name}","seq":{seq}'
        f',"subject":{encode_basestring(draft.subject)},"ts":"{ts}"'
        f',"type":"{draft.type}","v":{EVENT_VERSION}}}'
    )
    digest = hashlib.sha256((head + tail).encode("utf-8")).hexdigest()
    return Event(
        id=draft.id,
        gateway=gateway,
        seq=seq,
        ts=ts,
        type=draft.type,
        subject=draft.subject,
        priority=draft.priority,
        data=draft.data,
        prev_hash=prev_hash,
        hash=digest,
        payload=f'{head},"hash":"{digest}"{tail}'.encode(),
    )


def event_hash(obj: Mapping[str, Any]) -> str:
    """Recompute the hash of a parsed event object (everything but `hash`)."""
    body = {key: value for key, value in obj.items() if key != "hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def format_ts(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a Z: 2026-11-22T10:45:14.123Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def derived_event_id(moment: datetime, key: str) -> str:
    """A ULID whose 80 low bits come from `key`: the same fact observed again gets the same id.

    For producers that may observe one fact twice (a meter counter across a restart), so the
    buffer refuses the second copy as a duplicate instead of storing a new event.
    """
    millis = int(moment.timestamp() * 1000)
    tail = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:10], "big")
    return _ulid((millis & 0xFFFF_FFFF_FFFF) << 80 | tail)


def new_event_id(moment: datetime | None = None) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 Crockford base32 characters."""
    millis = int(moment.timestamp() * 1000) if moment else time.time_ns() // 1_000_000
    return _ulid((millis & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10), "big"))


def _ulid(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 0x1F])
        value >>= 5
    return "".join(reversed(chars))
