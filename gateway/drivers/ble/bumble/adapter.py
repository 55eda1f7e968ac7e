"""One bumble `Device` on one HCI transport, shared by the scanner and every client of an adapter.

The adapter opens lazily on first use, serializes connection attempts (a controller initiates
one LE connection at a time), fans advertisements out to the scanners that listen, and
remembers the address type of every advertiser it saw, because bleak addresses are bare
strings while LE needs to know public from random. When the HCI transport is lost (the
simulator went away, the dongle was unplugged) the links drop, `wait_lost` returns, and the
next use reopens it (the lock service's scan supervisor does so with backoff).

Closing is bounded whatever the controller does (`CLOSE_TIMEOUT_S`): the links are asked to
disconnect together, and a controller that does not answer in time has its transport closed
under it. An open still under way when the adapter closes is closed as soon as it completes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from bleak.exc import BleakBluetoothNotAvailableError, BleakBluetoothNotAvailableReason, BleakError
from bumble import hci
from bumble.core import BaseBumbleError, InvalidArgumentError
from bumble.device import Advertisement, Device
from bumble.transport import open_transport
from bumble.transport.common import TransportLostError

__all__ = ["AdvertisementListener", "BumbleAdapter", "HciLink", "OpenHook"]

_log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 5.0
"""Longest wait for the transport to open and the controller to answer HCI Reset."""

CLOSE_TIMEOUT_S = 1.0
"""Longest wait at close for the links to disconnect (a frozen controller never answers)."""

_SEEN_MAX = 512
"""Advertisers remembered for their address type; nearby phones rotate addresses, so bound it."""

AdvertisementListener = Callable[[Advertisement], None]
OpenHook = Callable[[Device], Awaitable[None]]
ConnectGuard = Callable[[bool], Awaitable[None]]
"""Called with True before an outgoing connect starts and False after it ended.

bumble 0.0.236 (`Device.connect_le`) takes the next connection of any role as the result of
a pending connect, so a peripheral role on the same Device (the handheld GATT service) stops
advertising while the adapter connects out.
"""
"""Run on every (re)opened Device before it is used, e.g. to add a GATT service and advertise."""


class _QuietLostTransport(logging.Filter):
    """bumble.host logs a traceback at ERROR for a command on a lost transport; the scan
    supervisor already reports the outage in one line, so keep only a DEBUG line of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        lost = record.exc_info is not None and isinstance(record.exc_info[1], TransportLostError)
        if lost:
            _log.debug("bumble: command on a lost HCI transport dropped")
        return not lost


logging.getLogger("bumble.host").addFilter(_QuietLostTransport())


class HciLink(Protocol):
    """An open HCI transport: what `bumble.transport.open_transport` returns."""

    source: Any
    sink: Any

    async def close(self) -> None: ...


HciOpener = Callable[[], Awaitable[HciLink]]


class BumbleAdapter:
    """A lazily opened bumble Device on one HCI transport, shared by scanners and clients."""

    def __init__(self, name: str, opener: HciOpener, *, own_address: str | None = None) -> None:
        self.name = name
        self._opener = opener
        self._own_address = own_address
        self._device: Device | None = None
        self._link: HciLink | None = None
        self._open_lock = asyncio.Lock()
        self._scan_lock = asyncio.Lock()
        self._connect_gate = _ConnectGate(self)
        self.connect_lock: asyncio.Lock = self._connect_gate
        """Held while one LE connection is being created; bumble and controllers allow one."""
        self._connect_guards: list[ConnectGuard] = []
        self._listeners: dict[AdvertisementListener, bool] = {}
        self._scan_active: bool | None = None
        self._seen: OrderedDict[str, tuple[hci.Address, str | None]] = OrderedDict()
        self._open_hooks: list[OpenHook] = []
        self._closed = False
        self._lost = asyncio.Event()

    @classmethod
    def from_transport(cls, spec: str, *, own_address: str | None = None) -> BumbleAdapter:
        """An adapter on a bumble transport string such as `tcp-client:127.0.0.1:9000`."""

        async def opener() -> HciLink:
            link: HciLink = await open_transport(spec)
            return link

        return cls(spec, opener, own_address=own_address)

    @classmethod
    def from_hci(
        cls, name: str, source: Any, sink: Any, *, own_address: str | None = None
    ) -> BumbleAdapter:
        """An adapter on an already wired (source, sink), e.g. an in-process controller."""

        async def opener() -> HciLink:
            return _FixedLink(source, sink)

        return cls(name, opener, own_address=own_address)

    @property
    def is_open(self) -> bool:
        """True while the HCI transport is up and the controller is initialized."""
        return self._device is not None

    async def device(self) -> Device:
        """The powered-on Device, opening (or reopening after a loss) the transport if needed."""
        if self._device is not None:
            return self._device
        async with self._open_lock:
            if self._closed:
                raise BleakError(f"BLE adapter {self.name} is closed")
            if self._device is None:
                device = await self._open()
                try:
                    self._check_open()
                    for hook in self._open_hooks:
                        await hook(device)
                    self._check_open()
                except BaseException:
                    await self._abandon(device)
                    raise
                self._device = device
                await self._restore_scan(device)
            return self._device

    async def wait_lost(self) -> None:
        """Return when the open HCI transport is lost (at once when none is open)."""
        if self._device is None:
            return
        await self._lost.wait()

    async def add_open_hook(self, hook: OpenHook) -> Device:
        """Run `hook` on the Device now (opening it) and again after every reopen."""
        async with self._open_lock:
            if hook not in self._open_hooks:  # a restarted service registers its hook again
                self._open_hooks.append(hook)
            device = self._device
        if device is not None:
            await hook(device)
            return device
        return await self.device()

    def add_connect_guard(self, guard: ConnectGuard) -> None:
        """Call `guard(True)` before each outgoing connect and `guard(False)` after it."""
        self._connect_guards.append(guard)

    def remove_connect_guard(self, guard: ConnectGuard) -> None:
        """Stop calling `guard`."""
        if guard in self._connect_guards:
            self._connect_guards.remove(guard)

    async def _guard_connects(self, connecting: bool) -> None:
        for guard in list(self._connect_guards):
            await guard(connecting)

    def remove_open_hook(self, hook: OpenHook) -> None:
        """Stop running `hook` on reopen."""
        if hook in self._open_hooks:
            self._open_hooks.remove(hook)

    async def close(self) -> None:
        """Disconnect every link (within CLOSE_TIMEOUT_S) and close the transport. Idempotent."""
        self._closed = True
        self._listeners.clear()
        self._lost.set()
        await self._connect_gate.drain()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S), self._open_lock:
                if self._device is not None:
                    await _disconnect_all(self._device)
        except TimeoutError:
            _log.debug("BLE adapter %s: links not closed within %g s", self.name, CLOSE_TIMEOUT_S)
        device, link = self._device, self._link
        self._device, self._link = None, None
        if link is not None:
            await link.close()
            _log.info("BLE adapter %s closed", self.name)
        elif device is not None:
            _log.info("BLE adapter %s closed", self.name)

    async def add_scan_listener(self, listener: AdvertisementListener, *, active: bool) -> None:
        """Receive every advertisement from now on; the controller scans while anyone listens."""
        async with self._scan_lock:
            device = await self.device()
            self._listeners[listener] = active
            await self._apply_scan(device)

    async def remove_scan_listener(self, listener: AdvertisementListener) -> None:
        """Stop delivering to `listener`; scanning stops with the last one."""
        async with self._scan_lock:
            if self._listeners.pop(listener, None) is None:
                return
            if self._device is not None:
                await self._apply_scan(self._device)

    def resolve(self, address: str, details: object = None) -> hci.Address:
        """The typed LE address for a bleak address string (seen in an advert, or random)."""
        if isinstance(details, hci.Address):
            return details
        text = address.strip().upper()
        seen = self._seen.get(text)
        if seen is not None:
            return seen[0]
        try:
            # "/P" marks a public address; an unseen bare address is taken as random (static),
            # which is what locks and most peripherals use.
            return hci.Address(text, hci.Address.RANDOM_DEVICE_ADDRESS)
        except (InvalidArgumentError, ValueError) as exc:
            raise BleakError(f"invalid Bluetooth address {address!r}") from exc

    def known_name(self, address: str) -> str | None:
        """The last advertised local name of `address`, if any was seen."""
        seen = self._seen.get(address.strip().upper())
        return seen[1] if seen is not None else None

    def remember(self, address: hci.Address, name: str | None) -> str:
        """Record an advertiser's typed address (and name); return its bleak address string."""
        text = address.to_string(with_type_qualifier=False).upper()
        previous = self._seen.pop(text, None)
        if name is None and previous is not None:
            name = previous[1]
        self._seen[text] = (address, name)
        while len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        return text

    def _check_open(self) -> None:
        """An open that completes after close() must not be kept."""
        if self._closed:
            raise BleakError(f"BLE adapter {self.name} closed while it was opening")

    async def _abandon(self, device: Device) -> None:
        """Close the transport of a Device opened but not kept."""
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        _log.debug("BLE adapter %s: opened Device %s abandoned", self.name, device.random_address)

    async def _open(self) -> Device:
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                link = await self._opener()
                try:
                    device = await self._power_on(link)
                except BaseException:
                    await link.close()
                    raise
        except Exception as exc:
            # Any failure to open (socket refused, no dongle, missing USB library, silent
            # controller) means the same to callers: no Bluetooth on this adapter right now.
            # The caller (the scan supervisor) logs the outage once; this is the detail.
            _log.debug("BLE adapter %s cannot be opened: %r", self.name, exc)
            raise BleakBluetoothNotAvailableError(
                f"BLE adapter {self.name} cannot be opened: {exc!r}",
                BleakBluetoothNotAvailableReason.NO_BLUETOOTH,
            ) from exc
        self._link = link
        self._lost = asyncio.Event()
        terminated = getattr(link.source, "terminated", None)
        if isinstance(terminated, asyncio.Future):
            terminated.add_done_callback(lambda _: self._on_transport_lost(device))
        _log.info("BLE adapter %s open, own address %s", self.name, device.random_address)
        return device

    async def _power_on(self, link: HciLink) -> Device:
        own = (
            hci.Address(self._own_address)
            if self._own_address
            else hci.Address.generate_static_address()
        )
        device = Device.with_hci("sealgw", own, link.source, link.sink)
        device.on(device.EVENT_ADVERTISEMENT, self._on_advertisement)
        await device.power_on()
        return device

    def _on_transport_lost(self, device: Device) -> None:
        if self._device is not device:
            return
        _log.info("BLE adapter %s lost its HCI transport; it reopens on next use", self.name)
        self._device, self._link = None, None
        self._scan_active = None
        self._lost.set()

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        for listener in list(self._listeners):
            listener(advertisement)

    async def _apply_scan(self, device: Device) -> None:
        if not self._listeners:
            if device.is_scanning:
                await device.stop_scanning()
            self._scan_active = None
            return
        active = any(self._listeners.values())
        if device.is_scanning and self._scan_active == active:
            return
        if device.is_scanning:
            await device.stop_scanning()
        await device.start_scanning(active=active, filter_duplicates=False)
        self._scan_active = active

    async def _restore_scan(self, device: Device) -> None:
        if self._listeners:
            await self._apply_scan(device)


class _ConnectGate(asyncio.Lock):
    """The connect lock: while held, the adapter's connect guards keep incoming links out."""

    def __init__(self, adapter: BumbleAdapter) -> None:
        super().__init__()
        self._adapter = adapter
        self._tasks: set[asyncio.Task[None]] = set()

    async def acquire(self) -> Literal[True]:
        """Take the lock, then let the guards pause (e.g. stop advertising)."""
        await super().acquire()
        try:
            await self._adapter._guard_connects(True)
        except BaseException:
            super().release()
            raise
        return True

    def release(self) -> None:
        """Give the lock back; the guards resume in the background."""
        super().release()
        if self._adapter._connect_guards:
            task = asyncio.get_running_loop().create_task(self._adapter._guard_connects(False))
            self._tasks.add(task)
            task.add_done_callback(self._resumed)

    async def drain(self) -> None:
        """Cancel the guards still resuming (the adapter closes) and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _resumed(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # e.g. advertising restarted on a controller that went away: the radio supervisor
            # reports the outage; this is the detail
            _log.debug("connect guard failed to resume: %r", task.exception())


class _FixedLink:
    """An HCI link whose ends already exist; closing it leaves them alone."""

    def __init__(self, source: Any, sink: Any) -> None:
        self.source = source
        self.sink = sink

    async def close(self) -> None:
        return None


async def _disconnect_all(device: Device) -> None:
    """Best effort: tell each peer we leave, so simulated locks see a clean disconnect."""
    await asyncio.gather(*(_disconnect(c) for c in list(device.connections.values())))


async def _disconnect(connection: Any) -> None:
    try:
        await connection.disconnect()
    except (hci.HCI_Error, BaseBumbleError) as exc:
        _log.debug("disconnect of %s at close failed: %r", connection.peer_address, exc)
