"""Signed remote commands: the body of a `kind: "command"` master-station document.

A command document is the signed envelope of gateway.protocol.signed with the body

    {"name": "config", "gateway": "gw-1", "issued_at": 1767225600, "expires_at": 1767225900,
     "nonce": "0f3a...", "args": {...}}

`name` must equal the cmd/ topic the document arrives on, `gateway` the receiving gateway's
id; times are Unix seconds; `nonce` is 16 to 64 of [A-Za-z0-9_-], unique per command, and is
what the gateway's replay cache remembers. The kind "command" is inside the signed message,
so a ticket or certificate signature never verifies as a command. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.errors import ProtocolError
from gateway.protocol.signed import (
    Body,
    DocKind,
    check_keys,
    encode_document,
    need_id,
    need_int,
    need_match,
    open_document,
    sign_body,
    verify_body,
)

__all__ = [
    "COMMAND_KEYS",
    "NONCE_PATTERN",
    "CommandBody",
    "command_body",
    "decode_command",
    "encode_command",
    "is_signed_document",
    "parse_command",
    "verify_command",
]

COMMAND_KEYS = frozenset({"name", "gateway", "issued_at", "expires_at", "nonce", "args"})
NONCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
NAME_PATTERN = re.compile(r"^[a-z0-9_./-]{1,64}$")
_TIME_MAX = 2**40  # Unix seconds far past any deployment; keeps arithmetic small


@dataclass(frozen=True, slots=True)
class CommandBody:
    """One command as the master station signed it."""

    name: str
    gateway: str
    issued_at: int
    expires_at: int
    nonce: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SignedCommand:
    """A parsed command document whose signature is not yet verified."""

    body: CommandBody
    raw_body: Body
    sig: bytes


def command_body(command: CommandBody) -> Body:
    """The JSON body that is signed and sent."""
    return {
        "name": command.name,
        "gateway": command.gateway,
        "issued_at": command.issued_at,
        "expires_at": command.expires_at,
        "nonce": command.nonce,
        "args": dict(command.args),
    }


def encode_command(key: Ed25519PrivateKey, command: CommandBody) -> bytes:
    """Sign `command` with the master station key; the document bytes to publish."""
    body = command_body(command)
    _parse_body(body)  # refuse to sign what the gateway would refuse to parse
    return encode_document(DocKind.COMMAND, body, sign_body(key, DocKind.COMMAND, body))


def is_signed_document(payload: Mapping[str, Any]) -> bool:
    """True when a decoded payload at least looks like a signed envelope (has a sig)."""
    return "sig" in payload and "body" in payload


def parse_command(raw: bytes) -> SignedCommand:
    """Parse a command document; ProtocolError on anything malformed. Not verified."""
    envelope = open_document(raw, DocKind.COMMAND)
    return SignedCommand(_parse_body(envelope.body), envelope.body, envelope.sig)


def decode_command(data: bytes, key: Ed25519PublicKey) -> CommandBody:
    """Parse and verify: ProtocolError if malformed, AuthError if not signed by `key`."""
    signed = parse_command(data)
    verify_command(key, signed)
    return signed.body


def verify_command(key: Ed25519PublicKey, signed: SignedCommand) -> None:
    """AuthError(code='bad_signature') unless the master key signed this body."""
    verify_body(key, DocKind.COMMAND, signed.raw_body, signed.sig)


def _parse_body(body: Mapping[str, Any]) -> CommandBody:
    check_keys(body, COMMAND_KEYS, "command")
    args = body["args"]
    if not isinstance(args, dict):
        raise ProtocolError("args must be an object")
    issued_at = need_int(body, "issued_at", 0, _TIME_MAX)
    expires_at = need_int(body, "expires_at", 0, _TIME_MAX)
    if expires_at < issued_at:
        raise ProtocolError("expires_at is before issued_at")
    return CommandBody(
        name=need_match(body, "name", NAME_PATTERN),
        gateway=need_id(body, "gateway"),
        issued_at=issued_at,
        expires_at=expires_at,
        nonce=need_match(body, "nonce", NONCE_PATTERN),
        args=args,
    )
