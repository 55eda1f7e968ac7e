"""Reading a received event payload: parsed strictly, its hash recomputed, fast when canonical.

A gateway publishes each event as its canonical JSON (RFC 8785, docs/events.md) with `hash`.
For such a payload, the C-speed `json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)` of what it parses to gives the payload back byte for byte, unless the
payload holds one of the few values whose Python text differs from JCS text: a float written
with an exponent or as an integer (`1e-07`, `5.0`, `-0.0`), an integer beyond 15 digits, or a
character outside the Basic Multilingual Plane (JCS sorts member names by UTF-16 code units,
Python by code points). When the payload is its own dumps and holds none of those, it is the
canonical form of its object, so:

- it has no repeated member names (a repeat would parse to fewer members and print shorter),
- and the canonical body hashed for the chain is the payload minus its `,"hash":"..."` member.

Anything else takes the reference path: `strict_json.load_object` and `events.event_hash`.
Both paths give the same object and the same hash, or the same error (a property test checks
it); the fast path only skips Python-level work for the payloads gateways actually send.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from gateway.errors import ProtocolError
from gateway.protocol.canonical import encode_basestring
from gateway.protocol.events import event_hash
from gateway.protocol.strict_json import MAX_DEPTH, MAX_JSON_BYTES, check_shape, load_object

__all__ = ["read_event_payload"]

_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def read_event_payload(
    payload: bytes, what: str = "event", *, max_depth: int = MAX_DEPTH
) -> tuple[dict[str, Any], str]:
    """(the object, the hash its content gives) of a payload; ProtocolError as load_object.

    The hash is `event_hash(obj)`: SHA-256 of the canonical JSON of every member but `hash`.
    """
    if check_shape(payload, max_depth=max_depth, max_bytes=MAX_JSON_BYTES) is None:
        fast = _read_canonical(payload)
        if fast is not None:
            return fast
    obj = load_object(payload, what, max_depth=max_depth)
    return obj, event_hash(obj)


def _read_canonical(payload: bytes) -> tuple[dict[str, Any], str] | None:
    """The object and hash when `payload` is provably the canonical form of its object."""
    try:
        obj = json.loads(payload, parse_constant=_refuse, parse_float=_float, parse_int=_int)
        if type(obj) is not dict or not isinstance(obj.get("hash"), str) or min(obj) == "hash":
            return None
        text = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        if not text.isascii() and _ASTRAL.search(text):
            return None
        if text.encode("utf-8") != payload:
            return None
    except (ValueError, UnicodeError, RecursionError, ProtocolError):
        return None
    member = ("," + encode_basestring("hash") + ":" + encode_basestring(obj["hash"])).encode()
    if payload.count(member) != 1:
        return None
    return obj, hashlib.sha256(payload.replace(member, b"")).hexdigest()


def _refuse(name: str) -> Any:
    raise ProtocolError(f"{name} is not JSON")


def _float(text: str) -> float:
    """A float whose text is JCS text once the payload equals its dumps; else not canonical."""
    if "e" in text or "E" in text or text.endswith(".0"):
        raise _NotCanonicalError  # Python's e+16/e-05 and 5.0, -0.0 are not ECMAScript's text
    return float(text)


def _int(text: str) -> int:
    if len(text) > 15:
        raise _NotCanonicalError  # beyond 2**53 JCS writes a double's text
    return int(text)


class _NotCanonicalError(ValueError):
    """The payload holds a number whose Python text is not its JCS text."""
