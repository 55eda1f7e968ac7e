"""The master station's signing authority: its Ed25519 key, per-lock K_lock, and document issuing.

Everything lives in one directory (mode 0700): `ms_signing.key` (raw Ed25519 private key),
`locks/<lock id hex>.key` (raw 32-byte K_lock), `revocations.json` (the last list issued),
`gateways/<gateway>/<key fingerprint>.pem` (enrolled gateway identity public keys) and
`gateways/<gateway>/credential.x25519` (its credential public key, for the console's tickets).
It is also the ledger's `LedgerTrust`: K_audit per lock, identity keys per gateway.
Secret files are created 0600 and refused when readable by others; secrets are never logged.
Every file is written whole or not at all (a temporary file, fsync, then a rename or, for a
secret that must never be replaced, a link), and the revocation list's read-modify-write holds
an exclusive lock on `.lock`, so a console and a `sealgw master revoke` running together lose
no revocation.
Used by tests and by the `sealgw master ...` commands. Formats: docs/authorization.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_public_key,
)

from gateway.errors import ConfigError
from gateway.protocol.certs import (
    OperatorCertificate,
    RevocationList,
    decode_revocations,
    encode_revocations,
    sign_certificate,
    sign_revocations,
)
from gateway.protocol.checkpoint import public_key_fingerprint
from gateway.protocol.command_doc import CommandBody, encode_command
from gateway.protocol.seal_crypto import KEY_LEN, derive_lock_keys, derive_ticket_key
from gateway.protocol.seal_frames import LOCK_ID_LEN
from gateway.protocol.tickets import (
    X25519_LEN,
    SealGrant,
    Ticket,
    sign_ticket,
    ticket_header,
    ticket_seals,
    x25519_public_bytes,
)

__all__ = ["MasterAuthority"]

_log = logging.getLogger(__name__)

SIGNING_KEY_FILE = "ms_signing.key"
LOCK_FILE = ".lock"
LOCKS_DIR = "locks"
REVOCATIONS_FILE = "revocations.json"
GATEWAYS_DIR = "gateways"
CREDENTIAL_FILE = (
    "credential.x25519"  # the gateway's X25519 public key, raw (docs/authorization.md)
)
_GATEWAY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PLACEHOLDER_KEY = bytes(48)


class MasterAuthority:
    """Issues operator certificates, tickets with per-lock credentials, and revocation lists."""

    def __init__(self, directory: Path, signing_key: Ed25519PrivateKey) -> None:
        self.directory = directory
        self._signing_key = signing_key
        self._audit_keys: dict[bytes, bytes] = {}

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path) -> MasterAuthority:
        """Create a new authority directory with a fresh signing key; refuse to overwrite."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (directory / LOCKS_DIR).mkdir(mode=0o700, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        _write_secret(directory / SIGNING_KEY_FILE, raw)
        _log.info("created master authority in %s", directory)
        return cls(directory, key)

    @classmethod
    def open(cls, directory: Path) -> MasterAuthority:
        """Load an existing authority directory."""
        raw = _read_secret(directory / SIGNING_KEY_FILE, 32)
        return cls(directory, Ed25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def open_or_create(cls, directory: Path) -> MasterAuthority:
        """Load the authority in `directory`, creating it on first use."""
        if (directory / SIGNING_KEY_FILE).exists():
            return cls.open(directory)
        return cls.create(directory)

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key every gateway trusts for tickets, certificates and revocations."""
        return self._signing_key.public_key()

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte public key, as provisioned onto gateways."""
        return self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    # -- locks -----------------------------------------------------------------------------

    def provision_lock(self, lock_id: bytes) -> bytes:
        """Create and store K_lock for a new lock; return it for programming into the lock."""
        _check_lock_id(lock_id)
        k_lock = os.urandom(KEY_LEN)
        _write_secret(self._lock_path(lock_id), k_lock)
        _log.info("provisioned lock %s", lock_id.hex())
        return k_lock

    def lock_key(self, lock_id: bytes) -> bytes:
        """K_lock of a provisioned lock."""
        _check_lock_id(lock_id)
        return _read_secret(self._lock_path(lock_id), KEY_LEN)

    def lock_audit_key(self, lock_id: bytes) -> bytes | None:
        """K_audit of a provisioned lock, derived as the lock derives it; None when unknown."""
        if lock_id not in self._audit_keys:
            try:
                k_lock = self.lock_key(lock_id)
            except (ConfigError, ValueError):
                return None
            self._audit_keys[lock_id] = derive_lock_keys(k_lock, lock_id).audit
        return self._audit_keys[lock_id]

    # -- gateways --------------------------------------------------------------------------

    def enroll_gateway(self, gateway: str, public_key: Ed25519PublicKey) -> Path:
        """Trust `public_key` (the gateway's identity.pub) for `gateway`'s checkpoints."""
        folder = self._gateway_dir(gateway)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fingerprint = public_key_fingerprint(public_key)
        path = folder / f"{fingerprint.removeprefix('sha256:')[:32]}.pem"
        _write_atomic(
            path, public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
        _log.info("enrolled gateway %s identity %s", gateway, fingerprint)
        return path

    def set_gateway_credential(self, gateway: str, public_key: bytes) -> Path:
        """Remember `gateway`'s X25519 credential public key (tickets are encrypted to it)."""
        if len(public_key) != X25519_LEN:
            raise ValueError("a credential key is the gateway's raw 32-byte X25519 public key")
        folder = self._gateway_dir(gateway)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / CREDENTIAL_FILE
        _write_atomic(path, public_key)
        _log.info("gateway %s credential key recorded", gateway)
        return path

    def gateway_credential(self, gateway: str) -> bytes | None:
        """The X25519 credential public key recorded for `gateway`, or None."""
        if not _GATEWAY_ID.match(gateway):
            return None
        path = self._gateway_dir(gateway) / CREDENTIAL_FILE
        data = path.read_bytes() if path.is_file() else b""
        return data if len(data) == X25519_LEN else None

    def gateway_keys(self, gateway: str) -> tuple[Ed25519PublicKey, ...]:
        """Every identity key enrolled for `gateway` (old keys stay after `sealgw init --force`)."""
        if not _GATEWAY_ID.match(gateway):
            return ()
        folder = self._gateway_dir(gateway)
        keys = []
        for path in sorted(folder.glob("*.pem")) if folder.is_dir() else ():
            key = load_pem_public_key(path.read_bytes())
            if isinstance(key, Ed25519PublicKey):
                keys.append(key)
        return tuple(keys)

    # -- documents -------------------------------------------------------------------------

    def enroll_operator(
        self,
        *,
        operator: str,
        name: str,
        roles: Sequence[str],
        districts: Sequence[str],
        device_key: bytes,
        not_before: int,
        not_after: int,
        issued_at: int | None = None,
        serial: str | None = None,
    ) -> OperatorCertificate:
        """A signed operator certificate for the handheld whose Ed25519 key is `device_key`."""
        cert = OperatorCertificate(
            serial=serial or os.urandom(8).hex(),
            operator=operator,
            name=name,
            roles=tuple(roles),
            districts=tuple(districts),
            device_key=device_key,
            not_before=not_before,
            not_after=not_after,
            issued_at=_now(issued_at),
        )
        _log.info("enrolled operator %s (certificate %s)", operator, cert.serial)
        return sign_certificate(self._signing_key, cert)

    def issue_ticket(
        self,
        *,
        work_order: str,
        flow: str,
        operator: str,
        role: str,
        gateway: str,
        gateway_key: bytes,
        seals: Sequence[tuple[str, bytes]],
        ops: Sequence[str],
        not_before: int,
        not_after: int,
        max_uses: int,
        issued_at: int | None = None,
        ticket_id: str | None = None,
    ) -> Ticket:
        """A signed ticket whose per-seal K_TL are encrypted to the gateway's X25519 key."""
        if len(gateway_key) != X25519_LEN:
            raise ValueError("gateway_key is the gateway's raw X25519 public key")
        draft = Ticket(
            ticket_id=ticket_id or os.urandom(16).hex(),
            work_order=work_order,
            flow=flow,
            operator=operator,
            role=role,
            gateway=gateway,
            ops=tuple(ops),
            not_before=not_before,
            not_after=not_after,
            max_uses=max_uses,
            issued_at=_now(issued_at),
            recipient=gateway_key,
            ephemeral=bytes(X25519_LEN),
            seals=tuple(SealGrant(sid, lid, bytes(12), _PLACEHOLDER_KEY) for sid, lid in seals),
        )
        ticket = self._with_credentials(draft)
        _log.info("issued ticket %s for %s on %s", ticket.ticket_id, operator, gateway)
        return sign_ticket(self._signing_key, ticket)

    def revoke(
        self,
        *,
        tickets: Iterable[str] = (),
        operators: Iterable[str] = (),
        certificates: Iterable[str] = (),
        issued_at: int | None = None,
    ) -> RevocationList:
        """The next revocation list: everything revoked before plus these, serial + 1."""
        with _exclusive(self.directory):  # another process may be revoking right now
            last = self.last_revocations()
            revocations = RevocationList(
                serial=(last.serial if last else 0) + 1,
                issued_at=_now(issued_at),
                tickets=_union(last.tickets if last else (), tickets),
                operators=_union(last.operators if last else (), operators),
                certificates=_union(last.certificates if last else (), certificates),
            )
            signed = sign_revocations(self._signing_key, revocations)
            _write_atomic(self.directory / REVOCATIONS_FILE, encode_revocations(signed))
        _log.info("issued revocation list %d", signed.serial)
        return signed

    def sign_command(
        self, name: str, gateway: str, args: Mapping[str, Any], lifetime_s: int = 300
    ) -> bytes:
        """A signed `cmd/{name}` document for one gateway (docs/remote.md), valid from now."""
        now = int(time.time())
        body = CommandBody(name, gateway, now, now + lifetime_s, os.urandom(16).hex(), args)
        return encode_command(self._signing_key, body)

    def last_revocations(self) -> RevocationList | None:
        """The last revocation list issued, or None."""
        path = self.directory / REVOCATIONS_FILE
        if not path.exists():
            return None
        return decode_revocations(path.read_bytes(), self.public_key)

    # -- helpers ---------------------------------------------------------------------------

    def _with_credentials(self, draft: Ticket) -> Ticket:
        header = ticket_header(draft)
        ephemeral = X25519PrivateKey.generate()
        triples = [
            (g.seal_id, g.lock_id, derive_ticket_key(self.lock_key(g.lock_id), header))
            for g in draft.seals
        ]
        grants = ticket_seals(ephemeral, draft.recipient, draft.ticket_id, triples)
        return replace(draft, ephemeral=x25519_public_bytes(ephemeral), seals=grants)

    def _lock_path(self, lock_id: bytes) -> Path:
        return self.directory / LOCKS_DIR / f"{lock_id.hex()}.key"

    def _gateway_dir(self, gateway: str) -> Path:
        if not _GATEWAY_ID.match(gateway):
            raise ValueError(f"{gateway!r} is not a gateway id")
        return self.directory / GATEWAYS_DIR / gateway


def _union(old: Iterable[str], new: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(old) | set(new)))


def _now(value: int | None) -> int:
    return int(time.time()) if value is None else value


def _check_lock_id(lock_id: bytes) -> None:
    if len(lock_id) != LOCK_ID_LEN:
        raise ValueError(f"lock ids are {LOCK_ID_LEN} bytes")


def _write_secret(path: Path, data: bytes) -> None:
    """Create a secret file 0600, whole or not at all; never over an existing one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = _written_temp(path, data)
    try:
        os.link(tmp, path)  # atomic, and FileExistsError rather than a replaced key
    finally:
        tmp.unlink()
    _sync_directory(path.parent)


def _read_secret(path: Path, length: int) -> bytes:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "secret file does not exist") from None
    if mode & 0o077:
        raise ConfigError(str(path), f"secret file is readable by others (mode {mode:o})")
    if len(data) != length:
        raise ConfigError(str(path), f"secret file must hold {length} bytes")
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace a file 0600, whole or not at all (each writer has its own temporary file)."""
    tmp = _written_temp(path, data)
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _written_temp(path: Path, data: bytes) -> Path:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp: 0600, O_EXCL
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """One writer of the directory's shared files at a time, across processes (flock)."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
