"""Reconciliation: every lock log entry becomes exactly one event, never duplicated, never invented.

Exactly once rests on two things (docs/locks.md):

1. Deterministic event ids. The event of log entry `i` of lock `L` on gateway `G` always has the
   id `lock_event_id(G, L, "log", i, rtc)`: a ULID whose time part is the entry's RTC and
   whose 80 "random" bits are SHA-256 of (G, L, i). The buffer refuses a second row with an id
   it holds (`DuplicateEventError`), so re-fetching an entry after a crash cannot add a row.
2. The cursor (highest index turned into a committed event) is written to `locks.db` only
   after the buffer's commit future resolved. A crash before that write re-fetches the same
   entries at the next connection; (1) makes the repeat harmless.

An operation's outcome event is the event of the entry the lock wrote for it (same id), with
the request's context added. When the entry could not be fetched on the command's link, the
outcome is committed from the verified answer under an id of its own (`answer_id`), the index
is remembered in `locks.db` (`emitted`: "outcome already out"), and the MAC-tagged entry is
still fetched and committed later, as `seal.log_entry` (`outcome_from: answer`; the outcome
event has the same seal and `log_index`), so every tagged entry reaches the master station and
no operation is counted twice.
Entries lost to the lock's ring are reported as one `seal.log_gap` event, never made up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from gateway.auth.policy import OperationRequest, op_outcome
from gateway.errors import DuplicateEventError
from gateway.locks.state import LockSpec, LockStore
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.protocol.events import Emit, EventDraft, EventType, Priority
from gateway.protocol.seal_exchange import LogBatch
from gateway.protocol.seal_frames import CommandResult, LogEntry, LogEvent, encode_log_entry

__all__ = [
    "ENTRY_TYPES",
    "LogProgress",
    "LogSource",
    "PendingOutcome",
    "Reconciler",
    "answer_id",
    "entry_draft",
    "gap_draft",
    "lock_event_id",
    "outcome_draft",
    "replace_id",
]

_log = logging.getLogger(__name__)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID_LABEL = b"sealgw/v1 lock event\x00"

ENTRY_TYPES: Mapping[LogEvent, tuple[EventType, Priority]] = {
    LogEvent.BOOT: (EventType.SEAL_BOOT, Priority.STATE),
    LogEvent.SEALED: (EventType.SEAL_SEALED, Priority.AUDIT),
    LogEvent.UNSEALED: (EventType.SEAL_UNSEALED, Priority.AUDIT),
    LogEvent.OP_REJECTED: (EventType.SEAL_OP_REJECTED, Priority.AUDIT),
    LogEvent.TAMPER_WIRE_CUT: (EventType.SEAL_TAMPER, Priority.ALARM),
    LogEvent.TAMPER_SHELL_OPEN: (EventType.SEAL_TAMPER, Priority.ALARM),
    LogEvent.BATTERY_LOW: (EventType.SEAL_BATTERY_LOW, Priority.STATE),
    LogEvent.FAULT: (EventType.SEAL_FAULT, Priority.ALARM),
    LogEvent.TIME_SET: (EventType.SEAL_TIME_SET, Priority.AUDIT),
}
_UNKNOWN_ENTRY = (EventType.SEAL_LOG_ENTRY, Priority.AUDIT)
_TAMPER_CAUSES = {LogEvent.TAMPER_WIRE_CUT: "wire_cut", LogEvent.TAMPER_SHELL_OPEN: "shell_open"}


class LogSource(Protocol):
    """What reconciliation needs from a session: one verified batch after an index."""

    async def fetch_log(self, k_log: bytes, after: int) -> LogBatch:
        """A verified batch of entries with index > `after`."""
        ...

    def has_time(self) -> bool:
        """True while the link has room for one more exchange (the lock's link limits)."""
        ...


@dataclass(frozen=True, slots=True)
class LogProgress:
    """How far one reconciliation got: the lock's log head and the durable cursor reached."""

    head: int
    cursor: int

    @property
    def complete(self) -> bool:
        """True when the cursor reached the head (nothing left to fetch)."""
        return self.cursor >= self.head


@dataclass(frozen=True, slots=True)
class PendingOutcome:
    """An operation whose entry is expected in the log: the request and the verified answer."""

    request: OperationRequest
    ticket_tag: bytes
    answer: CommandResult | None = None


def lock_event_id(gateway: str, lock_id: bytes, kind: str, index: int, rtc: int) -> str:
    """A ULID fixed by (gateway, lock, kind, index): time from the lock RTC, the rest hashed."""
    digest = hashlib.sha256(
        _ID_LABEL + f"{gateway}\x00{kind}\x00{index}\x00".encode() + lock_id
    ).digest()
    millis = max(0, rtc) * 1000 & 0xFFFF_FFFF_FFFF
    value = millis << 80 | int.from_bytes(digest[:10], "big")
    return "".join(_CROCKFORD[value >> shift & 0x1F] for shift in range(125, -1, -5))


def answer_id(gateway: str, lock_id: bytes, index: int, counter: int, rtc: int) -> str:
    """The id of an outcome committed from a verified answer (not from its log entry).

    Keyed by the log index the answer names; an unlogged answer (`log_index` 0) by the
    challenge counter it consumed, which the lock never reuses.
    """
    if index:
        return lock_event_id(gateway, lock_id, "answer", index, rtc)
    return lock_event_id(gateway, lock_id, "unlogged", counter, rtc)


def answered_entry_draft(gateway: str, lock: LockSpec, entry: LogEntry) -> EventDraft:
    """The tagged entry of an operation whose outcome was committed from the answer."""
    data = entry_data(lock.lock_id, entry)
    data["outcome_from"] = "answer"  # the outcome event (same seal, same log_index) is out
    return EventDraft(
        EventType.SEAL_LOG_ENTRY,
        lock.seal_id,
        data,
        Priority.AUDIT,
        _at(entry.rtc),
        lock_event_id(gateway, lock.lock_id, "log", entry.index, entry.rtc),
    )


def entry_draft(
    gateway: str, lock: LockSpec, entry: LogEntry, context: PendingOutcome | None
) -> EventDraft:
    """The one event of a verified log entry (with the operation's context when known)."""
    if context is not None and _belongs(context, entry):
        return outcome_draft(gateway, lock, context, entry.index, entry)
    kind, priority = ENTRY_TYPES.get(entry.event, _UNKNOWN_ENTRY)
    data = entry_data(lock.lock_id, entry)
    if entry.event in _TAMPER_CAUSES:
        data["cause"] = _TAMPER_CAUSES[entry.event]
    if entry.event is LogEvent.OP_REJECTED:
        data["reason"] = entry.result.name.lower()
    return EventDraft(
        kind,
        lock.seal_id,
        data,
        priority,
        _at(entry.rtc),
        lock_event_id(gateway, lock.lock_id, "log", entry.index, entry.rtc),
    )


def outcome_draft(
    gateway: str,
    lock: LockSpec,
    context: PendingOutcome,
    index: int,
    entry: LogEntry | None,
) -> EventDraft:
    """policy.op_outcome for the entry at `index`, under that entry's deterministic id."""
    answer = context.answer
    if entry is not None:
        state, result, rtc = entry.state, entry.result, entry.rtc
    elif answer is not None:
        state, result, rtc = answer.state, answer.result, answer.rtc
    else:
        raise ValueError("an outcome needs the log entry or the verified answer")
    draft = op_outcome(context.request, result, state, index, _at(rtc))
    data: dict[str, JSONValue] = {**draft.data, "lock_id": lock.lock_id.hex(), "source": "answer"}
    if entry is not None:
        data.update(entry_data(lock.lock_id, entry))
    elif answer is not None:
        data["wire"] = answer.wire.name.lower()
        data["rtc"] = answer.rtc
    if context.request.op == "seal" and "wire" in data:
        data["wire_loop"] = data["wire"]
    if draft.type is EventType.SEAL_OP_FAILED:
        data["reason"] = result.name.lower()  # e.g. needs_audit: the lock wants an audit ticket
    # A new draft, not dataclasses.replace: EventDraft caches its canonical data at creation.
    return EventDraft(
        draft.type,
        lock.seal_id,
        data,
        draft.priority,
        draft.ts,
        lock_event_id(gateway, lock.lock_id, "log", index, rtc),
    )


def replace_id(draft: EventDraft, event_id: str) -> EventDraft:
    """The same draft under another id (a new draft: EventDraft caches its canonical data)."""
    return EventDraft(draft.type, draft.subject, draft.data, draft.priority, draft.ts, event_id)


def gap_draft(gateway: str, lock: LockSpec, span: tuple[int, int], now: datetime) -> EventDraft:
    """seal.log_gap: the lock's ring overwrote entries `first..last` before we fetched them."""
    first, last = span
    data: dict[str, JSONValue] = {"lock_id": lock.lock_id.hex(), "first": first, "last": last}
    return EventDraft(
        EventType.SEAL_LOG_GAP,
        lock.seal_id,
        data,
        Priority.ALARM,
        now,
        lock_event_id(gateway, lock.lock_id, "gap", first, 0),
    )


def entry_data(lock_id: bytes, entry: LogEntry) -> dict[str, JSONValue]:
    """The MAC'd fields of an entry, and the whole record for the master station's audit check."""
    return {
        "source": "log",
        "lock_id": lock_id.hex(),
        "log_index": entry.index,
        "rtc": entry.rtc,
        "event": entry.event.name.lower(),
        "result": entry.result.name.lower(),
        "state": entry.state.name.lower(),
        "wire": entry.wire.name.lower(),
        "ticket_tag": entry.ticket_tag.hex(),
        "operator_tag": entry.operator.hex(),
        "tag": entry.tag.hex(),
        "audit_tag": entry.audit_tag.hex(),
        "entry": encode_log_entry(entry).hex(),
    }


class Reconciler:
    """Turns fetched log entries into committed events and moves the durable cursor."""

    def __init__(self, gateway: str, store: LockStore, emit: Emit, clock: Clock) -> None:
        self._gateway = gateway
        self._clock = clock
        self._store = store
        self._emit = emit
        self.entries = 0
        self.duplicates = 0

    async def run(
        self,
        source: LogSource,
        lock: LockSpec,
        pending: Mapping[bytes, PendingOutcome],
        on_entry: Callable[[LogEntry], None] | None = None,
    ) -> LogProgress:
        """Fetch and commit past the cursor while the link has time; return how far it got.

        A long catch-up stops when the link nears the lock's limits (`has_time`) and goes on
        over the next connection from the durable cursor.
        """
        record = self._store.load(lock.lock_id)
        cursor, answered = record.cursor, record.emitted
        while True:
            batch = await source.fetch_log(lock.k_log, cursor)
            drafts = self._drafts(lock, cursor, batch, answered=answered, pending=pending)
            await self.commit(drafts)
            if batch.entries:
                cursor = batch.entries[-1].index
                self._store.advance(lock.lock_id, cursor)
                self.entries += len(batch.entries)
                for entry in batch.entries:
                    if on_entry is not None:
                        on_entry(entry)
            if not batch.more or not source.has_time():
                return LogProgress(batch.head, cursor)

    async def commit(self, drafts: Sequence[EventDraft]) -> None:
        """Submit and wait for the durable commit; an id already stored counts as committed."""
        futures = [self._emit(draft) for draft in drafts]
        for result in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(result, DuplicateEventError):
                self.duplicates += 1
                _log.debug("event %s was already committed", result.event_id)
            elif isinstance(result, BaseException):
                raise result

    def _drafts(
        self,
        lock: LockSpec,
        after: int,
        batch: LogBatch,
        *,
        answered: frozenset[int],
        pending: Mapping[bytes, PendingOutcome],
    ) -> list[EventDraft]:
        drafts = []
        if batch.lost_before is not None:
            _log.warning("seal %s: log entries %d..%d were overwritten before fetching",
                         lock.seal_id, after + 1, batch.lost_before - 1)  # fmt: skip
            span = (after + 1, batch.lost_before - 1)
            drafts.append(gap_draft(self._gateway, lock, span, self._clock.now()))
        for entry in batch.entries:
            if entry.index in answered:
                drafts.append(answered_entry_draft(self._gateway, lock, entry))
                continue
            context = pending.get(entry.ticket_tag) if any(entry.ticket_tag) else None
            drafts.append(entry_draft(self._gateway, lock, entry, context))
        return drafts


_OP_OF_EVENT: Mapping[LogEvent, str | None] = {
    LogEvent.SEALED: "seal",
    LogEvent.UNSEALED: "unseal",
    LogEvent.TIME_SET: "set_time",
    LogEvent.OP_REJECTED: None,
    LogEvent.FAULT: None,
}


def _belongs(context: PendingOutcome, entry: LogEntry) -> bool:
    """True when the entry can be the lock's record of the pending operation."""
    if entry.event not in _OP_OF_EVENT or entry.ticket_tag != context.ticket_tag:
        return False
    op = _OP_OF_EVENT[entry.event]
    return op is None or op == context.request.op


def _at(rtc: int) -> datetime:
    return datetime.fromtimestamp(max(0, rtc), UTC)
