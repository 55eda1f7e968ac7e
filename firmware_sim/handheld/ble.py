"""The simulated handheld over BLE: a bumble central on the bench radio (docs/handheld.md, 8.1).

`BleHandheldRadio` puts the handheld's own controller and bumble Device on the simulator's
LocalLink, as a seal lock joins it; `HciHandheldDialer` drives a controller that `sealgw sim
--handheld-radio` serves over TCP HCI (the demo's handhelds live in another process than the
radio). `dial()` scans for the gateway's handheld service,
connects, pairs (LE Secure Connections, Just Works), asks for ATT_MTU 247, subscribes to TX and
returns a `BleHandheldStream`: frames chunked into RX writes, TX notifications reassembled.
It shares only gateway.protocol with the gateway, so the simulator stays the far end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from bumble import core, hci
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt_client import CharacteristicProxy
from bumble.host import Host
from bumble.link import LocalLink
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport

from firmware_sim.radio import SpecController, attach_host
from gateway.errors import ProtocolError
from gateway.protocol.handheld import Message, decode_message, encode_frame, encode_message
from gateway.protocol.handheld_gatt import (
    HANDHELD_RX_CHAR_UUID,
    HANDHELD_SERVICE_UUID,
    HANDHELD_TX_CHAR_UUID,
    PREFERRED_ATT_MTU,
    FrameReassembler,
    chunk_frame,
)

__all__ = ["BLE_ADDRESS", "BleHandheldRadio", "BleHandheldStream", "HciHandheldDialer"]

_log = logging.getLogger(__name__)

BLE_ADDRESS = "ble"
"""The address a simulated handheld dials to reach the gateway over the radio."""
DIAL_TIMEOUT_S = 20.0
"""Scan, connect, pair, MTU, discovery and subscription together (a loaded bench is slow)."""
_SERVICE = core.UUID(HANDHELD_SERVICE_UUID)
_LINK_ERRORS = (core.BaseBumbleError, ConnectionError, TimeoutError, hci.HCI_Error)


class BleHandheldStream:
    """Handheld protocol messages over one GATT connection to the gateway."""

    def __init__(self, connection: Connection, rx: CharacteristicProxy[bytes]) -> None:
        self.connection = connection
        self.on_close: Callable[[], Awaitable[None]] | None = None
        self._rx = rx
        self._reassembler = FrameReassembler()
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closing: asyncio.Task[None] | None = None
        self._closed = False
        connection.on(connection.EVENT_DISCONNECTION, lambda _reason: self._end())

    def on_notification(self, chunk: bytes) -> None:
        """A TX notification: reassemble; a frame over the cap ends the link."""
        try:
            payloads = self._reassembler.feed(bytes(chunk))
        except ProtocolError as exc:
            _log.warning("gateway sent a frame over the cap: %s", exc)
            self._closing = asyncio.get_running_loop().create_task(self.close())
            return
        for payload in payloads:
            self._frames.put_nowait(payload)

    async def read(self) -> Message:
        """The next message; IncompleteReadError once the link is gone."""
        payload = await self._frames.get()
        if payload is None:
            self._frames.put_nowait(None)
            raise asyncio.IncompleteReadError(b"", None)
        return decode_message(payload)

    async def write(self, message: Message) -> None:
        """Send one message as RX writes (with response) of at most ATT_MTU - 3 bytes."""
        await self.write_raw(encode_frame(encode_message(message)))

    async def write_raw(self, data: bytes) -> None:
        """Send any bytes as chunks (tests send broken frames with this)."""
        for chunk in chunk_frame(data, self.connection.att_mtu):
            if self._closed:
                raise ConnectionError("the gateway link is gone")
            await self._rx.write_value(chunk, with_response=True)

    async def close(self) -> None:
        """Disconnect (idempotent, quiet when the gateway already left)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(*_LINK_ERRORS):
                await self.connection.disconnect()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            await on_close()

    def _end(self) -> None:
        self._closed = True
        self._frames.put_nowait(None)


class BleHandheldRadio:
    """The handheld's controller and bumble Device on the bench LocalLink."""

    def __init__(self, link: LocalLink, *, address: str = "F4:A0:00:00:00:01") -> None:
        self._controller = SpecController(f"handheld-{address}", link=link)
        self.device = Device(
            name="handheld", address=hci.Address(address), host=Host(*attach_host(self._controller))
        )
        self.device.pairing_config_factory = _pairing_config
        self._link = link
        self._powered = False

    async def dial(self, timeout_s: float = DIAL_TIMEOUT_S) -> BleHandheldStream:
        """Find the gateway's handheld service, connect, pair, subscribe; a ready stream."""
        if not self._powered:
            await self.device.power_on()
            self._powered = True
        return await _dial(self.device, timeout_s)

    async def close(self) -> None:
        """Leave the radio."""
        for connection in list(self.device.connections.values()):
            with contextlib.suppress(*_LINK_ERRORS):
                await connection.disconnect()
        self._link.remove_controller(self._controller)

    async def _scan(self) -> hci.Address:
        return await _scan(self.device)


class HciHandheldDialer:
    """Dials over a controller on an HCI transport (`tcp-client:HOST:PORT`), one link at a time.

    Each dial opens the transport (in the caller's event loop) and closing the stream closes
    it, so each `asyncio.run` of a bench script gets a fresh host on the same controller.
    """

    def __init__(
        self,
        transport: str,
        *,
        address: str = "F4:A0:00:00:00:02",
        timeout_s: float = DIAL_TIMEOUT_S,
    ) -> None:
        self.transport = transport
        self.address = address
        self.timeout_s = timeout_s

    async def __call__(self, address: str = BLE_ADDRESS) -> BleHandheldStream:
        """Open the transport, power on, find the gateway and return a ready stream."""
        del address
        link = await open_transport(self.transport)
        try:
            device = Device.with_hci("handheld", hci.Address(self.address), link.source, link.sink)
            device.pairing_config_factory = _pairing_config
            await device.power_on()
            stream = await _dial(device, self.timeout_s)
        except BaseException:
            await link.close()
            raise
        stream.on_close = link.close
        return stream


async def _dial(device: Device, timeout_s: float) -> BleHandheldStream:
    async with asyncio.timeout(timeout_s):
        target = await _scan(device)
        connection = await device.connect(target)
        try:
            return await _open_stream(connection)
        except BaseException:
            with contextlib.suppress(*_LINK_ERRORS):
                await connection.disconnect()
            raise


async def _scan(device: Device) -> hci.Address:
    found: asyncio.Future[hci.Address] = asyncio.get_running_loop().create_future()

    def on_advertisement(advertisement: Advertisement) -> None:
        if not found.done() and _offers_service(advertisement):
            found.set_result(advertisement.address)

    device.on(device.EVENT_ADVERTISEMENT, on_advertisement)
    await device.start_scanning(filter_duplicates=False)
    try:
        return await found
    finally:
        device.remove_listener(device.EVENT_ADVERTISEMENT, on_advertisement)
        await device.stop_scanning()


async def _open_stream(connection: Connection) -> BleHandheldStream:
    await connection.pair()
    peer = Peer(connection)
    await peer.request_mtu(PREFERRED_ATT_MTU)
    await peer.discover_services([_SERVICE])
    (service,) = peer.get_services_by_uuid(_SERVICE)
    await service.discover_characteristics()
    (rx,) = service.get_characteristics_by_uuid(core.UUID(HANDHELD_RX_CHAR_UUID))
    (tx,) = service.get_characteristics_by_uuid(core.UUID(HANDHELD_TX_CHAR_UUID))
    stream = BleHandheldStream(connection, rx)
    await tx.subscribe(stream.on_notification)
    return stream


def _offers_service(advertisement: Advertisement) -> bool:
    uuids = advertisement.data.get(AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS)
    return isinstance(uuids, list) and _SERVICE in uuids


def _pairing_config(connection: Connection) -> PairingConfig:
    """LE Secure Connections, Just Works (this handheld has no numeric comparison UI)."""
    del connection
    return PairingConfig(
        sc=True,
        mitm=False,
        bonding=False,
        delegate=PairingDelegate(io_capability=PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT),
    )
