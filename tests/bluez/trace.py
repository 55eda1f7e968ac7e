"""What crossed the gateway's HCI in the BlueZ VM: LE links and ATT PDUs, read from btmon's file.

`btmon -w FILE` records every HCI packet of every controller in the btsnoop format with the
Linux monitor datalink (2001): each record's flags hold the controller index and an opcode
(command, event, ACL sent, ACL received). This module reads that file back into:

- `Link`s: one per LE connection (handle, peer address, when it came up and went down), from
  "LE (Enhanced) Connection Complete" and "Disconnection Complete" events;
- `bench.att_tap.AttPdu`s per link, from ACL data reassembled into L2CAP PDUs on channel 4 (ATT):
  sent by the host (the gateway) or received from the lock.

The ATT round trips of a seal operation are then counted exactly as the bench counts them on
the bumble radio (`bench.att_tap.exchanges`, `turns`): a round trip is a run of gateway PDUs
answered by the lock. The host reads the guest's file after the VM stopped (importing bumble
costs the emulated guest seconds); tests/bluez/test_trace.py reads synthetic traces with it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.att_tap import (
    NOTIFICATION,
    WRITE_REQUEST,
    AttPdu,
    SealHandles,
    exchanges,
    split_setup,
    turns,
)

BTSNOOP_MAGIC = b"btsnoop\x00"
MONITOR_DATALINK = 2001
EPOCH_DELTA_US = 0x00DCDDB30F2F8000  # btsnoop time (microseconds since year 0) minus Unix time

OP_EVENT = 3
OP_ACL_TX = 4  # host to controller: the gateway sends
OP_ACL_RX = 5  # controller to host: the lock sends

EVT_DISCONNECTION_COMPLETE = 0x05
EVT_LE_META = 0x3E
LE_CONNECTION_COMPLETE = 0x01
LE_ENHANCED_CONNECTION_COMPLETE = 0x0A

ATT_CID = 0x0004
CCCD_NOTIFY = b"\x01\x00"
OP_MESSAGES = ("CHALLENGE_REQUEST", "COMMAND")
"""The seal messages of an operation itself, as the bench counts them (bench/seal.py)."""


@dataclass
class Link:
    """One LE connection of the gateway's controller and the ATT PDUs it carried."""

    handle: int
    peer: str
    up: float
    down: float | None = None
    reason: int | None = None
    pdus: list[AttPdu] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OpTrips:
    """ATT round trips on the link an operation ran over (bench/seal.py's figures)."""

    link_setup: int
    operation: int
    session: int
    messages: tuple[str, ...]


def read_records(path: Path) -> Iterator[tuple[int, float, bytes]]:
    """(opcode, unix time, packet) of every record of controller index 0 in a btmon file."""
    data = path.read_bytes()
    if data[:8] != BTSNOOP_MAGIC:
        raise ValueError(f"{path} is not a btsnoop file")
    _version, datalink = struct.unpack(">II", data[8:16])
    if datalink != MONITOR_DATALINK:
        raise ValueError(f"{path}: datalink {datalink}, want {MONITOR_DATALINK} (btmon -w)")
    offset = 16
    while offset + 24 <= len(data):
        _orig, included, flags, _drops, stamp = struct.unpack(">IIIIq", data[offset : offset + 24])
        packet = data[offset + 24 : offset + 24 + included]
        offset += 24 + included
        if len(packet) < included:
            return  # the last record was cut off (the guest stopped while btmon wrote)
        if flags >> 16 == 0:
            yield flags & 0xFFFF, (stamp - EPOCH_DELTA_US) / 1e6, packet


def read_links(path: Path) -> list[Link]:
    """Every LE link of hci0 in the file, in the order they came up, with their ATT PDUs."""
    links: list[Link] = []
    live: dict[int, Link] = {}
    partial: dict[tuple[int, int], bytearray] = {}
    for opcode, t, packet in read_records(path):
        if opcode == OP_EVENT:
            _on_event(packet, t, links, live)
        elif opcode in (OP_ACL_TX, OP_ACL_RX) and len(packet) >= 4:
            _on_acl(packet, t, opcode == OP_ACL_TX, live, partial)
    return links


def peak_links(links: list[Link]) -> int:
    """The most LE links up at once."""
    moments = [(link.up, 1) for link in links]
    moments += [(link.down, -1) for link in links if link.down is not None]
    peak = now = 0
    for _t, step in sorted(moments):
        now += step
        peak = max(peak, now)
    return peak


def seal_handles(pdus: list[AttPdu]) -> SealHandles | None:
    """The seal service's handles as the link used them: where seal messages were written,
    where the answers were notified, and which descriptor was written 01 00 (subscribe)."""
    command = next((p.handle for p in pdus if p.from_gateway and p.message_type), None)
    response = next((p.handle for p in pdus if p.opcode == NOTIFICATION and p.message_type), None)
    cccd = next(
        (p.handle for p in pdus if p.opcode == WRITE_REQUEST and p.value == CCCD_NOTIFY), None
    )
    if command is None or response is None or cccd is None:
        return None
    return SealHandles(command, response, cccd)


def operation_trips(link: Link) -> OpTrips:
    """Round trips of the seal operation on `link` (CHALLENGE_REQUEST and COMMAND), of the link
    set-up before the subscription, and of everything after it (the operation's log fetch too)."""
    handles = seal_handles(link.pdus)
    if handles is None:
        raise ValueError(f"link {link.handle:#x} to {link.peer} carried no seal exchange")
    setup, session = split_setup(link.pdus, handles.cccd)
    found = exchanges(session, handles)
    mine = [e for e in found if e.message in OP_MESSAGES]
    return OpTrips(
        link_setup=turns(setup),
        operation=sum(e.round_trips for e in mine),
        session=turns(session),
        messages=tuple(e.message for e in found),
    )


def _on_event(packet: bytes, t: float, links: list[Link], live: dict[int, Link]) -> None:
    if len(packet) < 2:
        return
    code, body = packet[0], packet[2:]
    if (
        code == EVT_LE_META
        and body
        and body[0]
        in (
            LE_CONNECTION_COMPLETE,
            LE_ENHANCED_CONNECTION_COMPLETE,
        )
    ):
        if len(body) < 11 or body[1] != 0:  # cut short, or a failed connect
            return
        handle = int.from_bytes(body[2:4], "little") & 0x0FFF
        peer = ":".join(f"{b:02X}" for b in reversed(body[6:12]))
        link = Link(handle, peer, t)
        links.append(link)
        live[handle] = link
    elif code == EVT_DISCONNECTION_COMPLETE and len(body) >= 4 and body[0] == 0:
        link_gone = live.pop(int.from_bytes(body[1:3], "little") & 0x0FFF, None)
        if link_gone is not None:
            link_gone.down, link_gone.reason = t, body[3]


def _on_acl(
    packet: bytes,
    t: float,
    from_gateway: bool,
    live: dict[int, Link],
    partial: dict[tuple[int, int], bytearray],
) -> None:
    head = int.from_bytes(packet[0:2], "little")
    handle, boundary = head & 0x0FFF, (head >> 12) & 0x3
    link = live.get(handle)
    if link is None:
        return
    key = (handle, int(from_gateway))
    data = packet[4:]
    if boundary == 0x1:  # continuing fragment
        buffer = partial.get(key)
        if buffer is None:
            return
        buffer += data
    else:
        buffer = partial[key] = bytearray(data)
    if len(buffer) < 4 or len(buffer) < 4 + int.from_bytes(buffer[0:2], "little"):
        return
    del partial[key]
    pdu = _att(bytes(buffer), t, from_gateway, link.peer)
    if pdu is not None:
        link.pdus.append(pdu)


def _att(l2cap: bytes, t: float, from_gateway: bool, peer: str) -> AttPdu | None:
    if int.from_bytes(l2cap[2:4], "little") != ATT_CID or len(l2cap) < 5:
        return None
    payload = l2cap[4:]
    opcode = payload[0]
    handle, value = None, b""
    if opcode in (0x12, 0x52, NOTIFICATION) and len(payload) >= 3:
        handle, value = int.from_bytes(payload[1:3], "little"), bytes(payload[3:])
    return AttPdu(t, from_gateway, peer, opcode, handle, value)
