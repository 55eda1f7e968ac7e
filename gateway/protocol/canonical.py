"""Canonical JSON (RFC 8785, JCS) for hashing and signing.

Objects have their members sorted by the UTF-16 code units of the names, no insignificant
whitespace, strings escaped minimally, and numbers written as ECMAScript writes a double.
Any language with a JCS library reproduces these bytes from the parsed JSON, which is what
lets a master station verify the event chain. See docs/events.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from json.encoder import encode_basestring
from typing import Any, TypeAlias

__all__ = [
    "MAX_SAFE_INTEGER",
    "JSONValue",
    "canonical_bytes",
    "canonical_json",
    "encode_basestring",
    "format_number",
]

MAX_SAFE_INTEGER = 2**53 - 1

JSONValue: TypeAlias = (
    bool | int | float | str | Sequence["JSONValue"] | Mapping[str, "JSONValue"] | None
)


def canonical_json(value: Any) -> str:
    """Return the JCS text of `value`; raise ValueError for what JSON cannot carry exactly."""
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts)


def canonical_bytes(value: Any) -> bytes:
    """The UTF-8 bytes of `canonical_json(value)`."""
    return canonical_json(value).encode("utf-8")


def format_number(number: float) -> str:
    """Write a finite double as ECMAScript's Number.prototype.toString does."""
    if not math.isfinite(number):
        raise ValueError("NaN and infinity have no JSON form")
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    digits, point = _shortest_digits(abs(number))
    return sign + _layout(digits, point)


def _encode(value: Any, parts: list[str]) -> None:
    if isinstance(value, str):
        parts.append(encode_basestring(value))
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        parts.append(_format_int(value))
    elif isinstance(value, float):
        parts.append(_format_float(value))
    elif isinstance(value, Mapping):
        _encode_object(value, parts)
    elif isinstance(value, list | tuple):
        _encode_array(value, parts)
    else:
        raise ValueError(f"{type(value).__name__} has no canonical JSON form")


def _encode_object(value: Mapping[Any, Any], parts: list[str]) -> None:
    for key in value:
        if not isinstance(key, str):
            raise ValueError(f"object keys must be strings, not {type(key).__name__}")
    parts.append("{")
    first = True
    for key in sorted(value, key=_utf16_key):
        if not first:
            parts.append(",")
        first = False
        parts.append(encode_basestring(key))
        parts.append(":")
        _encode(value[key], parts)
    parts.append("}")


def _encode_array(value: Sequence[Any], parts: list[str]) -> None:
    parts.append("[")
    for index, item in enumerate(value):
        if index:
            parts.append(",")
        _encode(item, parts)
    parts.append("]")


def _format_float(value: float) -> str:
    """Fast path: without an exponent, Python's shortest repr is already ECMAScript's text."""
    text = repr(value)
    if "e" in text or "n" in text or value == 0:  # exponent, nan, inf or -0.0
        return format_number(value)
    return text[:-2] if text.endswith(".0") else text


def _format_int(value: int) -> str:
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return str(value)
    try:
        return format_number(float(value))  # a JSON number is a double, as JCS parses it
    except OverflowError:
        raise ValueError(f"integer {value} is too large for a JSON number") from None


@lru_cache(maxsize=4096)
def _utf16_key(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _shortest_digits(number: float) -> tuple[str, int]:
    """Digits d1..dk and n such that number = 0.d1..dk * 10**n, from Python's shortest repr."""
    text = repr(number)
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0") or "0", point


def _layout(digits: str, point: int) -> str:
    count = len(digits)
    if count <= point <= 21:
        return digits + "0" * (point - count)
    if 0 < point <= 21:
        return digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return "0." + "0" * (-point) + digits
    exponent = point - 1
    sign = "+" if exponent >= 0 else "-"
    head = digits[0] + ("." + digits[1:] if count > 1 else "")
    return f"{head}e{sign}{abs(exponent)}"
