"""Tickets: the master station's signed grant of lock operations to one operator via one gateway.

A ticket names a work order, a business flow, an operator and role, this gateway, 1 to 16
seals (each with its 8-byte lock id, carried explicitly) and a time window. For each seal it
carries K_TL (docs/protocol.md, section 6) encrypted to the gateway's X25519 credential key.
The lock never sees the JSON: it checks the compact binary header that `ticket_header`
projects from the ticket, and K_TL is derived from that header. Format: docs/authorization.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.errors import AuthCode, AuthError, ProtocolError
from gateway.protocol.seal_crypto import KEY_LEN
from gateway.protocol.seal_exchange import TicketCredential
from gateway.protocol.seal_frames import (
    LOCK_ID_LEN,
    MAX_LOCKS_PER_TICKET,
    Operation,
    TicketHeader,
    encode_ticket_header,
)
from gateway.protocol.signed import (
    U32_MAX,
    Body,
    DocKind,
    b64url,
    check_keys,
    encode_document,
    need_bytes,
    need_id,
    need_int,
    need_list,
    need_match,
    open_document,
    sign_body,
    verify_body,
)

__all__ = [
    "CREDENTIAL_ALG",
    "DEFAULT_GRANTS",
    "LOCK_OPS",
    "NAME_PATTERN",
    "TICKET_ID_PATTERN",
    "Flow",
    "Op",
    "SealGrant",
    "Ticket",
    "decode_ticket",
    "encode_ticket",
    "encrypt_credential",
    "open_credential",
    "operator_tag",
    "parse_ticket",
    "sign_ticket",
    "ticket_body",
    "ticket_header",
    "ticket_seals",
    "verify_ticket",
    "x25519_public_bytes",
]

CREDENTIAL_ALG = "X25519-HKDF-SHA256-A256GCM"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
TICKET_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
LOCK_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
MAX_USES = 65_535
MAX_OPS = 16
NONCE_LEN = 12
SEALED_KEY_LEN = KEY_LEN + 16
X25519_LEN = 32
CREDENTIAL_SALT = b"sealgw/v1 credential"
CREDENTIAL_AD_LABEL = b"sealgw/v1 credential\x00"
OPERATOR_TAG_LABEL = b"sealgw/v1 operator-tag\x00"

_TICKET_KEYS = frozenset(
    {
        "ticket_id",
        "work_order",
        "flow",
        "operator",
        "role",
        "gateway",
        "ops",
        "not_before",
        "not_after",
        "max_uses",
        "issued_at",
        "enc",
        "seals",
    }
)
_ENC_KEYS = frozenset({"alg", "recipient", "ephemeral"})
_SEAL_KEYS = frozenset({"seal_id", "lock_id", "nonce", "key"})


class Op(StrEnum):
    """Operations a ticket may grant; the first three are lock commands, the rest are reads."""

    UNSEAL = "unseal"
    SEAL = "seal"
    SET_TIME = "set_time"
    READ_STATE = "read_state"
    READ_LOG = "read_log"


class Flow(StrEnum):
    """Business flows a work order belongs to."""

    NEW_INSTALL = "new_install"
    METER_REPLACE = "meter_replace"
    COLLECTION_FIX = "collection_fix"
    ROTATION = "rotation"
    AUDIT = "audit"


_READS = frozenset({Op.READ_STATE.value, Op.READ_LOG.value})
_OPEN_CLOSE = frozenset({Op.UNSEAL.value, Op.SEAL.value}) | _READS
_ALL = _OPEN_CLOSE | {Op.SET_TIME.value}
DEFAULT_GRANTS: Mapping[str, Mapping[str, frozenset[str]]] = {
    Flow.NEW_INSTALL.value: {"district_manager": _ALL, "meter_installer": _ALL},
    Flow.METER_REPLACE.value: {"district_manager": _ALL, "meter_installer": _OPEN_CLOSE},
    Flow.COLLECTION_FIX.value: {"district_manager": _ALL, "meter_installer": _OPEN_CLOSE},
    Flow.ROTATION.value: {"district_manager": _ALL, "meter_installer": _OPEN_CLOSE},
    Flow.AUDIT.value: {"district_manager": _ALL, "auditor": _READS},
}
"""The role table gateways enforce by default (docs/authorization.md): flow -> role -> ops.
The master station shows it before signing; a gateway's config may override it."""

LOCK_OPS: Mapping[str, Operation] = {
    Op.UNSEAL: Operation.UNSEAL,
    Op.SEAL: Operation.SEAL,
    Op.SET_TIME: Operation.SET_TIME,
}


@dataclass(frozen=True, slots=True)
class SealGrant:
    """One seal of a ticket: its lock id and its K_TL sealed to the gateway."""

    seal_id: str
    lock_id: bytes
    nonce: bytes
    sealed_key: bytes


@dataclass(frozen=True, slots=True)
class Ticket:
    """A master-station ticket; `signature` covers every other field (see ticket_body)."""

    ticket_id: str
    work_order: str
    flow: str
    operator: str
    role: str
    gateway: str
    ops: tuple[str, ...]
    not_before: int
    not_after: int
    max_uses: int
    issued_at: int
    recipient: bytes
    ephemeral: bytes
    seals: tuple[SealGrant, ...]
    signature: bytes = b""

    def grant(self, seal_id: str) -> SealGrant | None:
        """The grant for `seal_id`, or None when the seal is out of this ticket's scope."""
        return next((g for g in self.seals if g.seal_id == seal_id), None)

    @property
    def seal_ids(self) -> tuple[str, ...]:
        """The seals this ticket covers, in header order."""
        return tuple(grant.seal_id for grant in self.seals)

    @property
    def lock_ops(self) -> frozenset[Operation]:
        """The lock commands this ticket allows (the header's ops mask)."""
        return frozenset(LOCK_OPS[op] for op in self.ops if op in LOCK_OPS)


def ticket_body(ticket: Ticket) -> Body:
    """The JSON body that is signed and sent."""
    return {
        "ticket_id": ticket.ticket_id,
        "work_order": ticket.work_order,
        "flow": ticket.flow,
        "operator": ticket.operator,
        "role": ticket.role,
        "gateway": ticket.gateway,
        "ops": list(ticket.ops),
        "not_before": ticket.not_before,
        "not_after": ticket.not_after,
        "max_uses": ticket.max_uses,
        "issued_at": ticket.issued_at,
        "enc": {
            "alg": CREDENTIAL_ALG,
            "recipient": b64url(ticket.recipient),
            "ephemeral": b64url(ticket.ephemeral),
        },
        "seals": [_grant_body(grant) for grant in ticket.seals],
    }


def sign_ticket(key: Ed25519PrivateKey, ticket: Ticket) -> Ticket:
    """Return `ticket` signed by the master station key (after checking it re-parses)."""
    body = ticket_body(ticket)
    _parse_body(body, b"")
    return replace(ticket, signature=sign_body(key, DocKind.TICKET, body))


def encode_ticket(ticket: Ticket) -> bytes:
    """The canonical document bytes of a signed ticket."""
    return encode_document(DocKind.TICKET, ticket_body(ticket), ticket.signature)


def decode_ticket(data: bytes | str, master_key: Ed25519PublicKey) -> Ticket:
    """Parse and verify a ticket document: ProtocolError if malformed, AuthError if forged."""
    ticket = parse_ticket(data)
    verify_ticket(ticket, master_key)
    return ticket


def parse_ticket(data: bytes | str) -> Ticket:
    """Parse a ticket document without verifying it; the caller must (policy.decide does)."""
    envelope = open_document(data, DocKind.TICKET)
    return _parse_body(envelope.body, envelope.sig)


def verify_ticket(ticket: Ticket, master_key: Ed25519PublicKey) -> None:
    """Raise AuthError(code='bad_signature') unless MS signed exactly these fields."""
    verify_body(master_key, DocKind.TICKET, ticket_body(ticket), ticket.signature)


def operator_tag(operator: str) -> bytes:
    """The 8-byte operator tag a lock logs: SHA-256(label || operator id)[:8]."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(OPERATOR_TAG_LABEL + operator.encode("utf-8"))
    return digest.finalize()[:8]


def ticket_header(ticket: Ticket) -> bytes:
    """The compact binary header (docs/protocol.md, section 6) the lock checks for this ticket."""
    header = TicketHeader(
        ticket_id=bytes.fromhex(ticket.ticket_id),
        not_before=ticket.not_before,
        not_after=ticket.not_after,
        ops=ticket.lock_ops,
        operator=operator_tag(ticket.operator),
        lock_ids=tuple(grant.lock_id for grant in ticket.seals),
        audit=ticket.flow == Flow.AUDIT,
    )
    return encode_ticket_header(header)


def encrypt_credential(
    ephemeral: X25519PrivateKey,
    recipient: bytes,
    *,
    ticket_id: str,
    seal_id: str,
    lock_id: bytes,
    k_tl: bytes,
    nonce: bytes | None = None,
) -> SealGrant:
    """Seal K_TL for one lock to the gateway's X25519 key (master station side).

    `nonce` is drawn at random unless given (test vectors only): one ephemeral key per ticket,
    one nonce per seal.
    """
    kek = _kek(ephemeral.exchange(_x25519(recipient)), x25519_public_bytes(ephemeral), recipient)
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    sealed = AESGCM(kek).encrypt(nonce, k_tl, _credential_ad(ticket_id, seal_id, lock_id))
    return SealGrant(seal_id, lock_id, nonce, sealed)


def open_credential(
    ticket: Ticket, seal_id: str, gateway_key: X25519PrivateKey
) -> TicketCredential:
    """Decrypt K_TL for `seal_id` and pair it with the ticket header, ready for seal_exchange."""
    grant = ticket.grant(seal_id)
    if grant is None:
        raise AuthError(
            f"seal {seal_id} is not in ticket {ticket.ticket_id}", code=AuthCode.WRONG_LOCK
        )
    if x25519_public_bytes(gateway_key) != ticket.recipient:
        raise AuthError(
            "ticket is encrypted to another credential key", code=AuthCode.WRONG_RECIPIENT
        )
    try:
        shared = gateway_key.exchange(_x25519(ticket.ephemeral))
        kek = _kek(shared, ticket.ephemeral, ticket.recipient)
        ad = _credential_ad(ticket.ticket_id, seal_id, grant.lock_id)
        k_tl = AESGCM(kek).decrypt(grant.nonce, grant.sealed_key, ad)
    except (InvalidTag, ValueError):
        raise AuthError(
            "ticket credential does not decrypt", code=AuthCode.BAD_CREDENTIAL
        ) from None
    return TicketCredential(grant.lock_id, ticket_header(ticket), k_tl)


def x25519_public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of an X25519 private key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def ticket_seals(
    ephemeral: X25519PrivateKey,
    recipient: bytes,
    ticket_id: str,
    seals: Iterable[tuple[str, bytes, bytes]],
) -> tuple[SealGrant, ...]:
    """Encrypt every (seal_id, lock_id, K_TL) of one ticket under one ephemeral key."""
    return tuple(
        encrypt_credential(
            ephemeral, recipient, ticket_id=ticket_id, seal_id=seal_id, lock_id=lock_id, k_tl=k_tl
        )
        for seal_id, lock_id, k_tl in seals
    )


# -- private helpers --------------------------------------------------------------------------


def _parse_body(body: Mapping[str, Any], sig: bytes) -> Ticket:
    check_keys(body, _TICKET_KEYS, "ticket")
    not_before = need_int(body, "not_before")
    not_after = need_int(body, "not_after")
    if not_before > not_after:
        raise ProtocolError("ticket window ends before it starts")
    recipient, ephemeral = _parse_enc(body["enc"])
    seals = need_list(body, "seals", _parse_grant, min_len=1, max_len=MAX_LOCKS_PER_TICKET)
    _check_unique([grant.seal_id for grant in seals], "seal ids")
    _check_unique([grant.lock_id for grant in seals], "lock ids")
    ops = need_list(body, "ops", _name_item, min_len=1, max_len=MAX_OPS)
    if Op.SET_TIME in ops and Op.UNSEAL in ops:
        raise ProtocolError("a ticket never grants set_time together with unseal")
    return Ticket(
        ticket_id=need_match(body, "ticket_id", TICKET_ID_PATTERN),
        work_order=need_id(body, "work_order"),
        flow=need_match(body, "flow", NAME_PATTERN),
        operator=need_id(body, "operator"),
        role=need_match(body, "role", NAME_PATTERN),
        gateway=need_id(body, "gateway"),
        ops=ops,
        not_before=not_before,
        not_after=not_after,
        max_uses=need_int(body, "max_uses", 1, MAX_USES),
        issued_at=need_int(body, "issued_at", 0, U32_MAX),
        recipient=recipient,
        ephemeral=ephemeral,
        seals=seals,
        signature=sig,
    )


def _parse_enc(enc: Any) -> tuple[bytes, bytes]:
    if not isinstance(enc, dict):
        raise ProtocolError("enc must be an object")
    check_keys(enc, _ENC_KEYS, "enc")
    if enc["alg"] != CREDENTIAL_ALG:
        raise ProtocolError(f"unsupported credential algorithm {enc['alg']!r}")
    return need_bytes(enc, "recipient", X25519_LEN), need_bytes(enc, "ephemeral", X25519_LEN)


def _parse_grant(value: Any, label: str) -> SealGrant:
    if not isinstance(value, dict):
        raise ProtocolError(f"{label} must be an object")
    check_keys(value, _SEAL_KEYS, label)
    return SealGrant(
        seal_id=need_id(value, "seal_id"),
        lock_id=bytes.fromhex(need_match(value, "lock_id", LOCK_ID_PATTERN)),
        nonce=need_bytes(value, "nonce", NONCE_LEN),
        sealed_key=need_bytes(value, "key", SEALED_KEY_LEN),
    )


def _grant_body(grant: SealGrant) -> Body:
    return {
        "seal_id": grant.seal_id,
        "lock_id": grant.lock_id.hex(),
        "nonce": b64url(grant.nonce),
        "key": b64url(grant.sealed_key),
    }


def _name_item(value: Any, label: str) -> str:
    return need_match({label: value}, label, NAME_PATTERN)


def _check_unique(values: list[Any], what: str) -> None:
    if len(set(values)) != len(values):
        raise ProtocolError(f"ticket repeats {what}")


def _credential_ad(ticket_id: str, seal_id: str, lock_id: bytes) -> bytes:
    if len(lock_id) != LOCK_ID_LEN:
        raise ProtocolError(f"lock id must be {LOCK_ID_LEN} bytes")
    return CREDENTIAL_AD_LABEL + bytes.fromhex(ticket_id) + lock_id + seal_id.encode("utf-8")


def _kek(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=CREDENTIAL_SALT, info=ephemeral + recipient
    )
    return hkdf.derive(shared)


def _x25519(raw: bytes) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise AuthError("not an X25519 public key", code=AuthCode.BAD_CREDENTIAL) from None
