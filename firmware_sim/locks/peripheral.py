"""One simulated seal lock on the bench radio: a bumble Device with the seal GATT service.

`LockPeripheral` wraps a `LockModel` (the firmware) in the transport of docs/protocol.md:

- writes to the command characteristic are reassembled into messages, handed to the model, and
  its answer is notified, fragmented to the link's ATT MTU, on the response characteristic;
- the state characteristic reads (and notifies) the authenticated advert payload;
- the advertising data carries the same payload, refreshed whenever state, flags or log head
  change, and at least every 600 s (the model bumps the advert counter);
- every log entry the model appends is reported once through `on_log` (the truth file).

- a link idle for LINK_IDLE_S (no fragment received, no answer being sent), or up for
  LINK_MAX_S, is dropped by the lock; a lock holds one link at a time and stops advertising while
  it does (docs/protocol.md, section 2).

Transport faults (`TransportFaults`) act on COMMAND messages: drop the link before answering
(after actuating or not), delay the answer, or corrupt one byte of it. The model's own hooks
`drop_link` and `answer_delay_s` are honoured too. Sensor faults go to the model. `FAULTS` names
them all for `LockWorld.inject` and `sealgw sim`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bumble import att, core, gatt, hci
from bumble.device import Connection, Device
from bumble.host import Host
from bumble.link import LocalLink

from firmware_sim.locks.model import ADVERT_HEARTBEAT_S, LockModel, fragment_error
from firmware_sim.radio import RadioLink, SpecController, attach_host
from gateway.errors import ProtocolError
from gateway.protocol.clock import Clock
from gateway.protocol.seal_advert import advertising_data
from gateway.protocol.seal_fragments import (
    COMMAND_CHAR_UUID,
    RESPONSE_CHAR_UUID,
    SERVICE_UUID,
    STATE_CHAR_UUID,
    Reassembler,
    fragment,
)
from gateway.protocol.seal_frames import (
    HEADER_LEN,
    ErrorFrame,
    LogEntry,
    MessageType,
    encode,
)

__all__ = [
    "DEFAULT_SLOW_S",
    "FAULTS",
    "LINK_IDLE_S",
    "LINK_MAX_S",
    "LockPeripheral",
    "LogCallback",
    "TransportFaults",
]

_log = logging.getLogger(__name__)

LogCallback = Callable[[str, LogEntry], None]
"""Called with (seal id, entry) once for every log entry the lock writes."""

DEFAULT_SLOW_S = 3.0
"""Answer delay of the `slow` fault: above the gateway's usual op timeout is `slow:12`."""

ADVERTISING_INTERVAL_MS = 100.0
LINK_IDLE_S = 5.0
"""A link with no fragment received and no answer in progress for this long is dropped."""
LINK_MAX_S = 30.0
"""Any link is dropped after this long, busy or not (a gateway session takes well under)."""
_LINK_ERRORS = (core.BaseBumbleError, ConnectionError, asyncio.TimeoutError)


@dataclass(slots=True)
class TransportFaults:
    """Faults of the radio side, applied to the next COMMAND messages."""

    drop_link: bool = False
    """Drop the link after the next COMMAND is received, before answering (one shot)."""
    actuate_before_drop: bool = True
    """With drop_link: the lock executes (and logs) the command before the link goes."""
    answer_delay_s: float = 0.0
    """Delay every COMMAND answer by this long (the lock actuates at once)."""
    corrupt_answers: int = 0
    """Flip one byte of the MAC in the next N COMMAND answers."""
    leave_on_command: bool = False
    """Go out of range when the next COMMAND arrives, after executing it (one shot)."""


class LockPeripheral:
    """A lock model behind the seal GATT service, advertising on its own virtual controller."""

    def __init__(
        self,
        seal_id: str,
        model: LockModel,
        link: LocalLink,
        address: str,
        *,
        clock: Clock,
        on_log: LogCallback | None = None,
        advertising_interval_ms: float = ADVERTISING_INTERVAL_MS,
    ) -> None:
        self.seal_id = seal_id
        self.model = model
        self.address = address
        self.faults = TransportFaults()
        self._clock = clock
        self._on_log = on_log
        self._interval_ms = advertising_interval_ms
        self._controller = SpecController(seal_id, link=link)
        self.device = Device(
            name=seal_id, address=hci.Address(address), host=Host(*attach_host(self._controller))
        )
        self._response = _notify_characteristic(RESPONSE_CHAR_UUID, readable=False)
        self._state = _state_characteristic(self._read_state)
        command: gatt.Characteristic[bytes] = gatt.Characteristic(
            COMMAND_CHAR_UUID,
            gatt.Characteristic.Properties.WRITE
            | gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            gatt.Characteristic.WRITEABLE,
            gatt.CharacteristicValue(read=_deny_read, write=self._on_write),
        )
        self.device.add_service(gatt.Service(SERVICE_UUID, [command, self._response, self._state]))
        self.device.on("connection", self._on_connection)
        self._reassembler = Reassembler()
        self._connection: Connection | None = None
        self._payload = b""
        self._reported = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()
        self._started = False
        self._last_activity = 0.0
        self._answering = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Power on, report the boot log, start advertising and the advert heartbeat."""
        self.sync()
        await self.device.power_on()
        await self.device.start_advertising(
            auto_restart=True,
            advertising_data=advertising_data(self._payload),
            advertising_interval_min=self._interval_ms,
            advertising_interval_max=self._interval_ms,
        )
        self._started = True
        self._spawn(self._heartbeat())
        _log.debug("lock %s advertising as %s", self.seal_id, self.address)

    async def close(self) -> None:
        """Stop background work, drop the link and leave the radio."""
        self._started = False
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._connection is not None:
            await _disconnect(self._connection)
        with contextlib.suppress(*_LINK_ERRORS):
            await self.device.stop_advertising()
        await self.device.host.flush()
        self._controller.link.remove_controller(self._controller)

    # -- model changes ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a central holds the link."""
        return self._connection is not None

    @property
    def advert_payload(self) -> bytes:
        """The 21-byte payload now advertised (and served by the state characteristic)."""
        return self._payload

    def inject(self, fault: str) -> None:
        """Apply a named fault (see FAULTS), `name` or `name:value`; KeyError when unknown."""
        name, _, value = fault.partition(":")
        FAULTS[name](self, float(value) if value else None)
        self.sync()

    def leave_range(self) -> None:
        """Out of range (carried away, battery pulled): nothing heard, links time out."""
        _log.info("lock %s: out of range", self.seal_id)
        self._radio().leave_range(self._controller)

    def enter_range(self) -> None:
        """Back in range: adverts are heard again."""
        _log.info("lock %s: back in range", self.seal_id)
        self._radio().enter_range(self._controller)

    def _radio(self) -> RadioLink:
        link = self._controller.link
        if not isinstance(link, RadioLink):
            raise ValueError("range faults need the bench's RadioLink")
        return link

    def drop_connection(self) -> None:
        """End the current link, if any, from the lock's side."""
        if self._connection is not None:
            self._spawn(_disconnect(self._connection))

    def sync(self) -> None:
        """Report new log entries and publish the advert if the model's state changed."""
        self._report_log()
        payload = self.model.advert_payload()
        if payload != self._payload:
            self._payload = payload
            if self._started:
                self._spawn(self._publish())

    # -- GATT ------------------------------------------------------------------------------

    def _read_state(self, connection: Connection) -> bytes:
        del connection
        return self._payload

    def _on_connection(self, connection: Connection) -> None:
        self._connection = connection
        self._reassembler.reset()
        self._last_activity = self._clock.monotonic()
        self._spawn(self._watchdog(connection))
        connection.on("disconnection", lambda reason: self._on_disconnection(connection, reason))
        _log.debug("lock %s: connected by %s", self.seal_id, connection.peer_address)

    def _on_disconnection(self, connection: Connection, reason: int) -> None:
        if self._connection is connection:
            self._connection = None
        self._reassembler.reset()
        self.model.disconnect()
        _log.debug("lock %s: link ended (reason %#x)", self.seal_id, reason)

    def _on_write(self, connection: Connection, value: bytes) -> None:
        self._last_activity = self._clock.monotonic()
        try:
            message = self._reassembler.feed(bytes(value), self._clock.monotonic())
        except ProtocolError as exc:
            _log.debug("lock %s: bad fragment: %s", self.seal_id, exc)
            self._queue_answer(connection, encode(ErrorFrame(fragment_error(exc))), 0.0)
            return
        if message is not None:
            self._on_message(connection, message)

    def _on_message(self, connection: Connection, message: bytes) -> None:
        is_command = len(message) >= HEADER_LEN and message[1] == MessageType.COMMAND
        if is_command and (self.faults.drop_link or self.model.drop_link):
            self._drop_mid_command(connection, message)
            return
        if is_command and self.faults.leave_on_command:
            self.faults.leave_on_command = False
            self.model.handle_message(message)  # executed and logged, never answered
            self.sync()
            self.leave_range()
            return
        answer = self.model.handle_message(message)
        delay = 0.0
        if is_command:
            answer = self._corrupted(answer)
            delay = max(self.faults.answer_delay_s, self.model.answer_delay_s)
        self.sync()
        self._queue_answer(connection, answer, delay)

    def _drop_mid_command(self, connection: Connection, message: bytes) -> None:
        self.faults.drop_link = self.model.drop_link = False
        if self.faults.actuate_before_drop:
            self.model.handle_message(message)
            self.sync()
        _log.info("lock %s: dropping the link mid-command", self.seal_id)
        self._spawn(_disconnect(connection))

    def _corrupted(self, answer: bytes) -> bytes:
        if self.faults.corrupt_answers <= 0:
            return answer
        self.faults.corrupt_answers -= 1
        _log.info("lock %s: corrupting an answer", self.seal_id)
        return answer[:-1] + bytes([answer[-1] ^ 0x5A])

    def _queue_answer(self, connection: Connection, answer: bytes, delay: float) -> None:
        parts = fragment(answer, max(connection.att_mtu, 23))
        self._spawn(self._send(connection, parts, delay))

    async def _send(self, connection: Connection, parts: list[bytes], delay: float) -> None:
        self._answering += 1
        try:
            async with self._send_lock:
                if delay > 0:
                    await self._clock.sleep(delay)
                for part in parts:
                    if self._connection is not connection:
                        return
                    with contextlib.suppress(*_LINK_ERRORS):
                        await self.device.notify_subscriber(connection, self._response, part)
        finally:
            self._answering -= 1
            self._last_activity = self._clock.monotonic()

    async def _watchdog(self, connection: Connection) -> None:
        """Drop the link when idle for LINK_IDLE_S or up for LINK_MAX_S (section 2)."""
        ends = self._clock.monotonic() + LINK_MAX_S
        while self._connection is connection:
            now = self._clock.monotonic()
            idle_ends = self._last_activity + LINK_IDLE_S
            if now >= ends or (now >= idle_ends and self._answering == 0):
                _log.info("lock %s: dropping an idle or overlong link", self.seal_id)
                await _disconnect(connection)
                return
            due = min(ends, idle_ends) - now
            await self._clock.sleep(due if due > 0 else LINK_IDLE_S)

    # -- advertising -----------------------------------------------------------------------

    async def _publish(self) -> None:
        async with self._publish_lock:
            payload = self._payload
            adv_set = self.device.legacy_advertising_set
            data = advertising_data(payload)
            self.device.advertising_data = data
            with contextlib.suppress(*_LINK_ERRORS):
                if adv_set is not None:
                    await adv_set.set_advertising_data(data)
                connection = self._connection
                if connection is not None:
                    await self.device.notify_subscriber(connection, self._state, payload)

    async def _heartbeat(self) -> None:
        while True:
            await self._clock.sleep(ADVERT_HEARTBEAT_S)
            self.sync()

    # -- helpers ---------------------------------------------------------------------------

    def _report_log(self) -> None:
        fresh = [e for e in self.model.log_entries() if e.index > self._reported]
        for entry in fresh:
            self._reported = entry.index
            if self._on_log is not None:
                self._on_log(self.seal_id, entry)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("lock %s: background task failed", self.seal_id, exc_info=task.exception())


def _notify_characteristic(uuid: str, *, readable: bool) -> gatt.Characteristic[bytes]:
    permissions = gatt.Characteristic.READABLE if readable else gatt.Characteristic.Permissions(0)
    return gatt.Characteristic(uuid, gatt.Characteristic.Properties.NOTIFY, permissions, b"")


def _state_characteristic(read: Callable[[Connection], bytes]) -> gatt.Characteristic[bytes]:
    return gatt.Characteristic(
        STATE_CHAR_UUID,
        gatt.Characteristic.Properties.READ | gatt.Characteristic.Properties.NOTIFY,
        gatt.Characteristic.READABLE,
        gatt.CharacteristicValue(read=read),
    )


def _deny_read(connection: Connection) -> bytes:
    del connection
    # bumble's server does not enforce the missing read permission, so refuse as a lock would.
    raise att.ATT_Error(att.ErrorCode.READ_NOT_PERMITTED)


async def _disconnect(connection: Connection) -> None:
    with contextlib.suppress(*_LINK_ERRORS):
        await connection.disconnect()


def _set_delay(lock: LockPeripheral, seconds: float | None) -> None:
    lock.faults.answer_delay_s = DEFAULT_SLOW_S if seconds is None else seconds


def _drop(lock: LockPeripheral, *, actuate: bool) -> None:
    lock.faults.drop_link = True
    lock.faults.actuate_before_drop = actuate


def _leave_on_command(lock: LockPeripheral, _value: float | None) -> None:
    lock.faults.leave_on_command = True


def _reboot(lock: LockPeripheral) -> None:
    lock.model.reboot()
    lock.drop_connection()


def _corrupt(lock: LockPeripheral, count: float | None) -> None:
    lock.faults.corrupt_answers += 1 if count is None else int(count)


FaultAction = Callable[[LockPeripheral, float | None], None]

FAULTS: dict[str, FaultAction] = {
    "tamper": lambda lock, _: lock.model.set_shell_open(True),
    "forced_open": lambda lock, _: lock.model.set_wire_intact(False),
    "wire_cut": lambda lock, _: lock.model.set_wire_intact(False),
    "wire_restore": lambda lock, _: lock.model.set_wire_intact(True),
    "shell_open": lambda lock, _: lock.model.set_shell_open(True),
    "shell_close": lambda lock, _: lock.model.set_shell_open(False),
    "low_battery": lambda lock, _: lock.model.set_battery_low(True),
    "battery_ok": lambda lock, _: lock.model.set_battery_low(False),
    "mechanical_failure": lambda lock, n: lock.model.fail_actuations(int(n or 1)),
    "lose_time": lambda lock, _: lock.model.lose_time(),
    "reboot": lambda lock, _: _reboot(lock),
    "drop_link": lambda lock, _: _drop(lock, actuate=True),
    "drop_link_before": lambda lock, _: _drop(lock, actuate=False),
    "slow": _set_delay,
    "fast": lambda lock, _: _set_delay(lock, 0.0),
    "corrupt": _corrupt,
    "out_of_range": lambda lock, _: lock.leave_range(),
    "in_range": lambda lock, _: lock.enter_range(),
    "out_of_range_on_command": _leave_on_command,
}
"""Faults `inject` knows. `tamper` opens the shell (any state); `forced_open` and `wire_cut`
break the wire loop (a tamper when sealed); `drop_link` drops the link after the next COMMAND
is executed, `drop_link_before` before it is; `slow[:S]` delays COMMAND answers (`fast` undoes
it); `corrupt[:N]` corrupts the next N COMMAND answers; `mechanical_failure[:N]` fails the next
N actuations; `out_of_range` takes the lock off the air (its links time out as on a real radio)
until `in_range`, and `out_of_range_on_command` does so when the next COMMAND arrives, after
executing it but before answering."""
