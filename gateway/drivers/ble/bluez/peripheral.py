"""One LE peripheral role on a BlueZ adapter over D-Bus: GATT application, advert, agent, links.

`BluezPeripheral` connects to the system bus with dbus-fast (the D-Bus library bleak's BlueZ
backend already runs on, so the gateway adds no second one), exports the objects of
gatt_objects.py and registers them with bluetoothd:

- the GATT application with `org.bluez.GattManager1.RegisterApplication` on the adapter;
- the advert with `org.bluez.LEAdvertisingManager1.RegisterAdvertisement` (withdrawn with
  `UnregisterAdvertisement` while no handheld may connect);
- the agent with `org.bluez.AgentManager1.RegisterAgent` and `RequestDefaultAgent`.

It watches bluetoothd for what ends links and registrations: a device's `Connected` turning
false, a device or the adapter removed, bluetoothd leaving the bus. `wait_lost()` returns
when the registrations are gone (bluetoothd restarted, adapter removed), so the caller can
register again. `disconnect(device)` ends a link with `org.bluez.Device1.Disconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from gateway.drivers.ble.bluez.gatt_objects import (
    AGENT_CAPABILITY,
    GattCharacteristic,
    GattService,
    JustWorksAgent,
    LeAdvertisement,
)
from gateway.errors import BluetoothUnavailableError

__all__ = ["BLUEZ", "BluezPeripheral", "PeripheralObjects", "adapter_path"]

_log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
DBUS = "org.freedesktop.DBus"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
GATT_MANAGER_IFACE = "org.bluez.GattManager1"
ADVERTISING_MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
AGENT_MANAGER_IFACE = "org.bluez.AgentManager1"
CALL_TIMEOUT_S = 10.0
"""bluetoothd answers registrations in milliseconds; a silent one is not coming back."""

DeviceGone = Callable[[str], None]


def adapter_path(hci_name: str) -> str:
    """BlueZ's object path of an adapter: `/org/bluez/hci0`."""
    return f"/org/bluez/{hci_name}"


@dataclass(slots=True)
class PeripheralObjects:
    """The objects one peripheral exports: a service, its characteristics, an advert, an agent."""

    root: str
    service: GattService
    characteristics: list[GattCharacteristic]
    advertisement: LeAdvertisement
    agent: JustWorksAgent = field(default_factory=JustWorksAgent)

    @property
    def application_path(self) -> str:
        """The GATT application's root: bluetoothd reads the service tree below it."""
        return f"{self.root}/gatt"

    @property
    def service_path(self) -> str:
        return f"{self.application_path}/service0"

    def characteristic_path(self, index: int) -> str:
        return f"{self.service_path}/char{index}"

    @property
    def advertisement_path(self) -> str:
        return f"{self.root}/advertisement0"

    @property
    def agent_path(self) -> str:
        return f"{self.root}/agent"


class BluezPeripheral:
    """Exports `objects` on a bus and keeps them registered with bluetoothd on one adapter."""

    def __init__(
        self,
        hci_name: str | None,
        objects: PeripheralObjects,
        *,
        on_device_gone: DeviceGone,
        bus_address: str | None = None,
    ) -> None:
        self.hci_name = hci_name
        self.adapter = "bluez" if hci_name is None else f"bluez:{hci_name}"
        self._objects = objects
        self._on_device_gone = on_device_gone
        self._bus_address = bus_address
        self._bus: MessageBus | None = None
        self._adapter_path: str | None = None
        self._lost = asyncio.Event()
        self.advertising = False

    async def open(self) -> None:
        """Connect, export the objects, register the application and the agent (not the advert)."""
        self._lost.clear()
        try:
            bus = await self._connect()
        except (OSError, DBusError, EOFError) as exc:
            raise self._unavailable("cannot reach the D-Bus system bus", exc) from exc
        self._bus = bus
        bus.add_message_handler(self._on_message)
        await self._watch()
        self._export(bus)
        self._adapter_path = await self._find_adapter()
        await self._register_application()
        await self._register_agent()

    async def close(self) -> None:
        """Withdraw everything from bluetoothd (best effort) and leave the bus."""
        bus, self._bus = self._bus, None
        if bus is None:
            return
        if self._adapter_path is not None and not self._lost.is_set():
            with contextlib.suppress(BluetoothUnavailableError, DBusError, OSError, EOFError):
                await self._unregister_all()
        bus.disconnect()
        with contextlib.suppress(Exception):  # dbus-fast reports a closed socket in many ways
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def wait_lost(self) -> None:
        """Return when the registrations are gone: bluetoothd left the bus or the adapter went."""
        await self._lost.wait()

    async def advertise(self, on: bool) -> None:
        """Register or withdraw the advert (no-op when it is already so)."""
        if on == self.advertising or self._lost.is_set():
            return
        manager = (self._adapter_path_or_raise(), ADVERTISING_MANAGER_IFACE)
        path = self._objects.advertisement_path
        if on:
            await self._call(*manager, "RegisterAdvertisement", "oa{sv}", [path, {}])
        else:
            await self._call(*manager, "UnregisterAdvertisement", "o", [path])
        self.advertising = on

    async def disconnect(self, device: str) -> None:
        """End a link: `Device1.Disconnect` (quiet when the device is already gone)."""
        if self._bus is None or self._lost.is_set():
            return
        with contextlib.suppress(BluetoothUnavailableError):
            await self._call(device, DEVICE_IFACE, "Disconnect", "", [])

    async def device_address(self, device: str) -> str:
        """A device's LE address (`Device1.Address`), or its object path when that fails."""
        try:
            reply = await self._call(
                device, PROPERTIES_IFACE, "Get", "ss", [DEVICE_IFACE, "Address"]
            )
        except BluetoothUnavailableError:
            return device
        value = reply[0].value if reply and isinstance(reply[0], Variant) else None
        return value if isinstance(value, str) else device

    # -- bus and registrations -------------------------------------------------------------

    async def _connect(self) -> MessageBus:
        if self._bus_address is not None:
            return await MessageBus(bus_address=self._bus_address).connect()
        return await MessageBus(bus_type=BusType.SYSTEM).connect()

    def _export(self, bus: MessageBus) -> None:
        objects = self._objects
        bus.export(objects.service_path, objects.service)
        for index, characteristic in enumerate(objects.characteristics):
            bus.export(objects.characteristic_path(index), characteristic)
        bus.export(objects.advertisement_path, objects.advertisement)
        bus.export(objects.agent_path, objects.agent)

    async def _find_adapter(self) -> str:
        """The adapter's path; it must exist now (bluetoothd running, controller present)."""
        reply = await self._call("/", OBJECT_MANAGER_IFACE, "GetManagedObjects", "", [])
        managed: dict[str, dict[str, Any]] = reply[0] if reply else {}
        adapters = sorted(path for path, ifaces in managed.items() if ADAPTER_IFACE in ifaces)
        wanted = adapter_path(self.hci_name) if self.hci_name is not None else None
        if wanted is not None and wanted in adapters:
            return wanted
        if wanted is None and adapters:
            return adapters[0]
        raise BluetoothUnavailableError(
            f"BlueZ has no adapter {self.hci_name or '(any)'}; it has {adapters or 'none'}",
            adapter=self.adapter,
        )

    async def _register_application(self) -> None:
        manager = self._adapter_path_or_raise()
        root = self._objects.application_path
        await self._call(manager, GATT_MANAGER_IFACE, "RegisterApplication", "oa{sv}", [root, {}])

    async def _register_agent(self) -> None:
        path = self._objects.agent_path
        manager = "/org/bluez"
        await self._call(
            manager, AGENT_MANAGER_IFACE, "RegisterAgent", "os", [path, AGENT_CAPABILITY]
        )
        await self._call(manager, AGENT_MANAGER_IFACE, "RequestDefaultAgent", "o", [path])

    async def _unregister_all(self) -> None:
        if self.advertising:
            await self.advertise(False)
        manager = self._adapter_path_or_raise()
        application = self._objects.application_path
        await self._call(manager, GATT_MANAGER_IFACE, "UnregisterApplication", "o", [application])
        await self._call(
            "/org/bluez", AGENT_MANAGER_IFACE, "UnregisterAgent", "o", [self._objects.agent_path]
        )

    async def _watch(self) -> None:
        """Signals that end links or registrations: devices, the adapter, bluetoothd itself."""
        rules = [
            f"type='signal',sender='{BLUEZ}',interface='{PROPERTIES_IFACE}',"
            f"member='PropertiesChanged',arg0='{DEVICE_IFACE}'",
            f"type='signal',sender='{BLUEZ}',interface='{OBJECT_MANAGER_IFACE}',"
            "member='InterfacesRemoved'",
            f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',"
            f"arg0='{BLUEZ}'",
        ]
        for rule in rules:
            match = Message(
                destination=DBUS,
                path="/org/freedesktop/DBus",
                interface=DBUS,
                member="AddMatch",
                signature="s",
                body=[rule],
            )
            await self._send(match)

    def _on_message(self, message: Message) -> None:
        if message.message_type != MessageType.SIGNAL:
            return
        if message.member == "PropertiesChanged" and message.path:
            changed = message.body[1] if len(message.body) > 1 else {}
            connected = changed.get("Connected")
            if isinstance(connected, Variant) and connected.value is False:
                self._on_device_gone(message.path)
        elif message.member == "InterfacesRemoved" and len(message.body) > 1:
            self._on_removed(str(message.body[0]), list(message.body[1]))
        elif message.member == "NameOwnerChanged" and message.body[0] == BLUEZ:
            self._on_owner(str(message.body[2]))

    def _on_owner(self, new_owner: str) -> None:
        if not new_owner:
            self._mark_lost("bluetoothd left the bus")

    def _on_removed(self, path: str, interfaces: list[str]) -> None:
        if DEVICE_IFACE in interfaces:
            self._on_device_gone(path)
        if ADAPTER_IFACE in interfaces and path == self._adapter_path:
            self._mark_lost(f"adapter {path} removed")

    def _mark_lost(self, why: str) -> None:
        if not self._lost.is_set():
            _log.warning("BlueZ handheld registrations lost: %s", why)
            self.advertising = False
            self._lost.set()

    async def _call(
        self, path: str, interface: str, member: str, signature: str, body: list[Any]
    ) -> list[Any]:
        """Call bluetoothd; BluetoothUnavailableError for an error reply or no answer."""
        message = Message(
            destination=BLUEZ,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
        )
        return await self._send(message)

    async def _send(self, message: Message) -> list[Any]:
        what = f"{message.interface}.{message.member} on {message.path}"
        if self._bus is None:
            raise BluetoothUnavailableError(f"{what}: not connected to D-Bus", adapter=self.adapter)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                reply = await self._bus.call(message)
        except (TimeoutError, OSError, EOFError) as exc:
            raise self._unavailable(f"{what} got no answer", exc) from exc
        except DBusError as exc:
            raise self._refused(what, exc.type, exc.text) from exc
        if reply is None:
            return []
        if reply.message_type == MessageType.ERROR:
            raise self._refused(what, reply.error_name or "", reply.body[0] if reply.body else "")
        return list(reply.body)

    def _refused(self, what: str, name: str, detail: object) -> BluetoothUnavailableError:
        return BluetoothUnavailableError(
            f"{what} refused: {name}: {detail}", adapter=self.adapter, dbus_error=name
        )

    def _adapter_path_or_raise(self) -> str:
        if self._adapter_path is None:
            raise BluetoothUnavailableError("no BlueZ adapter found yet", adapter=self.adapter)
        return self._adapter_path

    def _unavailable(self, what: str, exc: BaseException) -> BluetoothUnavailableError:
        return BluetoothUnavailableError(f"{what}: {exc!r}", adapter=self.adapter)
