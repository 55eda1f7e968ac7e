"""Typed values in Modbus register words: pure decoding and encoding, no I/O.

A register is a 16-bit word. Wider values span consecutive registers. Two orders describe how
a meter lays them out:

- byte order: the order of the two bytes inside each word (big: the high byte first, as the
  Modbus specification sends every register);
- word order: the order of the words (big: the most significant word at the lowest address).

Big/big is "ABCD", the IEEE 754 layout most meters use; little word order is "CDAB", common
on meters with a little-endian CPU; little/little is "DCBA" and big word / little byte "BADC".
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum

__all__ = [
    "ByteOrder",
    "Number",
    "RegisterFunction",
    "ValueFormat",
    "ValueType",
    "WordOrder",
    "decode_raw",
    "encode_raw",
    "scale_value",
]

Number = int | float


class RegisterFunction(IntEnum):
    """Modbus read function codes, named as profiles name them."""

    HOLDING = 0x03
    INPUT = 0x04

    @property
    def label(self) -> str:
        """The name used in profiles: holding or input."""
        return self.name.lower()


class ValueType(StrEnum):
    """How a value is stored in one or more registers."""

    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    F32 = "f32"
    U64 = "u64"

    @property
    def words(self) -> int:
        """Number of 16-bit registers the value occupies."""
        return _WORDS[self]

    @property
    def signed(self) -> bool:
        """True for two's-complement integer types."""
        return self in (ValueType.I16, ValueType.I32)

    @property
    def is_integer(self) -> bool:
        """True for every type but f32."""
        return self is not ValueType.F32


class WordOrder(StrEnum):
    """Order of the 16-bit words of a multi-register value."""

    BIG = "big"
    LITTLE = "little"


class ByteOrder(StrEnum):
    """Order of the two bytes inside each 16-bit word."""

    BIG = "big"
    LITTLE = "little"


@dataclass(frozen=True, slots=True)
class ValueFormat:
    """A value type with its word and byte order."""

    type: ValueType
    word_order: WordOrder = WordOrder.BIG
    byte_order: ByteOrder = ByteOrder.BIG

    @property
    def words(self) -> int:
        """Number of registers the value occupies."""
        return self.type.words

    def decode(self, words: Sequence[int]) -> Number:
        """The raw (unscaled) value held in `words`."""
        return decode_raw(words, self)

    def encode(self, value: Number) -> tuple[int, ...]:
        """The register words that hold the raw value `value`."""
        return encode_raw(value, self)


def decode_raw(words: Sequence[int], fmt: ValueFormat) -> Number:
    """Decode register words into an int, or a float for f32; raise ValueError on bad input."""
    if len(words) != fmt.words:
        raise ValueError(f"{fmt.type} needs {fmt.words} registers, got {len(words)}")
    data = _words_to_bytes(words, fmt)
    if fmt.type is ValueType.F32:
        value: float = struct.unpack(">f", data)[0]
        return value
    return int.from_bytes(data, "big", signed=fmt.type.signed)


def encode_raw(value: Number, fmt: ValueFormat) -> tuple[int, ...]:
    """Encode a raw value into register words; raise ValueError if it does not fit."""
    is_float = fmt.type is ValueType.F32
    data = _pack_f32(float(value)) if is_float else _pack_int(value, fmt.type)
    return _bytes_to_words(data, fmt)


def scale_value(raw: Number, scale: float, fmt: ValueFormat) -> Number:
    """Apply a profile scale; integers stay integers when the scale is exactly 1."""
    if scale == 1 and fmt.type.is_integer:
        return raw
    return raw * scale


def _pack_f32(value: float) -> bytes:
    try:
        return struct.pack(">f", value)
    except OverflowError as exc:
        raise ValueError(f"{value} overflows f32") from exc


def _pack_int(value: Number, vtype: ValueType) -> bytes:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{vtype} cannot hold {value}")
    number = int(value)
    try:
        return number.to_bytes(vtype.words * 2, "big", signed=vtype.signed)
    except OverflowError as exc:
        raise ValueError(f"{number} does not fit {vtype}") from exc


def _words_to_bytes(words: Sequence[int], fmt: ValueFormat) -> bytes:
    ordered = list(words) if fmt.word_order is WordOrder.BIG else list(reversed(words))
    out = bytearray()
    for word in ordered:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"register word {word} is outside 0..65535")
        pair = word.to_bytes(2, "big")
        out += pair if fmt.byte_order is ByteOrder.BIG else pair[::-1]
    return bytes(out)


def _bytes_to_words(data: bytes, fmt: ValueFormat) -> tuple[int, ...]:
    words = []
    for index in range(0, len(data), 2):
        pair = data[index : index + 2]
        if fmt.byte_order is ByteOrder.LITTLE:
            pair = pair[::-1]
        words.append(int.from_bytes(pair, "big"))
    if fmt.word_order is WordOrder.LITTLE:
        words.reverse()
    return tuple(words)


_WORDS = {
    ValueType.U16: 1,
    ValueType.I16: 1,
    ValueType.U32: 2,
    ValueType.I32: 2,
    ValueType.F32: 2,
    ValueType.U64: 4,
}
