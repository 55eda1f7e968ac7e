"""Signed master-station documents: the versioned JSON envelope and strict field readers.

A document is `{"v":1,"kind":K,"body":{...},"sig":S}` where S is the unpadded base64url
Ed25519 signature, by the master station key, of `"sealgw/v1 " || K || "\\0" || JCS(body)`.
The kind inside the signed message keeps a signature made for one kind from verifying as
another. Specified in docs/authorization.md; body layouts live in tickets.py and certs.py.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.errors import AuthCode, AuthError, ProtocolError
from gateway.protocol.canonical import MAX_SAFE_INTEGER, canonical_bytes
from gateway.protocol.strict_json import loads_strict

__all__ = [
    "DOC_VERSION",
    "ID_PATTERN",
    "MAX_DOC_BYTES",
    "U32_MAX",
    "Body",
    "DocKind",
    "Envelope",
    "b64url",
    "b64url_decode",
    "check_signable",
    "encode_document",
    "open_document",
    "sign_body",
    "signed_message",
    "verify_body",
]

DOC_VERSION = 1
MAX_DOC_BYTES = 64 * 1024
U32_MAX = 0xFFFF_FFFF
SIG_LEN = 64
ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ENVELOPE_KEYS = frozenset({"v", "kind", "body", "sig"})

Body = dict[str, Any]
T = TypeVar("T")


class DocKind(StrEnum):
    """The kinds of signed document; the kind is part of the signed message."""

    TICKET = "ticket"
    OPERATOR_CERTIFICATE = "operator_certificate"
    REVOCATION_LIST = "revocation_list"
    COMMAND = "command"


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed document whose version and kind are checked, signature not yet."""

    kind: DocKind
    body: Body
    sig: bytes


def signed_message(kind: DocKind, body: Mapping[str, Any]) -> bytes:
    """The exact bytes signed: domain prefix with the kind, then canonical JSON of the body.

    ProtocolError for a body holding a float or an integer beyond ±(2**53 - 1): JCS writes
    30 and 30.0 alike, and 2**53 and 2**53 + 1 alike, so such a body would have several
    spellings under one signature. Signed bodies hold integers only.
    """
    check_signable(body)
    return _message(kind, body)


def _message(kind: DocKind, body: Mapping[str, Any]) -> bytes:
    return b"sealgw/v1 " + kind.value.encode("ascii") + b"\x00" + canonical_bytes(body)


def sign_body(key: Ed25519PrivateKey, kind: DocKind, body: Mapping[str, Any]) -> bytes:
    """Ed25519 signature of a body (master station side)."""
    return key.sign(signed_message(kind, body))


def verify_body(key: Ed25519PublicKey, kind: DocKind, body: Mapping[str, Any], sig: bytes) -> None:
    """Raise AuthError(code='bad_signature') unless `sig` is the master key's signature.

    No integer walk here: every body verified comes from `open_document`, whose parser refuses
    fractions, exponents and integers beyond ±(2**53 - 1) already, and `sign_body` refuses to
    sign one; walking a large revocation list again on every decision cost a fifth of them.
    """
    try:
        key.verify(sig, _message(kind, body))
    except InvalidSignature:
        raise AuthError(
            f"{kind.value} signature does not verify", code=AuthCode.BAD_SIGNATURE
        ) from None


def check_signable(value: Any, path: str = "body") -> None:
    """ProtocolError unless every number in `value` is an integer within ±(2**53 - 1).

    Every signature made or checked walks its body, so the common case is one flat scan with
    no path strings; only a body that fails is walked again to name where.
    """
    if not _all_signable(value):
        _explain_unsignable(value, path)


def _all_signable(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bool) or item is None:
            continue
        if isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return False
        elif isinstance(item, float):
            return False
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def _explain_unsignable(value: Any, path: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise ProtocolError(f"{path}: integer beyond ±(2**53 - 1) in a signed body")
    elif isinstance(value, float):
        raise ProtocolError(f"{path}: a signed body holds integers only, not {value!r}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _explain_unsignable(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _explain_unsignable(item, f"{path}[{index}]")


def encode_document(kind: DocKind, body: Mapping[str, Any], sig: bytes) -> bytes:
    """The canonical JSON bytes of a whole document."""
    return canonical_bytes({"v": DOC_VERSION, "kind": kind.value, "body": body, "sig": b64url(sig)})


def open_document(data: bytes | str, kind: DocKind) -> Envelope:
    """Parse an envelope of `kind`; raise ProtocolError on anything malformed or unexpected."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_DOC_BYTES:
        raise ProtocolError(f"document of {len(raw)} bytes exceeds {MAX_DOC_BYTES}")
    obj = _parse_json(raw)
    if not isinstance(obj, dict) or set(obj) != _ENVELOPE_KEYS:
        raise ProtocolError("a document is an object with exactly v, kind, body and sig")
    if type(obj["v"]) is not int or obj["v"] != DOC_VERSION:
        raise ProtocolError(f"unsupported document version {obj['v']!r}")
    if obj["kind"] != kind.value:
        raise ProtocolError(f"expected a {kind.value} document, got kind {obj['kind']!r}")
    if not isinstance(obj["body"], dict):
        raise ProtocolError("document body must be an object")
    sig = b64url_decode(_need_str(obj["sig"], "sig"), "sig")
    if len(sig) != SIG_LEN:
        raise ProtocolError(f"sig must be {SIG_LEN} bytes")
    return Envelope(kind, obj["body"], sig)


def b64url(data: bytes) -> str:
    """Unpadded base64url text."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, name: str) -> bytes:
    """Decode unpadded base64url, accepting only its one canonical spelling."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ProtocolError(f"{name} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{name} is not unpadded base64url") from None
    if b64url(data) != text:
        raise ProtocolError(f"{name} is not canonical base64url")
    return data


# -- strict body readers (shared by tickets.py and certs.py) ------------------------------------


def check_keys(body: Mapping[str, Any], expected: frozenset[str], what: str) -> None:
    """Reject a body with a missing or an unknown member."""
    if set(body) != expected:
        missing = sorted(expected - set(body))
        extra = sorted(set(body) - expected)
        raise ProtocolError(f"{what}: missing {missing}, unknown {extra}")


def need_int(body: Mapping[str, Any], name: str, low: int = 0, high: int = U32_MAX) -> int:
    """An integer member within [low, high]; booleans and floats are not integers."""
    value = body[name]
    if type(value) is not int or not low <= value <= high:
        raise ProtocolError(f"{name} must be an integer in {low}..{high}")
    return value


def need_id(body: Mapping[str, Any], name: str) -> str:
    """An identifier member: 1 to 64 of [A-Za-z0-9._-]."""
    return need_match(body, name, ID_PATTERN)


def need_match(body: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    """A string member matching `pattern`."""
    value = _need_str(body[name], name)
    if not pattern.fullmatch(value):
        raise ProtocolError(f"{name} {value!r} does not match {pattern.pattern}")
    return value


def need_text(body: Mapping[str, Any], name: str, max_len: int) -> str:
    """A free-text member of 1..max_len characters without control characters."""
    value = _need_str(body[name], name)
    if not 1 <= len(value) <= max_len or any(ord(ch) < 0x20 for ch in value):
        raise ProtocolError(f"{name} must be 1..{max_len} printable characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"{name} is not valid Unicode text") from None
    return value


def need_bytes(body: Mapping[str, Any], name: str, length: int) -> bytes:
    """A base64url member decoding to exactly `length` bytes."""
    value = b64url_decode(_need_str(body[name], name), name)
    if len(value) != length:
        raise ProtocolError(f"{name} must be {length} bytes")
    return value


def need_list(
    body: Mapping[str, Any],
    name: str,
    item: Callable[[Any, str], T],
    *,
    min_len: int = 0,
    max_len: int = 10_000,
) -> tuple[T, ...]:
    """A list member of unique items, each read by `item(value, label)`."""
    value = body[name]
    if not isinstance(value, list) or not min_len <= len(value) <= max_len:
        raise ProtocolError(f"{name} must be a list of {min_len}..{max_len} items")
    items = tuple(item(element, f"{name}[{index}]") for index, element in enumerate(value))
    if len(set(items)) != len(items):
        raise ProtocolError(f"{name} has duplicate items")
    return items


def id_item(value: Any, label: str) -> str:
    """A list item that is an identifier."""
    return need_id({label: value}, label)


def _need_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{name} must be a string")
    return value


def _parse_json(raw: bytes) -> Any:
    return loads_strict(
        raw,
        not_json="document is not JSON: {}",
        duplicate="document has a duplicate member name",
        constant="document contains {}, which JSON does not allow",
        max_bytes=MAX_DOC_BYTES,
        integers_only=True,
    )
