"""Key derivation and MACs of the seal lock protocol (docs/protocol.md, sections 6 to 9).

Only `cryptography` primitives are used: HKDF-SHA256 to derive keys and HMAC-SHA256, truncated,
to authenticate. Every MAC input starts with a NUL-terminated direction label, so a MAC made
for one purpose (a command) is never valid for another (an answer, a log record, an advert).
Comparisons go through hmac.compare_digest.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import AuthCode, AuthError, ProtocolError
from gateway.protocol.seal_frames import (
    LOCK_ID_LEN,
    MAC_LEN,
    NONCE_LEN,
    TAG_LEN,
    Command,
    CommandResult,
    LogEntries,
    LogEntry,
    log_entry_fields,
    mac_input,
)

__all__ = [
    "ADVERT_MAC_LEN",
    "KEY_LEN",
    "LABEL_ADVERT",
    "LABEL_ANSWER",
    "LABEL_AUDIT",
    "LABEL_COMMAND",
    "LABEL_ENTRY",
    "LABEL_LOG",
    "LockKeys",
    "SessionContext",
    "advert_mac",
    "answer_mac",
    "audit_tag",
    "command_mac",
    "derive_lock_keys",
    "derive_ticket_key",
    "entry_tag",
    "log_answer_mac",
    "sealed_entry",
    "ticket_tag",
    "verify_advert_mac",
    "verify_answer",
    "verify_audit_tag",
    "verify_command",
    "verify_entry",
    "verify_log_answer",
]

KEY_LEN = 32
ADVERT_MAC_LEN = 6
SALT_TICKET = b"sealgw/v1 ticket-lock key"
SALT_LOCK = b"sealgw/v1 lock subkey"
LABEL_COMMAND = b"sealgw/v1 cmd\x00"
LABEL_ANSWER = b"sealgw/v1 ans\x00"
LABEL_LOG = b"sealgw/v1 log\x00"
LABEL_ENTRY = b"sealgw/v1 entry\x00"
LABEL_AUDIT = b"sealgw/v1 audit\x00"
LABEL_ADVERT = b"sealgw/v1 adv\x00"


@dataclass(frozen=True, slots=True)
class LockKeys:
    """The per-lock subkeys derived from K_lock; the gateway is given `log` and `advert` only."""

    log: bytes = field(repr=False)
    advert: bytes = field(repr=False)
    audit: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What binds a command and its answer to one connection and one challenge."""

    lock_id: bytes
    nonce: bytes
    gw_nonce: bytes

    def __post_init__(self) -> None:
        if len(self.lock_id) != LOCK_ID_LEN or len(self.nonce) != NONCE_LEN:
            raise ProtocolError("session context needs an 8-byte lock id and a 16-byte nonce")
        if len(self.gw_nonce) != NONCE_LEN:
            raise ProtocolError("session context needs a 16-byte gateway nonce")

    @property
    def prefix(self) -> bytes:
        """lock_id || nonce || gw_nonce, as it appears in command and answer MAC inputs."""
        return self.lock_id + self.nonce + self.gw_nonce


def derive_ticket_key(k_lock: bytes, header: bytes) -> bytes:
    """K_TL = HKDF-SHA256(K_lock, salt=SALT_TICKET, info=SHA-256(canonical ticket header))."""
    return _hkdf(k_lock, SALT_TICKET, hashlib.sha256(header).digest())


def derive_lock_keys(k_lock: bytes, lock_id: bytes) -> LockKeys:
    """K_log, K_adv and K_audit of one lock."""
    _check_key(k_lock)
    return LockKeys(
        log=_hkdf(k_lock, SALT_LOCK, b"log\x00" + lock_id),
        advert=_hkdf(k_lock, SALT_LOCK, b"adv\x00" + lock_id),
        audit=_hkdf(k_lock, SALT_LOCK, b"audit\x00" + lock_id),
    )


def ticket_tag(header: bytes) -> bytes:
    """First 8 bytes of SHA-256(header): names a ticket in log entries."""
    return hashlib.sha256(header).digest()[:TAG_LEN]


def command_mac(k_tl: bytes, ctx: SessionContext, command: Command) -> bytes:
    """MAC of a command: HMAC(K_TL, LABEL_COMMAND || lock_id || nonce || gw_nonce || msg)."""
    return _mac(k_tl, LABEL_COMMAND, ctx.prefix, mac_input(command))


def verify_command(k_tl: bytes, ctx: SessionContext, command: Command) -> None:
    """Raise AuthError(code='bad_mac') unless the command's MAC is right."""
    _require(command.mac, command_mac(k_tl, ctx, command), AuthCode.BAD_MAC, "command MAC mismatch")


def answer_mac(k_tl: bytes, ctx: SessionContext, cmd_mac: bytes, result: CommandResult) -> bytes:
    """MAC of an answer, which also covers the command MAC it answers."""
    return _mac(k_tl, LABEL_ANSWER, ctx.prefix, cmd_mac, mac_input(result))


def verify_answer(k_tl: bytes, ctx: SessionContext, cmd_mac: bytes, result: CommandResult) -> None:
    """Raise AuthError(code='bad_answer_mac') unless the lock's answer is authentic."""
    expected = answer_mac(k_tl, ctx, cmd_mac, result)
    _require(result.mac, expected, AuthCode.BAD_ANSWER_MAC, "answer MAC mismatch")


def entry_tag(k_log: bytes, lock_id: bytes, entry: LogEntry) -> bytes:
    """8-byte tag of one log entry under K_log; it covers the fields and the audit tag."""
    fields = log_entry_fields(entry) + entry.audit_tag
    return _mac(k_log, LABEL_ENTRY, lock_id, fields)[:TAG_LEN]


def audit_tag(k_audit: bytes, lock_id: bytes, entry: LogEntry) -> bytes:
    """8-byte tag of one log entry under K_audit, which only the lock and the MS hold."""
    return _mac(k_audit, LABEL_AUDIT, lock_id, log_entry_fields(entry))[:TAG_LEN]


def verify_entry(k_log: bytes, lock_id: bytes, entry: LogEntry) -> None:
    """Raise AuthError(code='bad_entry_tag') unless the entry's K_log tag is right."""
    expected = entry_tag(k_log, lock_id, entry)
    _require(entry.tag, expected, AuthCode.BAD_ENTRY_TAG, f"log entry {entry.index} tag mismatch")


def verify_audit_tag(k_audit: bytes, lock_id: bytes, entry: LogEntry) -> None:
    """Master-station check that a relayed entry came from the lock, not the gateway."""
    expected = audit_tag(k_audit, lock_id, entry)
    _require(
        entry.audit_tag, expected, AuthCode.BAD_AUDIT_TAG, f"entry {entry.index} audit mismatch"
    )


def log_answer_mac(
    k_log: bytes, lock_id: bytes, gw_nonce: bytes, request: bytes, answer: LogEntries
) -> bytes:
    """MAC of a LOG_ENTRIES answer: it binds the request bytes, the nonce and the ring bounds."""
    return _mac(k_log, LABEL_LOG, lock_id, gw_nonce, request, mac_input(answer))


def verify_log_answer(
    k_log: bytes, lock_id: bytes, gw_nonce: bytes, request: bytes, answer: LogEntries
) -> None:
    """Raise AuthError unless the answer and every entry in it are authentic."""
    expected = log_answer_mac(k_log, lock_id, gw_nonce, request, answer)
    _require(answer.mac, expected, AuthCode.BAD_LOG_MAC, "log answer MAC mismatch")
    for entry in answer.entries:
        verify_entry(k_log, lock_id, entry)


def advert_mac(k_adv: bytes, lock_id: bytes, signed_part: bytes) -> bytes:
    """6-byte advert MAC: HMAC(K_adv, LABEL_ADVERT || lock_id || payload before the MAC)."""
    return _mac(k_adv, LABEL_ADVERT, lock_id, signed_part)[:ADVERT_MAC_LEN]


def verify_advert_mac(k_adv: bytes, lock_id: bytes, signed_part: bytes, mac: bytes) -> None:
    """Raise AuthError(code='bad_advert_mac') unless the advert MAC is right."""
    expected = advert_mac(k_adv, lock_id, signed_part)
    _require(mac, expected, AuthCode.BAD_ADVERT_MAC, "advert MAC mismatch")


def sealed_entry(k_log: bytes, k_audit: bytes, lock_id: bytes, entry: LogEntry) -> LogEntry:
    """Return `entry` with its audit tag and K_log tag filled in (used by the lock)."""
    with_audit = replace(entry, audit_tag=audit_tag(k_audit, lock_id, entry))
    return replace(with_audit, tag=entry_tag(k_log, lock_id, with_audit))


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    _check_key(ikm)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=info).derive(ikm)


def _mac(key: bytes, label: bytes, *parts: bytes) -> bytes:
    mac = HMAC(key, hashes.SHA256())
    mac.update(label)
    for part in parts:
        mac.update(part)
    return mac.finalize()[:MAC_LEN]


def _require(got: bytes, expected: bytes, code: AuthCode, message: str) -> None:
    if not hmac.compare_digest(got, expected):
        raise AuthError(message, code=code)


def _check_key(key: bytes) -> None:
    if len(key) != KEY_LEN:
        raise AuthError(f"keys are {KEY_LEN} bytes, got {len(key)}", code=AuthCode.BAD_KEY)
