"""Register word codecs: known layouts and hypothesis round trips."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.modbus_values import (
    ByteOrder,
    ValueFormat,
    ValueType,
    WordOrder,
    scale_value,
)

FORMATS = st.builds(
    ValueFormat, st.sampled_from(ValueType), st.sampled_from(WordOrder), st.sampled_from(ByteOrder)
)


@pytest.mark.parametrize(
    ("word_order", "byte_order", "words"),
    [
        (WordOrder.BIG, ByteOrder.BIG, (0x4366, 0x8000)),  # ABCD
        (WordOrder.LITTLE, ByteOrder.BIG, (0x8000, 0x4366)),  # CDAB
        (WordOrder.BIG, ByteOrder.LITTLE, (0x6643, 0x0080)),  # BADC
        (WordOrder.LITTLE, ByteOrder.LITTLE, (0x0080, 0x6643)),  # DCBA
    ],
)
def test_f32_layouts(word_order: WordOrder, byte_order: ByteOrder, words: tuple[int, int]) -> None:
    fmt = ValueFormat(ValueType.F32, word_order, byte_order)
    assert fmt.decode(words) == 230.5
    assert fmt.encode(230.5) == words


def test_integer_layouts() -> None:
    assert ValueFormat(ValueType.I16).decode([0xFFFE]) == -2
    assert ValueFormat(ValueType.U32).decode([0x0001, 0x0002]) == 0x00010002
    assert ValueFormat(ValueType.I32, WordOrder.LITTLE).decode([0xFFFF, 0xFFFF]) == -1
    u64 = ValueFormat(ValueType.U64, WordOrder.LITTLE)
    assert u64.encode(0x0001_0002_0003_0004) == (4, 3, 2, 1)


def test_bad_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="needs 2 registers"):
        ValueFormat(ValueType.U32).decode([1])
    with pytest.raises(ValueError, match=r"outside 0\.\.65535"):
        ValueFormat(ValueType.U16).decode([70000])
    with pytest.raises(ValueError, match="does not fit"):
        ValueFormat(ValueType.U16).encode(-1)
    with pytest.raises(ValueError, match="cannot hold"):
        ValueFormat(ValueType.I32).encode(1.5)
    with pytest.raises(ValueError, match="overflows f32"):
        ValueFormat(ValueType.F32).encode(1e39)


def test_scale_keeps_integers_when_exactly_one() -> None:
    fmt = ValueFormat(ValueType.U32)
    assert scale_value(1234, 1.0, fmt) == 1234
    assert isinstance(scale_value(1234, 1.0, fmt), int)
    assert scale_value(1234, 0.01, fmt) == pytest.approx(12.34)


@given(FORMATS, st.data())
def test_words_round_trip(fmt: ValueFormat, data: st.DataObject) -> None:
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=fmt.words, max_size=fmt.words))
    assert fmt.encode(fmt.decode(words)) == tuple(words) or _is_nan(fmt, words)


@given(FORMATS, st.data())
def test_values_round_trip(fmt: ValueFormat, data: st.DataObject) -> None:
    if fmt.type is ValueType.F32:
        value: float | int = data.draw(st.floats(width=32, allow_nan=False))
    else:
        bits = fmt.words * 16
        low, high = (
            (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if fmt.type.signed else (0, 2**bits - 1)
        )
        value = data.draw(st.integers(low, high))
    assert fmt.decode(fmt.encode(value)) == value


def _is_nan(fmt: ValueFormat, words: list[int]) -> bool:
    """NaN payloads may not survive a float round trip; the bits still decode to NaN."""
    if fmt.type is not ValueType.F32:
        return False
    value = fmt.decode(words)
    return math.isnan(value) and math.isnan(struct.unpack(">f", struct.pack(">f", value))[0])
