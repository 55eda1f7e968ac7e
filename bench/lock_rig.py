"""A lock rig for benches: N LockWorld locks on a bumble radio and a running gateway LockService.

Everything is the real stack, set up as tests/fixtures/locks.py does: locks are LockPeripherals
on a virtual LocalLink whose gateway controller is served over TCP HCI, the gateway reaches them
through our bleak backend, events are committed to a real SQLite EventBuffer, and operations
run under tickets the MasterAuthority issued for the gateway's X25519 credential key. An
`AttTap` records the ATT traffic on the radio from before the service starts. Unlike the
tests, time is the system clock: benches measure wall time, and retries must really wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.att_tap import AttTap
from firmware_sim.locks.world import LockWorld, address_for
from gateway.auth.policy import DEFAULT_TABLE, GatewayTrust, OperationRequest
from gateway.auth.ticket_store import TicketStore
from gateway.config.model import BufferSection
from gateway.drivers.ble.adapters import BleAdapters
from gateway.handheld.api import OperationOutcome
from gateway.locks.config import BleSection, LockEntry
from gateway.locks.service import LockService
from gateway.protocol.certs import OperatorCertificate, encode_certificate
from gateway.protocol.clock import SystemClock
from gateway.protocol.events import Event
from gateway.protocol.tickets import MAX_USES, Ticket, encode_ticket, x25519_public_bytes
from gateway.store.buffer import EventBuffer
from master_station.authority import MasterAuthority

__all__ = ["GATEWAY_ID", "WAIT_S", "LockRig", "lock_rig"]

GATEWAY_ID = "gw-bench"
DISTRICT = "district-1"
OPERATOR = "op-bench"
HOUR = 3600
DAY = 24 * HOUR
WAIT_S = 60.0


@dataclass
class LockRig:
    """The locks, the gateway's lock service and the documents an operation needs."""

    locks: LockWorld
    service: LockService
    buffer: EventBuffer
    tickets: TicketStore
    authority: MasterAuthority
    credential_key: X25519PrivateKey
    handheld: Ed25519PrivateKey
    tap: AttTap
    clock: SystemClock
    adapters: BleAdapters | None = None
    trust: GatewayTrust | None = None
    certificate: str = ""
    started: float = 0.0
    committed: list[Event] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def issue(self, seal_ids: Sequence[str], max_uses: int = MAX_USES) -> Ticket:
        """A meter_replace ticket (unseal, seal) for these seals, held by the gateway."""
        now = int(self.clock.now().timestamp())
        ticket = self.authority.issue_ticket(
            work_order="WO-BENCH",
            flow="meter_replace",
            operator=OPERATOR,
            role="meter_installer",
            gateway=GATEWAY_ID,
            gateway_key=x25519_public_bytes(self.credential_key),
            seals=[(seal_id, self.locks.lock_ids[seal_id]) for seal_id in seal_ids],
            ops=["unseal", "seal"],
            not_before=now - HOUR,
            not_after=now + 2 * HOUR,
            max_uses=max_uses,
            issued_at=now - HOUR,
        )
        self.tickets.accept_ticket(encode_ticket(ticket))
        return ticket

    async def run(self, request: OperationRequest) -> OperationOutcome:
        """Run an operation the daemon's way: execute, then wait for its settled outcome."""
        operations = self.service.operations
        started = await operations.execute(request)
        outcome = await operations.wait(started.op_id)
        if outcome is None:
            raise RuntimeError(f"operation {started.op_id} was forgotten")
        return outcome

    def request(self, ticket: Ticket, seal_id: str, op: str) -> OperationRequest:
        """The operator's handheld asking for `op` on `seal_id` under `ticket`."""
        return OperationRequest(
            OPERATOR, _raw_public(self.handheld), ticket.ticket_id, ticket.work_order, seal_id, op
        )

    async def wait_committed(self, kind: str, count: int) -> None:
        """Wait until `count` events of type `kind` are committed (woken by every commit)."""
        async with asyncio.timeout(WAIT_S):
            while sum(1 for e in self.committed if e.type == kind) < count:
                self._changed.clear()
                await self._changed.wait()

    def _on_commit(self, events: Sequence[Event]) -> None:
        self.committed.extend(events)
        self._changed.set()


@contextlib.asynccontextmanager
async def lock_rig(directory: Path, count: int, **settings: Any) -> AsyncIterator[LockRig]:
    """`count` sealed locks and a running lock service (`settings` go to [ble]); closed after."""
    clock = SystemClock()
    authority = MasterAuthority.create(directory / "master")
    credential_key, handheld = X25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trust = GatewayTrust(GATEWAY_ID, DISTRICT, authority.public_key)
    locks = LockWorld(count, directory / "sim", None, clock, authority)
    gw = directory / "gw"
    gw.mkdir(parents=True, exist_ok=True)
    await locks.start()
    buffer = EventBuffer(gw / "buffer.db", GATEWAY_ID, BufferSection(), clock)
    await buffer.open()
    tickets = TicketStore.open(
        gw / "tickets.db", trust=trust, credential_key=credential_key, clock=clock
    )
    document = encode_certificate(_certificate(authority, handheld, clock))
    tickets.accept_certificate(document)
    adapters = BleAdapters()
    service = LockService(
        _section(locks, settings),
        gateway_id=GATEWAY_ID,
        transport=adapters.get(locks.adapter),
        emit=buffer.submit,
        storage_full=lambda: buffer.storage_full,
        tickets=tickets,
        trust=trust,
        table=DEFAULT_TABLE,
        skew_s=120,
        clock=clock,
        state_dir=gw,
    )
    tap = AttTap(locks.server.controller.link, locks.server.controller)
    rig = LockRig(locks, service, buffer, tickets, authority, credential_key, handheld, tap, clock)
    rig.adapters, rig.trust, rig.certificate = adapters, trust, document.decode("utf-8")
    buffer.on_commit = rig._on_commit
    rig.started = time.perf_counter()
    task = asyncio.create_task(service.run(), name="bench-lock-service")
    try:
        yield rig
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        tap.close()
        service.close()
        await adapters.close()
        await locks.close()
        await buffer.close()
        tickets.close()


def _section(locks: LockWorld, settings: dict[str, Any]) -> BleSection:
    entries = tuple(
        LockEntry(
            seal_id=seal_id,
            lock_id=lock_id.hex(),
            adv_key_file=locks.keys[seal_id].adv_key_file,
            log_key_file=locks.keys[seal_id].log_key_file,
            address=address_for(number),
        )
        for number, (seal_id, lock_id) in enumerate(locks.lock_ids.items(), start=1)
    )
    return BleSection(adapter=locks.adapter, locks=entries, **settings)


def _certificate(
    authority: MasterAuthority, handheld: Ed25519PrivateKey, clock: SystemClock
) -> OperatorCertificate:
    now = int(clock.now().timestamp())
    return authority.enroll_operator(
        operator=OPERATOR,
        name="Bench Operator",
        roles=["meter_installer"],
        districts=[DISTRICT],
        device_key=_raw_public(handheld),
        not_before=now - 30 * DAY,
        not_after=now + 365 * DAY,
        issued_at=now - 30 * DAY,
    )


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
