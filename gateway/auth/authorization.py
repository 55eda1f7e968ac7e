"""The gateway's authorization state as a component: trust anchor, ticket store, MS commands.

It loads the master station's public key (`authorization.master_key_file`), opens the ticket
store in the state directory, and serves `cmd/ticket`, `cmd/revoke` and `cmd/cert`. Those
commands carry documents the master station signed itself, so they need no command signature:
a compromised broker can replay them (harmless: repeats are detected) but cannot forge them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.auth.config import AuthorizationSection
from gateway.auth.policy import GatewayTrust, RoleTable, role_table
from gateway.auth.ticket_store import AcceptResult, TicketStore, load_or_create_credential_key
from gateway.errors import ConfigError
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.uplink.commands import Command, CommandDispatcher

__all__ = ["TICKETS_FILE", "Authorization", "load_master_key"]

_log = logging.getLogger(__name__)

TICKETS_FILE = "tickets.db"
CREDENTIAL_KEY_FILE = "credential.key"


class GatewayIdentity(Protocol):
    """What authorization needs to know of the gateway: its id, district and state folder."""

    @property
    def id(self) -> str: ...
    @property
    def district(self) -> str: ...
    @property
    def state_dir(self) -> Path: ...


class Authorization:
    """Trust anchor, role table and ticket store of one gateway."""

    def __init__(
        self, identity: GatewayIdentity, section: AuthorizationSection, clock: Clock
    ) -> None:
        if section.master_key_file is None:
            raise ConfigError("authorization.master_key_file", "needed to accept tickets")
        state_dir = identity.state_dir
        self.trust = GatewayTrust(
            identity.id, identity.district, load_master_key(section.master_key_file)
        )
        self.table: RoleTable = role_table(section)
        self.skew_s = section.skew_s
        credential_key = load_or_create_credential_key(state_dir / CREDENTIAL_KEY_FILE)
        self.tickets = TicketStore.open(
            state_dir / TICKETS_FILE,
            trust=self.trust,
            credential_key=credential_key,
            clock=clock,
            skew_s=section.skew_s,
        )

    def register(self, dispatcher: CommandDispatcher) -> None:
        """Serve cmd/ticket, cmd/revoke and cmd/cert."""
        dispatcher.register("ticket", self._handler(self.tickets.accept_ticket))
        dispatcher.register("revoke", self._handler(self.tickets.accept_revocations))
        dispatcher.register("cert", self._handler(self.tickets.accept_certificate))

    def close(self) -> None:
        self.tickets.close()

    @staticmethod
    def _handler(
        accept: Callable[[bytes], AcceptResult],
    ) -> Callable[[Command], Any]:
        async def handle(command: Command) -> Mapping[str, JSONValue]:
            result = accept(_document(command))
            return {"stored": result.stored, "detail": result.detail}

        return handle


def _document(command: Command) -> bytes:
    """The signed document: the payload's `document` member, or the whole payload."""
    document = command.payload.get("document", command.payload)
    if not isinstance(document, dict):
        raise ValueError("document must be a JSON object (a signed document)")
    return json.dumps(document).encode()


def load_master_key(path: Path) -> Ed25519PublicKey:
    """The master station's Ed25519 public key: 64 hex digits or a PEM public key."""
    text = path.read_text().strip()
    try:
        key = _parse_public_key(text)
    except ValueError as exc:
        raise ConfigError("authorization.master_key_file", f"{path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("authorization.master_key_file", f"{path} is not an Ed25519 key")
    return key


def _parse_public_key(text: str) -> object:
    if text.startswith("-----BEGIN"):
        return load_pem_public_key(text.encode())
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
