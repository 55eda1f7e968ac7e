"""Notice when BlueZ drops what the gateway's scanner relied on: bluetoothd gone, or the adapter.

A restarted bluetoothd (`systemctl restart bluetooth`, a crash and systemd's restart, a package
upgrade) knows nothing of the discovery the old one ran for the gateway: bleak's scanner stays
"started" and hears nothing, for ever. `wait_bluez_lost` returns when that happens, so the scan
supervisor (gateway/locks/scanning.py) reopens the radio and starts a new discovery:

- bluetoothd's well-known name `org.bluez` changes owner (NameOwnerChanged from the bus), or
  has no owner when the watch starts;
- the adapter (`/org/bluez/hci0`, or any adapter for the system default) is removed
  (InterfacesRemoved of `org.bluez.Adapter1`: the dongle was unplugged, or powered off hard).

The watch holds its own connection to the system bus for as long as it waits. A restart in the
short time between a scan start and the watch's subscription is not seen (the watch starts
after the scanner); the reach watch then reports every lock silent while scanning.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

__all__ = ["BLUEZ_SERVICE", "wait_bluez_lost"]


BLUEZ_SERVICE = "org.bluez"
ADAPTER_INTERFACE = "org.bluez.Adapter1"
_DBUS = "org.freedesktop.DBus"
_OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"


async def wait_bluez_lost(hci_name: str | None) -> str:
    """Wait until bluetoothd leaves the bus or the adapter goes; return what happened.

    OSError when the system bus itself cannot be reached (the caller treats it as the radio
    being down too).
    """
    adapter_path = None if hci_name is None else f"/org/bluez/{hci_name}"
    lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_message(message: Message) -> None:
        if message.message_type is not MessageType.SIGNAL or lost.done():
            return
        if message.member == "NameOwnerChanged" and message.body[0] == BLUEZ_SERVICE:
            lost.set_result("bluetoothd left the system bus (stopped or restarted)")
        elif message.member == "InterfacesRemoved" and _is_adapter(message.body, adapter_path):
            lost.set_result(f"BlueZ removed the adapter {message.body[0]}")

    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, DBusError) as exc:
        raise OSError(f"cannot reach the system bus: {exc}") from exc
    try:
        bus.add_message_handler(on_message)
        await _add_match(
            bus,
            f"type='signal',sender='{_DBUS}',interface='{_DBUS}',member='NameOwnerChanged',"
            f"arg0='{BLUEZ_SERVICE}'",
        )
        await _add_match(
            bus,
            f"type='signal',sender='{BLUEZ_SERVICE}',interface='{_OBJECT_MANAGER}',"
            "member='InterfacesRemoved'",
        )
        if not lost.done() and not await _has_owner(bus):
            lost.set_result("bluetoothd is not on the system bus")
        return await lost
    finally:
        bus.disconnect()


def _is_adapter(body: list[Any], adapter_path: str | None) -> bool:
    """InterfacesRemoved of our adapter (any adapter when we use the system default)."""
    path, interfaces = body[0], body[1]
    return ADAPTER_INTERFACE in interfaces and adapter_path in (None, path)


async def _add_match(bus: MessageBus, rule: str) -> None:
    reply = await bus.call(
        Message(
            destination=_DBUS,
            path="/org/freedesktop/DBus",
            interface=_DBUS,
            member="AddMatch",
            signature="s",
            body=[rule],
        )
    )
    if reply is None or reply.message_type is MessageType.ERROR:
        raise OSError(f"the system bus refused a match rule: {reply and reply.body}")


async def _has_owner(bus: MessageBus) -> bool:
    reply = await bus.call(
        Message(
            destination=_DBUS,
            path="/org/freedesktop/DBus",
            interface=_DBUS,
            member="NameHasOwner",
            signature="s",
            body=[BLUEZ_SERVICE],
        )
    )
    return reply is not None and reply.message_type is MessageType.METHOD_RETURN and reply.body[0]
