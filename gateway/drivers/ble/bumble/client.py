"""A bleak client backend on a shared bumble adapter.

`BleakClient(address, backend=BleakClientBumble, bumble_adapter=A)` then behaves as on BlueZ:
connect within `timeout` (link, MTU exchange and service discovery together), read, write with
and without response, notifications, `mtu_size`, and a disconnected callback called once per
link however it ends (BlueZ calls it for local disconnects too, so we do the same).
Pairing is not supported: the seal protocol secures its messages itself (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError
from bumble import att, core, hci
from bumble.device import Connection, Device, Peer
from bumble.gatt import Characteristic
from bumble.gatt_client import CharacteristicProxy

from gateway.drivers.ble.bumble.adapter import BumbleAdapter
from gateway.drivers.ble.bumble.gatt import discover, gatt_errors
from gateway.errors import DeviceTimeoutError

__all__ = ["BleakClientBumble"]

_log = logging.getLogger(__name__)

REQUESTED_MTU = 517
"""ATT MTU asked for after connecting, the largest allowed; the peripheral may answer less."""

CANCEL_GRACE_S = 1.0
"""How long a controller gets to confirm a cancelled connection attempt before we give up."""

DISCONNECT_TIMEOUT_S = 5.0

_NO_PAIRING = "pairing is not supported by the bumble backend; the seal protocol needs none"
_NOTIFY_OR_INDICATE = Characteristic.Properties.NOTIFY | Characteristic.Properties.INDICATE


class BleakClientBumble(BaseBleakClient):
    """bleak client backend on a `BumbleAdapter` shared with the scanner and other clients."""

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        services: set[str] | None = None,
        *,
        disconnected_callback: Callable[[], None] | None,
        timeout: float,
        bumble_adapter: BumbleAdapter | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        if bumble_adapter is None:
            raise BleakError("BleakClientBumble needs bumble_adapter=BumbleAdapter(...)")
        self._adapter = bumble_adapter
        self._details: object = None
        self._name: str | None = None
        if isinstance(address_or_ble_device, BLEDevice):
            self._details = address_or_ble_device.details
            self._name = address_or_ble_device.name
        self._requested_services = services
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._subscribers: dict[int, Callable[[bytes], None]] = {}
        self._connecting = False

    @property
    def name(self) -> str:
        """Advertised local name if known, else the address with dashes (as bleak does)."""
        return (
            self._name or self._adapter.known_name(self.address) or self.address.replace(":", "-")
        )

    @property
    def mtu_size(self) -> int:
        """The negotiated ATT MTU (23 before connecting)."""
        return self._connection.att_mtu if self._connection is not None else att.ATT_DEFAULT_MTU

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """Connect, exchange MTU and discover services, all within the client's timeout."""
        if pair:
            raise NotImplementedError(_NO_PAIRING)
        if self._connection is not None or self._connecting:
            raise BleakError("Client is already connected or connecting")
        self._connecting = True
        try:
            await self._connect(float(kwargs.get("timeout", self._timeout)))
        finally:
            self._connecting = False

    async def _connect(self, budget: float) -> None:
        deadline = asyncio.get_running_loop().time() + budget
        device = await self._adapter.device()
        peer_address = self._adapter.resolve(self.address, self._details)
        try:
            async with asyncio.timeout_at(deadline):
                await self._adapter.connect_lock.acquire()
        except TimeoutError as exc:
            raise self._timeout_error(budget, "waiting for the adapter") from exc
        try:
            connection = await self._create_connection(device, peer_address, deadline, budget)
        finally:
            self._adapter.connect_lock.release()
        await self._set_up(connection, deadline, budget)

    async def disconnect(self) -> None:
        """Disconnect; the disconnected callback runs before this returns. Idempotent."""
        connection = self._connection
        if connection is None:
            return
        try:
            async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                await connection.disconnect()
        except (TimeoutError, core.BaseBumbleError) as exc:
            _log.warning("disconnect from %s did not complete cleanly: %r", self.address, exc)
        if self._connection is connection:
            self._on_disconnection(
                connection, hci.HCI_ErrorCode.CONNECTION_TERMINATED_BY_LOCAL_HOST_ERROR
            )

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(_NO_PAIRING)

    async def unpair(self) -> None:
        raise NotImplementedError(_NO_PAIRING)

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return await self._read(characteristic.handle, use_cached, "read")

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return await self._read(descriptor.handle, use_cached, "descriptor read")

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        value = bytes(data)
        limit = characteristic.max_write_without_response_size
        if not response and len(value) > limit:
            raise BleakError(
                f"write without response of {len(value)} bytes exceeds {limit} (ATT MTU - 3)"
            )
        await self._write(characteristic.handle, value, response, "write")

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        await self._write(descriptor.handle, bytes(data), True, "descriptor write")

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Enable notifications (indications if that is all it has); `callback` gets bytearrays."""
        peer, proxy = self._proxy(characteristic)
        if not proxy.properties & _NOTIFY_OR_INDICATE:
            raise BleakError(f"characteristic {characteristic.uuid} cannot notify or indicate")

        def subscriber(value: bytes) -> None:
            try:
                callback(bytearray(value))
            except Exception:  # noqa: BLE001 (logged with traceback below)
                # Raising into bumble's ATT dispatch would break the link for everyone.
                _log.exception("notification callback for %s failed", characteristic.uuid)

        async with gatt_errors("start_notify", self.address):
            if not proxy.descriptors_discovered:
                await peer.discover_descriptors(characteristic=proxy)
            if proxy.get_descriptor(core.UUID.from_16_bits(0x2902)) is None:
                raise BleakError(f"characteristic {characteristic.uuid} has no CCCD")
            previous = self._subscribers.pop(proxy.handle, None)
            if previous is not None:
                await peer.unsubscribe(proxy, previous)
            self._subscribers[proxy.handle] = subscriber
            await peer.subscribe(proxy, subscriber, prefer_notify=True)

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        """Disable notifications and forget the callback."""
        peer, proxy = self._proxy(characteristic)
        subscriber = self._subscribers.pop(proxy.handle, None)
        async with gatt_errors("stop_notify", self.address):
            await peer.gatt_client.unsubscribe(proxy, subscriber, force=True)

    async def _create_connection(
        self, device: Device, peer_address: hci.Address, deadline: float, budget: float
    ) -> Connection:
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.01)
        try:
            async with asyncio.timeout(remaining + CANCEL_GRACE_S):
                connection: Connection = await device.connect(peer_address, timeout=remaining)
        except core.TimeoutError as exc:
            raise self._timeout_error(budget, "connecting") from exc
        except TimeoutError as exc:
            _log.warning(
                "controller of %s did not confirm the cancelled connect to %s; "
                "it may refuse further connects until reset",
                self._adapter.name,
                self.address,
            )
            raise self._timeout_error(budget, "connecting") from exc
        except (core.BaseBumbleError, hci.HCI_Error) as exc:
            raise BleakError(f"BLE connect to {self.address} failed: {exc!r}") from exc
        _log.debug("connected to %s (handle 0x%04X)", self.address, connection.handle)
        return connection

    async def _set_up(self, connection: Connection, deadline: float, budget: float) -> None:
        lost: list[int] = []
        on_lost = lost.append
        connection.on(connection.EVENT_DISCONNECTION, on_lost)
        peer = Peer(connection)
        try:
            async with asyncio.timeout_at(deadline), gatt_errors("connect", self.address):
                await _exchange_mtu(peer)
                services = await discover(peer, self._requested_services, self._write_limit)
        except BaseException as exc:
            if not lost:
                await _abandon(connection)
            if isinstance(exc, TimeoutError) and not isinstance(exc, DeviceTimeoutError):
                raise self._timeout_error(budget, "discovering services") from exc
            raise
        finally:
            connection.remove_listener(connection.EVENT_DISCONNECTION, on_lost)
        if lost:
            raise BleakError(f"{self.address} disconnected while connecting (reason {lost[0]})")
        self._connection, self._peer, self.services = connection, peer, services
        connection.on(
            connection.EVENT_DISCONNECTION,
            lambda reason: self._on_disconnection(connection, reason),
        )

    def _on_disconnection(self, connection: Connection, reason: int) -> None:
        if self._connection is not connection:
            return
        _log.debug("disconnected from %s, reason 0x%02X", self.address, reason)
        self._connection, self._peer, self.services = None, None, None
        self._subscribers.clear()
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    async def _read(self, handle: int, use_cached: bool, what: str) -> bytearray:
        peer = self._require_peer()
        cached = peer.gatt_client.cached_values.get(handle) if use_cached else None
        if cached is not None:
            return bytearray(cached[1])
        async with gatt_errors(what, self.address):
            return bytearray(await peer.read_value(handle))

    async def _write(self, handle: int, value: bytes, response: bool, what: str) -> None:
        peer = self._require_peer()
        async with gatt_errors(what, self.address):
            await peer.write_value(handle, value, with_response=response)

    def _proxy(
        self, characteristic: BleakGATTCharacteristic
    ) -> tuple[Peer, CharacteristicProxy[bytes]]:
        peer = self._require_peer()
        proxy = characteristic.obj
        if not isinstance(proxy, CharacteristicProxy) or proxy.client is not peer.gatt_client:
            raise BleakError(f"characteristic {characteristic.uuid} is not from this connection")
        return peer, proxy

    def _require_peer(self) -> Peer:
        if self._peer is None:
            raise BleakError("Not connected")
        return self._peer

    def _write_limit(self) -> int:
        return self.mtu_size - 3

    def _timeout_error(self, timeout: float, stage: str) -> DeviceTimeoutError:
        return DeviceTimeoutError(
            f"BLE connect to {self.address} timed out after {timeout:g} s ({stage})",
            device=self.address,
        )


async def _exchange_mtu(peer: Peer) -> None:
    try:
        await peer.request_mtu(REQUESTED_MTU)
    except att.ATT_Error as exc:
        # A server may refuse the exchange; the link then stays at the default MTU of 23.
        _log.debug("MTU exchange refused: %r", exc)


async def _abandon(connection: Connection) -> None:
    try:
        async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
            await connection.disconnect()
    except (TimeoutError, core.BaseBumbleError) as exc:
        _log.debug("disconnect after failed set-up failed: %r", exc)
