"""Seal operations: decide, audit, reserve a use, command, verify, record; one way through.

`SealOperations` is the handheld service's `OperationsBackend`, and the only way a seal
operation runs (the daemon, the tests and the benches all use it). `execute` follows
docs/authorization.md: seal.op_requested is committed before deciding (if it cannot be, the
request is denied storage_full), the policy's `Decision` is committed (seal.op_allowed /
seal.op_denied with its reason) and turned into an `OperationOutcome` once. A denial is
answered at once; an allowed request answers `pending` and runs in the background: a use is
reserved, then the command goes through the connection scheduler. Its outcome event is
committed durably before the outcome becomes visible to `result` and `wait`, and only from a
verified answer or a verified log entry: a lost link or a forged answer after the command was
sent gives seal.op_unconfirmed (status `unknown`), and the truth arrives later from the lock's
log (reconciliation), never made up here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

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
from gateway.errors import (
    AuthError,
    GatewayError,
    OutcomeUnknownError,
    ProtocolError,
    RetryableError,
    StorageError,
)
from gateway.handheld.api import OperationOutcome, OperationStatus, SealStatus, TicketSummary
from gateway.locks.beliefs import SealBeliefs
from gateway.locks.log_sync import LogSync
from gateway.locks.reconcile import (
    PendingOutcome,
    Reconciler,
    answer_id,
    outcome_draft,
    replace_id,
)
from gateway.locks.scheduler import ConnectionScheduler, Urgency
from gateway.locks.session import LockSession
from gateway.locks.state import LockSpec, LockStore, unix_now
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.protocol.events import Emit, EventDraft, EventType, new_event_id
from gateway.protocol.seal_crypto import ticket_tag
from gateway.protocol.seal_exchange import TicketCredential
from gateway.protocol.seal_frames import Operation, ResultCode
from gateway.protocol.tickets import LOCK_OPS, Op

__all__ = ["MAX_REMEMBERED", "OpStats", "PolicySettings", "SealOperations"]

_log = logging.getLogger(__name__)

MAX_REMEMBERED = 256  # finished operations kept for result() polls


@dataclass(slots=True)
class OpStats:
    """Operation counters for the health snapshot."""

    ok: int = 0
    failed: int = 0
    denied: int = 0
    unknown: int = 0


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """What `policy.decide` needs besides the request and the held documents."""

    trust: GatewayTrust
    table: RoleTable
    skew_s: int


class SealOperations:
    """Runs the seal operations handhelds ask for; the handheld service's OperationsBackend."""

    def __init__(
        self,
        *,
        gateway_id: str,
        locks: Mapping[str, LockSpec],
        beliefs: SealBeliefs,
        store: LockStore,
        scheduler: ConnectionScheduler[LockSession],
        log_sync: LogSync,
        reconciler: Reconciler,
        tickets: TicketStore,
        policy: PolicySettings,
        emit: Emit,
        storage_full: Callable[[], bool],
        clock: Clock,
    ) -> None:
        self._gateway_id = gateway_id
        self._locks = locks
        self._beliefs = beliefs
        self._store = store
        self._scheduler = scheduler
        self._log_sync = log_sync
        self._reconciler = reconciler
        self._tickets = tickets
        self._policy = policy
        self._emit = emit
        self._storage_full = storage_full
        self._clock = clock
        self._outcomes: OrderedDict[str, OperationOutcome] = OrderedDict()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._settled_ops: dict[str, asyncio.Event] = {}
        self.stats = OpStats()

    # -- OperationsBackend ----------------------------------------------------------------------

    async def execute(self, request: OperationRequest) -> OperationOutcome:
        """Decide now; run an allowed command in the background and report it pending."""
        started = OperationOutcome(
            new_event_id(), request.operator, request.op, request.seal_id, OperationStatus.PENDING
        )
        denied = await self._authorize(request, started)
        if denied is not None:
            return self._remember(denied)
        self._remember(started)
        op_id = started.op_id
        settled = self._settled_ops[op_id] = asyncio.Event()
        task = asyncio.create_task(self._run(request, started), name=f"seal-op-{op_id}")
        self._running[op_id] = task

        def done(_task: asyncio.Task[None]) -> None:
            self._running.pop(op_id, None)
            self._settled_ops.pop(op_id, None)
            settled.set()  # also when cancelled: nobody waits for ever

        task.add_done_callback(done)
        return started

    async def result(self, op_id: str) -> OperationOutcome | None:
        """The outcome of an operation started here, or None if unknown."""
        return self._outcomes.get(op_id)

    async def list_tickets(self, operator: str) -> Sequence[TicketSummary]:
        """Tickets held for `operator` whose window has not ended."""
        now = self._clock.now().timestamp()
        summaries = []
        for ticket_id in self._tickets.ticket_ids():
            ticket = self._tickets.ticket(ticket_id)
            if ticket is None or ticket.operator != operator or ticket.not_after < now:
                continue
            left = max(0, ticket.max_uses - self._tickets.uses(ticket_id))
            summaries.append(
                TicketSummary(
                    ticket.ticket_id,
                    ticket.work_order,
                    ticket.flow,
                    ticket.role,
                    ticket.seal_ids,
                    ticket.ops,
                    ticket.not_before,
                    ticket.not_after,
                    left,
                )
            )
        return summaries

    async def seal_state(self, seal_id: str) -> SealStatus | None:
        """The believed state of a configured seal."""
        record = self._beliefs.states.get(seal_id)
        if record is None:
            return None
        seen = int(record.last_seen_at.timestamp()) if record.last_seen_at else None
        state = self._beliefs.seal_state(seal_id) or "unknown"
        return SealStatus(seal_id, state, record.tamper, record.battery_low, seen)

    # -- waiting and stopping -------------------------------------------------------------------

    async def wait(self, op_id: str) -> OperationOutcome | None:
        """The outcome once it is settled (durably recorded); None for an unknown op_id.

        That can be before the operation's link is closed: a BlueZ disconnect takes seconds
        (bluetoothd waits 2 s before it drops the link) and changes nothing of the outcome.
        """
        settled = self._settled_ops.get(op_id)
        if settled is not None:
            await settled.wait()
        return self._outcomes.get(op_id)

    async def close(self) -> None:
        """Cancel operations still running (their outcome is then recovered from the log)."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- deciding -------------------------------------------------------------------------------

    async def _authorize(
        self, request: OperationRequest, started: OperationOutcome
    ) -> OperationOutcome | None:
        """Record the request and the decision; None when allowed, else the denial."""
        if not await self._record(op_requested(request, self._now())):
            return self._denied(started, Decision.deny(Reason.STORAGE_FULL))
        decision = self._decide(request)
        if not await self._record(op_decided(request, decision, self._now())):
            decision = Decision.deny(Reason.STORAGE_FULL, "decision could not be stored")
        return None if decision.allowed else self._denied(started, decision)

    def _denied(self, started: OperationOutcome, decision: Decision) -> OperationOutcome:
        """The one place a policy Decision becomes an outcome."""
        self.stats.denied += 1
        reason = decision.reason.value if decision.reason else "unknown"
        return replace(started, status=OperationStatus.DENIED, reason=reason)

    def _decide(self, request: OperationRequest) -> Decision:
        if request.seal_id not in self._locks:
            return Decision.deny(Reason.SEAL_OUT_OF_SCOPE, "seal is not served by this gateway")
        policy = self._policy
        return decide(
            request,
            self._tickets.ticket(request.ticket_id),
            certificate=self._tickets.certificate(request.operator),
            revocations=self._tickets.revocations(),
            table=policy.table,
            seal_state=self._beliefs.record(request.seal_id).state,
            uses_so_far=self._tickets.uses(request.ticket_id),
            now=self._now(),
            skew_s=policy.skew_s,
            gateway=policy.trust,
            storage_ok=not self._storage_full(),
        )

    # -- running --------------------------------------------------------------------------------

    async def _run(self, request: OperationRequest, started: OperationOutcome) -> None:
        try:
            outcome = await self._perform(request, started)
        except Exception:  # noqa: BLE001 - a handheld must never be left waiting on a crash
            _log.exception("seal operation %s failed unexpectedly", started.op_id)
            outcome = replace(started, status=OperationStatus.FAILED, reason="internal_error")
        self._settle(outcome)

    async def _perform(
        self, request: OperationRequest, started: OperationOutcome
    ) -> OperationOutcome:
        """Run an authorized request on the lock; the outcome is durable when this returns."""
        lock = self._locks[request.seal_id]
        if request.op not in LOCK_OPS:
            return await self._read(lock, request, started)
        return await self._command(lock, request, started)

    async def _read(
        self, lock: LockSpec, request: OperationRequest, started: OperationOutcome
    ) -> OperationOutcome:
        refresh = self._log_sync.refresh
        try:
            await self._scheduler.run(lock.seal_id, Urgency.HANDHELD, lambda s: refresh(lock, s))
        except (GatewayError, TimeoutError) as exc:
            return await self._failed(lock, request, started, _code(exc))
        self.stats.ok += 1
        state = self._beliefs.seal_state(lock.seal_id) or ""
        return replace(started, status=OperationStatus.DONE, state=state)

    async def _command(
        self, lock: LockSpec, request: OperationRequest, started: OperationOutcome
    ) -> OperationOutcome:
        try:
            self._tickets.reserve_use(request.ticket_id)
            credential = self._tickets.credential(request.ticket_id, request.seal_id)
        except AuthError as exc:
            return await self._failed(lock, request, started, exc.code)
        if request.op == Op.UNSEAL:
            self._open_unseal_window(lock, request)
        try:
            return await self._scheduler.run(
                lock.seal_id,
                Urgency.HANDHELD,
                lambda session: self._operate(lock, session, request, credential, started),
            )
        except OutcomeUnknownError as exc:
            return await self._unconfirmed(lock, request, started, exc)
        except (GatewayError, TimeoutError) as exc:
            return await self._failed(lock, request, started, _code(exc))

    async def _operate(
        self,
        lock: LockSpec,
        session: LockSession,
        request: OperationRequest,
        credential: TicketCredential,
        started: OperationOutcome,
    ) -> OperationOutcome:
        op = LOCK_OPS[request.op]
        tag = ticket_tag(credential.header)
        self._log_sync.expect(lock.seal_id, PendingOutcome(request, tag))
        arg = unix_now(self._now()) if op is Operation.SET_TIME else 0
        try:
            outcome = await session.command(
                credential, op, self._store.load(lock.lock_id).counter, arg
            )
        except RetryableError:
            await self._fetch_before_retry(lock, session)
            raise
        self._store.set_counter(lock.lock_id, outcome.counter)
        answer = outcome.result
        context = PendingOutcome(request, tag, answer)
        self._beliefs.apply_answer(lock.seal_id, answer.state, answer.wire, answer.flags)
        if answer.log_index == 0:  # not logged by the lock: the answer is the only record
            self._log_sync.forget(lock.seal_id, tag)
            await self._commit_from_answer(lock, context, outcome.counter)
            await self._reconcile_after(lock, session, None)
        else:
            self._log_sync.expect(lock.seal_id, context)
            await self._reconcile_after(lock, session, context)
        # Durable now: the handheld need not wait for the link to close (seconds on BlueZ).
        return self._settle(self._settled(lock, request, started, answer.result, answer.log_index))

    async def _fetch_before_retry(self, lock: LockSpec, session: LockSession) -> None:
        """BUSY may mean a ring blocked by unfetched tamper entries: fetch, then retry."""
        try:
            await self._log_sync.reconcile_on(lock, session)
        except (GatewayError, TimeoutError) as exc:
            _log.debug("seal %s: log fetch before a retry failed: %s", lock.seal_id, exc)

    async def _reconcile_after(
        self, lock: LockSpec, session: LockSession, context: PendingOutcome | None
    ) -> None:
        """Fetch the log; if the command's entry did not arrive, commit from the answer."""
        try:
            await self._log_sync.reconcile_on(lock, session)
        except (RetryableError, ProtocolError, AuthError) as exc:
            _log.warning("seal %s: log fetch after the command failed: %s", lock.seal_id, exc)
        try:
            answer = context.answer if context is not None else None
            if answer is not None and self._store.load(lock.lock_id).cursor < answer.log_index:
                assert context is not None
                await self._commit_from_answer(lock, context, answer.counter)
                self._log_sync.request(lock.seal_id, Urgency.ALARM)
        finally:
            if context is not None:
                self._log_sync.forget(lock.seal_id, context.ticket_tag)

    async def _commit_from_answer(
        self, lock: LockSpec, context: PendingOutcome, counter: int
    ) -> None:
        """Commit the verified answer as the outcome, under an id of its own.

        A logged answer's index stays pending: `emitted` tells reconciliation to commit the
        MAC-tagged entry, when it is fetched, as `seal.log_entry` (the outcome is already out).
        """
        answer = context.answer
        assert answer is not None
        draft = outcome_draft(self._gateway_id, lock, context, answer.log_index, None)
        event_id = answer_id(self._gateway_id, lock.lock_id, answer.log_index, counter, answer.rtc)
        await self._reconciler.commit([replace_id(draft, event_id)])
        if answer.log_index:
            self._store.mark_emitted(lock.lock_id, [answer.log_index])

    def _settled(
        self,
        lock: LockSpec,
        request: OperationRequest,
        started: OperationOutcome,
        result: ResultCode,
        index: int,
    ) -> OperationOutcome:
        record = self._beliefs.record(lock.seal_id)
        state = record.state.name.lower()
        wire = record.wire.name.lower() if record.wire is not None else ""
        seen = replace(started, state=state, wire=wire, log_index=index)
        if result is not ResultCode.OK:
            self.stats.failed += 1
            if request.op == Op.UNSEAL:
                self._beliefs.set_unseal_window(lock, None)
            return replace(seen, status=OperationStatus.FAILED, reason=result.name.lower())
        self.stats.ok += 1
        if request.op == Op.SEAL:
            self._beliefs.set_unseal_window(lock, None)
        return replace(seen, status=OperationStatus.DONE)

    # -- failures -------------------------------------------------------------------------------

    async def _failed(
        self, lock: LockSpec, request: OperationRequest, started: OperationOutcome, reason: str
    ) -> OperationOutcome:
        """Nothing reached the lock (or it could not be trusted): seal.op_failed with a reason."""
        self.stats.failed += 1
        _log.warning("seal %s: %s failed: %s", lock.seal_id, request.op, reason)
        if request.op == Op.UNSEAL:
            self._beliefs.set_unseal_window(lock, None)
        await self._record(self._audit(request, EventType.SEAL_OP_FAILED, {"reason": reason}))
        return replace(started, status=OperationStatus.FAILED, reason=reason)

    async def _unconfirmed(
        self,
        lock: LockSpec,
        request: OperationRequest,
        started: OperationOutcome,
        exc: OutcomeUnknownError,
    ) -> OperationOutcome:
        """The command went out, no verified answer came back: ask the log, invent nothing."""
        self.stats.unknown += 1
        _log.warning("seal %s: outcome of %s unknown: %s", lock.seal_id, request.op, exc.reason)
        data: dict[str, JSONValue] = {"reason": exc.reason, "ticket_tag": exc.ticket_tag.hex()}
        await self._record(self._audit(request, EventType.SEAL_OP_UNCONFIRMED, data))
        if exc.ticket_tag:
            self._log_sync.expect(lock.seal_id, PendingOutcome(request, exc.ticket_tag))
        self._log_sync.request(lock.seal_id, Urgency.ALARM)
        return replace(started, status=OperationStatus.UNKNOWN, reason=exc.reason)

    # -- helpers --------------------------------------------------------------------------------

    async def _record(self, draft: EventDraft) -> bool:
        """Commit an audit event durably; False when the buffer refused it."""
        try:
            await self._emit(draft)
        except StorageError as exc:
            _log.error("audit event %s not stored: %s", draft.type, exc)
            return False
        return True

    def _audit(
        self, request: OperationRequest, kind: EventType, extra: dict[str, JSONValue]
    ) -> EventDraft:
        base = op_requested(request, self._now())
        return EventDraft(kind, base.subject, {**base.data, **extra}, base.priority, base.ts)

    def _open_unseal_window(self, lock: LockSpec, request: OperationRequest) -> None:
        ticket = self._tickets.ticket(request.ticket_id)
        if ticket is None:
            return
        window = (unix_now(self._now()), ticket.not_after + self._policy.skew_s)
        self._beliefs.set_unseal_window(lock, window)

    def _settle(self, outcome: OperationOutcome) -> OperationOutcome:
        """Make a settled outcome visible to `result` and wake `wait`."""
        self._remember(outcome)
        settled = self._settled_ops.get(outcome.op_id)
        if settled is not None:
            settled.set()
        return outcome

    def _remember(self, outcome: OperationOutcome) -> OperationOutcome:
        self._outcomes[outcome.op_id] = outcome
        self._outcomes.move_to_end(outcome.op_id)
        while len(self._outcomes) > MAX_REMEMBERED:
            self._outcomes.popitem(last=False)
        return outcome

    def _now(self) -> datetime:
        return self._clock.now()


def _code(exc: BaseException) -> str:
    if isinstance(exc, AuthError):
        return exc.code
    if isinstance(exc, RetryableError | TimeoutError):
        return "unreachable"
    return "protocol_error" if isinstance(exc, ProtocolError) else "error"
