"""Strict JSON reading for documents and messages from the network.

Refused: repeated member names, NaN and Infinity (Python's json module accepts both; a signed
or hashed document that did would read differently in other parsers), text longer than
`max_bytes`, and nesting deeper than `max_depth`. Size and depth are checked on the raw bytes
before the parser runs, so a JSON bomb costs one linear scan and never reaches the recursive
parser (whose RecursionError once killed the master's ledger worker). Each caller words its
own errors, so the messages are templates.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.errors import ProtocolError
from gateway.protocol.canonical import MAX_SAFE_INTEGER

__all__ = ["MAX_DEPTH", "MAX_JSON_BYTES", "check_shape", "load_object", "loads_strict"]

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects any message of ours needs (events use about 4)."""
MAX_JSON_BYTES = 256 * 1024
"""Largest message any network input of ours needs (signed documents are capped at 64 KiB)."""

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_OPEN = frozenset(b"[{")


def loads_strict(
    raw: bytes | str,
    *,
    not_json: str,
    duplicate: str,
    constant: str,
    max_depth: int = MAX_DEPTH,
    max_bytes: int = MAX_JSON_BYTES,
    integers_only: bool = False,
) -> Any:
    """Parse JSON strictly or raise ProtocolError.

    `not_json` is formatted with the decoder's complaint (also for too large or too deep),
    `constant` with the refused name (NaN, Infinity, -Infinity); `duplicate` is used as it is.
    `integers_only` refuses fractions, exponents, -0 and integers beyond ±(2**53 - 1): what a
    signed body may hold so that one value has one canonical spelling (docs/authorization.md).
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    problem = check_shape(data, max_depth=max_depth, max_bytes=max_bytes)
    if problem is not None:
        raise ProtocolError(not_json.format(problem))

    def members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise ProtocolError(duplicate)
        return result

    def refuse(name: str) -> Any:
        raise ProtocolError(constant.format(name))

    hooks: dict[str, Any] = {}
    if integers_only:
        hooks = {"parse_float": _refuse_fraction, "parse_int": _safe_int}
    try:
        return json.loads(data, object_pairs_hook=members, parse_constant=refuse, **hooks)
    except ProtocolError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(not_json.format(exc)) from None


def load_object(
    raw: bytes | str, what: str, *, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_JSON_BYTES
) -> dict[str, Any]:
    """Parse a message that must be one JSON object, strictly; ProtocolError names `what`."""
    value = loads_strict(
        raw,
        not_json=f"{what} is not JSON: {{}}",
        duplicate=f"{what} has a duplicate member name",
        constant=f"{what} contains {{}}, which JSON does not allow",
        max_depth=max_depth,
        max_bytes=max_bytes,
    )
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return value


def check_shape(
    data: bytes, *, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_JSON_BYTES
) -> str | None:
    """Why `data` is too large or too deeply nested to parse, or None when it is not."""
    if len(data) > max_bytes:
        return f"{len(data)} bytes exceed the limit of {max_bytes}"
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return None  # not even every bracket nested in the one before could be too deep
    depth = 0
    for byte in _STRING.sub(b"", data).translate(None, _NOT_BRACKET):
        if byte in _OPEN:
            depth += 1
            if depth > max_depth:
                return f"nesting deeper than {max_depth}"
        else:
            depth -= 1
    return None


def _refuse_fraction(text: str) -> Any:
    raise ProtocolError(f"number {text[:32]} is not an integer (signed bodies hold integers only)")


def _safe_int(text: str) -> int:
    if len(text) > 17:
        raise ProtocolError(f"integer {text[:32]} is beyond ±(2**53 - 1)")
    value = int(text)
    if text.startswith("-0") or abs(value) > MAX_SAFE_INTEGER:
        raise ProtocolError(f"integer {text} is -0 or beyond ±(2**53 - 1)")
    return value
