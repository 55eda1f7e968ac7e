"""Seal operations a handheld asks for: decide, audit, reserve a use, command, verify, record.

`LockOperations.execute` follows docs/authorization.md: seal.op_requested is committed before
deciding (if it cannot be, the request is denied storage_full), the decision is committed
(seal.op_allowed / seal.op_denied with its reason), a use is reserved, then the command runs
through the connection scheduler. The outcome event is committed durably before `execute`
returns, and only from a verified answer or a verified log entry: a lost link or a forged
answer after the command was sent gives seal.op_unconfirmed, and the truth arrives later from
the lock's log (reconciliation), never made up here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from gateway.auth.policy import (
    Decision,
    GatewayTrust,
    OperationRequest,
    Reason,
    RoleTable,
    decide,
    op_decided,
    op_requested,
)
from gateway.auth.ticket_store import TicketStore
from gateway.errors import AuthError, GatewayError, ProtocolError, StorageError
from gateway.locks.reconcile import PendingOutcome, outcome_draft
from gateway.locks.scheduler import RetryableError, Urgency
from gateway.locks.session import LockSession, OutcomeUnknownError
from gateway.locks.state import LockSpec, unix_now
from gateway.protocol.canonical import JSONValue
from gateway.protocol.events import EventDraft
from gateway.protocol.seal_crypto import ticket_tag
from gateway.protocol.seal_exchange import TicketCredential
from gateway.protocol.seal_frames import Operation, ResultCode
from gateway.protocol.tickets import LOCK_OPS, Op

if TYPE_CHECKING:
    from gateway.locks.service import LockService

__all__ = ["LockOperations", "OpStats", "OperationResult"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OperationResult:
    """What the handheld is told: done, denied, failed, or unknown (see the lock log later)."""

    ok: bool
    outcome: str
    reason: str | None = None
    state: str | None = None
    wire: str | None = None
    log_index: int | None = None


@dataclass(slots=True)
class OpStats:
    """Operation counters for the health snapshot."""

    ok: int = 0
    failed: int = 0
    denied: int = 0
    unknown: int = 0


class LockOperations:
    """The seal-operation half of the lock service."""

    def __init__(
        self,
        service: LockService,
        *,
        tickets: TicketStore,
        trust: GatewayTrust,
        table: RoleTable,
        skew_s: int,
    ) -> None:
        self._service = service
        self._tickets = tickets
        self._trust = trust
        self._table = table
        self._skew_s = skew_s
        self.stats = OpStats()

    async def execute(self, request: OperationRequest) -> OperationResult:
        """Run one request end to end; the outcome is durably recorded before this returns."""
        denied = await self.authorize(request)
        return denied if denied is not None else await self.perform(request)

    async def authorize(self, request: OperationRequest) -> OperationResult | None:
        """Record the request and the decision; None when allowed, else the denial."""
        if not await self._record(op_requested(request, self._now())):
            self.stats.denied += 1
            return OperationResult(False, "denied", Reason.STORAGE_FULL.value)
        decision = self._decide(request)
        if not await self._record(op_decided(request, decision, self._now())):
            decision = Decision.deny(Reason.STORAGE_FULL, "decision could not be stored")
        if decision.allowed:
            return None
        self.stats.denied += 1
        reason = decision.reason.value if decision.reason else "unknown"
        return OperationResult(False, "denied", reason)

    async def perform(self, request: OperationRequest) -> OperationResult:
        """Run an authorized request on the lock; the outcome is durable when this returns."""
        lock = self._service.locks[request.seal_id]
        if request.op not in LOCK_OPS:
            return await self._read(lock, request)
        return await self._command(lock, request)

    # -- deciding -----------------------------------------------------------------------------

    def _decide(self, request: OperationRequest) -> Decision:
        if request.seal_id not in self._service.locks:
            return Decision.deny(Reason.SEAL_OUT_OF_SCOPE, "seal is not served by this gateway")
        return decide(
            request,
            self._tickets.ticket(request.ticket_id),
            certificate=self._tickets.certificate(request.operator),
            revocations=self._tickets.revocations(),
            table=self._table,
            seal_state=self._service.record(request.seal_id).state,
            uses_so_far=self._tickets.uses(request.ticket_id),
            now=self._now(),
            skew_s=self._skew_s,
            gateway=self._trust,
            storage_ok=self._service.storage_ok,
        )

    # -- running ------------------------------------------------------------------------------

    async def _read(self, lock: LockSpec, request: OperationRequest) -> OperationResult:
        service = self._service
        try:
            await service.scheduler.run(
                lock.seal_id, Urgency.HANDHELD, lambda s: service.session_common(lock, s)
            )
        except (GatewayError, TimeoutError) as exc:
            return await self._failed(lock, request, _code(exc))
        self.stats.ok += 1
        return OperationResult(True, "done", state=service.seal_state(lock.seal_id))

    async def _command(self, lock: LockSpec, request: OperationRequest) -> OperationResult:
        try:
            self._tickets.reserve_use(request.ticket_id)
            credential = self._tickets.credential(request.ticket_id, request.seal_id)
        except AuthError as exc:
            return await self._failed(lock, request, exc.code)
        if request.op == Op.UNSEAL:
            self._open_unseal_window(lock, request)
        service = self._service
        try:
            return await service.scheduler.run(
                lock.seal_id,
                Urgency.HANDHELD,
                lambda session: self._operate(lock, session, request, credential),
            )
        except OutcomeUnknownError as exc:
            return await self._unconfirmed(lock, request, exc)
        except (GatewayError, TimeoutError) as exc:
            return await self._failed(lock, request, _code(exc))

    async def _operate(
        self,
        lock: LockSpec,
        session: LockSession,
        request: OperationRequest,
        credential: TicketCredential,
    ) -> OperationResult:
        service, store = self._service, self._service.store
        op = LOCK_OPS[request.op]
        tag = ticket_tag(credential.header)
        pending = service.pending[lock.seal_id]
        pending[tag] = PendingOutcome(request, tag)
        arg = unix_now(self._now()) if op is Operation.SET_TIME else 0
        outcome = await session.command(credential, op, store.load(lock.lock_id).counter, arg)
        store.set_counter(lock.lock_id, outcome.counter)
        answer = outcome.result
        pending[tag] = PendingOutcome(request, tag, answer)
        service.apply_answer(lock.seal_id, answer.state, answer.wire, answer.flags)
        try:
            await service.reconcile_on(lock, session)
        except (RetryableError, ProtocolError, AuthError) as exc:
            _log.warning("seal %s: log fetch after the command failed: %s", lock.seal_id, exc)
            await self._commit_from_answer(lock, pending[tag])
        finally:
            pending.pop(tag, None)
        return self._settled(lock, request, answer.result, answer.log_index)

    async def _commit_from_answer(self, lock: LockSpec, context: PendingOutcome) -> None:
        """The entry was not fetched: commit the verified answer as its event, mark it emitted."""
        answer = context.answer
        assert answer is not None
        draft = outcome_draft(self._service.gateway_id, lock, context, answer.log_index, None)
        await self._service.reconciler.commit([draft])
        self._service.store.mark_emitted(lock.lock_id, [answer.log_index])

    def _settled(
        self, lock: LockSpec, request: OperationRequest, result: ResultCode, index: int
    ) -> OperationResult:
        record = self._service.record(lock.seal_id)
        state = record.state.name.lower()
        wire = record.wire.name.lower() if record.wire is not None else None
        if result is not ResultCode.OK:
            self.stats.failed += 1
            if request.op == Op.UNSEAL:
                self._close_unseal_window(lock)
            return OperationResult(False, "failed", result.name.lower(), state, wire, index)
        self.stats.ok += 1
        if request.op == Op.SEAL:
            self._close_unseal_window(lock)
        return OperationResult(True, "done", None, state, wire, index)

    # -- failures -----------------------------------------------------------------------------

    async def _failed(
        self, lock: LockSpec, request: OperationRequest, reason: str
    ) -> OperationResult:
        """Nothing reached the lock (or it could not be trusted): seal.op_failed with a reason."""
        self.stats.failed += 1
        _log.warning("seal %s: %s failed: %s", lock.seal_id, request.op, reason)
        if request.op == Op.UNSEAL:
            self._close_unseal_window(lock)
        await self._record(self._audit(request, "seal.op_failed", {"reason": reason}))
        return OperationResult(False, "failed", reason)

    async def _unconfirmed(
        self, lock: LockSpec, request: OperationRequest, exc: OutcomeUnknownError
    ) -> OperationResult:
        """The command went out, no verified answer came back: ask the log, invent nothing."""
        self.stats.unknown += 1
        _log.warning("seal %s: outcome of %s unknown: %s", lock.seal_id, request.op, exc.reason)
        data: dict[str, JSONValue] = {"reason": exc.reason, "ticket_tag": exc.ticket_tag.hex()}
        await self._record(self._audit(request, "seal.op_unconfirmed", data))
        if exc.ticket_tag:
            self._service.pending[lock.seal_id][exc.ticket_tag] = PendingOutcome(
                request, exc.ticket_tag
            )
        self._service.request_reconcile(lock.seal_id, Urgency.ALARM)
        return OperationResult(False, "unknown", exc.reason)

    # -- helpers ------------------------------------------------------------------------------

    async def _record(self, draft: EventDraft) -> bool:
        """Commit an audit event durably; False when the buffer refused it."""
        try:
            await self._service.emit(draft)
        except StorageError as exc:
            _log.error("audit event %s not stored: %s", draft.type, exc)
            return False
        return True

    def _audit(
        self, request: OperationRequest, kind: str, extra: dict[str, JSONValue]
    ) -> EventDraft:
        base = op_requested(request, self._now())
        return EventDraft(kind, base.subject, {**base.data, **extra}, base.priority, base.ts)

    def _open_unseal_window(self, lock: LockSpec, request: OperationRequest) -> None:
        ticket = self._tickets.ticket(request.ticket_id)
        if ticket is None:
            return
        window = (unix_now(self._now()), ticket.not_after + self._skew_s)
        self._service.record(lock.seal_id).unseal_window = window
        self._service.store.set_unseal_window(lock.lock_id, window)

    def _close_unseal_window(self, lock: LockSpec) -> None:
        self._service.record(lock.seal_id).unseal_window = None
        self._service.store.set_unseal_window(lock.lock_id, None)

    def _now(self) -> datetime:
        return self._service.clock.now()


def _code(exc: BaseException) -> str:
    if isinstance(exc, AuthError):
        return exc.code
    if isinstance(exc, RetryableError | TimeoutError):
        return "unreachable"
    return "protocol_error" if isinstance(exc, ProtocolError) else "error"
