"""Handhelds over BLE: the gateway's GATT server for the handheld service (docs/handheld.md, 8.1).

`BleHandheldServer` adds the handheld service to the gateway's bumble Device (the same adapter
whose central links reach the locks), advertises it, and hands each handheld connection to the
HandheldService as a `GattFrameStream`, exactly as the TCP listener hands over a FrameStream.
RX writes are reassembled into frames (FrameReassembler, with its cap); answers are chunked to
the link's ATT MTU and notified on TX. Writes need an encrypted link (LE Secure Connections,
Just Works); the application protocol above stays the authority. Handheld links hold slots of
the lock scheduler's budget through `LinkSlots`, at most `max_links` of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from bleak.exc import BleakError
from bumble import att, core, gatt, hci
from bumble.core import AdvertisingData
from bumble.device import Connection, Device
from bumble.pairing import PairingConfig, PairingDelegate

from gateway.drivers.ble.bumble.adapter import BumbleAdapter
from gateway.errors import ProtocolError
from gateway.handheld.gatt_link import (
    HANDHELD_URGENCY,
    ChunkedFrameStream,
    ConnectionHandler,
    LinkSlots,
    advertised_name,
)
from gateway.protocol.handheld_gatt import (
    HANDHELD_RX_CHAR_UUID,
    HANDHELD_SERVICE_UUID,
    HANDHELD_TX_CHAR_UUID,
    PREFERRED_ATT_MTU,
)

__all__ = ["BleHandheldServer", "GattFrameStream", "LinkSlots"]

_log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 1.0
"""Longest wait for the controller to stop advertising at stop (a frozen one never answers)."""
_LINK_ERRORS = (core.BaseBumbleError, ConnectionError, TimeoutError)


class GattFrameStream(ChunkedFrameStream):
    """Handheld protocol messages over one bumble GATT connection."""

    def __init__(self, device: Device, connection: Connection, tx: gatt.Characteristic[bytes]):
        super().__init__()
        self._device = device
        self._connection = connection
        self._tx = tx

    @property
    def peer(self) -> str:
        """The handheld's LE address (for per-source limits)."""
        return str(self._connection.peer_address.to_string(with_type_qualifier=False))

    @property
    def att_mtu(self) -> int:
        """The link's ATT MTU (23 until the handheld exchanges MTUs)."""
        return int(self._connection.att_mtu)

    async def on_write(self, chunk: bytes) -> None:
        """An RX write: a frame over the cap refuses the write (ATT 0x0E) and drops the link."""
        try:
            await self.feed(chunk)
        except ProtocolError as exc:
            raise att.ATT_Error(att.ErrorCode.UNLIKELY_ERROR) from exc

    async def _notify(self, chunk: bytes) -> None:
        await self._device.notify_subscriber(self._connection, self._tx, chunk)

    async def _disconnect(self) -> None:
        with contextlib.suppress(*_LINK_ERRORS, hci.HCI_Error):
            await self._connection.disconnect()


class BleHandheldServer:
    """The handheld GATT service on a bumble adapter: advertise, accept, serve, count links."""

    def __init__(
        self,
        adapter: BumbleAdapter,
        handler: ConnectionHandler,
        *,
        name: str,
        slots: LinkSlots | None = None,
        max_links: int = 4,
    ) -> None:
        self._adapter = adapter
        self._handler = handler
        self._name = name
        self._slots = slots
        self._max_links = max(1, max_links)
        self._streams: dict[int, GattFrameStream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._device: Device | None = None
        self._tx: gatt.Characteristic[bytes] | None = None
        self._advertising = asyncio.Lock()
        self.address = "ble"

    @property
    def links(self) -> int:
        """Handheld links open now."""
        return len(self._streams)

    @property
    def advertising(self) -> bool:
        """True while handhelds can find and connect to the gateway."""
        return self._device is not None and self._device.is_advertising

    async def start(self) -> None:
        """Add the service to the adapter's Device (on every reopen too) and advertise.

        An adapter that cannot be opened now is not an error here: the lock service's scan
        supervisor reopens it (and reports the outage), and the service is added then.
        """
        self._adapter.add_connect_guard(self._pause)
        try:
            await self._adapter.add_open_hook(self._install)
        except BleakError as exc:
            _log.warning(
                "handheld GATT service waits for BLE adapter %s: %s", self._adapter.name, exc
            )

    async def stop(self) -> None:
        """Stop advertising (within STOP_TIMEOUT_S) and drop the connected handhelds."""
        self._adapter.remove_open_hook(self._install)
        self._adapter.remove_connect_guard(self._pause)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        device, self._device = self._device, None
        if device is not None and device.is_advertising:
            with contextlib.suppress(*_LINK_ERRORS, hci.HCI_Error):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await device.stop_advertising()

    async def run(self) -> None:
        """Start, serve until cancelled, stop (for the supervisor)."""
        try:
            await self.start()
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def _install(self, device: Device) -> None:
        rx: gatt.Characteristic[bytes] = gatt.Characteristic(
            HANDHELD_RX_CHAR_UUID,
            gatt.Characteristic.Properties.WRITE,
            gatt.Characteristic.WRITEABLE | gatt.Characteristic.WRITE_REQUIRES_ENCRYPTION,
            gatt.CharacteristicValue(write=self._on_write),
        )
        self._tx = gatt.Characteristic(
            HANDHELD_TX_CHAR_UUID,
            gatt.Characteristic.Properties.NOTIFY,
            gatt.Characteristic.Permissions(0),
            b"",
        )
        device.add_service(gatt.Service(HANDHELD_SERVICE_UUID, [rx, self._tx]))
        device.gatt_server.max_mtu = PREFERRED_ATT_MTU
        device.pairing_config_factory = _pairing_config
        device.on(device.EVENT_CONNECTION, self._on_connection)
        self._device = device
        self.address = f"ble:{device.random_address.to_string(with_type_qualifier=False)}"
        _log.info("handheld GATT service on %s as %s", self._adapter.name, self.address)
        await self._advertise(device)

    async def _advertise(self, device: Device) -> None:
        async with self._advertising:
            if (
                self._adapter.connect_lock.locked()
                or device is not self._device
                or device.is_advertising
                or self.links >= self._max_links
            ):
                return
            await device.start_advertising(
                advertising_data=advertising_data(self._name), auto_restart=False
            )

    async def _pause(self, connecting: bool) -> None:
        """No advertising while the adapter connects out (see adapter.ConnectGuard)."""
        device = self._device
        if device is None:
            return
        if not connecting:
            await self._advertise(device)
            return
        async with self._advertising:
            if device.is_advertising:
                await device.stop_advertising()

    def _on_connection(self, connection: Connection) -> None:
        device = self._device
        if device is None or connection.role != hci.Role.PERIPHERAL or self._tx is None:
            return  # a central link of ours (to a lock)
        if self.links >= self._max_links:
            _log.warning("handheld link refused: %d handhelds connected", self.links)
            self._spawn(_refuse(connection))
            return
        stream = GattFrameStream(device, connection, self._tx)
        self._streams[connection.handle] = stream
        connection.on(connection.EVENT_DISCONNECTION, lambda _reason: self._gone(connection))
        self._spawn(self._serve(device, connection, stream))

    async def _serve(self, device: Device, connection: Connection, stream: GattFrameStream) -> None:
        await self._advertise(device)
        if self._slots is not None:
            await self._slots.acquire(HANDHELD_URGENCY)
        try:
            await self._handler(stream)
        finally:
            if self._slots is not None:
                self._slots.release()
            await stream.close()

    def _gone(self, connection: Connection) -> None:
        stream = self._streams.pop(connection.handle, None)
        if stream is not None:
            stream.on_disconnect()
        if self._device is not None:
            self._spawn(self._advertise(self._device))

    async def _on_write(self, connection: Connection, value: bytes) -> None:
        stream = self._streams.get(connection.handle)
        if stream is None:
            raise att.ATT_Error(att.ErrorCode.UNLIKELY_ERROR)
        await stream.on_write(bytes(value))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.warning("handheld link task failed: %r", task.exception())


def advertising_data(name: str) -> bytes:
    """Flags, the handheld service UUID and a local name that fits the 31-byte advert."""
    uuid = core.UUID(HANDHELD_SERVICE_UUID)
    return bytes(
        AdvertisingData(
            [
                (AdvertisingData.FLAGS, bytes([0x06])),
                (AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS, bytes(uuid)),
                (AdvertisingData.COMPLETE_LOCAL_NAME, advertised_name(name).encode("utf-8")),
            ]
        )
    )


def _pairing_config(connection: Connection) -> PairingConfig:
    """LE Secure Connections, Just Works, no bonding: the link is encrypted, not trusted."""
    del connection
    return PairingConfig(
        sc=True,
        mitm=False,
        bonding=False,
        delegate=PairingDelegate(io_capability=PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT),
    )


async def _refuse(connection: Connection) -> None:
    with contextlib.suppress(*_LINK_ERRORS, hci.HCI_Error):
        await connection.disconnect(
            hci.HCI_ErrorCode.CONNECTION_REJECTED_DUE_TO_LIMITED_RESOURCES_ERROR
        )
