"""Handhelds over BLE (docs/handheld.md, 8.1): the real gateway stack on the virtual radio.

The locks are LockPeripherals on the bench LocalLink; the gateway's bumble adapter (over TCP
HCI) is central to them and, at the same time, the peripheral serving the handheld GATT
service. The simulated handheld is a bumble central with its own controller on the same link:
it scans, connects, pairs with LE Secure Connections and speaks the handheld protocol in
chunked writes and notifications. The handheld service executes on the real LockService.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bumble import core
from bumble.device import Peer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_sim.handheld.ble import BleHandheldRadio, BleHandheldStream, HciHandheldDialer
from firmware_sim.handheld.client import HandheldIdentity, HandheldSession, SimulatedHandheld
from firmware_sim.handheld.transport import HandheldLink
from gateway.drivers.ble.bumble.backend import BumbleTransport
from gateway.handheld.ble import BleHandheldServer
from gateway.handheld.config import HandheldSection
from gateway.handheld.service import HandheldService
from gateway.handheld.store import PairedDeviceStore
from gateway.locks.scheduler import PriorityGate
from gateway.protocol.certs import encode_certificate
from gateway.protocol.events import Event
from gateway.protocol.handheld import (
    MAX_FRAME,
    PairHello,
    Refusal,
    encode_frame,
    encode_message,
)
from gateway.protocol.handheld_crypto import HandheldPairing
from gateway.protocol.handheld_gatt import HANDHELD_RX_CHAR_UUID
from tests.fixtures.locks import Bench, bench
from tests.fixtures.mosquitto import wait_until

WORK_ORDER = "WO-2026-0001"
WAIT_S = 20.0


@dataclass
class BleBench:
    """The lock bench, a handheld service on the gateway's adapter, and a handheld radio."""

    locks: Bench
    service: HandheldService
    server: BleHandheldServer
    radio: BleHandheldRadio

    def handheld(self) -> SimulatedHandheld:
        world = self.locks.world
        document = encode_certificate(world.certificate).decode("utf-8")
        identity = HandheldIdentity(document, world.handheld)
        return SimulatedHandheld(identity, dial=self.dial)

    async def dial(self, address: str) -> HandheldLink:
        assert address == "ble"
        return await self.radio.dial()

    @property
    def budget(self) -> PriorityGate:
        assert self.locks.service is not None
        return self.locks.service.scheduler.budget

    async def raw(self) -> BleHandheldStream:
        return await self.radio.dial()


@pytest.fixture
async def ble(tmp_path: Path) -> AsyncIterator[BleBench]:
    async with bench(tmp_path, count=2, max_connections=3) as locks:
        assert locks.service is not None
        transport = locks.adapters.get(locks.locks.adapter)
        assert isinstance(transport, BumbleTransport)
        service = HandheldService(
            HandheldSection(enabled=True, listen="ble", handshake_timeout_s=5.0),
            identity=Ed25519PrivateKey.generate(),
            trust=locks.world.trust,
            store=PairedDeviceStore.open(tmp_path / "gw" / "handhelds.json"),
            backend=locks.service.operations,
            emit=locks.buffer.submit,
            clock=locks.clock,
            revocations=lambda: None,
        )
        server = BleHandheldServer(
            transport.bumble_adapter,
            service.handle,
            name="sealgw-gw-test",
            slots=locks.service.scheduler.budget,
            max_links=2,
        )
        await server.start()
        radio = BleHandheldRadio(locks.locks.link)
        try:
            yield BleBench(locks, service, server, radio)
        finally:
            await radio.close()
            await server.stop()


async def _paired(ble: BleBench) -> SimulatedHandheld:
    issued = await ble.service.issue_pairing_code()
    handheld = ble.handheld()
    await handheld.pair("ble", issued.code)
    return handheld


async def _settle(session: HandheldSession, outcome: dict[str, Any]) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        while outcome["status"] == "pending":
            outcome = await session.result(str(outcome["op_id"]))
    return outcome


def _of(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == kind]


async def test_pair_and_unseal_over_ble_end_to_end(ble: BleBench) -> None:
    ticket = ble.locks.issue()
    handheld = await _paired(ble)
    assert (
        handheld.paired is not None and handheld.paired.gateway == ble.locks.world.trust.gateway_id
    )
    async with await handheld.open_session("ble") as session:
        link = session.stream
        assert isinstance(link, BleHandheldStream)
        assert link.connection.is_encrypted  # LE Secure Connections on the link
        assert link.connection.att_mtu == 247
        assert ble.budget.free == 2  # the handheld link holds a slot of the lock budget
        assert [t["ticket_id"] for t in await session.tickets()] == [ticket.ticket_id]
        outcome = await _settle(session, await session.unseal("SL-0001", WORK_ORDER))
    assert (outcome["status"], outcome["state"]) == ("done", "unsealed")
    assert ble.locks.locks.locks["SL-0001"].model.state.name == "UNSEALED"
    events = await ble.locks.events()
    assert [e.subject for e in _of(events, "seal.unsealed")] == ["SL-0001"]
    assert _of(events, "handheld.paired")
    await wait_until(lambda: ble.server.links == 0, WAIT_S)


async def test_writes_before_pairing_are_refused_by_the_link(ble: BleBench) -> None:
    radio = ble.radio
    await radio.device.power_on()
    target = await radio._scan()
    connection = await radio.device.connect(target)
    try:
        peer = Peer(connection)
        await peer.discover_services()
        await peer.discover_characteristics()
        (rx,) = peer.get_characteristics_by_uuid(core.UUID(HANDHELD_RX_CHAR_UUID))
        with pytest.raises(Exception, match="INSUFFICIENT_ENCRYPTION"):
            await rx.write_value(b"\x00\x00\x00\x02{}", with_response=True)
    finally:
        await connection.disconnect()


async def test_a_frame_larger_than_the_cap_ends_the_link(ble: BleBench) -> None:
    stream = await ble.raw()
    await wait_until(lambda: ble.server.links == 1, WAIT_S)
    with contextlib.suppress(Exception):  # the gateway refuses the write, then disconnects
        await stream.write_raw((MAX_FRAME + 1).to_bytes(4, "big") + b"{")
    with pytest.raises(asyncio.IncompleteReadError):
        async with asyncio.timeout(WAIT_S):
            await stream.read()
    await wait_until(lambda: ble.server.links == 0, WAIT_S)
    await wait_until(lambda: ble.budget.free == 3, WAIT_S)


async def test_a_disconnect_mid_frame_leaves_no_session(ble: BleBench) -> None:
    issued = await ble.service.issue_pairing_code()
    document = encode_certificate(ble.locks.world.certificate).decode("utf-8")
    hello = HandheldPairing(document, ble.locks.world.handheld, issued.code).hello()
    assert isinstance(hello, PairHello)
    stream = await ble.raw()
    frame = encode_frame(encode_message(hello))
    await stream.write_raw(frame[: len(frame) // 2])
    await stream.close()
    await wait_until(lambda: ble.server.links == 0, WAIT_S)
    # the code was not touched: a clean pairing still works with it, on a new link
    handheld = ble.handheld()
    await handheld.pair("ble", issued.code)
    assert handheld.paired is not None
    await wait_until(lambda: ble.budget.free == 3, WAIT_S)


async def test_a_wrong_code_over_ble_is_refused_with_its_reason(ble: BleBench) -> None:
    issued = await ble.service.issue_pairing_code()
    wrong = f"{(int(issued.code) + 1) % 10**8:08d}"
    document = encode_certificate(ble.locks.world.certificate).decode("utf-8")
    pairing = HandheldPairing(document, ble.locks.world.handheld, wrong)
    stream = await ble.raw()
    try:
        await stream.write(pairing.hello())
        proof = pairing.on_challenge(await stream.read())  # type: ignore[arg-type]
        await stream.write(proof)
        answer = await stream.read()
    finally:
        await stream.close()
    assert isinstance(answer, Refusal) and answer.reason == "bad_code"


async def test_a_handheld_in_another_process_dials_over_tcp_hci(ble: BleBench) -> None:
    """The demo's way: the simulator serves the handheld a controller over TCP HCI."""
    transport = await ble.locks.locks.serve_handheld_controller()
    world = ble.locks.world
    document = encode_certificate(world.certificate).decode("utf-8")
    handheld = SimulatedHandheld(
        HandheldIdentity(document, world.handheld), dial=HciHandheldDialer(transport)
    )
    issued = await ble.service.issue_pairing_code()
    await handheld.pair("ble", issued.code)
    async with await handheld.open_session("ble") as session:
        assert (await session.seal_state("SL-0002"))["seal_id"] == "SL-0002"
    await wait_until(lambda: ble.server.links == 0, WAIT_S)


async def test_handheld_links_hold_budget_slots_and_stop_at_their_cap(ble: BleBench) -> None:
    """max_links = 2 of a budget of 3: a third handheld finds no advert; one slot stays free."""
    first = await ble.raw()
    second = BleHandheldRadio(ble.locks.locks.link, address="F4:A0:00:00:00:09")
    try:
        other = await second.dial()
        await wait_until(lambda: ble.server.links == 2 and ble.budget.free == 1, WAIT_S)
        await wait_until(lambda: not ble.server.advertising, WAIT_S)
        ticket = ble.locks.issue()  # a lock operation still gets the last slot
        outcome = await ble.locks.run(ble.locks.request(ticket, seal_id="SL-0001", op="unseal"))
        assert outcome.ok
        await other.close()
        await wait_until(lambda: ble.server.advertising and ble.budget.free == 2, WAIT_S)
    finally:
        await first.close()
        await second.close()
