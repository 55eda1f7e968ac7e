"""What the handheld service asks of the rest of the gateway: the OperationsBackend Protocol.

The handheld service authenticates the handheld and frames its requests; the backend (the
lock service) decides with `policy.decide`, runs lock commands and records their outcome.
The models here are what crosses that line, with their JSON form for the handheld.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gateway.auth.policy import OperationRequest
from gateway.protocol.canonical import JSONValue

__all__ = [
    "OperationOutcome",
    "OperationStatus",
    "OperationsBackend",
    "SealStatus",
    "TicketSummary",
]


class OperationStatus(StrEnum):
    """Where an unseal or seal stands, as the handheld sees it."""

    PENDING = "pending"
    DONE = "done"
    DENIED = "denied"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class TicketSummary:
    """A held ticket as its operator sees it (no credentials, no signature)."""

    ticket_id: str
    work_order: str
    flow: str
    role: str
    seals: tuple[str, ...]
    ops: tuple[str, ...]
    not_before: int
    not_after: int
    uses_left: int

    def to_json(self) -> dict[str, JSONValue]:
        """The JSON object sent to the handheld."""
        return {
            "ticket_id": self.ticket_id,
            "work_order": self.work_order,
            "flow": self.flow,
            "role": self.role,
            "seals": list(self.seals),
            "ops": list(self.ops),
            "not_before": self.not_before,
            "not_after": self.not_after,
            "uses_left": self.uses_left,
        }


@dataclass(frozen=True, slots=True)
class SealStatus:
    """The gateway's belief about one seal (the lock has the last word)."""

    seal_id: str
    state: str
    tamper: bool = False
    battery_low: bool = False
    updated_at: int | None = None

    def to_json(self) -> dict[str, JSONValue]:
        """The JSON object sent to the handheld."""
        return {
            "seal_id": self.seal_id,
            "state": self.state,
            "tamper": self.tamper,
            "battery_low": self.battery_low,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class OperationOutcome:
    """An unseal or seal: accepted (pending), denied with a policy reason, done or failed."""

    op_id: str
    operator: str
    op: str
    seal_id: str
    status: OperationStatus
    reason: str = ""
    result: str = ""
    state: str = ""
    log_index: int | None = None

    def to_json(self) -> dict[str, JSONValue]:
        """The JSON object sent to the handheld."""
        return {
            "op_id": self.op_id,
            "op": self.op,
            "seal_id": self.seal_id,
            "status": self.status.value,
            "reason": self.reason,
            "result": self.result,
            "state": self.state,
            "log_index": self.log_index,
        }


class OperationsBackend(Protocol):
    """The lock service as the handheld service sees it."""

    async def list_tickets(self, operator: str) -> Sequence[TicketSummary]:
        """Tickets held for `operator` that are valid now or later."""
        ...

    async def seal_state(self, seal_id: str) -> SealStatus | None:
        """The believed state of a seal, or None for a seal this gateway does not know."""
        ...

    async def execute(self, request: OperationRequest) -> OperationOutcome:
        """Decide and start an unseal or seal; the request's operator and key are authenticated."""
        ...

    async def result(self, op_id: str) -> OperationOutcome | None:
        """The current outcome of an operation started by `execute`, or None if unknown."""
        ...
