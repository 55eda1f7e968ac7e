"""Handheld protocol codec: length-prefixed frames and the versioned JSON messages they carry.

Pure: bytes in, messages out. A frame is a 4-byte big-endian length then that many bytes of
canonical JSON, one message `{"v":2,"type":T,...}` with exactly the members of its type.
Version 2 replaced the HMAC-bound pairing code of version 1 with SPAKE2; a `refusal` keeps one
layout in every version, so each side can read the other's refusal of its version.
The cryptography (transcripts, handshakes, the record channel) is in handheld_crypto.py;
the whole protocol is specified in docs/handheld.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.errors import ProtocolError
from gateway.protocol.canonical import canonical_bytes
from gateway.protocol.signed import b64url, b64url_decode
from gateway.protocol.strict_json import loads_strict

__all__ = [
    "DEFAULT_LISTEN",
    "FRAME_HEADER_LEN",
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "HandheldReason",
    "Message",
    "PairChallenge",
    "PairDone",
    "PairHello",
    "PairProof",
    "Record",
    "RecordKind",
    "Refusal",
    "SessionAccept",
    "SessionConfirm",
    "SessionHello",
    "UnsupportedVersionError",
    "decode_frame",
    "decode_message",
    "encode_frame",
    "encode_message",
    "message_fields",
]

PROTOCOL_VERSION = 2
REFUSAL_VERSIONS = frozenset({1, 2})
"""Versions whose `refusal` has today's layout: one is read, and answered, in any of them."""
DEFAULT_LISTEN = "tcp:127.0.0.1:7421"
"""Where the gateway listens for handhelds unless `handheld.listen` says otherwise."""
FRAME_HEADER_LEN = 4
MAX_FRAME = 64 * 1024
KEY_LEN = 32
NONCE_LEN = 16
PAKE_LEN = 33
"""A SPAKE2 message: the side byte (`A` handheld, `B` gateway) and a 32-byte Ed25519 element."""
PAKE_SIDE_HANDHELD = b"A"
PAKE_SIDE_GATEWAY = b"B"
SIG_LEN = 64
MAC_LEN = 32
MAX_COUNTER = 2**32 - 1
MAX_CERT_CHARS = 16 * 1024
MAX_DETAIL = 200
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_REASON = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class HandheldReason(StrEnum):
    """Stable reason codes for refused pairings, sessions and records (docs/handheld.md)."""

    MALFORMED = "malformed"
    UNEXPECTED_MESSAGE = "unexpected_message"
    BAD_CERTIFICATE = "bad_certificate"
    CERTIFICATE_NOT_YET_VALID = "certificate_not_yet_valid"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_REVOKED = "certificate_revoked"
    DISTRICT_OUT_OF_SCOPE = "district_out_of_scope"
    STOLEN_CERTIFICATE_NO_KEY = "stolen_certificate_no_key"
    NO_CODE = "no_code"
    CODE_USED = "code_used"
    CODE_EXPIRED = "code_expired"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    BAD_CODE = "bad_code"
    UNPAIRED_DEVICE = "unpaired_device"
    REPLAYED_REQUEST = "replayed_request"
    REORDERED_REQUEST = "reordered_request"
    BAD_RECORD = "bad_record"
    COUNTER_EXHAUSTED = "counter_exhausted"
    STORAGE_FULL = "storage_full"
    TIMEOUT = "timeout"
    UNSUPPORTED_VERSION = "unsupported_version"


class UnsupportedVersionError(ProtocolError):
    """A well-formed message of another protocol version; `version` is what the peer speaks."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"handheld protocol version {version} is not supported; "
            f"this end speaks version {PROTOCOL_VERSION}"
        )
        self.version = version


class RecordKind(StrEnum):
    """Encrypted records: the gateway's `ready`, then request/response pairs."""

    READY = "ready"
    REQUEST = "req"
    RESPONSE = "resp"


@dataclass(frozen=True, slots=True)
class PairHello:
    """HT → GW: the MS-signed certificate document, the handheld's SPAKE2 message and a nonce."""

    certificate: str
    pake: bytes
    nonce: bytes


@dataclass(frozen=True, slots=True)
class PairChallenge:
    """GW → HT: the gateway's id, identity key, SPAKE2 message, nonce; signed over transcript 1."""

    gateway: str
    gateway_key: bytes
    pake: bytes
    nonce: bytes
    sig: bytes


@dataclass(frozen=True, slots=True)
class PairProof:
    """HT → GW: device-key signature and SPAKE2 key-confirmation MAC over transcript 2."""

    sig: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class PairDone:
    """GW → HT: pairing recorded at `paired_at`; the MAC proves the gateway knew the code."""

    paired_at: int
    mac: bytes


@dataclass(frozen=True, slots=True)
class SessionHello:
    """HT → GW: which paired device is calling, an ephemeral X25519 key and a nonce."""

    device_key: bytes
    eph: bytes
    nonce: bytes


@dataclass(frozen=True, slots=True)
class SessionAccept:
    """GW → HT: gateway ephemeral and nonce, identity signature and key-confirmation MAC."""

    gateway: str
    eph: bytes
    nonce: bytes
    sig: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class SessionConfirm:
    """HT → GW: device-key signature and key-confirmation MAC over transcript 2."""

    sig: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class Record:
    """An AEAD-protected message of a session; `ctr` is in the nonce and the AD."""

    kind: RecordKind
    ctr: int
    ct: bytes


@dataclass(frozen=True, slots=True)
class Refusal:
    """Either side: the exchange is over, because of `reason` (unauthenticated, advisory)."""

    reason: str
    detail: str = ""


Message = (
    PairHello
    | PairChallenge
    | PairProof
    | PairDone
    | SessionHello
    | SessionAccept
    | SessionConfirm
    | Record
    | Refusal
)

_TYPES: Mapping[type[Any], str] = {
    PairHello: "pair_hello",
    PairChallenge: "pair_challenge",
    PairProof: "pair_proof",
    PairDone: "pair_done",
    SessionHello: "session_hello",
    SessionAccept: "session_accept",
    SessionConfirm: "session_confirm",
    Record: "record",
    Refusal: "refusal",
}


# -- frames -------------------------------------------------------------------------------------


def encode_frame(payload: bytes) -> bytes:
    """Prefix `payload` with its 4-byte big-endian length."""
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return len(payload).to_bytes(FRAME_HEADER_LEN, "big") + payload


def decode_frame(buf: bytes) -> tuple[int, bytes | None]:
    """(bytes consumed, payload), or (0, None) when more bytes are needed.

    An announced length above MAX_FRAME raises ProtocolError: the stream cannot be resynced.
    """
    if len(buf) < FRAME_HEADER_LEN:
        return 0, None
    length = int.from_bytes(buf[:FRAME_HEADER_LEN], "big")
    if length > MAX_FRAME:
        raise ProtocolError(f"frame announces {length} bytes, more than {MAX_FRAME}")
    end = FRAME_HEADER_LEN + length
    if len(buf) < end:
        return 0, None
    return end, bytes(buf[FRAME_HEADER_LEN:end])


# -- messages -----------------------------------------------------------------------------------


def message_fields(message: Message, version: int = PROTOCOL_VERSION) -> dict[str, Any]:
    """The JSON members of a message (with `v` and `type`), as signed and sent.

    Only a Refusal may be written in an older version (to answer a peer that speaks it).
    """
    if version != PROTOCOL_VERSION and not (
        isinstance(message, Refusal) and version in REFUSAL_VERSIONS
    ):
        raise ProtocolError(f"only a refusal can be written in version {version}")
    fields: dict[str, Any] = {"v": version, "type": _TYPES[type(message)]}
    for name in message.__slots__:
        fields[_WIRE_NAMES.get(name, name)] = _to_json(getattr(message, name))
    return fields


def encode_message(message: Message, version: int = PROTOCOL_VERSION) -> bytes:
    """The canonical JSON bytes of a message."""
    return canonical_bytes(message_fields(message, version))


def decode_message(payload: bytes) -> Message:
    """Parse one message strictly; raise ProtocolError on anything malformed or unknown."""
    obj = _parse_json(payload)
    if not isinstance(obj, dict):
        raise ProtocolError("a handheld message is a JSON object")
    kind = obj.get("type")
    _check_version(obj.get("v"), kind)
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise ProtocolError(f"unknown handheld message type {kind!r}")
    members, build = parser
    if set(obj) != members | {"v", "type"}:
        raise ProtocolError(f"{kind}: members must be exactly {sorted(members)}")
    return build(obj)


# -- private helpers ----------------------------------------------------------------------------


def _check_version(version: Any, kind: Any) -> None:
    """Today's version passes; a refusal of any REFUSAL_VERSIONS too; other ints are reported."""
    if type(version) is not int:
        raise ProtocolError(f"handheld protocol version {version!r} is not an integer")
    if version == PROTOCOL_VERSION or (kind == "refusal" and version in REFUSAL_VERSIONS):
        return
    raise UnsupportedVersionError(version)


_WIRE_NAMES = {"certificate": "cert", "gateway_key": "gw_key"}


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return b64url(value)
    return value.value if isinstance(value, StrEnum) else value


def _parse_json(raw: bytes) -> Any:
    return loads_strict(
        raw,
        not_json="handheld message is not JSON: {}",
        duplicate="handheld message has a duplicate member",
        constant="handheld message contains {}",
    )


def _bytes(obj: Mapping[str, Any], name: str, length: int) -> bytes:
    value = obj[name]
    if not isinstance(value, str):
        raise ProtocolError(f"{name} must be a base64url string")
    data = b64url_decode(value, name)
    if len(data) != length:
        raise ProtocolError(f"{name} must be {length} bytes")
    return data


def _text(obj: Mapping[str, Any], name: str, pattern: re.Pattern[str] | None, limit: int) -> str:
    value = obj[name]
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"{name} must be a string of at most {limit} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise ProtocolError(f"{name} {value!r} does not match {pattern.pattern}")
    return value


def _int(obj: Mapping[str, Any], name: str, high: int) -> int:
    value = obj[name]
    if type(value) is not int or not 0 <= value <= high:
        raise ProtocolError(f"{name} must be an integer in 0..{high}")
    return value


def _pake(obj: Mapping[str, Any], side: bytes) -> bytes:
    data = _bytes(obj, "pake", PAKE_LEN)
    if data[:1] != side:
        raise ProtocolError(f"pake must start with the side byte {side!r}")
    return data


def _pair_hello(obj: Mapping[str, Any]) -> PairHello:
    cert = _text(obj, "cert", None, MAX_CERT_CHARS)
    return PairHello(cert, _pake(obj, PAKE_SIDE_HANDHELD), _bytes(obj, "nonce", NONCE_LEN))


def _pair_challenge(obj: Mapping[str, Any]) -> PairChallenge:
    return PairChallenge(
        gateway=_text(obj, "gateway", _ID, 64),
        gateway_key=_bytes(obj, "gw_key", KEY_LEN),
        pake=_pake(obj, PAKE_SIDE_GATEWAY),
        nonce=_bytes(obj, "nonce", NONCE_LEN),
        sig=_bytes(obj, "sig", SIG_LEN),
    )


def _pair_proof(obj: Mapping[str, Any]) -> PairProof:
    return PairProof(_bytes(obj, "sig", SIG_LEN), _bytes(obj, "mac", MAC_LEN))


def _pair_done(obj: Mapping[str, Any]) -> PairDone:
    return PairDone(_int(obj, "paired_at", 2**53 - 1), _bytes(obj, "mac", MAC_LEN))


def _session_hello(obj: Mapping[str, Any]) -> SessionHello:
    return SessionHello(
        _bytes(obj, "device_key", KEY_LEN),
        _bytes(obj, "eph", KEY_LEN),
        _bytes(obj, "nonce", NONCE_LEN),
    )


def _session_accept(obj: Mapping[str, Any]) -> SessionAccept:
    return SessionAccept(
        gateway=_text(obj, "gateway", _ID, 64),
        eph=_bytes(obj, "eph", KEY_LEN),
        nonce=_bytes(obj, "nonce", NONCE_LEN),
        sig=_bytes(obj, "sig", SIG_LEN),
        mac=_bytes(obj, "mac", MAC_LEN),
    )


def _session_confirm(obj: Mapping[str, Any]) -> SessionConfirm:
    return SessionConfirm(_bytes(obj, "sig", SIG_LEN), _bytes(obj, "mac", MAC_LEN))


def _record(obj: Mapping[str, Any]) -> Record:
    kind = obj["kind"]
    if kind not in set(RecordKind):
        raise ProtocolError(f"unknown record kind {kind!r}")
    ct = obj["ct"]
    if not isinstance(ct, str):
        raise ProtocolError("ct must be a base64url string")
    data = b64url_decode(ct, "ct")
    if len(data) < 16:
        raise ProtocolError("ct is shorter than its tag")
    return Record(RecordKind(kind), _int(obj, "ctr", MAX_COUNTER), data)


def _refusal(obj: Mapping[str, Any]) -> Refusal:
    return Refusal(_text(obj, "reason", _REASON, 48), _text(obj, "detail", None, MAX_DETAIL))


_PARSERS: Mapping[str, tuple[frozenset[str], Callable[[Mapping[str, Any]], Message]]] = {
    "pair_hello": (frozenset({"cert", "pake", "nonce"}), _pair_hello),
    "pair_challenge": (frozenset({"gateway", "gw_key", "pake", "nonce", "sig"}), _pair_challenge),
    "pair_proof": (frozenset({"sig", "mac"}), _pair_proof),
    "pair_done": (frozenset({"paired_at", "mac"}), _pair_done),
    "session_hello": (frozenset({"device_key", "eph", "nonce"}), _session_hello),
    "session_accept": (frozenset({"gateway", "eph", "nonce", "sig", "mac"}), _session_accept),
    "session_confirm": (frozenset({"sig", "mac"}), _session_confirm),
    "record": (frozenset({"kind", "ctr", "ct"}), _record),
    "refusal": (frozenset({"reason", "detail"}), _refusal),
}
