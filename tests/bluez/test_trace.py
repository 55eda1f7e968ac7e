"""The reader of btmon's HCI file (tests/bluez/trace.py), on traces written here byte by byte.

These run without the VM: they pin down what the BlueZ bed's round-trip and link-budget tests
rest on (btsnoop records with the monitor datalink, LE connection events, ACL fragments
reassembled into L2CAP, ATT PDUs grouped and counted as the bench does).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from gateway.protocol.seal_fragments import FIRST_FLAG
from gateway.protocol.seal_frames import MessageType
from tests.bluez.trace import (
    EPOCH_DELTA_US,
    OP_ACL_RX,
    OP_ACL_TX,
    OP_EVENT,
    operation_trips,
    peak_links,
    read_links,
)

COMMAND, RESPONSE, CCCD = 0x0010, 0x0012, 0x0013
T0 = 1_800_000_000.0


class Trace:
    """A btsnoop file (monitor datalink) written record by record."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.t = T0

    def record(self, opcode: int, packet: bytes, index: int = 0) -> None:
        self.t += 0.001
        stamp = int(self.t * 1e6) + EPOCH_DELTA_US
        header = struct.pack(">IIIIq", len(packet), len(packet), index << 16 | opcode, 0, stamp)
        self.records.append(header + packet)

    def connect(self, handle: int, peer: str, *, enhanced: bool = True, status: int = 0) -> None:
        address = bytes(reversed(bytes.fromhex(peer.replace(":", ""))))
        sub = 0x0A if enhanced else 0x01
        body = bytes([sub, status]) + handle.to_bytes(2, "little") + b"\x00\x00" + address
        body += bytes(12 if enhanced else 0) + bytes(7)
        self.record(OP_EVENT, bytes([0x3E, len(body)]) + body)

    def disconnect(self, handle: int, reason: int = 0x13) -> None:
        body = b"\x00" + handle.to_bytes(2, "little") + bytes([reason])
        self.record(OP_EVENT, bytes([0x05, len(body)]) + body)

    def att(self, handle: int, pdu: bytes, *, from_gateway: bool, fragment: int = 0) -> None:
        """One ATT PDU as ACL data, cut into `fragment`-byte ACL packets when asked."""
        l2cap = len(pdu).to_bytes(2, "little") + (4).to_bytes(2, "little") + pdu
        size = fragment or len(l2cap)
        for offset in range(0, len(l2cap), size):
            part = l2cap[offset : offset + size]
            flags = 0x2 if offset == 0 else 0x1
            head = (handle | flags << 12).to_bytes(2, "little") + len(part).to_bytes(2, "little")
            self.record(OP_ACL_TX if from_gateway else OP_ACL_RX, head + part)

    def write(self, path: Path) -> Path:
        path.write_bytes(b"btsnoop\x00" + struct.pack(">II", 1, 2001) + b"".join(self.records))
        return path


def seal_message(kind: MessageType, size: int = 20) -> bytes:
    """A first fragment carrying a seal message of `kind` (its type sits in byte 4)."""
    return bytes([FIRST_FLAG, 0, size, 0, kind.value]) + bytes(size)


def an_operation(trace: Trace, handle: int, *, writes_per_message: int = 1) -> None:
    """Set-up, subscribe, CHALLENGE_REQUEST/CHALLENGE, COMMAND/RESULT, LOG_FETCH/ENTRIES."""
    trace.att(handle, b"\x02\x05\x02", from_gateway=True)  # Exchange MTU
    trace.att(handle, b"\x03\x05\x02", from_gateway=False)
    trace.att(handle, b"\x12" + CCCD.to_bytes(2, "little") + b"\x01\x00", from_gateway=True)
    trace.att(handle, b"\x13", from_gateway=False)
    for ask, answer in (
        (MessageType.CHALLENGE_REQUEST, MessageType.CHALLENGE),
        (MessageType.COMMAND, MessageType.COMMAND_RESULT),
        (MessageType.LOG_FETCH, MessageType.LOG_ENTRIES),
    ):
        for n in range(writes_per_message):
            value = seal_message(ask) if n == 0 else b"\x01" + bytes(30)
            trace.att(handle, b"\x12" + COMMAND.to_bytes(2, "little") + value, from_gateway=True)
            trace.att(handle, b"\x13", from_gateway=False)
        notify = b"\x1b" + RESPONSE.to_bytes(2, "little") + seal_message(answer, 200)
        trace.att(handle, notify, from_gateway=False, fragment=27)


def test_an_operation_on_one_link_is_two_round_trips(tmp_path: Path) -> None:
    trace = Trace()
    trace.connect(0x40, "F5:EA:10:00:00:01")
    an_operation(trace, 0x40)
    trace.disconnect(0x40)

    (link,) = read_links(trace.write(tmp_path / "hci.btsnoop"))

    assert (link.peer, link.handle, link.reason) == ("F5:EA:10:00:00:01", 0x40, 0x13)
    assert link.down is not None and link.up < link.down
    trips = operation_trips(link)
    assert trips.operation == 2
    assert trips.messages == ("CHALLENGE_REQUEST", "COMMAND", "LOG_FETCH")
    assert (trips.link_setup, trips.session) == (2, 3)


def test_a_message_written_in_two_fragments_costs_a_round_trip_more(tmp_path: Path) -> None:
    trace = Trace()
    trace.connect(0x41, "F5:EA:10:00:00:02", enhanced=False)
    an_operation(trace, 0x41, writes_per_message=2)

    (link,) = read_links(trace.write(tmp_path / "hci.btsnoop"))

    assert link.down is None
    assert operation_trips(link).operation == 4


def test_links_overlapping_in_time_are_counted_at_their_peak(tmp_path: Path) -> None:
    trace = Trace()
    trace.connect(1, "F5:EA:10:00:00:01")
    trace.connect(2, "F5:EA:10:00:00:02")
    trace.connect(0, "F5:EA:10:00:00:09", status=0x3E)  # failed: no link
    trace.disconnect(1)
    trace.connect(3, "F5:EA:10:00:00:03")
    trace.connect(4, "F5:EA:10:00:00:04")
    trace.record(OP_EVENT, b"\x3e\x13" + bytes(19), index=1)  # another controller's event
    trace.disconnect(2)

    links = read_links(trace.write(tmp_path / "hci.btsnoop"))

    assert [link.peer[-2:] for link in links] == ["01", "02", "03", "04"]
    assert peak_links(links) == 3


def test_a_link_without_a_seal_exchange_is_said_so(tmp_path: Path) -> None:
    trace = Trace()
    trace.connect(5, "F5:EA:10:00:00:05")
    trace.att(5, b"\x02\x05\x02", from_gateway=True)

    (link,) = read_links(trace.write(tmp_path / "hci.btsnoop"))

    with pytest.raises(ValueError, match="no seal exchange"):
        operation_trips(link)


def test_a_file_that_is_not_btmons_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.btsnoop"
    path.write_bytes(b"btsnoop\x00" + struct.pack(">II", 1, 1002))
    with pytest.raises(ValueError, match="datalink 1002"):
        read_links(path)
    path.write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="not a btsnoop file"):
        read_links(path)
