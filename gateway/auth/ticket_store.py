"""Tickets, operator certificates, the revocation list and use counters, kept across restarts.

One SQLite file (`tickets.db` in the state dir, mode 0600), separate from the event buffer.
Documents are stored exactly as MS signed them and re-parsed on every read; `policy.decide`
verifies their signatures again, so an edited row is denied as forged, never trusted.
K_TL stays encrypted at rest under the gateway's X25519 credential key and is decrypted only
by `credential()`, when an operation is about to run. Containment: docs/authorization.md.

The calls are synchronous and short (a few small rows); the daemon runs them on its loop.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gateway.auth.policy import DEFAULT_SKEW_S, GatewayTrust
from gateway.drivers.sqlite_util import execute_script, transaction
from gateway.errors import (
    AuthCode,
    AuthError,
    ConfigError,
    DatabaseCorruptError,
    StateFileCorruptError,
    StorageError,
)
from gateway.protocol.certs import (
    OperatorCertificate,
    RevocationList,
    decode_certificate,
    decode_revocations,
    encode_certificate,
    encode_revocations,
    parse_certificate,
    parse_revocations,
)
from gateway.protocol.clock import Clock
from gateway.protocol.seal_exchange import TicketCredential
from gateway.protocol.tickets import (
    Ticket,
    decode_ticket,
    encode_ticket,
    open_credential,
    parse_ticket,
    x25519_public_bytes,
)
from gateway.store.state_files import write_atomic

__all__ = [
    "CREDENTIAL_KEY_FILE",
    "TICKETS_DB_FILE",
    "AcceptResult",
    "TicketStore",
    "load_or_create_credential_key",
]

_log = logging.getLogger(__name__)

TICKETS_DB_FILE = "tickets.db"
CREDENTIAL_KEY_FILE = "credential.key"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id TEXT PRIMARY KEY,
    work_order TEXT NOT NULL,
    operator TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS tickets_by_work_order ON tickets (work_order);
CREATE TABLE IF NOT EXISTS uses (
    ticket_id TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    serial INTEGER NOT NULL,
    doc BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    operator TEXT PRIMARY KEY,
    issued_at INTEGER NOT NULL,
    doc BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class AcceptResult:
    """What `accept_*` did: `stored` is False for an identical repeat (already held)."""

    stored: bool
    detail: str


class TicketStore:
    """The gateway's durable authorization state."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        trust: GatewayTrust,
        credential_key: X25519PrivateKey,
        clock: Clock,
        skew_s: int = DEFAULT_SKEW_S,
    ) -> None:
        self._conn = conn
        self._trust = trust
        self._key = credential_key
        self._clock = clock
        self._skew_s = skew_s
        self._closed = False

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        trust: GatewayTrust,
        credential_key: X25519PrivateKey,
        clock: Clock,
        skew_s: int = DEFAULT_SKEW_S,
    ) -> TicketStore:
        """Open (creating, 0600) the store at `path` and prune expired tickets."""
        conn = _connect(path)
        store = cls(conn, trust=trust, credential_key=credential_key, clock=clock, skew_s=skew_s)
        store.prune()
        return store

    def close(self) -> None:
        """Checkpoint and close the database (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()

    # -- accepting documents from MS (cmd/ticket, cmd/revoke, certificates) ------------------

    def accept_ticket(self, doc: bytes | str) -> AcceptResult:
        """Verify a ticket for this gateway and store it; raise ProtocolError or AuthError."""
        ticket = decode_ticket(doc, self._trust.master_key)
        self._check_new_ticket(ticket)
        encoded = encode_ticket(ticket)
        row = self._conn.execute(
            "SELECT doc FROM tickets WHERE ticket_id = ?", (ticket.ticket_id,)
        ).fetchone()
        if row is not None:
            return _repeat_or_conflict(bytes(row[0]), encoded, f"ticket {ticket.ticket_id}")
        with transaction(self._conn):
            self._conn.execute(
                "INSERT INTO tickets VALUES (?, ?, ?, ?, ?)",
                (ticket.ticket_id, ticket.work_order, ticket.operator, ticket.not_after, encoded),
            )
            self._conn.execute("INSERT OR IGNORE INTO uses VALUES (?, 0)", (ticket.ticket_id,))
        _log.info("accepted ticket %s for work order %s", ticket.ticket_id, ticket.work_order)
        return AcceptResult(True, f"ticket {ticket.ticket_id} stored")

    def accept_revocations(self, doc: bytes | str) -> AcceptResult:
        """Install a higher-serial revocation list and delete the tickets it revokes."""
        revocations = decode_revocations(doc, self._trust.master_key)
        current = self.revocations()
        encoded = encode_revocations(revocations)
        if current is not None and revocations.serial < current.serial:
            raise AuthError(
                f"revocation list {revocations.serial} is older than {current.serial}",
                code=AuthCode.STALE_REVOCATION_LIST,
            )
        if current is not None and revocations.serial == current.serial:
            return _repeat_or_conflict(encode_revocations(current), encoded, "revocation list")
        with transaction(self._conn):
            self._conn.execute(
                "INSERT OR REPLACE INTO revocations VALUES (1, ?, ?)", (revocations.serial, encoded)
            )
            removed = self._delete_revoked(revocations)
        self._wipe()
        _log.info("revocation list %d installed, %d tickets removed", revocations.serial, removed)
        return AcceptResult(True, f"revocation list {revocations.serial}, {removed} removed")

    def accept_certificate(self, doc: bytes | str) -> AcceptResult:
        """Store an operator certificate unless a newer one for the operator is held."""
        cert = decode_certificate(doc, self._trust.master_key)
        held = self.certificate(cert.operator)
        if held is not None and held.issued_at > cert.issued_at:
            return AcceptResult(False, f"a newer certificate for {cert.operator} is held")
        with transaction(self._conn):
            self._conn.execute(
                "INSERT OR REPLACE INTO certificates VALUES (?, ?, ?)",
                (cert.operator, cert.issued_at, encode_certificate(cert)),
            )
        return AcceptResult(True, f"certificate {cert.serial} for {cert.operator} stored")

    # -- reading (documents are re-parsed, and verified again by policy.decide) ---------------

    def ticket(self, ticket_id: str) -> Ticket | None:
        """The held ticket with this id, or None."""
        row = self._conn.execute(
            "SELECT doc FROM tickets WHERE ticket_id = ?", (ticket_id,)
        ).fetchone()
        return parse_ticket(bytes(row[0])) if row else None

    def tickets_for(self, work_order: str) -> tuple[Ticket, ...]:
        """Held tickets for a work order, oldest window first."""
        rows = self._conn.execute(
            "SELECT doc FROM tickets WHERE work_order = ? ORDER BY not_after, ticket_id",
            (work_order,),
        ).fetchall()
        return tuple(parse_ticket(bytes(row[0])) for row in rows)

    def ticket_ids(self) -> tuple[str, ...]:
        """Ids of every held ticket."""
        rows = self._conn.execute("SELECT ticket_id FROM tickets ORDER BY ticket_id").fetchall()
        return tuple(str(row[0]) for row in rows)

    def certificate(self, operator: str) -> OperatorCertificate | None:
        """The newest held certificate of `operator`, or None."""
        row = self._conn.execute(
            "SELECT doc FROM certificates WHERE operator = ?", (operator,)
        ).fetchone()
        return parse_certificate(bytes(row[0])) if row else None

    def revocations(self) -> RevocationList | None:
        """The revocation list held, or None before the first one arrives."""
        row = self._conn.execute("SELECT doc FROM revocations WHERE id = 1").fetchone()
        return parse_revocations(bytes(row[0])) if row else None

    def uses(self, ticket_id: str) -> int:
        """Lock commands already started under the ticket."""
        row = self._conn.execute(
            "SELECT count FROM uses WHERE ticket_id = ?", (ticket_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    # -- executing -----------------------------------------------------------------------

    def reserve_use(self, ticket_id: str) -> int:
        """Count one use before a lock command is sent; raise AuthError when none is left."""
        ticket = self.ticket(ticket_id)
        if ticket is None:
            raise AuthError(f"no ticket {ticket_id}", code=AuthCode.UNKNOWN_TICKET)
        with transaction(self._conn):
            cursor = self._conn.execute(
                "UPDATE uses SET count = count + 1 WHERE ticket_id = ? AND count < ?",
                (ticket_id, ticket.max_uses),
            )
        if cursor.rowcount != 1:
            raise AuthError(f"ticket {ticket_id} has no uses left", code=AuthCode.USES_EXHAUSTED)
        return self.uses(ticket_id)

    def credential(self, ticket_id: str, seal_id: str) -> TicketCredential:
        """Decrypt K_TL for one seal of a held ticket, just before the command is built."""
        ticket = self.ticket(ticket_id)
        if ticket is None:
            raise AuthError(f"no ticket {ticket_id}", code=AuthCode.UNKNOWN_TICKET)
        return open_credential(ticket, seal_id, self._key)

    def prune(self) -> int:
        """Delete tickets whose window (plus skew) has passed; return how many."""
        cutoff = int(self._clock.now().timestamp()) - self._skew_s
        with transaction(self._conn):
            expired = self._conn.execute(
                "SELECT ticket_id FROM tickets WHERE not_after < ?", (cutoff,)
            ).fetchall()
            for (ticket_id,) in expired:
                self._delete_ticket(str(ticket_id))
        if expired:
            self._wipe()
            _log.info("pruned %d expired tickets", len(expired))
        return len(expired)

    # -- helpers -------------------------------------------------------------------------

    def _check_new_ticket(self, ticket: Ticket) -> None:
        if ticket.gateway != self._trust.gateway_id:
            raise AuthError(f"ticket is for gateway {ticket.gateway}", code=AuthCode.WRONG_GATEWAY)
        if ticket.recipient != x25519_public_bytes(self._key):
            raise AuthError(
                "ticket is encrypted to another credential key", code=AuthCode.WRONG_RECIPIENT
            )
        if ticket.not_after + self._skew_s < self._clock.now().timestamp():
            raise AuthError(f"ticket {ticket.ticket_id} has expired", code=AuthCode.TICKET_EXPIRED)
        revocations = self.revocations()
        if revocations is not None and (
            revocations.revokes_ticket(ticket.ticket_id)
            or revocations.revokes_operator(ticket.operator)
        ):
            raise AuthError(f"ticket {ticket.ticket_id} is revoked", code=AuthCode.TICKET_REVOKED)

    def _delete_revoked(self, revocations: RevocationList) -> int:
        rows = self._conn.execute("SELECT ticket_id, operator FROM tickets").fetchall()
        doomed = [
            str(ticket_id)
            for ticket_id, operator in rows
            if revocations.revokes_ticket(str(ticket_id))
            or revocations.revokes_operator(str(operator))
        ]
        for ticket_id in doomed:
            self._delete_ticket(ticket_id)
        return len(doomed)

    def _delete_ticket(self, ticket_id: str) -> None:
        self._conn.execute("DELETE FROM tickets WHERE ticket_id = ?", (ticket_id,))
        self._conn.execute("DELETE FROM uses WHERE ticket_id = ?", (ticket_id,))

    def _wipe(self) -> None:
        """Move the WAL into the file (secure_delete zeroes freed cells) and empty the WAL."""
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def load_or_create_credential_key(path: Path) -> X25519PrivateKey:
    """The gateway's X25519 credential key (raw, 0600), generated on first use.

    Raise StateFileCorruptError when the file exists but does not hold a key.
    """
    if not path.exists():
        key = X25519PrivateKey.generate()
        write_atomic(path, key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
        _log.info("created credential key %s", path)
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(str(path), f"credential key is readable by others (mode {mode:o})")
    raw = path.read_bytes()
    if len(raw) != 32:
        message = f"{path}: credential key must hold 32 bytes, not {len(raw)}"
        raise StateFileCorruptError(message, path=path)
    return X25519PrivateKey.from_private_bytes(raw)


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.chmod(path, 0o600)
    conn = sqlite3.connect(path, isolation_level=None)
    if not _healthy(conn):
        conn.close()
        moved = path.with_name(f"{path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        path.replace(moved)
        raise DatabaseCorruptError(f"{path} failed its integrity check", moved_to=str(moved))
    for pragma in ("journal_mode = WAL", "synchronous = FULL", "secure_delete = ON"):
        conn.execute(f"PRAGMA {pragma}")
    with transaction(conn):
        _create_schema(conn)
    return conn


def _healthy(conn: sqlite3.Connection) -> bool:
    try:
        return bool(conn.execute("PRAGMA quick_check").fetchone() == ("ok",))
    except sqlite3.DatabaseError:
        return False


def _create_schema(conn: sqlite3.Connection) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StorageError(f"tickets.db schema {version} is newer than this gateway knows")
    execute_script(conn, _SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _repeat_or_conflict(held: bytes, received: bytes, what: str) -> AcceptResult:
    if held == received:
        return AcceptResult(False, f"{what} already held")
    raise AuthError(f"{what} differs from the one held", code=AuthCode.CONFLICT)
