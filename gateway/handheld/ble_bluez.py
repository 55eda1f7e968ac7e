"""Handhelds over BLE on BlueZ: the handheld GATT service as a D-Bus application (handheld.md, 8.2).

`BluezHandheldServer` registers the handheld service (same UUIDs, framing and chunking as the
bumble server in ble.py), an LE advert and a Just Works pairing agent with bluetoothd on the
adapter the locks use (`ble.adapter = "bluez:hci0"`), through gateway.drivers.ble.bluez. Each
handheld link becomes a `BluezFrameStream` handed to the HandheldService, as the TCP listener
hands over a FrameStream.

What BlueZ decides for us, and how the server lives with it:

- **Encryption.** RX has the flag `encrypt-write` and TX `encrypt-notify`: bluetoothd answers
  writes and CCCD writes of an unencrypted link with an ATT error before the gateway sees them.
  With `SecureConnections = only` in main.conf the kernel pairs LE Secure Connections only.
- **Which link wrote.** `WriteValue` names the device object and its ATT MTU; a link starts
  at its first RX write (the handheld writes first) and ends when its device disconnects.
- **One handheld at a time.** bluetoothd sends a `Value` change to every subscribed link: a
  D-Bus GATT application cannot address one. Two handhelds would receive each other's chunks,
  so the server serves one link at a time: it withdraws its advert while a handheld is linked,
  and a second device that writes anyway is refused (ATT 0x0E) and disconnected.
- **Budget.** The link holds one slot of the lock scheduler's budget (`LinkSlots`), taken at
  the first write, at the most urgent class, and given back when the link ends.
- **bluetoothd restarts.** `run()` registers again when bluetoothd (or the adapter) comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from dbus_fast import DBusError

from gateway.drivers.ble.bluez.gatt_objects import (
    ERROR_REFUSED_WRITE,
    GattCharacteristic,
    GattService,
    LeAdvertisement,
    WriteOptions,
)
from gateway.drivers.ble.bluez.peripheral import BluezPeripheral, PeripheralObjects
from gateway.drivers.pacing import Backoff
from gateway.errors import BluetoothUnavailableError, ProtocolError
from gateway.handheld.gatt_link import (
    HANDHELD_URGENCY,
    ChunkedFrameStream,
    ConnectionHandler,
    LinkSlots,
    advertised_name,
)
from gateway.protocol.handheld_gatt import (
    ATT_OVERHEAD,
    DEFAULT_ATT_MTU,
    HANDHELD_RX_CHAR_UUID,
    HANDHELD_SERVICE_UUID,
    HANDHELD_TX_CHAR_UUID,
)

__all__ = ["OBJECT_ROOT", "RX_FLAGS", "TX_FLAGS", "BluezFrameStream", "BluezHandheldServer"]

_log = logging.getLogger(__name__)

OBJECT_ROOT = "/org/sealgw/handheld"
RX_FLAGS = ("encrypt-write",)
"""Write with response, on an encrypted link only (bluetoothd checks it)."""
TX_FLAGS = ("encrypt-notify",)
"""Notify; subscribing (the CCCD write) needs an encrypted link (bluetoothd checks it)."""
RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0


class BluezFrameStream(ChunkedFrameStream):
    """Handheld protocol messages over one BlueZ link (a `Device1` object)."""

    def __init__(self, server: BluezHandheldServer, device: str, address: str) -> None:
        super().__init__()
        self._server = server
        self.device = device
        self._address = address
        self.mtu = DEFAULT_ATT_MTU
        self._largest_write = 0

    def on_write(self, size: int, reported_mtu: int) -> None:
        """Learn the link's ATT MTU from its writes (see `att_mtu`)."""
        self._largest_write = max(self._largest_write, size)
        proven = self._largest_write + ATT_OVERHEAD
        self.mtu = max(DEFAULT_ATT_MTU, min(reported_mtu, proven))

    @property
    def peer(self) -> str:
        """The handheld's LE address (for per-source limits)."""
        return self._address

    @property
    def att_mtu(self) -> int:
        """An ATT MTU the link surely has: its largest RX write proves it, 23 is the floor.

        bluetoothd 5.66 passes its own maximum (517) as the `mtu` write option, not the
        exchanged MTU, and cuts a longer notification to the real ATT_MTU - 3 without an
        error. A handheld's write of n bytes proves ATT_MTU >= n + 3, and handhelds cut their
        frames to ATT_MTU - 3 (docs/handheld.md, 8.1), so answers use at most that.
        """
        return self.mtu

    async def _notify(self, chunk: bytes) -> None:
        self._server.notify(chunk)

    async def _disconnect(self) -> None:
        await self._server.disconnect(self.device)


class BluezHandheldServer:
    """The handheld GATT service on BlueZ: register, advertise, serve one link at a time."""

    def __init__(
        self,
        hci_name: str | None,
        handler: ConnectionHandler,
        *,
        name: str,
        slots: LinkSlots | None = None,
        bus_address: str | None = None,
    ) -> None:
        self._handler = handler
        self._slots = slots
        objects = PeripheralObjects(
            root=OBJECT_ROOT,
            service=GattService(HANDHELD_SERVICE_UUID),
            characteristics=[],
            advertisement=LeAdvertisement([HANDHELD_SERVICE_UUID], advertised_name(name)),
        )
        rx = GattCharacteristic(
            HANDHELD_RX_CHAR_UUID, objects.service_path, RX_FLAGS, on_write=self._on_write
        )
        self._tx = GattCharacteristic(HANDHELD_TX_CHAR_UUID, objects.service_path, TX_FLAGS)
        objects.characteristics += [rx, self._tx]
        self._peripheral = BluezPeripheral(
            hci_name, objects, on_device_gone=self._gone, bus_address=bus_address
        )
        self._stream: BluezFrameStream | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address = "ble"
        self.refused = 0

    @property
    def links(self) -> int:
        """Handheld links open now (0 or 1)."""
        return 0 if self._stream is None else 1

    @property
    def advertising(self) -> bool:
        """True while handhelds can find and connect to the gateway."""
        return self._peripheral.advertising

    async def start(self) -> None:
        """Register with bluetoothd and advertise; BluetoothUnavailableError when it cannot."""
        try:
            await self._peripheral.open()
            await self._peripheral.advertise(True)
        except BaseException:
            await self._peripheral.close()
            raise
        self.address = f"ble:{self._peripheral.adapter}"
        _log.info("handheld GATT service registered with BlueZ on %s", self._peripheral.adapter)

    async def stop(self) -> None:
        """Drop the linked handheld, withdraw everything from bluetoothd."""
        stream = self._stream
        if stream is not None:
            await stream.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._end_link(readvertise=False)
        await self._peripheral.close()

    async def run(self) -> None:
        """Register, serve, and register again whenever bluetoothd or the adapter comes back."""
        backoff = Backoff(RETRY_MIN_S, RETRY_MAX_S)
        failures = 0
        try:
            while True:
                try:
                    await self.start()
                except BluetoothUnavailableError as exc:
                    failures += 1
                    level = logging.WARNING if failures == 1 else logging.DEBUG
                    _log.log(level, "handheld GATT service not registered: %s", exc)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                failures = 0
                backoff.reset()
                await self._peripheral.wait_lost()
                await self.stop()
        finally:
            await self.stop()

    # -- links -------------------------------------------------------------------------------

    def notify(self, chunk: bytes) -> None:
        """One TX chunk to the linked handheld (bluetoothd sends it to every subscriber)."""
        _log.debug("TX notification of %d bytes", len(chunk))
        self._tx.notify(chunk)

    async def disconnect(self, device: str) -> None:
        """End a link through bluetoothd."""
        await self._peripheral.disconnect(device)

    async def _on_write(self, value: bytes, options: WriteOptions) -> None:
        _log.debug("RX write of %d bytes from %s (mtu %d)", len(value), options.device, options.mtu)
        stream = self._stream
        if stream is None:
            stream = await self._open_link(options)
        elif stream.device != options.device:
            self._refuse(options.device)
        stream.on_write(len(value), options.mtu)
        try:
            await stream.feed(value)
        except ProtocolError as exc:
            raise DBusError(ERROR_REFUSED_WRITE, str(exc)) from exc

    async def _open_link(self, options: WriteOptions) -> BluezFrameStream:
        address = await self._peripheral.device_address(options.device)
        if self._stream is not None:  # another link won the race while we asked its address
            if self._stream.device != options.device:
                self._refuse(options.device)
            return self._stream
        stream = BluezFrameStream(self, options.device, address)
        self._stream = stream
        self._spawn(self._peripheral.advertise(False))
        self._spawn(self._serve(stream))
        _log.info("handheld %s linked over BlueZ", address)
        return stream

    def _refuse(self, device: str) -> None:
        """A second link while one is served: refuse its write and disconnect it."""
        self.refused += 1
        _log.warning("handheld link %s refused: one handheld at a time on BlueZ", device)
        self._spawn(self._peripheral.disconnect(device))
        raise DBusError(ERROR_REFUSED_WRITE, "another handheld is linked")

    async def _serve(self, stream: BluezFrameStream) -> None:
        if self._slots is not None:
            await self._slots.acquire(HANDHELD_URGENCY)
        _log.debug("handheld %s holds a link slot; serving", stream.peer)
        try:
            await self._handler(stream)
        finally:
            if self._slots is not None:
                self._slots.release()
            await stream.close()
            self._end_link(stream)

    def _gone(self, device: str) -> None:
        """bluetoothd says a device disconnected (or went away)."""
        stream = self._stream
        if stream is not None and stream.device == device:
            stream.on_disconnect()
            self._end_link(stream)

    def _end_link(
        self, stream: BluezFrameStream | None = None, *, readvertise: bool = True
    ) -> None:
        if self._stream is None or (stream is not None and stream is not self._stream):
            return
        self._stream.on_disconnect()
        self._stream = None
        if readvertise:
            self._spawn(self._readvertise())

    async def _readvertise(self) -> None:
        if self._stream is None:
            with contextlib.suppress(BluetoothUnavailableError):
                await self._peripheral.advertise(True)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.warning("handheld link task failed: %r", task.exception())
