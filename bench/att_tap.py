"""A wire tap on the bench radio: every ATT PDU that crosses the LocalLink, in order.

bumble's LocalLink carries whole L2CAP PDUs between virtual controllers, so wrapping the link's
`send_acl_data` (a spy: the PDU is still delivered unchanged) sees exactly what a sniffer would
see on the air. ATT is L2CAP channel 4 (Core spec Vol 3, Part F, 3.3); the seal protocol's
message type sits in byte 4 of a first fragment written to the command characteristic or
notified on the response characteristic (docs/protocol.md, sections 3 and 4).

The tap also samples the number of LE links the gateway's controller holds at every PDU, so
`peak_links(start, end)` is the highest number of simultaneous connections seen on the wire.
Times are `time.monotonic()`, the system's monotonic clock that every process of the machine
shares, so a window the gateway's probe reports (another process) cuts the record exactly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bumble import core, gatt
from bumble.controller import Controller
from bumble.device import Device
from bumble.link import LocalLink

from gateway.protocol.seal_fragments import (
    COMMAND_CHAR_UUID,
    FIRST_FLAG,
    RESPONSE_CHAR_UUID,
    SERVICE_UUID,
)
from gateway.protocol.seal_frames import MessageType

__all__ = [
    "AttPdu",
    "AttTap",
    "Exchange",
    "SealHandles",
    "connections",
    "exchanges",
    "seal_handles",
    "split_setup",
    "turns",
]

ATT_CID = 0x0004
EXCHANGE_MTU_REQUEST = 0x02
WRITE_REQUEST = 0x12
WRITE_COMMAND = 0x52
NOTIFICATION = 0x1B
_WRITES = (WRITE_REQUEST, WRITE_COMMAND)


@dataclass(frozen=True, slots=True)
class AttPdu:
    """One ATT PDU on the link: who sent it, to which lock, when, and what it was."""

    t: float
    from_gateway: bool
    lock: str
    opcode: int
    handle: int | None
    value: bytes

    @property
    def message_type(self) -> str | None:
        """The seal message type when this PDU carries a first fragment, else None."""
        if self.handle is None or len(self.value) < 5 or not self.value[0] & FIRST_FLAG:
            return None
        code = self.value[4]
        return _TYPE_NAMES.get(code, f"type_{code:#04x}")


@dataclass(frozen=True, slots=True)
class Exchange:
    """One seal message and its answer: the writes, the notifications, the ATT round trips."""

    message: str
    writes: int
    notifications: int
    round_trips: int
    started: float
    ended: float


@dataclass(frozen=True, slots=True)
class SealHandles:
    """ATT handles of the seal service on one lock: command value, response value and CCCD."""

    command: int
    response: int
    cccd: int


def seal_handles(device: Device) -> SealHandles:
    """Look the seal service's handles up in a lock's GATT server."""
    server = device.gatt_server
    service = core.UUID(SERVICE_UUID)
    command = server.get_characteristic_attributes(service, core.UUID(COMMAND_CHAR_UUID))
    response = server.get_characteristic_attributes(service, core.UUID(RESPONSE_CHAR_UUID))
    cccd = server.get_descriptor_attribute(
        service,
        core.UUID(RESPONSE_CHAR_UUID),
        gatt.GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR,
    )
    if command is None or response is None or cccd is None:
        raise LookupError("the device has no seal service")
    return SealHandles(command[1].handle, response[1].handle, cccd.handle)


class AttTap:
    """Records the ATT traffic between the gateway's controller and the locks."""

    def __init__(self, link: LocalLink, gateway: Controller) -> None:
        self.pdus: list[AttPdu] = []
        self.links: list[tuple[float, int]] = []  # (time, LE links of the gateway) per ACL PDU
        self._gateway = gateway
        self._link = link
        self._real = link.send_acl_data
        link.send_acl_data = self._spy  # type: ignore[method-assign]

    def close(self) -> None:
        """Stop tapping."""
        self._link.send_acl_data = self._real  # type: ignore[method-assign]

    def between(self, start: float, end: float, lock: str | None = None) -> list[AttPdu]:
        """The PDUs recorded from `start` to `end` (monotonic), optionally of one lock only."""
        return [p for p in self.pdus if start <= p.t <= end and (lock is None or p.lock == lock)]

    def peak_links(self, start: float, end: float) -> int:
        """The most LE links the gateway's controller held at once from `start` to `end`."""
        return max((n for t, n in self.links if start <= t <= end), default=0)

    def _spy(
        self, sender: Controller, destination: Any, transport: core.PhysicalTransport, data: bytes
    ) -> None:
        self.links.append((time.monotonic(), len(self._gateway.le_connections)))
        from_gateway = sender is self._gateway
        lock = str(destination if from_gateway else sender.random_address)
        pdu = _parse(data, from_gateway, lock)
        if pdu is not None:
            self.pdus.append(pdu)
        self._real(sender, destination, transport, data)


def connections(pdus: Sequence[AttPdu]) -> list[list[AttPdu]]:
    """Split one lock's PDUs into links: bumble's client opens every link with an MTU exchange."""
    links: list[list[AttPdu]] = []
    for pdu in pdus:
        if not links or (pdu.from_gateway and pdu.opcode == EXCHANGE_MTU_REQUEST):
            links.append([])
        links[-1].append(pdu)
    return links


def split_setup(pdus: Sequence[AttPdu], cccd: int) -> tuple[list[AttPdu], list[AttPdu]]:
    """(setup, session) of one link: setup ends with the answer to the CCCD write (subscribe)."""
    for index, pdu in enumerate(pdus):
        if pdu.from_gateway and pdu.opcode in _WRITES and pdu.handle == cccd:
            end = next((i for i in range(index + 1, len(pdus)) if not pdus[i].from_gateway), index)
            return list(pdus[: end + 1]), list(pdus[end + 1 :])
    return list(pdus), []


def exchanges(pdus: Sequence[AttPdu], handles: SealHandles) -> list[Exchange]:
    """Group one link's PDUs into seal message exchanges (the setup before the first is left out).

    An exchange starts with a first fragment written to the command characteristic and holds
    everything until the next one: continuation writes, write responses, the answer's
    notifications. Its round trips are the times the gateway sent after hearing from the lock.
    """
    found: list[Exchange] = []
    current: list[AttPdu] = []
    for pdu in pdus:
        starts = pdu.opcode in _WRITES and pdu.handle == handles.command and pdu.message_type
        if starts and current:
            found.append(_exchange(current, handles))
            current = []
        if starts or current:
            current.append(pdu)
    if current:
        found.append(_exchange(current, handles))
    return found


def turns(pdus: Iterable[AttPdu]) -> int:
    """ATT round trips: runs of gateway PDUs, each answered by the lock before the next run."""
    count, previous = 0, False
    for pdu in pdus:
        if pdu.from_gateway and not previous:
            count += 1
        previous = pdu.from_gateway
    return count


def _exchange(pdus: list[AttPdu], handles: SealHandles) -> Exchange:
    first = pdus[0].message_type
    assert first is not None
    return Exchange(
        message=first,
        writes=sum(1 for p in pdus if p.opcode in _WRITES and p.handle == handles.command),
        notifications=sum(
            1 for p in pdus if p.opcode == NOTIFICATION and p.handle == handles.response
        ),
        round_trips=turns(pdus),
        started=pdus[0].t,
        ended=pdus[-1].t,
    )


def _parse(data: bytes, from_gateway: bool, lock: str) -> AttPdu | None:
    if len(data) < 5 or int.from_bytes(data[2:4], "little") != ATT_CID:
        return None
    payload = data[4:]
    opcode = payload[0]
    handle, value = None, b""
    if opcode in (*_WRITES, NOTIFICATION) and len(payload) >= 3:
        handle, value = int.from_bytes(payload[1:3], "little"), bytes(payload[3:])
    return AttPdu(time.monotonic(), from_gateway, lock, opcode, handle, value)


_TYPE_NAMES = {member.value: member.name for member in MessageType}
