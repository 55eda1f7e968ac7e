"""A handheld bench for tests: the auth World, a gateway HandheldService on a real listener,
an in-memory OperationsBackend (a fake of our own Protocol), and simulated handhelds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_sim.handheld.client import HandheldIdentity, SimulatedHandheld
from gateway.auth.policy import OperationRequest
from gateway.errors import StorageFullError
from gateway.handheld.api import (
    OperationOutcome,
    OperationStatus,
    SealStatus,
    TicketSummary,
)
from gateway.handheld.config import HandheldSection
from gateway.handheld.service import HandheldService
from gateway.handheld.store import PairedDeviceStore
from gateway.handheld.transport import HandheldServer
from gateway.protocol.certs import OperatorCertificate, RevocationList, encode_certificate
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import EventDraft
from gateway.protocol.tickets import Ticket
from tests.auth_helpers import HOUR, T0, World, at, make_world


class FakeBackend:
    """In-memory OperationsBackend: tickets, believed seal states, executed operations."""

    def __init__(self, tickets: Sequence[Ticket]) -> None:
        self.tickets = list(tickets)
        self.states = {"SL-0001": "sealed", "SL-0002": "unsealed"}
        self.executed: list[OperationRequest] = []
        self.outcomes: dict[str, OperationOutcome] = {}

    async def list_tickets(self, operator: str) -> Sequence[TicketSummary]:
        return [_summary(t) for t in self.tickets if t.operator == operator]

    async def seal_state(self, seal_id: str) -> SealStatus | None:
        state = self.states.get(seal_id)
        return None if state is None else SealStatus(seal_id, state, updated_at=T0)

    async def execute(self, request: OperationRequest) -> OperationOutcome:
        self.executed.append(request)
        op_id = f"op-{len(self.executed)}"
        outcome = OperationOutcome(
            op_id, request.operator, request.op, request.seal_id, OperationStatus.PENDING
        )
        self.outcomes[op_id] = outcome
        self.states[request.seal_id] = "unsealed" if request.op == "unseal" else "sealed"
        return outcome

    async def result(self, op_id: str) -> OperationOutcome | None:
        found = self.outcomes.get(op_id)
        if found is None:
            return None
        return OperationOutcome(
            found.op_id,
            found.operator,
            found.op,
            found.seal_id,
            OperationStatus.DONE,
            result="ok",
            state=self.states[found.seal_id],
            log_index=7,
        )


def _summary(ticket: Ticket) -> TicketSummary:
    return TicketSummary(
        ticket_id=ticket.ticket_id,
        work_order=ticket.work_order,
        flow=ticket.flow,
        role=ticket.role,
        seals=tuple(g.seal_id for g in ticket.seals),
        ops=ticket.ops,
        not_before=ticket.not_before,
        not_after=ticket.not_after,
        uses_left=ticket.max_uses,
    )


@dataclass
class Bench:
    """One gateway's handheld service listening on loopback, and what it emitted."""

    world: World
    identity: Ed25519PrivateKey
    clock: ManualClock
    backend: FakeBackend
    store: PairedDeviceStore
    service: HandheldService
    server: HandheldServer
    events: list[EventDraft] = field(default_factory=list)
    revoked: list[RevocationList] = field(default_factory=list)

    @property
    def address(self) -> str:
        return str(self.server.address)

    def handheld(
        self, cert: OperatorCertificate | None = None, key: Ed25519PrivateKey | None = None
    ) -> SimulatedHandheld:
        """A handheld holding `cert` (default: the world's) and `key` (default: its own)."""
        document = encode_certificate(cert or self.world.certificate).decode("utf-8")
        return SimulatedHandheld(HandheldIdentity(document, key or self.world.handheld))

    def events_of(self, kind: str) -> list[EventDraft]:
        return [e for e in self.events if e.type == kind]

    def reasons(self, kind: str) -> list[Any]:
        return [e.data.get("reason") for e in self.events_of(kind)]


async def start_bench(
    tmp_path: Path,
    *,
    listen: str = "tcp:127.0.0.1:0",
    max_attempts: int = 5,
    handshake_timeout_s: float = 10.0,
    storage_full: bool = False,
) -> Bench:
    """A started bench at T0 + 1 h."""
    world = make_world(tmp_path)
    clock = ManualClock(at(T0 + HOUR))
    backend = FakeBackend([world.ticket()])
    store = PairedDeviceStore.open(tmp_path / "state" / "handhelds.json")
    section = HandheldSection(
        enabled=True,
        listen=listen,
        max_attempts=max_attempts,
        code_ttl_s=300,
        handshake_timeout_s=handshake_timeout_s,
    )
    events: list[EventDraft] = []
    revoked: list[RevocationList] = []

    async def emit(draft: EventDraft) -> None:
        if storage_full and draft.type != "handheld.pairing_code_issued":
            raise StorageFullError("audit reserve exhausted")
        events.append(draft)

    identity = Ed25519PrivateKey.generate()
    service = HandheldService(
        section,
        identity=identity,
        trust=world.trust,
        store=store,
        backend=backend,
        emit=emit,
        clock=clock,
        revocations=lambda: revoked[-1] if revoked else None,
    )
    server = HandheldServer(section.listen, service.handle)
    await server.start()
    return Bench(world, identity, clock, backend, store, service, server, events, revoked)
