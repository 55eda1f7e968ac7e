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
    """Where a seal operation stands: accepted, done, denied, failed, or unknown until the log.

    UNKNOWN (the command went out, no verified answer came back) reaches the handheld as
    status `failed` with result `unknown`: the wire predates the distinction (docs/handheld.md).
    """

    PENDING = "pending"
    DONE = "done"
    DENIED = "denied"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def reported(self) -> OperationStatus:
        """The status the handheld protocol carries."""
        return OperationStatus.FAILED if self is OperationStatus.UNKNOWN else self


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
    """A seal operation as it stands: the one result type from the lock path to the handheld.

    `reason` is the policy reason of a denial, or why it failed or is unknown; `state`, `wire`
    and `log_index` come from the lock's verified answer or log entry.
    """

    op_id: str
    operator: str
    op: str
    seal_id: str
    status: OperationStatus
    reason: str = ""
    state: str = ""
    wire: str = ""
    log_index: int | None = None

    @property
    def ok(self) -> bool:
        """True when the lock did what was asked."""
        return self.status is OperationStatus.DONE

    @property
    def settled(self) -> bool:
        """True once the operation will not change any more (anything but pending)."""
        return self.status is not OperationStatus.PENDING

    def to_json(self) -> dict[str, JSONValue]:
        """The JSON object sent to the handheld."""
        failed = self.settled and not self.ok
        return {
            "op_id": self.op_id,
            "op": self.op,
            "seal_id": self.seal_id,
            "status": self.status.reported.value,
            "reason": self.reason or (self.status.value if failed else ""),
            "result": self.status.value if self.settled else "",
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
