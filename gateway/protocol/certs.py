"""Operator certificates and revocation lists, signed by the master station (docs/authorization.md).

An operator certificate binds an operator id to a name, roles, district scope, the Ed25519
key of the operator's handheld and a validity window. A revocation list names revoked tickets,
operators and certificate serials; it carries a serial number and only a higher serial
replaces the one a gateway holds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.errors import ProtocolError
from gateway.protocol.signed import (
    Body,
    DocKind,
    b64url,
    check_keys,
    encode_document,
    id_item,
    need_bytes,
    need_id,
    need_int,
    need_list,
    need_match,
    need_text,
    open_document,
    sign_body,
    verify_body,
)
from gateway.protocol.tickets import NAME_PATTERN, TICKET_ID_PATTERN

__all__ = [
    "CERT_SERIAL_PATTERN",
    "OperatorCertificate",
    "RevocationList",
    "certificate_body",
    "decode_certificate",
    "decode_revocations",
    "encode_certificate",
    "encode_revocations",
    "parse_certificate",
    "parse_revocations",
    "revocations_body",
    "sign_certificate",
    "sign_revocations",
    "verify_certificate",
    "verify_revocations",
]

CERT_SERIAL_PATTERN = re.compile(r"^[0-9a-f]{16}$")
DEVICE_KEY_LEN = 32
MAX_NAME_LEN = 128
MAX_ROLES = 16
MAX_DISTRICTS = 256
MAX_REVOKED = 4096
MAX_SERIAL = 2**53 - 1

_CERT_KEYS = frozenset(
    {
        "serial",
        "operator",
        "name",
        "roles",
        "districts",
        "device_key",
        "not_before",
        "not_after",
        "issued_at",
    }
)
_REVOCATION_KEYS = frozenset({"serial", "issued_at", "tickets", "operators", "certificates"})


@dataclass(frozen=True, slots=True)
class OperatorCertificate:
    """Who an operator is, what roles they hold, where, and which handheld key speaks for them."""

    serial: str
    operator: str
    name: str
    roles: tuple[str, ...]
    districts: tuple[str, ...]
    device_key: bytes
    not_before: int
    not_after: int
    issued_at: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class RevocationList:
    """Revoked tickets, operators and certificates; a higher serial supersedes a lower one."""

    serial: int
    issued_at: int
    tickets: tuple[str, ...]
    operators: tuple[str, ...]
    certificates: tuple[str, ...]
    signature: bytes = b""

    def revokes_ticket(self, ticket_id: str) -> bool:
        """True when the ticket is revoked."""
        return ticket_id in self.tickets

    def revokes_operator(self, operator: str) -> bool:
        """True when every ticket and certificate of the operator is revoked."""
        return operator in self.operators

    def revokes_certificate(self, serial: str) -> bool:
        """True when the certificate with this serial is revoked."""
        return serial in self.certificates


# -- operator certificates --------------------------------------------------------------------


def certificate_body(cert: OperatorCertificate) -> Body:
    """The JSON body that is signed and sent."""
    return {
        "serial": cert.serial,
        "operator": cert.operator,
        "name": cert.name,
        "roles": list(cert.roles),
        "districts": list(cert.districts),
        "device_key": b64url(cert.device_key),
        "not_before": cert.not_before,
        "not_after": cert.not_after,
        "issued_at": cert.issued_at,
    }


def sign_certificate(key: Ed25519PrivateKey, cert: OperatorCertificate) -> OperatorCertificate:
    """Return `cert` signed by the master station key (after checking it re-parses)."""
    body = certificate_body(cert)
    _parse_certificate(body, b"")
    return replace(cert, signature=sign_body(key, DocKind.OPERATOR_CERTIFICATE, body))


def encode_certificate(cert: OperatorCertificate) -> bytes:
    """The canonical document bytes of a signed certificate."""
    return encode_document(DocKind.OPERATOR_CERTIFICATE, certificate_body(cert), cert.signature)


def decode_certificate(data: bytes | str, master_key: Ed25519PublicKey) -> OperatorCertificate:
    """Parse and verify a certificate: ProtocolError if malformed, AuthError if forged."""
    cert = parse_certificate(data)
    verify_certificate(cert, master_key)
    return cert


def parse_certificate(data: bytes | str) -> OperatorCertificate:
    """Parse a certificate document without verifying it; the caller must."""
    envelope = open_document(data, DocKind.OPERATOR_CERTIFICATE)
    return _parse_certificate(envelope.body, envelope.sig)


def verify_certificate(cert: OperatorCertificate, master_key: Ed25519PublicKey) -> None:
    """Raise AuthError(code='bad_signature') unless MS signed exactly these fields."""
    body = certificate_body(cert)
    verify_body(master_key, DocKind.OPERATOR_CERTIFICATE, body, cert.signature)


# -- revocation lists -------------------------------------------------------------------------


def revocations_body(revocations: RevocationList) -> Body:
    """The JSON body that is signed and sent."""
    return {
        "serial": revocations.serial,
        "issued_at": revocations.issued_at,
        "tickets": list(revocations.tickets),
        "operators": list(revocations.operators),
        "certificates": list(revocations.certificates),
    }


def sign_revocations(key: Ed25519PrivateKey, revocations: RevocationList) -> RevocationList:
    """Return the list signed by the master station key (after checking it re-parses)."""
    body = revocations_body(revocations)
    _parse_revocations(body, b"")
    return replace(revocations, signature=sign_body(key, DocKind.REVOCATION_LIST, body))


def encode_revocations(revocations: RevocationList) -> bytes:
    """The canonical document bytes of a signed revocation list."""
    body = revocations_body(revocations)
    return encode_document(DocKind.REVOCATION_LIST, body, revocations.signature)


def decode_revocations(data: bytes | str, master_key: Ed25519PublicKey) -> RevocationList:
    """Parse and verify a revocation list: ProtocolError if malformed, AuthError if forged."""
    revocations = parse_revocations(data)
    verify_revocations(revocations, master_key)
    return revocations


def parse_revocations(data: bytes | str) -> RevocationList:
    """Parse a revocation list without verifying it; the caller must."""
    envelope = open_document(data, DocKind.REVOCATION_LIST)
    return _parse_revocations(envelope.body, envelope.sig)


def verify_revocations(revocations: RevocationList, master_key: Ed25519PublicKey) -> None:
    """Raise AuthError(code='bad_signature') unless MS signed exactly these fields."""
    body = revocations_body(revocations)
    verify_body(master_key, DocKind.REVOCATION_LIST, body, revocations.signature)


# -- private helpers --------------------------------------------------------------------------


def _parse_certificate(body: Mapping[str, Any], sig: bytes) -> OperatorCertificate:
    check_keys(body, _CERT_KEYS, "operator certificate")
    not_before = need_int(body, "not_before")
    not_after = need_int(body, "not_after")
    if not_before > not_after:
        raise ProtocolError("certificate validity ends before it starts")
    return OperatorCertificate(
        serial=need_match(body, "serial", CERT_SERIAL_PATTERN),
        operator=need_id(body, "operator"),
        name=need_text(body, "name", MAX_NAME_LEN),
        roles=need_list(body, "roles", _name_item, min_len=1, max_len=MAX_ROLES),
        districts=need_list(body, "districts", id_item, min_len=1, max_len=MAX_DISTRICTS),
        device_key=need_bytes(body, "device_key", DEVICE_KEY_LEN),
        not_before=not_before,
        not_after=not_after,
        issued_at=need_int(body, "issued_at"),
        signature=sig,
    )


def _parse_revocations(body: Mapping[str, Any], sig: bytes) -> RevocationList:
    check_keys(body, _REVOCATION_KEYS, "revocation list")
    return RevocationList(
        serial=need_int(body, "serial", 1, MAX_SERIAL),
        issued_at=need_int(body, "issued_at"),
        tickets=need_list(body, "tickets", _ticket_id_item, max_len=MAX_REVOKED),
        operators=need_list(body, "operators", id_item, max_len=MAX_REVOKED),
        certificates=need_list(body, "certificates", _serial_item, max_len=MAX_REVOKED),
        signature=sig,
    )


def _name_item(value: Any, label: str) -> str:
    return need_match({label: value}, label, NAME_PATTERN)


def _ticket_id_item(value: Any, label: str) -> str:
    return need_match({label: value}, label, TICKET_ID_PATTERN)


def _serial_item(value: Any, label: str) -> str:
    return need_match({label: value}, label, CERT_SERIAL_PATTERN)
