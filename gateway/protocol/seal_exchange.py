"""The gateway's side of a seal lock exchange, as pure steps (docs/protocol.md, section 5).

A BLE session calls these in order: `challenge_request`, `check_challenge`, `build_command`,
`verify_result`; or `log_fetch` and `verify_log_entries`. Nothing here does I/O or holds K_lock:
the gateway works with a TicketCredential (K_TL for one ticket and lock) and K_log.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import AuthCode, AuthError, ProtocolError
from gateway.protocol.seal_crypto import (
    SessionContext,
    command_mac,
    verify_answer,
    verify_log_answer,
)
from gateway.protocol.seal_frames import (
    MAC_LEN,
    MAX_LOG_ENTRIES,
    NONCE_LEN,
    Challenge,
    ChallengeRequest,
    Command,
    CommandResult,
    LogEntries,
    LogEntry,
    LogFetch,
    Operation,
    decode_ticket_header,
    encode,
)

__all__ = [
    "LogBatch",
    "TicketCredential",
    "build_command",
    "challenge_request",
    "check_challenge",
    "log_fetch",
    "verify_log_entries",
    "verify_result",
]

NonceSource = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class TicketCredential:
    """What the master station hands a gateway for one ticket and one lock."""

    lock_id: bytes
    header: bytes
    k_tl: bytes = field(repr=False)  # the lock key for this ticket: never in a log or a repr

    def __post_init__(self) -> None:
        if not decode_ticket_header(self.header).covers(self.lock_id):
            raise AuthError("ticket header does not cover this lock", code=AuthCode.WRONG_LOCK)


@dataclass(frozen=True, slots=True)
class LogBatch:
    """Verified log entries; `lost_before` is set when the ring overwrote entries we never saw."""

    entries: tuple[LogEntry, ...]
    head: int
    oldest: int
    lost_before: int | None

    @property
    def more(self) -> bool:
        """True when the lock holds entries past the last one returned."""
        last = self.entries[-1].index if self.entries else None
        return last is not None and last < self.head


def challenge_request(nonce_source: NonceSource = os.urandom) -> ChallengeRequest:
    """A CHALLENGE_REQUEST with a fresh gateway nonce."""
    return ChallengeRequest(nonce_source(NONCE_LEN))


def check_challenge(
    request: ChallengeRequest, challenge: Challenge, lock_id: bytes, last_counter: int | None
) -> SessionContext:
    """Check the lock id and that the counter moved forward; return the session context."""
    if challenge.lock_id != lock_id:
        raise AuthError("challenge comes from another lock", code=AuthCode.WRONG_LOCK)
    if last_counter is not None and challenge.counter <= last_counter:
        raise AuthError(
            f"lock counter went back from {last_counter} to {challenge.counter}",
            code=AuthCode.COUNTER_ROLLBACK,
        )
    return SessionContext(lock_id, challenge.nonce, request.gw_nonce)


def build_command(
    credential: TicketCredential, ctx: SessionContext, counter: int, op: Operation, arg: int = 0
) -> Command:
    """A COMMAND for the challenge in `ctx`, MAC'd under the ticket's K_TL."""
    if credential.lock_id != ctx.lock_id:
        raise AuthError("credential is for another lock", code=AuthCode.WRONG_LOCK)
    unsigned = Command(counter, op, arg, credential.header, bytes(MAC_LEN))
    return Command(counter, op, arg, credential.header, command_mac(credential.k_tl, ctx, unsigned))


def verify_result(
    credential: TicketCredential, ctx: SessionContext, command: Command, result: CommandResult
) -> CommandResult:
    """Check the answer's MAC and that it answers `command`; return it."""
    verify_answer(credential.k_tl, ctx, command.mac, result)
    if result.counter != command.counter or result.op != command.op:
        raise AuthError("answer does not match the command", code=AuthCode.ANSWER_MISMATCH)
    return result


def log_fetch(after: int, max_count: int, nonce_source: NonceSource = os.urandom) -> LogFetch:
    """A LOG_FETCH for entries with index greater than `after`."""
    if not 1 <= max_count <= MAX_LOG_ENTRIES:
        raise ProtocolError(f"max_count must be 1..{MAX_LOG_ENTRIES}")
    return LogFetch(nonce_source(NONCE_LEN), after, max_count)


def verify_log_entries(
    k_log: bytes, lock_id: bytes, request: LogFetch, answer: LogEntries
) -> LogBatch:
    """Check the answer's MAC, every entry tag and the index rules; return the batch."""
    verify_log_answer(k_log, lock_id, request.gw_nonce, encode(request), answer)
    _check_indexes(request, answer)
    lost = answer.oldest if answer.oldest > request.after + 1 else None
    return LogBatch(answer.entries, answer.head, answer.oldest, lost)


def _check_indexes(request: LogFetch, answer: LogEntries) -> None:
    if len(answer.entries) > request.max_count:
        raise ProtocolError("lock returned more log entries than asked for")
    start = max(request.after, answer.oldest - 1) if answer.head else answer.head
    wanted = list(range(start + 1, answer.head + 1)[: request.max_count])
    if [entry.index for entry in answer.entries] != wanted:
        raise ProtocolError("log entries are not the contiguous run after the requested index")
