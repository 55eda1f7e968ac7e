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
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.auth.config import AuthorizationSection
from gateway.auth.policy import GatewayTrust, RoleTable, role_table
from gateway.auth.ticket_store import AcceptResult, TicketStore, load_or_create_credential_key
from gateway.errors import ConfigError, DatabaseCorruptError, StateFileCorruptError
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.store.state_files import CorruptFile, move_aside
from gateway.uplink.commands import Command, CommandDispatcher

__all__ = ["TICKETS_FILE", "Authorization", "load_master_key"]

_log = logging.getLogger(__name__)

TICKETS_FILE = "tickets.db"
CREDENTIAL_KEY_FILE = "credential.key"
_LOST = "every ticket held is lost: the master station must issue them again"
_NEW_KEY = "a new credential key was made: the master station must learn it before issuing tickets"


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
        self.corrupt: list[CorruptFile] = []
        credential_key = self._credential_key(state_dir)
        self.tickets = self._open_tickets(state_dir / TICKETS_FILE, credential_key, clock)

    def _credential_key(self, state_dir: Path) -> X25519PrivateKey:
        """The credential key; a corrupt one is replaced, and the tickets sealed to it dropped."""
        path = state_dir / CREDENTIAL_KEY_FILE
        try:
            return load_or_create_credential_key(path)
        except StateFileCorruptError as exc:
            self.corrupt.append(move_aside(path, str(exc), _NEW_KEY))
        tickets = state_dir / TICKETS_FILE
        if tickets.exists():
            self.corrupt.append(move_aside(tickets, "sealed to the lost credential key", _LOST))
        return load_or_create_credential_key(path)

    def _open_tickets(self, path: Path, key: X25519PrivateKey, clock: Clock) -> TicketStore:
        """The ticket store; a corrupt one was moved aside and a new, empty one is opened."""
        try:
            return self._ticket_store(path, key, clock)
        except DatabaseCorruptError as exc:
            moved = Path(exc.moved_to)
            self.corrupt.append(CorruptFile(path, moved, str(exc), _LOST))
            _log.error("%s is corrupt: moved to %s; %s", path, moved, _LOST)
        return self._ticket_store(path, key, clock)

    def _ticket_store(self, path: Path, key: X25519PrivateKey, clock: Clock) -> TicketStore:
        return TicketStore.open(
            path, trust=self.trust, credential_key=key, clock=clock, skew_s=self.skew_s
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
