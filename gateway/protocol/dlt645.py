"""DL/T 645-2007 frames and data identifiers: a pure codec, bytes in and frames out.

Wire frame (DL/T 645-2007 section 4): an optional wake-up preamble of 0xFE bytes, then
``68 A0..A5 68 C L DATA CS 16``. The address is 12 BCD digits sent least significant byte
first; every data byte carries +0x33 on the wire; CS is the byte sum mod 256 from the first
0x68 through the data. See docs/dlt645.md. The data identifiers and their values are in
gateway/protocol/dlt645_values.py; this module re-exports them, so callers import one module.

Decoder contract, for stream reassembly on a serial line or a TCP socket:

- ``(0, None)``: the buffer holds the start of a frame (or nothing); read more bytes.
- ``(n, None)`` with n > 0: n bytes of preamble or garbage were skipped; call again.
- ``(n, frame)``: a frame, n counting any bytes skipped before it.
- ``FrameError`` (a ProtocolError): a complete frame failed its checks (checksum, end byte,
  length over 200). The caller drops ``exc.consumed`` bytes, counts the error and calls again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, IntFlag

from gateway.errors import FrameError, MeterRefusedError, ProtocolError
from gateway.protocol.dlt645_values import (
    DATA_ITEMS,
    DI_BY_NAME,
    METER_TZ,
    CoverRecord,
    DataItem,
    Kind,
    OutageRecord,
    StatusWord7,
    Value,
    decode_datetime,
    decode_value,
    encode_datetime,
    encode_value,
)

__all__ = [
    "BROADCAST",
    "DATA_ITEMS",
    "DI_BY_NAME",
    "METER_TZ",
    "WILDCARD",
    "CoverRecord",
    "DataItem",
    "ErrorFlags",
    "Frame",
    "Function",
    "Kind",
    "OutageRecord",
    "Reading",
    "StatusWord7",
    "Value",
    "address_reply",
    "decode",
    "decode_value",
    "encode",
    "encode_value",
    "error_reply",
    "parse_address_reply",
    "parse_read_reply",
    "parse_read_request",
    "parse_time_sync",
    "read_address_request",
    "read_follow_up_request",
    "read_reply",
    "read_request",
    "time_sync_frame",
]

_LOGGER = logging.getLogger(__name__)

START = 0x68
END = 0x16
WAKE_UP = 0xFE
OFFSET = 0x33
WAKE_UP_LEN = 4
MAX_DATA_LEN = 200
HEADER_LEN = 10
BROADCAST = "999999999999"
WILDCARD = "AAAAAAAAAAAA"
"""Meter clocks keep Beijing time; datetimes from the codec carry this zone."""

_DIRECTION_BIT = 0x80
_ERROR_BIT = 0x40
_MORE_BIT = 0x20
_FUNCTION_MASK = 0x1F
_HEX_DIGITS = frozenset("0123456789ABCDEF")


class Function(IntEnum):
    """Function code, the low five bits of the control byte; unknown codes become pseudo-members."""

    BROADCAST_TIME = 0x08
    READ_DATA = 0x11
    READ_FOLLOW_UP = 0x12
    READ_ADDRESS = 0x13
    WRITE_DATA = 0x14
    WRITE_ADDRESS = 0x15
    FREEZE = 0x16
    CHANGE_BAUD = 0x17
    CHANGE_PASSWORD = 0x18
    CLEAR_DEMAND = 0x19
    CLEAR_METER = 0x1A
    CLEAR_EVENTS = 0x1B

    @classmethod
    def _missing_(cls, value: object) -> Function | None:
        if not isinstance(value, int) or not 0 <= value <= _FUNCTION_MASK:
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value:#04x}"
        member._value_ = value
        return member


class ErrorFlags(IntFlag):
    """The error status byte (ERR) of an abnormal reply; unknown bits are kept."""

    OTHER = 0x01
    NO_DATA = 0x02
    UNAUTHORIZED = 0x04
    BAUD_UNCHANGEABLE = 0x08
    YEAR_ZONES_EXCEEDED = 0x10
    DAY_PERIODS_EXCEEDED = 0x20
    TARIFFS_EXCEEDED = 0x40


@dataclass(frozen=True, slots=True)
class Frame:
    """One DL/T 645-2007 frame; `data` is plain, without the +0x33 wire offset."""

    address: str
    function: Function
    data: bytes = b""
    reply: bool = False
    error: bool = False
    more: bool = False

    def __post_init__(self) -> None:
        if len(self.address) != 12 or not set(self.address) <= _HEX_DIGITS:
            raise ValueError(f"address must be 12 upper-case hex digits, got {self.address!r}")
        if len(self.data) > MAX_DATA_LEN:
            raise ValueError(f"data is {len(self.data)} bytes, the limit is {MAX_DATA_LEN}")

    @property
    def control(self) -> int:
        """The control byte: direction, abnormal-reply and follow-up bits plus the function."""
        bits = _DIRECTION_BIT if self.reply else 0
        bits |= _ERROR_BIT if self.error else 0
        bits |= _MORE_BIT if self.more else 0
        return bits | int(self.function)


def encode(frame: Frame, *, preamble: int | None = None) -> bytes:
    """Wire bytes of `frame`; requests get a 4-byte 0xFE preamble unless told otherwise."""
    count = (0 if frame.reply else WAKE_UP_LEN) if preamble is None else preamble
    body = bytearray([START, *_address_bytes(frame.address), START, frame.control])
    body.append(len(frame.data))
    body += bytes((byte + OFFSET) & 0xFF for byte in frame.data)
    body.append(sum(body) & 0xFF)
    body.append(END)
    return bytes([WAKE_UP]) * count + bytes(body)


def decode(buf: bytes | bytearray | memoryview) -> tuple[int, Frame | None]:
    """Take one frame off the front of `buf`; see the module docstring for the contract."""
    view = bytes(buf)
    start = view.find(START)
    while start >= 0:
        size = _frame_size(view, start)
        if size == 0:
            return start, None
        if size > 0:
            return start + size, _parse(view, start, size)
        start = view.find(START, start + 1)
    return len(view), None


@dataclass(frozen=True, slots=True)
class Reading:
    """One decoded read reply; `more` means follow-up frames hold the rest."""

    address: str
    di: int
    value: Value
    item: DataItem | None
    more: bool = False
    seq: int | None = None


def read_request(address: str, di: int) -> Frame:
    """A read-data request (0x11) for data identifier `di`."""
    return Frame(address, Function.READ_DATA, di.to_bytes(4, "little"))


def read_follow_up_request(address: str, di: int, seq: int) -> Frame:
    """A read-follow-up request (0x12) for frame `seq` of `di`."""
    return Frame(address, Function.READ_FOLLOW_UP, di.to_bytes(4, "little") + bytes([seq]))


def read_address_request() -> Frame:
    """A read-address request (0x13) to the wildcard address; only one meter may be on the bus."""
    return Frame(WILDCARD, Function.READ_ADDRESS)


def time_sync_frame(when: datetime) -> Frame:
    """A broadcast time sync (0x08); aware datetimes are converted to meter time first."""
    return Frame(BROADCAST, Function.BROADCAST_TIME, encode_datetime(when))


def read_reply(address: str, di: int, value: Value, *, more: bool = False) -> Frame:
    """A normal read reply (0x91, or 0xB1 with `more`) carrying `value` for `di`."""
    data = di.to_bytes(4, "little") + encode_value(di, value)
    return Frame(address, Function.READ_DATA, data, reply=True, more=more)


def address_reply(address: str) -> Frame:
    """The reply (0x93) to a read-address request."""
    return Frame(address, Function.READ_ADDRESS, _address_bytes(address), reply=True)


def error_reply(address: str, function: Function, flags: ErrorFlags) -> Frame:
    """An abnormal reply (0xC0 | function) carrying the error status byte."""
    return Frame(address, function, bytes([int(flags) & 0xFF]), reply=True, error=True)


def parse_read_request(frame: Frame) -> int:
    """The data identifier a read-data request asks for."""
    if frame.reply or frame.function != Function.READ_DATA or len(frame.data) < 4:
        raise ProtocolError(f"not a read-data request: control {frame.control:#04x}")
    return int.from_bytes(frame.data[:4], "little")


def parse_read_reply(frame: Frame, *, raw: bool = False) -> Reading:
    """Decode a read or read-follow-up reply (`raw`: keep the value bytes); MeterRefusedError."""
    _check_reply(frame, (Function.READ_DATA, Function.READ_FOLLOW_UP))
    follow_up = frame.function == Function.READ_FOLLOW_UP
    data = frame.data[:-1] if follow_up else frame.data
    if len(data) < 4:
        raise ProtocolError(f"read reply from {frame.address} has {len(data)} data bytes")
    di = int.from_bytes(data[:4], "little")
    partial = frame.more or follow_up
    value = data[4:] if partial or raw else decode_value(di, data[4:])
    seq = frame.data[-1] if follow_up else None
    return Reading(frame.address, di, value, DATA_ITEMS.get(di), frame.more, seq)


def parse_address_reply(frame: Frame) -> str:
    """The address a meter reported in its read-address reply."""
    _check_reply(frame, (Function.READ_ADDRESS,))
    if len(frame.data) != 6:
        raise ProtocolError(f"read-address reply has {len(frame.data)} data bytes, not 6")
    return frame.data[::-1].hex().upper()


def parse_time_sync(frame: Frame) -> datetime:
    """The meter time a broadcast time-sync frame sets."""
    if frame.function != Function.BROADCAST_TIME or len(frame.data) != 6:
        raise ProtocolError("not a broadcast time-sync frame")
    when = decode_datetime(frame.data)
    if when is None:
        raise ProtocolError("time sync carries an all-zero time")
    return when


# --- framing helpers ---------------------------------------------------------------------


def _address_bytes(address: str) -> bytes:
    return bytes.fromhex(address)[::-1]


def _frame_size(view: bytes, start: int) -> int:
    """Total size of the frame at `start`; 0 if incomplete, -1 if `start` opens no frame."""
    available = len(view) - start
    if available >= 8 and view[start + 7] != START:
        return -1
    if available < HEADER_LEN:
        return 0
    length = view[start + 9]
    if length > MAX_DATA_LEN:
        raise FrameError(f"length {length} exceeds {MAX_DATA_LEN}", consumed=start + 1)
    size = HEADER_LEN + length + 2
    return size if available >= size else 0


def _parse(view: bytes, start: int, size: int) -> Frame:
    frame = view[start : start + size]
    if frame[-1] != END:
        raise FrameError(f"end byte {frame[-1]:#04x}, not 0x16", consumed=start + 1)
    if sum(frame[:-2]) & 0xFF != frame[-2]:
        raise FrameError("checksum mismatch", consumed=start + size)
    control = frame[8]
    return Frame(
        address=frame[1:7][::-1].hex().upper(),
        function=Function(control & _FUNCTION_MASK),
        data=bytes((byte - OFFSET) & 0xFF for byte in frame[HEADER_LEN:-2]),
        reply=bool(control & _DIRECTION_BIT),
        error=bool(control & _ERROR_BIT),
        more=bool(control & _MORE_BIT),
    )


def _check_reply(frame: Frame, functions: tuple[Function, ...]) -> None:
    if not frame.reply or frame.function not in functions:
        raise ProtocolError(f"unexpected frame, control {frame.control:#04x}")
    if frame.error:
        flags = ErrorFlags(frame.data[0] if frame.data else 0)
        _LOGGER.debug("meter %s error reply %r", frame.address, flags)
        raise MeterRefusedError(frame.address, frame.function, flags)
