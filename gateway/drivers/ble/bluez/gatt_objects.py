"""The D-Bus objects BlueZ calls: GATT service and characteristics, an LE advert, a pairing agent.

bluetoothd serves a GATT application that lives in another process: it reads the objects' properties
with `GetManagedObjects` on the application's root path, calls `WriteValue` on a characteristic
for every ATT write (with the link's `device` object path and its ATT `mtu` in the options),
turns a `PropertiesChanged` of a characteristic's `Value` into a notification, and asks the
agent how to pair. Interfaces and properties: BlueZ's doc/org.bluez.GattCharacteristic.rst,
org.bluez.LEAdvertisement.rst and org.bluez.Agent.rst (5.66). The objects here are plain
dbus-fast `ServiceInterface`s, exported and registered by `peripheral.BluezPeripheral`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from dbus_fast import DBusError, PropertyAccess, Variant
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

__all__ = [
    "AGENT_CAPABILITY",
    "ERROR_FAILED",
    "ERROR_NOT_PERMITTED",
    "ERROR_REJECTED",
    "GattCharacteristic",
    "GattService",
    "JustWorksAgent",
    "LeAdvertisement",
    "WriteHandler",
    "WriteOptions",
    "parse_write_options",
]

_log = logging.getLogger(__name__)

GATT_SERVICE_IFACE = "org.bluez.GattService1"
GATT_CHARACTERISTIC_IFACE = "org.bluez.GattCharacteristic1"
LE_ADVERTISEMENT_IFACE = "org.bluez.LEAdvertisement1"
AGENT_IFACE = "org.bluez.Agent1"
AGENT_CAPABILITY = "NoInputNoOutput"
"""The gateway has no screen or keys: LE Secure Connections pairs Just Works."""

ERROR_FAILED = "org.bluez.Error.Failed"
ERROR_NOT_PERMITTED = "org.bluez.Error.NotPermitted"
ERROR_REJECTED = "org.bluez.Error.Rejected"
ERROR_REFUSED_WRITE = "org.sealgw.Error.FrameRefused"
"""An error name bluetoothd does not know: it answers the ATT write with 0x0E (Unlikely Error)."""
DEFAULT_MTU = 23

DBusStrings = Annotated[list[str], DBusSignature("as")]
DBusBytes = Annotated[bytes, DBusSignature("ay")]
DBusOptions = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
DBusPath = Annotated[str, DBusSignature("o")]
DBusStr = Annotated[str, DBusSignature("s")]
DBusBool = Annotated[bool, DBusSignature("b")]
DBusUInt32 = Annotated[int, DBusSignature("u")]
DBusUInt16 = Annotated[int, DBusSignature("q")]
DBusNothing = Annotated[None, DBusSignature("")]
"""No D-Bus value (dbus-fast reads a bare `None` annotation as a missing signature)."""


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """What bluetoothd tells about one ATT write: the link (device object path) and its MTU."""

    device: str
    mtu: int = DEFAULT_MTU
    offset: int = 0
    kind: str = "request"


WriteHandler = Callable[[bytes, WriteOptions], Awaitable[None]]
"""Called for each write; raise DBusError to answer it with an ATT error."""


def parse_write_options(options: dict[str, Any]) -> WriteOptions:
    """WriteValue's `a{sv}` options; a write without a device cannot be told apart: refused."""
    device = _variant_value(options.get("device"))
    if not isinstance(device, str) or not device:
        raise DBusError(ERROR_FAILED, "a write without a device option cannot be served")
    mtu = _variant_value(options.get("mtu"))
    offset = _variant_value(options.get("offset"))
    kind = _variant_value(options.get("type"))
    return WriteOptions(
        device=device,
        mtu=mtu if isinstance(mtu, int) and mtu >= DEFAULT_MTU else DEFAULT_MTU,
        offset=offset if isinstance(offset, int) else 0,
        kind=kind if isinstance(kind, str) else "request",
    )


class GattService(ServiceInterface):
    """org.bluez.GattService1: one primary service."""

    def __init__(self, uuid: str) -> None:
        super().__init__(GATT_SERVICE_IFACE)
        self._uuid = uuid

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:  # noqa: N802 - BlueZ's property name
        return self._uuid

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> DBusBool:  # noqa: N802 - BlueZ's property name
        return True


class GattCharacteristic(ServiceInterface):
    """org.bluez.GattCharacteristic1: writes go to `on_write`; `notify` sends a value."""

    def __init__(
        self,
        uuid: str,
        service_path: str,
        flags: Sequence[str],
        on_write: WriteHandler | None = None,
    ) -> None:
        super().__init__(GATT_CHARACTERISTIC_IFACE)
        self._uuid = uuid
        self._service_path = service_path
        self._flags = list(flags)
        self._on_write = on_write
        self._value = b""
        self.notifying = False

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:  # noqa: N802 - BlueZ's property name
        return self._uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> DBusPath:  # noqa: N802 - BlueZ's property name
        return self._service_path

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> DBusStrings:  # noqa: N802 - BlueZ's property name
        return list(self._flags)

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:  # noqa: N802 - BlueZ's property name
        return self._value

    @dbus_method()
    async def WriteValue(self, value: DBusBytes, options: DBusOptions) -> DBusNothing:  # noqa: N802 - BlueZ's method name
        if self._on_write is None:
            raise DBusError(ERROR_NOT_PERMITTED, "not writable")
        parsed = parse_write_options(options)
        if parsed.offset:
            raise DBusError("org.bluez.Error.InvalidOffset", "chunks are written whole")
        await self._on_write(bytes(value), parsed)

    @dbus_method()
    def ReadValue(self, options: DBusOptions) -> DBusBytes:  # noqa: N802 - BlueZ's method name
        del options
        raise DBusError(ERROR_NOT_PERMITTED, "not readable")

    @dbus_method()
    def StartNotify(self) -> DBusNothing:  # noqa: N802 - BlueZ's method name
        self.notifying = True

    @dbus_method()
    def StopNotify(self) -> DBusNothing:  # noqa: N802 - BlueZ's method name
        self.notifying = False

    def notify(self, value: bytes) -> None:
        """Send `value` as a notification: bluetoothd sends it to every subscribed link."""
        self._value = value
        self.emit_properties_changed({"Value": value})


class LeAdvertisement(ServiceInterface):
    """org.bluez.LEAdvertisement1: connectable, general discoverable, one service UUID, a name."""

    def __init__(self, service_uuids: Sequence[str], local_name: str) -> None:
        super().__init__(LE_ADVERTISEMENT_IFACE)
        self._uuids = list(service_uuids)
        self._name = local_name
        self.released = False

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:  # noqa: N802 - BlueZ's property name
        return "peripheral"

    @dbus_property(access=PropertyAccess.READ)
    def ServiceUUIDs(self) -> DBusStrings:  # noqa: N802 - BlueZ's property name
        return list(self._uuids)

    @dbus_property(access=PropertyAccess.READ)
    def LocalName(self) -> DBusStr:  # noqa: N802 - BlueZ's property name
        return self._name

    @dbus_property(access=PropertyAccess.READ)
    def Discoverable(self) -> DBusBool:  # noqa: N802 - BlueZ's property name
        return True

    @dbus_method()
    def Release(self) -> DBusNothing:  # noqa: N802 - BlueZ's method name
        """bluetoothd dropped the advert by itself (adapter gone, bluetoothd stopping)."""
        self.released = True
        _log.info("BlueZ released the handheld advertisement")


class JustWorksAgent(ServiceInterface):
    """org.bluez.Agent1 for a gateway without screen or keys: Just Works only, nothing typed.

    With this agent as the default, bluetoothd sets the adapter's IO capability to
    NoInputNoOutput, so the kernel pairs LE Secure Connections Just Works without asking;
    a confirmation it still asks for is accepted, a PIN or passkey is refused.
    """

    def __init__(self) -> None:
        super().__init__(AGENT_IFACE)

    @dbus_method()
    def Release(self) -> DBusNothing:  # noqa: N802 - BlueZ's method name
        _log.info("BlueZ released the pairing agent")

    @dbus_method()
    def RequestPinCode(self, device: DBusPath) -> DBusStr:  # noqa: N802 - BlueZ's method name
        raise DBusError(ERROR_REJECTED, f"no PIN entry on the gateway ({device})")

    @dbus_method()
    def DisplayPinCode(self, device: DBusPath, pincode: DBusStr) -> DBusNothing:  # noqa: N802 - BlueZ's method name
        del pincode
        raise DBusError(ERROR_REJECTED, f"no display on the gateway ({device})")

    @dbus_method()
    def RequestPasskey(self, device: DBusPath) -> DBusUInt32:  # noqa: N802 - BlueZ's method name
        raise DBusError(ERROR_REJECTED, f"no passkey entry on the gateway ({device})")

    @dbus_method()
    def DisplayPasskey(  # noqa: N802 - BlueZ's method name
        self, device: DBusPath, passkey: DBusUInt32, entered: DBusUInt16
    ) -> DBusNothing:
        del device, passkey, entered

    @dbus_method()
    def RequestConfirmation(self, device: DBusPath, passkey: DBusUInt32) -> DBusNothing:  # noqa: N802 - BlueZ's method name
        del passkey
        raise DBusError(ERROR_REJECTED, f"no numeric comparison on the gateway ({device})")

    @dbus_method()
    def RequestAuthorization(self, device: DBusPath) -> DBusNothing:  # noqa: N802 - BlueZ's method name
        _log.debug("Just Works pairing accepted for %s", device)

    @dbus_method()
    def AuthorizeService(self, device: DBusPath, uuid: DBusStr) -> DBusNothing:  # noqa: N802 - BlueZ's method name
        raise DBusError(ERROR_REJECTED, f"no service {uuid} for {device}")

    @dbus_method()
    def Cancel(self) -> DBusNothing:  # noqa: N802 - BlueZ's method name
        _log.debug("BlueZ cancelled a pairing request")


def _variant_value(value: object) -> object:
    return value.value if isinstance(value, Variant) else value
