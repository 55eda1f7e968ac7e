"""bluetoothd restarting under the gateway: the D-Bus watch, and the scan supervisor acting on it.

A private dbus-daemon stands in for the system bus (DBUS_SYSTEM_BUS_ADDRESS), and a second bus
client owns `org.bluez` as bluetoothd does. The watch and the supervisor are the gateway's own;
only the scanner is a stand-in (bleak's BlueZ scanner needs a real bluetoothd: the BlueZ test
bed runs that end to end, tests/bluez, scenario `bluetoothd_restart`).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from gateway.drivers.ble.adapters import BlueZTransport
from gateway.drivers.ble.bluez_watch import BLUEZ_SERVICE, wait_bluez_lost
from gateway.locks.config import BleSection
from gateway.locks.scanning import RadioState, ScanSupervisor
from gateway.protocol.clock import SystemClock
from gateway.protocol.events import EventDraft

WAIT_S = 10.0

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""


@pytest.fixture
def system_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A dbus-daemon of our own, used as the system bus by everything in the test."""
    socket_path = tmp_path / "system_bus_socket"
    config = tmp_path / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=socket_path))
    log = tmp_path / "dbus-daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            ["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={config}"],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        for _ in range(100):
            if socket_path.exists():
                break
            if daemon.poll() is not None:
                raise RuntimeError(f"dbus-daemon exited: {log.read_text()}")
            time.sleep(0.05)
        address = f"unix:path={socket_path}"
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        yield address
    finally:
        daemon.terminate()
        daemon.wait(10)


@pytest.fixture
async def bluetoothd(system_bus: str) -> AsyncIterator[MessageBus]:
    """A bus client that owns org.bluez, as bluetoothd does."""
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    await bus.request_name(BLUEZ_SERVICE)
    try:
        yield bus
    finally:
        bus.disconnect()


async def interfaces_removed(bus: MessageBus, path: str, interfaces: list[str]) -> None:
    await bus.send(
        Message.new_signal(
            "/", "org.freedesktop.DBus.ObjectManager", "InterfacesRemoved", "oas",
            [path, interfaces],
        )
    )  # fmt: skip


async def test_bluetoothd_leaving_the_bus_ends_the_watch(bluetoothd: MessageBus) -> None:
    watch = asyncio.create_task(wait_bluez_lost("hci0"))
    await asyncio.sleep(0.3)
    assert not watch.done()

    bluetoothd.disconnect()  # stopped, crashed or restarting: its name goes

    reason = await asyncio.wait_for(watch, WAIT_S)
    assert "bluetoothd left the system bus" in reason


async def test_only_our_adapter_removed_ends_the_watch(bluetoothd: MessageBus) -> None:
    watch = asyncio.create_task(wait_bluez_lost("hci0"))
    await asyncio.sleep(0.3)
    await interfaces_removed(bluetoothd, "/org/bluez/hci1", ["org.bluez.Adapter1"])
    await interfaces_removed(
        bluetoothd, "/org/bluez/hci0/dev_F5_EA_10_00_00_01", ["org.bluez.Device1"]
    )
    await asyncio.sleep(0.3)
    assert not watch.done()

    await interfaces_removed(
        bluetoothd, "/org/bluez/hci0", ["org.bluez.Adapter1", "org.bluez.GattManager1"]
    )

    assert await asyncio.wait_for(watch, WAIT_S) == "BlueZ removed the adapter /org/bluez/hci0"


async def test_no_bluetoothd_at_all_is_said_at_once(system_bus: str) -> None:
    reason = await asyncio.wait_for(wait_bluez_lost(None), WAIT_S)
    assert reason == "bluetoothd is not on the system bus"


class StandInScanner:
    """What the supervisor drives: start and stop (bleak's BlueZ scanner needs bluetoothd)."""

    def __init__(self, starts: list[float]) -> None:
        self.starts = starts

    async def start(self) -> None:
        reply = await self._bus_has_bluez()
        if not reply:
            raise OSError("org.bluez is not on the bus")
        self.starts.append(asyncio.get_running_loop().time())

    async def stop(self) -> None:
        return None

    @staticmethod
    async def _bus_has_bluez() -> bool:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        try:
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="NameHasOwner", signature="s",
                    body=[BLUEZ_SERVICE],
                )
            )  # fmt: skip
            return bool(reply and reply.message_type is MessageType.METHOD_RETURN and reply.body[0])
        finally:
            bus.disconnect()


class StandInBlueZ(BlueZTransport):
    """The BlueZ transport with its real D-Bus watch and a stand-in scanner."""

    def __init__(self) -> None:
        super().__init__("hci0")
        self.starts: list[float] = []

    def make_scanner(self, *_args: Any, **_kwargs: Any) -> Any:
        return StandInScanner(self.starts)


async def test_the_supervisor_restarts_scanning_when_bluetoothd_restarts(system_bus: str) -> None:
    events: list[EventDraft] = []

    def emit(draft: EventDraft) -> asyncio.Future[Any]:
        events.append(draft)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    first = await MessageBus(bus_type=BusType.SYSTEM).connect()
    await first.request_name(BLUEZ_SERVICE)
    transport = StandInBlueZ()
    supervisor = ScanSupervisor(
        BleSection(adapter="bluez:hci0"), transport, lambda _d, _a: None,
        gateway_id="gw-test", emit=emit, clock=SystemClock(),
    )  # fmt: skip
    task = asyncio.create_task(supervisor.run())
    try:
        await _until(lambda: supervisor.stats.state is RadioState.UP)
        first.disconnect()  # `systemctl restart bluetooth`: the old one goes ...
        await _until(lambda: supervisor.stats.state is RadioState.DOWN)
        second = await MessageBus(bus_type=BusType.SYSTEM).connect()
        await second.request_name(BLUEZ_SERVICE)  # ... and a new one comes, with no scan of ours
        await _until(lambda: supervisor.stats.state is RadioState.UP and len(transport.starts) == 2)
        second.disconnect()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    kinds = [(d.type.value, d.data.get("reason")) for d in events]
    assert kinds[0] == (
        "gateway.radio_down",
        "bluetoothd left the system bus (stopped or restarted)",
    )
    assert kinds[-1][0] == "gateway.radio_up"
    assert supervisor.stats.outages == 1


async def _until(condition: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.05)
