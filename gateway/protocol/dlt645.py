"""DL/T 645-2007 frames and data identifiers: a pure codec, bytes in and frames out.

Wire frame (DL/T 645-2007 section 4): an optional wake-up preamble of 0xFE bytes, then
``68 A0..A5 68 C L DATA CS 16``. The address is 12 BCD digits sent least significant byte
first; every data byte carries +0x33 on the wire; CS is the byte sum mod 256 from the first
0x68 through the data. See docs/dlt645.md.

Decoder contract, for stream reassembly on a serial line or a TCP socket:

- ``(0, None)``: the buffer holds the start of a frame (or nothing); read more bytes.
- ``(n, None)`` with n > 0: n bytes of preamble or garbage were skipped; call again.
- ``(n, frame)``: a frame, n counting any bytes skipped before it.
- ``FrameError`` (a ProtocolError): a complete frame failed its checks (checksum, end byte,
  length over 200). The caller drops ``exc.consumed`` bytes, counts the error and calls again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum, IntFlag
from typing import TypeAlias

from gateway.errors import FrameError, MeterRefusedError, ProtocolError

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
METER_TZ = timezone(timedelta(hours=8), "UTC+08:00")
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


class StatusWord7(IntFlag):
    """Meter running status word 7 (0x04000507), the combined-phase fault word."""

    VOLTAGE_REVERSE_SEQUENCE = 0x0001
    CURRENT_REVERSE_SEQUENCE = 0x0002
    VOLTAGE_IMBALANCE = 0x0004
    CURRENT_IMBALANCE = 0x0008
    AUX_POWER_LOST = 0x0010
    POWER_DOWN = 0x0020
    DEMAND_OVER_LIMIT = 0x0040
    POWER_FACTOR_LOW = 0x0080
    CURRENT_SEVERE_IMBALANCE = 0x0100
    METER_COVER_OPEN = 0x0200
    TERMINAL_COVER_OPEN = 0x0400


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
class CoverRecord:
    """A meter- or terminal-cover-open record: times and energies at opening and closing."""

    start: datetime | None
    end: datetime | None
    before: tuple[Decimal, ...]
    after: tuple[Decimal, ...]


@dataclass(frozen=True, slots=True)
class OutageRecord:
    """A power-down record: when power went and when it came back."""

    start: datetime | None
    end: datetime | None


Value: TypeAlias = (
    Decimal | int | tuple[Decimal | int, ...] | date | time | CoverRecord | OutageRecord | bytes
)


class Kind(Enum):
    """How the bytes of a data item are laid out."""

    NUMBER = "number"
    STATUS = "status"
    DATE = "date"
    TIME = "time"
    COVER_RECORD = "cover_record"
    OUTAGE_RECORD = "outage_record"
    FREEZE_TIME = "freeze_time"


@dataclass(frozen=True, slots=True)
class DataItem:
    """What a data identifier holds; `repeat` marks a block of any whole number of values."""

    name: str
    length: int
    decimals: int = 0
    signed: bool = False
    unit: str = ""
    kind: Kind = Kind.NUMBER
    repeat: bool = False


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
    return Frame(BROADCAST, Function.BROADCAST_TIME, _encode_datetime(when))


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
    when = _decode_datetime(frame.data)
    if when is None:
        raise ProtocolError("time sync carries an all-zero time")
    return when


def decode_value(di: int, raw: bytes) -> Value:
    """Decode the value bytes of `di`; unknown identifiers come back as raw bytes."""
    item = DATA_ITEMS.get(di)
    if item is None:
        return bytes(raw)
    if item.repeat:
        return _decode_block(item, raw)
    if len(raw) != item.length:
        raise ProtocolError(f"{item.name} needs {item.length} bytes, got {len(raw)}")
    return _CODECS[item.kind][0](item, raw)


def encode_value(di: int, value: Value) -> bytes:
    """Encode `value` for `di`; raw bytes pass unchanged, and unknown identifiers need them."""
    item = DATA_ITEMS.get(di)
    if item is None or isinstance(value, bytes):
        if not isinstance(value, bytes):
            raise TypeError(f"unknown data identifier {di:08X} needs raw bytes")
        return value
    if item.repeat:
        if not isinstance(value, tuple):
            raise TypeError(f"{item.name} is a block and needs a tuple")
        values: tuple[Value, ...] = value
        return b"".join(_CODECS[item.kind][1](item, element) for element in values)
    return _CODECS[item.kind][1](item, value)


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


# --- value helpers -------------------------------------------------------------------------


def _bcd_to_int(raw: bytes, *, signed: bool = False) -> int:
    """Decode little-endian BCD; with `signed`, the top bit of the last byte is the sign."""
    negative = signed and bool(raw[-1] & 0x80)
    body = raw[:-1] + bytes([raw[-1] & 0x7F]) if negative else raw
    digits = body[::-1].hex()
    if not digits.isdigit():
        raise ProtocolError(f"not BCD: {raw.hex()}")
    return -int(digits) if negative else int(digits)


def _int_to_bcd(value: int, length: int, *, signed: bool = False) -> bytes:
    limit = 8 * 10 ** (2 * length - 1) if signed else 10 ** (2 * length)
    if abs(value) >= limit or (value < 0 and not signed):
        raise ValueError(f"{value} does not fit {length} BCD bytes (signed={signed})")
    raw = bytearray(bytes.fromhex(f"{abs(value):0{2 * length}d}")[::-1])
    if value < 0:
        raw[-1] |= 0x80
    return bytes(raw)


def _decode_number(item: DataItem, raw: bytes) -> Decimal | int:
    """Counts (no decimals) come back as int, measured quantities as exact Decimal."""
    number = _bcd_to_int(raw, signed=item.signed)
    return Decimal(number).scaleb(-item.decimals) if item.decimals else number


def _encode_number(item: DataItem, value: Value) -> bytes:
    if not isinstance(value, Decimal | int) or isinstance(value, bool):
        raise TypeError(f"{item.name} needs a Decimal or int, got {type(value).__name__}")
    scaled = Decimal(value).scaleb(item.decimals)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} has more than {item.decimals} decimals for {item.name}")
    return _int_to_bcd(int(scaled), item.length, signed=item.signed)


def _decode_status(item: DataItem, raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _encode_status(item: DataItem, value: Value) -> bytes:
    if not isinstance(value, int):
        raise TypeError(f"{item.name} needs an int")
    return value.to_bytes(item.length, "little")


def _decode_block(item: DataItem, raw: bytes) -> tuple[Decimal | int, ...]:
    if not raw or len(raw) % item.length:
        raise ProtocolError(f"{item.name} block of {len(raw)} bytes is not whole values")
    chunks = [raw[i : i + item.length] for i in range(0, len(raw), item.length)]
    if item.kind is Kind.STATUS:
        return tuple(_decode_status(item, chunk) for chunk in chunks)
    return tuple(_decode_number(item, chunk) for chunk in chunks)


def _bcd_fields(raw: bytes) -> list[int]:
    return [_bcd_to_int(bytes([byte])) for byte in raw]


def _decode_datetime(raw: bytes) -> datetime | None:
    """Six bytes ss mm hh DD MM YY; all zero means no time recorded."""
    if not any(raw):
        return None
    second, minute, hour, day, month, year = _bcd_fields(raw)
    try:
        return datetime(2000 + year, month, day, hour, minute, second, tzinfo=METER_TZ)
    except ValueError as exc:
        raise ProtocolError(f"bad meter time {raw.hex()}") from exc


def _encode_datetime(when: datetime | None) -> bytes:
    if when is None:
        return bytes(6)
    local = when.astimezone(METER_TZ) if when.tzinfo else when
    fields = (local.second, local.minute, local.hour, local.day, local.month, local.year % 100)
    return b"".join(_int_to_bcd(field, 1) for field in fields)


def _decode_date(item: DataItem, raw: bytes) -> date:
    _weekday, day, month, year = _bcd_fields(raw)
    try:
        return date(2000 + year, month, day)
    except ValueError as exc:
        raise ProtocolError(f"bad meter date {raw.hex()}") from exc


def _encode_date(item: DataItem, value: Value) -> bytes:
    if not isinstance(value, date) or isinstance(value, datetime):
        raise TypeError(f"{item.name} needs a date")
    fields = (value.isoweekday() % 7, value.day, value.month, value.year % 100)
    return b"".join(_int_to_bcd(field, 1) for field in fields)


def _decode_time(item: DataItem, raw: bytes) -> time:
    second, minute, hour = _bcd_fields(raw)
    try:
        return time(hour, minute, second)
    except ValueError as exc:
        raise ProtocolError(f"bad meter time of day {raw.hex()}") from exc


def _encode_time(item: DataItem, value: Value) -> bytes:
    if not isinstance(value, time):
        raise TypeError(f"{item.name} needs a time")
    fields = (value.second, value.minute, value.hour)
    return b"".join(_int_to_bcd(field, 1) for field in fields)


_RECORD_ENERGY = DataItem("record_energy", 4, 2, unit="kWh")


def _kwh(raw: bytes) -> Decimal:
    return Decimal(_bcd_to_int(raw)).scaleb(-2)


def _decode_cover(item: DataItem, raw: bytes) -> CoverRecord:
    energies = [_kwh(raw[i : i + 4]) for i in range(12, 60, 4)]
    start, end = _decode_datetime(raw[:6]), _decode_datetime(raw[6:12])
    return CoverRecord(start, end, tuple(energies[:6]), tuple(energies[6:]))


def _encode_cover(item: DataItem, value: Value) -> bytes:
    if not isinstance(value, CoverRecord) or len(value.before) != 6 or len(value.after) != 6:
        raise ValueError(f"{item.name} needs a CoverRecord with six energies each side")
    times = _encode_datetime(value.start) + _encode_datetime(value.end)
    energies = (*value.before, *value.after)
    return times + b"".join(_encode_number(_RECORD_ENERGY, energy) for energy in energies)


def _decode_outage(item: DataItem, raw: bytes) -> OutageRecord:
    return OutageRecord(_decode_datetime(raw[:6]), _decode_datetime(raw[6:]))


def _encode_outage(item: DataItem, value: Value) -> bytes:
    if not isinstance(value, OutageRecord):
        raise TypeError(f"{item.name} needs an OutageRecord")
    return _encode_datetime(value.start) + _encode_datetime(value.end)


def _decode_freeze_time(item: DataItem, raw: bytes) -> Value:
    """Five bytes mm hh DD MM YY (the standard's YYMMDDhhmm, low byte first); zero: none."""
    return _decode_datetime(b"\x00" + raw) or b""


def _encode_freeze_time(item: DataItem, value: Value) -> bytes:
    if not isinstance(value, datetime):
        raise TypeError(f"{item.name} needs a datetime")
    return _encode_datetime(value)[1:]


_CODECS: dict[
    Kind, tuple[Callable[[DataItem, bytes], Value], Callable[[DataItem, Value], bytes]]
] = {
    Kind.NUMBER: (_decode_number, _encode_number),
    Kind.STATUS: (_decode_status, _encode_status),
    Kind.DATE: (_decode_date, _encode_date),
    Kind.TIME: (_decode_time, _encode_time),
    Kind.COVER_RECORD: (_decode_cover, _encode_cover),
    Kind.OUTAGE_RECORD: (_decode_outage, _encode_outage),
    Kind.FREEZE_TIME: (_decode_freeze_time, _encode_freeze_time),
}


# --- the data identifier table -------------------------------------------------------------


_TARIFFS = {0: "total", 1: "tariff1", 2: "tariff2", 3: "tariff3", 4: "tariff4"}
_PHASES = {1: "a", 2: "b", 3: "c"}
_TOTAL_AND_PHASES = {0: "total", **_PHASES}


def _family(base: int, item: DataItem, members: dict[int, str]) -> dict[int, DataItem]:
    """Items `base | DI1 << 8` named after `item`, plus the DI1 = FF block of them all."""
    items = {
        base | di1 << 8: replace(item, name=f"{item.name}_{suffix}")
        for di1, suffix in members.items()
    }
    items[base | 0xFF00] = replace(item, name=f"{item.name}_block", repeat=True)
    return items


def _status_words() -> dict[int, DataItem]:
    """Meter running status words 1-7 (DI0 = 01..07) and their block (DI0 = FF)."""
    items = {0x04000500 | n: DataItem(f"status_word_{n}", 2, kind=Kind.STATUS) for n in range(1, 8)}
    items[0x040005FF] = DataItem("status_word_block", 2, kind=Kind.STATUS, repeat=True)
    return items


DATA_ITEMS: dict[int, DataItem] = {
    **_family(0x00000000, DataItem("combined_active_energy", 4, 2, True, "kWh"), _TARIFFS),
    **_family(0x00010000, DataItem("forward_active_energy", 4, 2, False, "kWh"), _TARIFFS),
    **_family(0x00020000, DataItem("reverse_active_energy", 4, 2, False, "kWh"), _TARIFFS),
    **_family(0x02010000, DataItem("voltage", 2, 1, False, "V"), _PHASES),
    **_family(0x02020000, DataItem("current", 3, 3, True, "A"), _PHASES),
    **_family(0x02030000, DataItem("active_power", 3, 4, True, "kW"), _TOTAL_AND_PHASES),
    **_family(0x02060000, DataItem("power_factor", 2, 3, True), _TOTAL_AND_PHASES),
    0x02800002: DataItem("frequency", 2, 2, unit="Hz"),
    0x03110000: DataItem("power_down_count", 3),
    0x03110001: DataItem("power_down_last", 12, kind=Kind.OUTAGE_RECORD),
    0x03300D00: DataItem("meter_cover_open_count", 3),
    0x03300D01: DataItem("meter_cover_open_last", 60, kind=Kind.COVER_RECORD),
    0x03300E00: DataItem("terminal_cover_open_count", 3),
    0x03300E01: DataItem("terminal_cover_open_last", 60, kind=Kind.COVER_RECORD),
    0x05060001: DataItem("daily_freeze_time", 5, kind=Kind.FREEZE_TIME),
    0x05060101: DataItem("daily_frozen_forward_energy", 4, 2, False, "kWh", repeat=True),
    0x04000101: DataItem("date", 4, kind=Kind.DATE),
    0x04000102: DataItem("time", 3, kind=Kind.TIME),
    **_status_words(),
}
"""Supported data identifiers (DI3 DI2 DI1 DI0 as one int); anything else decodes to bytes."""

DI_BY_NAME: dict[str, int] = {item.name: di for di, item in DATA_ITEMS.items()}
"""Data identifiers by item name, for meter profiles and logs."""
