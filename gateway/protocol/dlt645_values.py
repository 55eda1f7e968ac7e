"""DL/T 645-2007 data identifiers and their values: the table, and each value's byte layout.

The values half of the codec (frames are in gateway/protocol/dlt645.py, which re-exports all of
this). Every value is BCD (or, for status words, binary) sent low byte first, as the standard
sends every data item: an energy `XXXXXX.XX` as four bytes, a date-time `YYMMDDhhmmss` as
`ss mm hh DD MM YY`. Values are checked both ways: `decode_value` raises ProtocolError for bytes
that are not a value of the item (not BCD, a bad date), `encode_value` TypeError or ValueError
for a value that does not fit. See docs/dlt645.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntFlag
from typing import TypeAlias

from gateway.errors import ProtocolError

__all__ = [
    "DATA_ITEMS",
    "DI_BY_NAME",
    "METER_TZ",
    "CoverRecord",
    "DataItem",
    "Kind",
    "OutageRecord",
    "StatusWord7",
    "Value",
    "decode_datetime",
    "decode_value",
    "encode_datetime",
    "encode_value",
]

METER_TZ = timezone(timedelta(hours=8), "UTC+08:00")
"""Meter clocks keep Beijing time."""


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


def decode_datetime(raw: bytes) -> datetime | None:
    """Six bytes ss mm hh DD MM YY; all zero means no time recorded."""
    if not any(raw):
        return None
    second, minute, hour, day, month, year = _bcd_fields(raw)
    try:
        return datetime(2000 + year, month, day, hour, minute, second, tzinfo=METER_TZ)
    except ValueError as exc:
        raise ProtocolError(f"bad meter time {raw.hex()}") from exc


def encode_datetime(when: datetime | None) -> bytes:
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
    start, end = decode_datetime(raw[:6]), decode_datetime(raw[6:12])
    return CoverRecord(start, end, tuple(energies[:6]), tuple(energies[6:]))


def _encode_cover(item: DataItem, value: Value) -> bytes:
    if not isinstance(value, CoverRecord) or len(value.before) != 6 or len(value.after) != 6:
        raise ValueError(f"{item.name} needs a CoverRecord with six energies each side")
    times = encode_datetime(value.start) + encode_datetime(value.end)
    energies = (*value.before, *value.after)
    return times + b"".join(_encode_number(_RECORD_ENERGY, energy) for energy in energies)


def _decode_outage(item: DataItem, raw: bytes) -> OutageRecord:
    return OutageRecord(decode_datetime(raw[:6]), decode_datetime(raw[6:]))


def _encode_outage(item: DataItem, value: Value) -> bytes:
    if not isinstance(value, OutageRecord):
        raise TypeError(f"{item.name} needs an OutageRecord")
    return encode_datetime(value.start) + encode_datetime(value.end)


def _decode_freeze_time(item: DataItem, raw: bytes) -> Value:
    """Five bytes mm hh DD MM YY (the standard's YYMMDDhhmm, low byte first); zero: none."""
    return decode_datetime(b"\x00" + raw) or b""


def _encode_freeze_time(item: DataItem, value: Value) -> bytes:
    if not isinstance(value, datetime):
        raise TypeError(f"{item.name} needs a datetime")
    return encode_datetime(value)[1:]


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
