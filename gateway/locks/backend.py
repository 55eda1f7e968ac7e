"""The lock service seen by the handheld service: `handheld_backend.OperationsBackend`.

`execute` records the request and the decision at once (a denial is answered immediately),
then runs the lock command in the background; the handheld polls `result(op_id)`. The outcome
it eventually reads was committed durably by the lock service before it became visible here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence

from gateway.auth.policy import OperationRequest
from gateway.auth.ticket_store import TicketStore
from gateway.handheld.api import OperationOutcome, OperationStatus, SealStatus, TicketSummary
from gateway.locks.operations import OperationResult
from gateway.locks.service import LockService
from gateway.protocol.events import new_event_id

__all__ = ["LockBackend"]

_log = logging.getLogger(__name__)

MAX_REMEMBERED = 256  # finished operations kept for result() polls


class LockBackend:
    """OperationsBackend over a LockService and the ticket store."""

    def __init__(self, service: LockService, tickets: TicketStore) -> None:
        self._service = service
        self._tickets = tickets
        self._outcomes: OrderedDict[str, OperationOutcome] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    async def list_tickets(self, operator: str) -> Sequence[TicketSummary]:
        """Tickets held for `operator` whose window has not ended."""
        now = self._service.clock.now().timestamp()
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
        record = self._service.states.get(seal_id)
        if record is None:
            return None
        seen = int(record.last_seen_at.timestamp()) if record.last_seen_at else None
        state = self._service.seal_state(seal_id) or "unknown"
        return SealStatus(seal_id, state, record.tamper, record.battery_low, seen)

    async def execute(self, request: OperationRequest) -> OperationOutcome:
        """Decide now; run an allowed command in the background and report it pending."""
        op_id = new_event_id()
        denied = await self._service.ops.authorize(request)
        if denied is not None:
            return self._remember(_outcome(op_id, request, denied))
        pending = OperationOutcome(
            op_id, request.operator, request.op, request.seal_id, OperationStatus.PENDING
        )
        self._remember(pending)
        task = asyncio.create_task(self._perform(op_id, request), name=f"seal-op-{op_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pending

    async def result(self, op_id: str) -> OperationOutcome | None:
        """The outcome of an operation started here, or None if unknown."""
        return self._outcomes.get(op_id)

    async def close(self) -> None:
        """Cancel operations still running (their outcome is then recovered from the log)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _perform(self, op_id: str, request: OperationRequest) -> None:
        try:
            result = await self._service.ops.perform(request)
        except Exception:  # noqa: BLE001 - a handheld must never be left waiting on a crash
            _log.exception("seal operation %s failed unexpectedly", op_id)
            result = OperationResult(False, "failed", "internal_error")
        self._remember(_outcome(op_id, request, result))

    def _remember(self, outcome: OperationOutcome) -> OperationOutcome:
        self._outcomes[outcome.op_id] = outcome
        self._outcomes.move_to_end(outcome.op_id)
        while len(self._outcomes) > MAX_REMEMBERED:
            self._outcomes.popitem(last=False)
        return outcome


def _outcome(op_id: str, request: OperationRequest, result: OperationResult) -> OperationOutcome:
    status = {
        "done": OperationStatus.DONE,
        "denied": OperationStatus.DENIED,
    }.get(result.outcome, OperationStatus.FAILED)
    return OperationOutcome(
        op_id,
        request.operator,
        request.op,
        request.seal_id,
        status,
        reason=result.reason or ("" if result.ok else result.outcome),
        result=result.outcome,
        state=result.state or "",
        log_index=result.log_index,
    )
