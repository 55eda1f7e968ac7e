"""The bleak backend on bumble, against real bumble peripherals on a virtual LocalLink.

Every test runs the full HCI / L2CAP / ATT / GATT stack: test locks are bumble Devices with a
GATT server on their own virtual controller; the gateway side is our bleak backend on another
controller of the same link, in-process or served over a real TCP HCI socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError, BleakGATTProtocolError, BleakGATTProtocolErrorCode
from bumble import att, data_types, gatt
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink

from firmware_sim.radio import HciServer, SpecController, attach_host, serve_controller
from gateway.drivers.ble.adapters import BleAdapters
from gateway.drivers.ble.bumble.backend import BumbleAdapter, BumbleTransport
from gateway.drivers.ble.bumble.client import CANCEL_GRACE_S
from gateway.drivers.ble.bumble.scanner import advertisement_data
from gateway.errors import DeviceTimeoutError, TransientError

SERVICE = "5ea1f000-0000-4000-8000-00000000a001"
WRITE_CHAR = "5ea1f000-0000-4000-8000-00000000a002"
ECHO_CHAR = "5ea1f000-0000-4000-8000-00000000a003"
READ_CHAR = "5ea1f000-0000-4000-8000-00000000a004"
ADVERTISED = "0000fff0-0000-1000-8000-00805f9b34fb"  # 16-bit UUID: a legacy advert has 31 bytes
COMPANY = 0xFFFF  # "reserved for testing" in the company identifier list
WAIT_S = 5.0


class _Lock:
    """A test peripheral: GATT echo server plus manufacturer-data adverts."""

    def __init__(self, link: LocalLink, address: str, name: str, payload: bytes) -> None:
        self.address = address
        self.name = name
        self.payload = payload
        self.writes: asyncio.Queue[bytes] = asyncio.Queue()
        self.subscriptions: asyncio.Queue[bool] = asyncio.Queue()
        self.disconnections: asyncio.Queue[int] = asyncio.Queue()
        controller = Controller(name, link=link)
        self.device = Device(
            name=name, address=Address(address), host=Host(*attach_host(controller))
        )
        self.echo = gatt.Characteristic(
            ECHO_CHAR, gatt.Characteristic.Properties.NOTIFY, gatt.Characteristic.READABLE, b""
        )
        write: gatt.Characteristic[bytes] = gatt.Characteristic(
            WRITE_CHAR,
            gatt.Characteristic.Properties.WRITE
            | gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            gatt.Characteristic.WRITEABLE,
            gatt.CharacteristicValue(read=self._deny_read, write=self._on_write),
        )
        read = gatt.Characteristic(
            READ_CHAR, gatt.Characteristic.Properties.READ, gatt.Characteristic.READABLE, b"hello"
        )
        self.device.add_service(gatt.Service(SERVICE, [write, self.echo, read]))
        self.device.on("characteristic_subscription", self._on_subscription)
        self.device.on("connection", self._on_connection)

    async def start(self) -> None:
        self.device.advertising_data = bytes(
            AdvertisingData(
                [
                    data_types.Flags(AdvertisingData.Flags.LE_GENERAL_DISCOVERABLE_MODE),
                    data_types.CompleteLocalName(self.name),
                    data_types.CompleteListOf16BitServiceUUIDs([UUID.from_16_bits(0xFFF0)]),
                    data_types.ManufacturerSpecificData(COMPANY, self.payload),
                ]
            )
        )
        await self.device.power_on()
        await self.device.start_advertising(
            auto_restart=True, advertising_interval_min=20, advertising_interval_max=20
        )

    async def drop_links(self) -> None:
        for connection in list(self.device.connections.values()):
            await connection.disconnect()

    def _deny_read(self, connection: Connection) -> bytes:
        del connection
        # bumble's server does not enforce plain read permission, so refuse as a lock would.
        raise att.ATT_Error(att.ErrorCode.READ_NOT_PERMITTED)

    async def _on_write(self, connection: Connection, value: bytes) -> None:
        del connection
        self.writes.put_nowait(value)
        await self.device.notify_subscribers(self.echo, value)

    def _on_subscription(
        self, connection: Connection, characteristic: object, notify: bool, indicate: bool
    ) -> None:
        del connection, indicate
        if characteristic is self.echo:
            self.subscriptions.put_nowait(notify)

    def _on_connection(self, connection: Connection) -> None:
        connection.on("disconnection", self.disconnections.put_nowait)


class _Radio:
    """A LocalLink with test locks and a gateway-side controller."""

    def __init__(self) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]
        self.locks: list[_Lock] = []
        self.closers: list[BumbleTransport | BleAdapters | HciServer] = []

    async def add_lock(self, address: str, name: str, payload: bytes) -> _Lock:
        lock = _Lock(self.link, address, name, payload)
        await lock.start()
        self.locks.append(lock)
        return lock

    def in_process(self, controller_class: type[Controller] = SpecController) -> BumbleTransport:
        controller = controller_class("gateway", link=self.link)
        adapter = BumbleAdapter.from_hci("in-process", *attach_host(controller))
        transport = BumbleTransport("bumble:in-process", adapter)
        self.closers.append(transport)
        return transport

    async def over_tcp(self) -> tuple[HciServer, BleAdapters]:
        server = await serve_controller(self.link)
        adapters = BleAdapters()
        self.closers += [adapters, server]
        return server, adapters

    async def close(self) -> None:
        for closer in self.closers:
            await closer.close()


@pytest.fixture
async def radio() -> AsyncIterator[_Radio]:
    r = _Radio()
    try:
        yield r
    finally:
        await r.close()


async def _find(transport: BumbleTransport, address: str) -> tuple[BLEDevice, AdvertisementData]:
    """Scan until `address` is seen."""
    found: asyncio.Queue[tuple[BLEDevice, AdvertisementData]] = asyncio.Queue()

    def on_advert(device: BLEDevice, data: AdvertisementData) -> None:
        if device.address == address:
            found.put_nowait((device, data))

    scanner = transport.make_scanner(on_advert)
    async with scanner:
        return await asyncio.wait_for(found.get(), WAIT_S)


async def _connected(transport: BumbleTransport, address: str) -> BleakClient:
    client = transport.make_client(address, timeout=WAIT_S)
    await client.connect()
    return client


async def test_scanner_delivers_manufacturer_data_name_and_rssi(radio: _Radio) -> None:
    lock = await radio.add_lock("F1:00:00:00:00:01", "lock-1", b"\x01\x02\x03\x04")
    transport = radio.in_process()
    scanner = transport.make_scanner()
    assert scanner.backend_id == "BleakScannerBumble"

    device, data = await _find(transport, lock.address)

    assert data.manufacturer_data == {COMPANY: b"\x01\x02\x03\x04"}
    assert data.local_name == "lock-1"
    assert data.service_uuids == [ADVERTISED]
    assert -127 <= data.rssi <= 0
    assert device.name == "lock-1"


async def test_scanner_service_filter_and_discovered_devices(radio: _Radio) -> None:
    lock = await radio.add_lock("F1:00:00:00:00:02", "lock-2", b"\xaa")
    transport = radio.in_process()
    seen = asyncio.Event()
    other_service = transport.make_scanner(service_uuids=["0000180d-0000-1000-8000-00805f9b34fb"])
    ours = transport.make_scanner(
        lambda d, a: seen.set() if d.address == lock.address else None, service_uuids=[ADVERTISED]
    )
    async with other_service, ours:
        await asyncio.wait_for(seen.wait(), WAIT_S)
    assert lock.address in ours.discovered_devices_and_advertisement_data
    assert other_service.discovered_devices == []


async def test_client_discovers_reads_writes_and_gets_notifications(radio: _Radio) -> None:
    lock = await radio.add_lock("F1:00:00:00:00:03", "lock-3", b"\x00")
    transport = radio.in_process()
    device, _ = await _find(transport, lock.address)
    client = transport.make_client(device, timeout=WAIT_S)
    assert client.backend_id == "BleakClientBumble"
    await client.connect()
    try:
        service = client.services.get_service(SERVICE)
        assert service is not None
        props = {c.uuid: c.properties for c in service.characteristics}
        assert props == {
            WRITE_CHAR: ["write-without-response", "write"],
            ECHO_CHAR: ["notify"],
            READ_CHAR: ["read"],
        }
        echo = client.services.get_characteristic(ECHO_CHAR)
        assert echo is not None
        assert [d.uuid for d in echo.descriptors] == ["00002902-0000-1000-8000-00805f9b34fb"]
        assert client.mtu_size > 23
        assert client.name == "lock-3"

        assert await client.read_gatt_char(READ_CHAR) == bytearray(b"hello")

        notes: asyncio.Queue[bytearray] = asyncio.Queue()
        await client.start_notify(ECHO_CHAR, lambda _c, data: notes.put_nowait(data))
        assert await asyncio.wait_for(lock.subscriptions.get(), WAIT_S) is True
        await client.write_gatt_char(WRITE_CHAR, b"with-response", response=True)
        assert await asyncio.wait_for(notes.get(), WAIT_S) == bytearray(b"with-response")
        await client.write_gatt_char(WRITE_CHAR, b"no-response", response=False)
        assert await asyncio.wait_for(notes.get(), WAIT_S) == bytearray(b"no-response")
        assert [lock.writes.get_nowait(), lock.writes.get_nowait()] == [
            b"with-response",
            b"no-response",
        ]

        await client.stop_notify(ECHO_CHAR)
        assert await asyncio.wait_for(lock.subscriptions.get(), WAIT_S) is False
    finally:
        await client.disconnect()


async def test_gatt_errors_map_to_bleak_errors(radio: _Radio) -> None:
    lock = await radio.add_lock("F1:00:00:00:00:04", "lock-4", b"\x00")
    transport = radio.in_process()
    client = await _connected(transport, lock.address)
    try:
        with pytest.raises(BleakGATTProtocolError) as info:
            await client.read_gatt_char(WRITE_CHAR)
        assert info.value.code == BleakGATTProtocolErrorCode.READ_NOT_PERMITTED
        oversize = bytes(client.mtu_size - 2)  # one byte more than ATT MTU - 3
        with pytest.raises(BleakError, match="exceeds"):
            await client.write_gatt_char(WRITE_CHAR, oversize, response=False)
        with pytest.raises(BleakError, match="cannot notify"):
            await client.start_notify(READ_CHAR, lambda _c, _d: None)
        with pytest.raises(NotImplementedError, match="pairing"):
            await client.pair()
    finally:
        await client.disconnect()
    assert lock.writes.empty()


async def test_remote_disconnect_fires_callback(radio: _Radio) -> None:
    lock = await radio.add_lock("F1:00:00:00:00:05", "lock-5", b"\x00")
    transport = radio.in_process()
    gone = asyncio.Event()
    client = transport.make_client(lock.address, disconnected_callback=lambda _c: gone.set())
    await client.connect()
    assert client.is_connected

    await lock.drop_links()

    await asyncio.wait_for(gone.wait(), WAIT_S)
    assert not client.is_connected
    assert client.mtu_size == 23
    with pytest.raises(BleakError):
        await client.read_gatt_char(READ_CHAR)
    await client.disconnect()  # idempotent once the link is gone


async def test_local_disconnect_fires_callback_and_reaches_the_lock(radio: _Radio) -> None:
    lock = await radio.add_lock("F1:00:00:00:00:06", "lock-6", b"\x00")
    transport = radio.in_process()
    calls: list[BleakClient] = []
    client = transport.make_client(lock.address, disconnected_callback=calls.append)
    await client.connect()

    await client.disconnect()

    assert calls == [client]  # as on BlueZ: called for local disconnects too, exactly once
    assert await asyncio.wait_for(lock.disconnections.get(), WAIT_S) == 0x13
    await client.connect()  # the same client reconnects (the lock re-advertises)
    assert client.is_connected
    await client.disconnect()
    assert len(calls) == 2


async def test_second_connect_on_the_same_client_is_refused(radio: _Radio) -> None:
    lock = await radio.add_lock("F1:00:00:00:00:0C", "lock-12", b"\x00")
    transport = radio.in_process()
    client = transport.make_client(lock.address, timeout=WAIT_S)
    results = await asyncio.gather(client.connect(), client.connect(), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    assert isinstance(errors[0], BleakError)
    assert "already connected or connecting" in str(errors[0])
    assert client.is_connected
    await client.disconnect()


async def test_connect_to_missing_address_times_out_and_adapter_stays_usable(
    radio: _Radio,
) -> None:
    lock = await radio.add_lock("F1:00:00:00:00:07", "lock-7", b"\x00")
    transport = radio.in_process()
    missing = transport.make_client("F1:DE:AD:00:00:00", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DeviceTimeoutError) as info:
        await missing.connect()
    elapsed = time.monotonic() - started
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, TransientError)
    assert info.value.device == "F1:DE:AD:00:00:00"
    assert "timed out" in str(info.value)
    assert elapsed < 0.3 + CANCEL_GRACE_S
    assert not missing.is_connected

    client = await _connected(transport, lock.address)  # the controller took the cancel
    assert client.is_connected
    await client.disconnect()


async def test_connect_timeout_with_stock_controller_does_not_hang(radio: _Radio) -> None:
    # bumble's stock virtual controller never completes a cancelled connect; we must not hang.
    transport = radio.in_process(Controller)
    client = transport.make_client("F1:DE:AD:00:00:01", timeout=0.2)
    started = time.monotonic()
    with pytest.raises(DeviceTimeoutError):
        await client.connect()
    assert time.monotonic() - started < 0.2 + CANCEL_GRACE_S + 1.0


async def test_scanner_and_concurrent_clients_share_one_device(radio: _Radio) -> None:
    locks = [
        await radio.add_lock(f"F1:00:00:00:01:0{i}", f"lock-1{i}", bytes([i])) for i in range(3)
    ]
    transport = radio.in_process()
    seen: set[str] = set()
    scanner = transport.make_scanner(lambda d, _a: seen.add(d.address))
    async with scanner:
        clients = await asyncio.gather(*(_connected(transport, lock.address) for lock in locks))
        try:
            device = await transport.bumble_adapter.device()
            assert len(device.connections) == 3
            values = await asyncio.gather(*(c.read_gatt_char(READ_CHAR) for c in clients))
            assert values == [bytearray(b"hello")] * 3
        finally:
            for client in clients:
                await client.disconnect()
    assert seen >= {lock.address for lock in locks}


async def test_gateway_over_tcp_hci_to_simulated_controller(radio: _Radio) -> None:
    lock = await radio.add_lock("F1:00:00:00:00:08", "lock-8", b"\x5e\xa1")
    server, adapters = await radio.over_tcp()
    assert server.adapter == f"bumble:tcp-client:127.0.0.1:{server.port}"
    transport = adapters.get(server.adapter)
    assert adapters.get(server.adapter) is transport
    assert isinstance(transport, BumbleTransport)

    device, data = await _find(transport, lock.address)
    assert data.manufacturer_data == {COMPANY: b"\x5e\xa1"}
    client = transport.make_client(device, timeout=WAIT_S)
    await client.connect()
    notes: asyncio.Queue[bytearray] = asyncio.Queue()
    await client.start_notify(ECHO_CHAR, lambda _c, d: notes.put_nowait(d))
    await client.write_gatt_char(WRITE_CHAR, b"over tcp", response=True)
    assert await asyncio.wait_for(notes.get(), WAIT_S) == bytearray(b"over tcp")

    await adapters.close()  # shutdown disconnects the link cleanly and closes the socket

    assert not client.is_connected
    assert await asyncio.wait_for(lock.disconnections.get(), WAIT_S) == 0x13
    assert not transport.bumble_adapter.is_open


async def test_tcp_link_loss_disconnects_then_adapter_reopens(radio: _Radio) -> None:
    lock = await radio.add_lock("F1:00:00:00:00:09", "lock-9", b"\x00")
    server, adapters = await radio.over_tcp()
    transport = adapters.get(server.adapter)
    gone = asyncio.Event()
    client = transport.make_client(
        lock.address, disconnected_callback=lambda _c: gone.set(), timeout=WAIT_S
    )
    await client.connect()

    server.drop_host()  # the simulator side cuts the HCI socket

    await asyncio.wait_for(gone.wait(), WAIT_S)
    assert not client.is_connected
    assert not isinstance(transport, BumbleTransport) or not transport.bumble_adapter.is_open
    await client.connect()  # reopens the transport; HCI Reset drops the stale link
    assert await client.read_gatt_char(READ_CHAR) == bytearray(b"hello")
    await client.disconnect()


async def test_unreachable_tcp_adapter_reports_bluetooth_unavailable() -> None:
    adapters = BleAdapters()
    transport = adapters.get("bumble:tcp-client:127.0.0.1:1")
    try:
        with pytest.raises(BleakError, match="cannot be opened"):
            await transport.make_client("F1:00:00:00:00:0A", timeout=1.0).connect()
    finally:
        await adapters.close()


class _SlowLink:
    """An HCI link to a virtual controller that records its close."""

    def __init__(self, controller: Controller) -> None:
        self.source, self.sink = attach_host(controller)
        self.closed = False

    async def close(self) -> None:
        self.closed = True


async def test_an_open_completing_after_close_is_closed_not_kept(radio: _Radio) -> None:
    """Issue 13 item 8: close() does not wait for an open under way, nor leave its link open."""
    link = _SlowLink(SpecController("gateway", link=radio.link))
    asked, answer = asyncio.Event(), asyncio.Event()

    async def opener() -> _SlowLink:
        asked.set()
        await answer.wait()  # the transport comes up only after the adapter was closed
        return link

    adapter = BumbleAdapter("slow", opener)
    opening = asyncio.create_task(adapter.device())
    await asyncio.wait_for(asked.wait(), WAIT_S)

    await adapter.close()
    answer.set()

    with pytest.raises(BleakError, match="closed while it was opening"):
        await opening
    assert link.closed
    assert not adapter.is_open


async def test_failing_notification_callback_does_not_break_the_link(
    radio: _Radio, caplog: pytest.LogCaptureFixture
) -> None:
    lock = await radio.add_lock("F1:00:00:00:00:0B", "lock-11", b"\x00")
    transport = radio.in_process()
    client = await _connected(transport, lock.address)
    notes: asyncio.Queue[bytearray] = asyncio.Queue()

    def on_note(_c: object, data: bytearray) -> None:
        if data == b"boom":
            raise RuntimeError("callback bug")
        notes.put_nowait(data)

    await client.start_notify(ECHO_CHAR, on_note)
    await client.write_gatt_char(WRITE_CHAR, b"boom", response=True)
    await client.write_gatt_char(WRITE_CHAR, b"after", response=True)

    assert await asyncio.wait_for(notes.get(), WAIT_S) == bytearray(b"after")
    assert client.is_connected
    assert "notification callback" in caplog.text
    await client.disconnect()


def test_address_resolution_uses_type_hints() -> None:
    adapter = BumbleAdapter.from_transport("tcp-client:127.0.0.1:9")
    assert adapter.resolve("aa:bb:cc:dd:ee:ff/p").is_public
    assert adapter.resolve("C1:00:00:00:00:01").is_random  # unseen: random, like locks
    seen = Address("C1:00:00:00:00:02", Address.PUBLIC_DEVICE_ADDRESS)
    assert adapter.remember(seen, "meter") == "C1:00:00:00:00:02"
    assert adapter.resolve("c1:00:00:00:00:02") is seen
    assert adapter.known_name("C1:00:00:00:00:02") == "meter"
    with pytest.raises(BleakError, match="invalid Bluetooth address"):
        adapter.resolve("not-an-address")


def test_advertisement_parser_handles_every_field() -> None:
    structures = [
        (0x01, b"\x06"),
        (0x08, b"short"),
        (0x09, b"complete"),
        (0x0A, b"\xf4"),
        (0xFF, b"\x34\x12\x01\x02"),
        (0x03, b"\x0d\x18\x0f\x18"),
        (0x07, bytes(range(16))),
        (0x16, b"\x0f\x18\x64"),
    ]
    data = advertisement_data(structures, rssi=-60)
    assert data.local_name == "complete"
    assert data.tx_power == -12
    assert data.manufacturer_data == {0x1234: b"\x01\x02"}
    assert data.service_uuids == [
        "0000180d-0000-1000-8000-00805f9b34fb",
        "0000180f-0000-1000-8000-00805f9b34fb",
        "0f0e0d0c-0b0a-0908-0706-050403020100",
    ]
    assert data.service_data == {"0000180f-0000-1000-8000-00805f9b34fb": b"\x64"}
    assert data.rssi == -60


def test_advertisement_parser_skips_hostile_structures() -> None:
    structures = [
        (0xFF, b"\x01"),  # manufacturer data without a full company id
        (0x09, b"\xff\xfe lock"),  # invalid UTF-8
        (0x0A, b""),  # empty TX power
        (0x16, b"\x0f"),  # service data shorter than its UUID
        (0x07, bytes(15)),  # truncated 128-bit UUID
        (0x42, b"unknown type"),
    ]
    data = advertisement_data(structures, rssi=127)
    assert data.manufacturer_data == {}
    assert data.local_name == "\ufffd\ufffd lock"
    assert data.tx_power is None
    assert data.service_data == {}
    assert data.service_uuids == []
    assert data.rssi == -127  # HCI "not available"
