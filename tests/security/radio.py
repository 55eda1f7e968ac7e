"""Attacker helpers: locks of a LockWorld on a bumble LocalLink, reached through bleak.

The sessions are the ones of tests/integration/firmware_sim/test_lock_peripheral.py (the real
GATT transport); these helpers add what an attacker or a stolen gateway holds: tickets with
chosen windows, raw forged commands and a ManualClock it can wind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from firmware_sim.locks.world import LockWorld
from gateway.drivers.ble.adapters import BleAdapters
from gateway.protocol import seal_exchange as ex
from gateway.protocol import seal_frames as sf
from gateway.protocol.clock import ManualClock
from gateway.protocol.seal_crypto import SessionContext
from gateway.protocol.tickets import open_credential, x25519_public_bytes
from tests.integration.firmware_sim.test_lock_peripheral import (
    GATEWAY_ID,
    Bench,
    Session,
    _connect,
)

T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
DAY = 86_400

__all__ = ["DAY", "T0", "Bench", "Session", "connect", "credential", "radio", "run_command"]


@asynccontextmanager
async def radio(tmp_path: Path, count: int = 1, *, sealed: bool = True) -> AsyncIterator[Bench]:
    """A LockWorld of `count` locks on a ManualClock at T0, and the gateway's BLE transport."""
    truth = tmp_path / "truth.jsonl"
    world = LockWorld(count, tmp_path / "sim", truth, clock=ManualClock(), sealed=sealed)
    adapters = BleAdapters()
    await world.start()
    try:
        yield Bench(world, adapters.get(world.adapter), truth)
    finally:
        await adapters.close()
        await world.close()


def credential(
    bench: Bench,
    seal_id: str,
    ops: tuple[str, ...],
    not_before: int,
    not_after: int,
    *,
    flow: str = "meter_replace",
    role: str = "meter_installer",
) -> ex.TicketCredential:
    """A master-station ticket with a chosen window, opened as the (stolen) gateway does."""
    ticket = bench.world.authority.issue_ticket(
        work_order="WO-1",
        flow=flow,
        operator="op-1",
        role=role,
        gateway=GATEWAY_ID,
        gateway_key=x25519_public_bytes(bench.gateway_key),
        seals=[(seal_id, bench.world.lock_ids[seal_id])],
        ops=list(ops),
        not_before=not_before,
        not_after=not_after,
        max_uses=5,
        issued_at=not_before,
    )
    return open_credential(ticket, seal_id, bench.gateway_key)


async def connect(bench: Bench, seal_id: str) -> Session:
    """Connect to a lock and enable notifications (the real GATT path)."""
    return await _connect(bench, seal_id)


async def run_command(
    session: Session, cred: ex.TicketCredential, op: sf.Operation, arg: int = 0
) -> sf.CommandResult:
    """Challenge, command, verified answer."""
    request = ex.challenge_request()
    challenge = await session.request(request)
    assert isinstance(challenge, sf.Challenge), challenge
    ctx: SessionContext = ex.check_challenge(request, challenge, cred.lock_id, None)
    command = ex.build_command(cred, ctx, challenge.counter, op, arg)
    answer = await session.request(command)
    assert isinstance(answer, sf.CommandResult), answer
    return ex.verify_result(cred, ctx, command, answer)
