"""The BlueZ handheld GATT server (docs/handheld.md, 8.2) over a real dbus-daemon.

bluetoothd's side of D-Bus is played by tests.fixtures.fake_bluez (registration, WriteValue
with the link's options, notifications to every subscriber, Device1 disconnects, bluetoothd
leaving the bus). The gateway side is the real BluezHandheldServer and HandheldService, and
the handheld is the real SimulatedHandheld speaking through a fake central's writes and
notifications. The radio, encryption and bluetoothd itself run in tests/bluez.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dbus_fast import DBusError

from firmware_sim.handheld.client import HandheldIdentity, SimulatedHandheld
from gateway.handheld.ble_bluez import RX_FLAGS, TX_FLAGS, BluezHandheldServer
from gateway.locks.scheduler import PriorityGate
from gateway.protocol.certs import encode_certificate
from gateway.protocol.handheld import (
    MAX_FRAME,
    Message,
    decode_message,
    encode_frame,
    encode_message,
)
from gateway.protocol.handheld_gatt import (
    HANDHELD_RX_CHAR_UUID,
    HANDHELD_SERVICE_UUID,
    HANDHELD_TX_CHAR_UUID,
    FrameReassembler,
    chunk_frame,
)
from tests.fixtures.fake_bluez import Central, FakeBluez, dbus_daemon
from tests.fixtures.handheld import Bench, start_bench
from tests.fixtures.mosquitto import wait_until

WAIT_S = 10.0
REFUSED = "org.sealgw.Error.FrameRefused"


class CentralLink:
    """A HandheldLink over a fake central: frames cut to its MTU, notifications reassembled."""

    def __init__(self, central: Central, rx: str, mtu: int, reported_mtu: int) -> None:
        self.central = central
        self.rx = rx
        self.mtu = mtu
        self.reported_mtu = reported_mtu
        self.chunks: list[bytes] = []
        self._reassembler = FrameReassembler()
        self._frames: list[bytes] = []

    async def write(self, message: Message) -> None:
        await self.write_raw(encode_frame(encode_message(message)))

    async def write_raw(self, data: bytes) -> None:
        for chunk in chunk_frame(data, self.mtu):
            await self.central.write(self.rx, chunk, self.reported_mtu)

    async def read(self) -> Message:
        while not self._frames:
            async with asyncio.timeout(WAIT_S):
                chunk = await self.central.notifications.get()
            self.chunks.append(chunk)
            self._frames += self._reassembler.feed(chunk)
        return decode_message(self._frames.pop(0))

    async def close(self) -> None:
        await self.central.drop()


@dataclass
class BluezBench:
    """A HandheldService behind the BlueZ GATT server, a fake bluetoothd, a budget of 3."""

    handhelds: Bench
    bluez: FakeBluez
    server: BluezHandheldServer
    budget: PriorityGate
    address: str
    mtu: int = 247
    reported_mtu: int = 517  # bluetoothd 5.66 reports its own maximum, not the exchanged MTU
    links: int = 0

    async def central(self) -> tuple[Central, str, str]:
        """A connected central subscribed to TX: (central, rx path, tx path)."""
        self.links += 1
        central = await self.bluez.connect(f"F4:A0:00:00:00:{self.links:02X}")
        assert self.bluez.app is not None
        rx = self.bluez.app.characteristic(HANDHELD_RX_CHAR_UUID)
        tx = self.bluez.app.characteristic(HANDHELD_TX_CHAR_UUID)
        await central.subscribe(tx)
        return central, rx, tx

    async def dial(self, address: str) -> CentralLink:
        assert address == "ble"
        central, rx, _ = await self.central()
        self.last = CentralLink(central, rx, self.mtu, self.reported_mtu)
        return self.last

    def handheld(self) -> SimulatedHandheld:
        world = self.handhelds.world
        document = encode_certificate(world.certificate).decode("utf-8")
        return SimulatedHandheld(HandheldIdentity(document, world.handheld), dial=self.dial)


@pytest.fixture
async def bluez(tmp_path: Path) -> AsyncIterator[BluezBench]:
    async with dbus_daemon(tmp_path) as address:
        fake = FakeBluez(address)
        await fake.start()
        handhelds = await start_bench(tmp_path)
        budget = PriorityGate(3)
        server = BluezHandheldServer(
            "hci0",
            handhelds.service.handle,
            name="sealgw-gw-test",
            slots=budget,
            bus_address=address,
        )
        task = asyncio.create_task(server.run())
        try:
            await asyncio.wait_for(fake.registered.wait(), WAIT_S)
            await wait_until(lambda: fake.advertisement is not None, WAIT_S)
            yield BluezBench(handhelds, fake, server, budget, address)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await handhelds.server.stop()
            await fake.stop()


async def test_the_application_advert_and_agent_are_what_bluez_needs(bluez: BluezBench) -> None:
    app = bluez.bluez.app
    assert app is not None and app.path == "/org/sealgw/handheld/gatt"
    assert list(app.services.values()) == [HANDHELD_SERVICE_UUID]
    flags = {c["UUID"]: c["Flags"] for c in app.characteristics.values()}
    assert flags == {HANDHELD_RX_CHAR_UUID: list(RX_FLAGS), HANDHELD_TX_CHAR_UUID: list(TX_FLAGS)}
    assert RX_FLAGS == ("encrypt-write",) and TX_FLAGS == ("encrypt-notify",)
    assert bluez.bluez.advertisement == {
        "Type": "peripheral",
        "ServiceUUIDs": [HANDHELD_SERVICE_UUID],
        "LocalName": "sealgw-g",  # what fits a legacy advert beside flags and a 128-bit UUID
        "Discoverable": True,
    }
    assert bluez.bluez.agent == ("/org/sealgw/handheld/agent", "NoInputNoOutput")
    assert bluez.bluez.default_agent == "/org/sealgw/handheld/agent"
    assert bluez.server.address == "ble:bluez:hci0"


async def test_a_handheld_pairs_and_unseals_through_the_gatt_application(
    bluez: BluezBench,
) -> None:
    issued = await bluez.handhelds.service.issue_pairing_code()
    handheld = bluez.handheld()
    await handheld.pair("ble", issued.code)
    assert handheld.paired is not None
    await wait_until(lambda: bluez.server.links == 0 and bluez.budget.free == 3, WAIT_S)
    async with await handheld.open_session("ble") as session:
        await wait_until(lambda: bluez.budget.free == 2, WAIT_S)  # the link holds a slot
        await wait_until(lambda: bluez.bluez.advertisement is None, WAIT_S)  # one at a time
        assert not bluez.server.advertising
        outcome = await session.unseal("SL-0001", "WO-2026-0001")
        assert outcome["status"] == "pending"
        done = await session.result(str(outcome["op_id"]))
        assert (done["status"], done["state"]) == ("done", "unsealed")
    assert [r.seal_id for r in bluez.handhelds.backend.executed] == ["SL-0001"]
    assert bluez.handhelds.events_of("handheld.paired")
    await wait_until(lambda: bluez.budget.free == 3 and bluez.server.links == 0, WAIT_S)
    await wait_until(lambda: bluez.bluez.advertisement is not None, WAIT_S)


@pytest.mark.parametrize(
    ("mtu", "reported", "largest"), [(23, 23, 20), (23, 517, 20), (247, 517, 244)]
)
async def test_answers_never_exceed_the_mtu_the_writes_prove(
    bluez: BluezBench, mtu: int, reported: int, largest: int
) -> None:
    """bluetoothd cuts a longer notification without an error: stay within ATT_MTU - 3."""
    bluez.mtu, bluez.reported_mtu = mtu, reported
    issued = await bluez.handhelds.service.issue_pairing_code()
    handheld = bluez.handheld()
    await handheld.pair("ble", issued.code)
    assert handheld.paired is not None
    link = bluez.last
    assert link.chunks and max(len(c) for c in link.chunks) <= largest
    assert sum(len(c) for c in link.chunks) > 200  # several frames, reassembled whole


async def test_a_second_handheld_is_refused_while_one_is_linked(bluez: BluezBench) -> None:
    first, rx, _ = await bluez.central()
    await first.write(rx, b"\x00\x00\x00\x10")  # the start of a frame: first is now linked
    await wait_until(lambda: bluez.server.links == 1, WAIT_S)
    second, _, _ = await bluez.central()
    with pytest.raises(DBusError) as refused:
        await second.write(rx, b"\x00\x00\x00\x10")
    assert refused.value.type == REFUSED
    await wait_until(lambda: second.address in bluez.bluez.disconnects, WAIT_S)
    assert bluez.server.refused == 1 and first.connected
    await first.drop()
    await wait_until(lambda: bluez.server.links == 0 and bluez.budget.free == 3, WAIT_S)


async def test_a_frame_over_the_cap_is_refused_and_ends_the_link(bluez: BluezBench) -> None:
    central, rx, _ = await bluez.central()
    with pytest.raises(DBusError) as refused:
        await central.write(rx, (MAX_FRAME + 1).to_bytes(4, "big") + b"{")
    assert refused.value.type == REFUSED
    await wait_until(lambda: central.address in bluez.bluez.disconnects, WAIT_S)
    await wait_until(lambda: bluez.server.links == 0 and bluez.budget.free == 3, WAIT_S)
    await wait_until(lambda: bluez.bluez.advertisement is not None, WAIT_S)


async def test_a_handheld_that_leaves_mid_frame_frees_its_slot(bluez: BluezBench) -> None:
    central, rx, _ = await bluez.central()
    await central.write(rx, b"\x00\x00\x01\x00{")  # a 256-byte frame, barely begun
    await wait_until(lambda: bluez.server.links == 1 and bluez.budget.free == 2, WAIT_S)
    await central.drop()
    await wait_until(lambda: bluez.server.links == 0 and bluez.budget.free == 3, WAIT_S)
    await wait_until(lambda: bluez.bluez.advertisement is not None, WAIT_S)


async def test_a_write_without_a_device_option_is_refused(bluez: BluezBench) -> None:
    assert bluez.bluez.app is not None
    rx = bluez.bluez.app.characteristic(HANDHELD_RX_CHAR_UUID)
    with pytest.raises(DBusError) as refused:
        await bluez.bluez.call_app(rx, "WriteValue", "aya{sv}", [b"\x00", {}])
    assert refused.value.type == "org.bluez.Error.Failed"
    assert bluez.server.links == 0


async def test_registrations_come_back_after_bluetoothd_restarts(bluez: BluezBench) -> None:
    await bluez.bluez.stop()  # bluetoothd leaves the bus: its registrations are gone
    await wait_until(lambda: not bluez.server.advertising, WAIT_S)
    restarted = FakeBluez(bluez.address)
    await restarted.start()
    try:
        await asyncio.wait_for(restarted.registered.wait(), WAIT_S * 3)
        await wait_until(lambda: restarted.advertisement is not None, WAIT_S)
        assert restarted.default_agent == "/org/sealgw/handheld/agent"
        bluez.bluez = restarted
        issued = await bluez.handhelds.service.issue_pairing_code()
        handheld = bluez.handheld()
        await handheld.pair("ble", issued.code)
        assert handheld.paired is not None
    finally:
        await restarted.stop()
