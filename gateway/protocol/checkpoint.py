"""Signed checkpoints of the event chain: the gateway vouches for (seq, hash) with its identity.

A `gateway.checkpoint` event (priority audit) carries `covers_seq` and `covers_hash`, the chain
head when the checkpoint was made, and an Ed25519 signature by the gateway's identity key over
`"sealgw/v1 gateway.checkpoint" || 0x00 || JCS({covers_hash, covers_seq, gateway, ts})`, where
`gateway` and `ts` are the checkpoint event's own envelope fields. The checkpoint event is
committed after the head it covers, so its own seq is always greater than `covers_seq`
(usually `covers_seq + 1`). Format and verification: docs/audit.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from gateway.errors import ProtocolError
from gateway.protocol.canonical import JSONValue, canonical_bytes
from gateway.protocol.events import EventType, format_ts
from gateway.protocol.signed import b64url, b64url_decode

__all__ = [
    "CHECKPOINT_DOMAIN",
    "CHECKPOINT_TYPE",
    "DEFAULT_INTERVAL_S",
    "CheckpointClaim",
    "checkpoint_data",
    "checkpoint_message",
    "parse_checkpoint",
    "public_key_fingerprint",
    "verify_checkpoint",
]

CHECKPOINT_TYPE = EventType.GATEWAY_CHECKPOINT
CHECKPOINT_DOMAIN = b"sealgw/v1 gateway.checkpoint\x00"
DEFAULT_INTERVAL_S = 300.0
SIG_LEN = 64
_HASH = re.compile(r"^[0-9a-f]{64}$")
_DATA_KEYS = frozenset({"covers_seq", "covers_hash", "sig", "key_id"})


@dataclass(frozen=True, slots=True)
class CheckpointClaim:
    """What a checkpoint event asserts, read from its envelope and data (signature unchecked)."""

    gateway: str
    seq: int
    ts: str
    covers_seq: int
    covers_hash: str
    key_id: str
    sig: bytes


def checkpoint_message(gateway: str, covers_seq: int, covers_hash: str, ts: str) -> bytes:
    """The exact bytes signed: the domain label, a NUL, then JCS of the four claimed fields."""
    body = {"gateway": gateway, "covers_seq": covers_seq, "covers_hash": covers_hash, "ts": ts}
    return CHECKPOINT_DOMAIN + canonical_bytes(body)


def checkpoint_data(
    identity: Ed25519PrivateKey, gateway: str, head: tuple[int, str], moment: datetime
) -> dict[str, JSONValue]:
    """The `data` of a checkpoint event covering `head`, stamped (and signed) at `moment`."""
    covers_seq, covers_hash = head
    sig = identity.sign(checkpoint_message(gateway, covers_seq, covers_hash, format_ts(moment)))
    return {
        "covers_seq": covers_seq,
        "covers_hash": covers_hash,
        "sig": b64url(sig),
        "key_id": public_key_fingerprint(identity.public_key()),
    }


def parse_checkpoint(obj: Mapping[str, Any]) -> CheckpointClaim:
    """Read a checkpoint event object; raise ProtocolError when it is not a well-formed one."""
    if obj.get("type") != CHECKPOINT_TYPE:
        raise ProtocolError(f"not a {CHECKPOINT_TYPE} event")
    data = obj.get("data")
    if not isinstance(data, Mapping) or set(data) != _DATA_KEYS:
        raise ProtocolError(f"checkpoint data must hold exactly {sorted(_DATA_KEYS)}")
    seq, covers_seq = obj.get("seq"), data["covers_seq"]
    if type(seq) is not int or type(covers_seq) is not int or not 1 <= covers_seq < seq:
        raise ProtocolError("covers_seq must be an integer from 1 to the checkpoint's seq - 1")
    if not isinstance(data["covers_hash"], str) or not _HASH.match(data["covers_hash"]):
        raise ProtocolError("covers_hash must be 64 lowercase hex digits")
    if not all(isinstance(obj.get(name), str) for name in ("gateway", "ts")):
        raise ProtocolError("checkpoint gateway and ts must be strings")
    if not isinstance(data["key_id"], str) or not isinstance(data["sig"], str):
        raise ProtocolError("checkpoint key_id and sig must be strings")
    sig = b64url_decode(data["sig"], "sig")
    if len(sig) != SIG_LEN:
        raise ProtocolError(f"sig must be {SIG_LEN} bytes")
    return CheckpointClaim(
        obj["gateway"], seq, obj["ts"], covers_seq, data["covers_hash"], data["key_id"], sig
    )


def verify_checkpoint(event_obj: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """True when `event_obj` is a well-formed checkpoint signed by `public_key` (and names it)."""
    try:
        claim = parse_checkpoint(event_obj)
    except ProtocolError:
        return False
    if claim.key_id != public_key_fingerprint(public_key):
        return False
    message = checkpoint_message(claim.gateway, claim.covers_seq, claim.covers_hash, claim.ts)
    try:
        public_key.verify(claim.sig, message)
    except InvalidSignature:
        return False
    return True


def public_key_fingerprint(public_key: CertificatePublicKeyTypes) -> str:
    """`sha256:` + hex SHA-256 of the DER SubjectPublicKeyInfo (what openssl pkey -pubout gives)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()
