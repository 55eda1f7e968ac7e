"""A lock-service bench: LockWorld locks on a bumble radio, the real buffer, ticket store and service.

Everything is real: the locks are LockPeripherals on a virtual LocalLink served over TCP HCI,
the gateway reaches them through our bleak backend, events go to a real SQLite EventBuffer.
Time is a ManualClock shared by locks and gateway (T0 + 1 h, inside the default tickets).
Waiting is event-driven: `Bench.wait_for` wakes on every commit and every retained publish.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.locks.world import LockWorld, address_for, seal_id_for
from gateway.auth.policy import DEFAULT_TABLE, OperationRequest
from gateway.auth.ticket_store import TicketStore
from gateway.config.model import BufferSection
from gateway.drivers.ble.adapters import BleAdapters
from gateway.locks.config import BleSection, LockEntry
from gateway.locks.service import LockService
from gateway.protocol.certs import encode_certificate
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import Event, Priority
from gateway.protocol.tickets import Ticket, encode_ticket
from gateway.store.buffer import EventBuffer
from tests.auth_helpers import GATEWAY_ID, HOUR, T0, World, at, make_world

WAIT_S = 10.0


@dataclass
class Bench:
    """One world of locks and one gateway lock service (restartable on the same state)."""

    tmp: Path
    world: World
    locks: LockWorld
    clock: ManualClock
    buffer: EventBuffer
    tickets: TicketStore
    adapters: BleAdapters
    settings: dict[str, Any]
    service: LockService | None = None
    task: asyncio.Task[None] | None = None
    retained: dict[str, bytes] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    # -- service lifecycle ------------------------------------------------------------------

    def section(self) -> BleSection:
        entries = tuple(
            LockEntry(
                seal_id=seal_id,
                lock_id=lock_id.hex(),
                adv_key_file=self.locks.keys[seal_id].adv_key_file,
                log_key_file=self.locks.keys[seal_id].log_key_file,
                address=address_for(number),
            )
            for number, (seal_id, lock_id) in enumerate(self.locks.lock_ids.items(), start=1)
        )
        return BleSection(adapter=self.locks.adapter, locks=entries, **self.settings)

    async def start_service(self) -> LockService:
        service = LockService(
            self.section(),
            gateway_id=GATEWAY_ID,
            transport=self.adapters.get(self.locks.adapter),
            events=self.buffer,
            tickets=self.tickets,
            trust=self.world.trust,
            table=DEFAULT_TABLE,
            skew_s=120,
            clock=self.clock,
            state_dir=self.tmp / "gw",
            publish_state=self._publish,
        )
        self.service = service
        self.task = asyncio.create_task(service.run())
        return service

    async def stop_service(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.service is not None:
            self.service.close()
        self.task = None

    # -- observing ----------------------------------------------------------------------------

    async def events(self) -> list[Event]:
        """Every committed event, in seq order."""
        after = dict.fromkeys(Priority, 0)
        rows = await self.buffer.fetch_pending(after, 100_000)
        return sorted((Event.from_payload(row.payload) for row in rows), key=lambda e: e.seq)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        """Wait (woken by commits and publishes, never by polling a timer) for a truthy value."""
        async with asyncio.timeout(timeout), self.changed:
            while True:
                value = predicate()
                if value:
                    return value
                await self.changed.wait()

    async def wait_events(
        self, match: Callable[[Event], bool], count: int = 1, timeout: float = WAIT_S
    ) -> list[Event]:
        """Wait until at least `count` committed events match."""
        found: list[Event] = []

        async def check() -> bool:
            found[:] = [e for e in await self.events() if match(e)]
            return len(found) >= count

        async with asyncio.timeout(timeout), self.changed:
            while not await check():
                await self.changed.wait()
        return found

    def spy_adverts(self) -> None:
        """Wake waiters after every advert the service checks (a spy wrapping the real method)."""
        service = self.service
        assert service is not None
        real = service.observe_payload

        def observe(payload: bytes, *, source: str) -> Any:
            try:
                return real(payload, source=source)
            finally:
                self._notify()

        service.observe_payload = observe  # type: ignore[method-assign]

    def spy_reconciles(self) -> list[int]:
        """Wake waiters after every reconciliation run; returns the list of heads it reached."""
        service = self.service
        assert service is not None
        real = service.reconciler.run
        heads: list[int] = []

        async def run(*args: Any, **kwargs: Any) -> int:
            try:
                head = await real(*args, **kwargs)
                heads.append(head)
                return head
            finally:
                self._notify()

        service.reconciler.run = run  # type: ignore[method-assign]
        return heads

    def _publish(self, suffix: str, payload: bytes) -> None:
        self.retained[suffix] = payload
        self._notify()

    def _on_commit(self, _events: Sequence[Event]) -> None:
        self._notify()

    def _notify(self) -> None:
        async def wake() -> None:
            async with self.changed:
                self.changed.notify_all()

        asyncio.get_running_loop().create_task(wake())

    # -- acting -------------------------------------------------------------------------------

    def issue(self, **overrides: Any) -> Ticket:
        """A ticket for SL-0001 and SL-0002 (unseal, seal, read_state), held by the gateway."""
        ticket = self.world.ticket(**overrides)
        self.tickets.accept_ticket(encode_ticket(ticket))
        return ticket

    def request(self, ticket: Ticket, **overrides: Any) -> OperationRequest:
        return self.world.request(ticket, **overrides)


@contextlib.asynccontextmanager
async def bench(
    tmp: Path, count: int = 3, *, sealed: bool = True, **settings: Any
) -> AsyncIterator[Bench]:
    """Locks, buffer, tickets and a running lock service; everything closed afterwards."""
    world = make_world(tmp / "auth")
    clock = ManualClock(at(T0 + HOUR))
    locks = LockWorld(
        count, tmp / "sim", tmp / "truth.jsonl", clock, world.authority, sealed=sealed
    )
    await locks.start()
    buffer = EventBuffer(tmp / "gw" / "buffer.db", GATEWAY_ID, BufferSection(), clock)
    await buffer.open()
    tickets = TicketStore.open(
        tmp / "gw" / "tickets.db",
        trust=world.trust,
        credential_key=world.credential_key,
        clock=clock,
    )
    tickets.accept_certificate(encode_certificate(world.certificate))
    values = {"op_timeout_s": 2.0, "connect_timeout_s": 3.0, "retries": 1}
    values.update(settings)
    b = Bench(tmp, world, locks, clock, buffer, tickets, BleAdapters(), values)
    buffer.on_commit = b._on_commit
    await b.start_service()
    try:
        yield b
    finally:
        await b.stop_service()
        await b.adapters.close()
        await locks.close()
        await buffer.close()
        tickets.close()


def log_events(events: Sequence[Event]) -> list[tuple[str, int]]:
    """(seal, log_index) of every event made from a lock log entry or an operation outcome."""
    return [(e.subject, int(e.data["log_index"])) for e in events if "log_index" in e.data]


__all__ = ["WAIT_S", "Bench", "bench", "log_events", "seal_id_for"]
