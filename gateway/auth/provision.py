"""Provisioning (`sealgw init`): the state directory, the gateway identity and the MQTT CSR.

Key files are created with O_CREAT|O_EXCL and mode 0600 under a temporary name inside the state
directory, filled, fsynced and then linked (or, with force, renamed) into place, so a key is
never readable by others and a crash never leaves a half-written key under its real name.
All file operations are relative to one open directory descriptor.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import ConfigError, ProvisionError, StateFileCorruptError
from gateway.protocol.checkpoint import public_key_fingerprint

if TYPE_CHECKING:
    from cryptography import x509

_LOGGER = logging.getLogger(__name__)

IDENTITY_KEY = "identity.key"
_RESTORE = (
    "restore it from backup, or re-provision with `sealgw init --force` and have the master "
    "station enrol the new key (docs/deploy.md, exit status 3)"
)
IDENTITY_PUBLIC = "identity.pub"
MQTT_KEY = "mqtt-client.key"
MQTT_CSR = "mqtt-client.csr"
STATE_DIR_MODE = 0o700
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
_GATEWAY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class InitResult:
    """What `init_gateway` created: file paths and public-key fingerprints (never key bytes)."""

    state_dir: Path
    gateway_id: str
    identity_key: Path
    identity_public: Path
    mqtt_key: Path
    csr: Path
    identity_fingerprint: str
    mqtt_fingerprint: str


def init_gateway(state_dir: Path, gateway_id: str, *, force: bool = False) -> InitResult:
    """Create the 0700 state dir, the Ed25519 identity, the P-256 MQTT key and its CSR."""
    if not _GATEWAY_ID.match(gateway_id):
        raise ConfigError("gateway.id", f"{gateway_id!r} does not match {_GATEWAY_ID.pattern}")
    state_dir = Path(state_dir)
    _make_state_dir(state_dir)
    with _open_dir(state_dir) as dir_fd:
        if not force:
            _refuse_existing(state_dir, dir_fd)
        identity = Ed25519PrivateKey.generate()
        mqtt_key = ec.generate_private_key(ec.SECP256R1())
        owner = _owner_for(dir_fd)
        for name, (data, mode) in _files(identity, mqtt_key, gateway_id).items():
            _install(dir_fd, name, data, mode, owner=owner, replace=force)
        os.fsync(dir_fd)
    _LOGGER.info("provisioned gateway %s in %s", gateway_id, state_dir)
    return InitResult(
        state_dir=state_dir,
        gateway_id=gateway_id,
        identity_key=state_dir / IDENTITY_KEY,
        identity_public=state_dir / IDENTITY_PUBLIC,
        mqtt_key=state_dir / MQTT_KEY,
        csr=state_dir / MQTT_CSR,
        identity_fingerprint=public_key_fingerprint(identity.public_key()),
        mqtt_fingerprint=public_key_fingerprint(mqtt_key.public_key()),
    )


def build_csr(key: ec.EllipticCurvePrivateKey, gateway_id: str) -> x509.CertificateSigningRequest:
    """A CSR for the MQTT client certificate, CN = gateway id, signed with SHA-256."""
    from cryptography import x509  # noqa: PLC0415 - 6 MB only `sealgw init` needs, not the daemon
    from cryptography.x509.oid import NameOID  # noqa: PLC0415 - as above

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def load_identity(state_dir: Path) -> Ed25519PrivateKey:
    """Load the gateway's Ed25519 identity key, refusing one that others can read."""
    path = Path(state_dir) / IDENTITY_KEY
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except OSError as exc:
        raise ProvisionError(
            f"cannot read identity key {path}: {exc.strerror} (run `sealgw init`)", paths=(path,)
        ) from exc
    if mode & 0o077:
        raise ProvisionError(f"identity key {path} has mode {mode:o}; use 600", paths=(path,))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:  # truncated or garbled: the gateway cannot sign as itself
        raise StateFileCorruptError(
            f"identity key {path} is corrupt ({exc}); {_RESTORE}", path=path
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvisionError(f"identity key {path} is not an Ed25519 key", paths=(path,))
    return key


def _files(
    identity: Ed25519PrivateKey, mqtt_key: ec.EllipticCurvePrivateKey, gateway_id: str
) -> dict[str, tuple[bytes, int]]:
    """File name -> (content, mode) for everything `init_gateway` writes."""
    csr = build_csr(mqtt_key, gateway_id).public_bytes(serialization.Encoding.PEM)
    return {
        IDENTITY_KEY: (_private_pem(identity), SECRET_MODE),
        IDENTITY_PUBLIC: (_public_pem(identity), PUBLIC_MODE),
        MQTT_KEY: (_private_pem(mqtt_key), SECRET_MODE),
        MQTT_CSR: (csr, PUBLIC_MODE),
    }


def _private_pem(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _make_state_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(
            f"cannot create state directory {state_dir}: {exc.strerror}", paths=(state_dir,)
        ) from exc


@contextmanager
def _open_dir(state_dir: Path) -> Iterator[int]:
    """Open the state directory, tighten it to 0700, and yield its descriptor."""
    try:
        dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ProvisionError(
            f"cannot open state directory {state_dir}: {exc.strerror}", paths=(state_dir,)
        ) from exc
    try:
        os.fchmod(dir_fd, STATE_DIR_MODE)
        yield dir_fd
    finally:
        os.close(dir_fd)


def _refuse_existing(state_dir: Path, dir_fd: int) -> None:
    existing = tuple(
        state_dir / name
        for name in (IDENTITY_KEY, IDENTITY_PUBLIC, MQTT_KEY, MQTT_CSR)
        if _exists(name, dir_fd)
    )
    if existing:
        names = ", ".join(str(path) for path in existing)
        raise ProvisionError(
            f"gateway already provisioned ({names}); refusing to overwrite keys "
            "(use --force to replace them, which invalidates the issued certificate)",
            paths=existing,
        )


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _owner_for(dir_fd: int) -> tuple[int, int] | None:
    """When root provisions a directory owned by the service user, files go to that user."""
    info = os.fstat(dir_fd)
    if os.geteuid() != 0 or info.st_uid == 0:
        return None
    return info.st_uid, info.st_gid


def _install(
    dir_fd: int, name: str, data: bytes, mode: int, *, owner: tuple[int, int] | None, replace: bool
) -> None:
    """Write `data` to a fresh 0600 temp file, then give it its final mode and name."""
    temp = f".{name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, SECRET_MODE, dir_fd=dir_fd)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _publish(dir_fd, temp, name, replace=replace)
    finally:
        _unlink_quietly(temp, dir_fd)


def _publish(dir_fd: int, temp: str, name: str, *, replace: bool) -> None:
    if replace:
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    try:
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError as exc:
        raise ProvisionError(f"{name} appeared while provisioning; refusing to overwrite") from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unlink_quietly(name: str, dir_fd: int) -> None:
    with suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
