"""Who may command this gateway: the signed-command verifier and its bounded replay cache.

`CommandVerifier` is installed as `CommandDispatcher.verifier`; every handler registered with
`signed=True` then runs only for a command document that (in this order) is signed at all,
is well formed, carries the master station's signature, names the topic's command and this
gateway, is inside its validity window (with clock skew), and was never seen before.

Failures raise AuthError with a stable code, which the dispatcher puts in the reply:
`unsigned`, `malformed`, `bad_signature`, `wrong_command`, `wrong_gateway`, `not_yet_valid`,
`expired`, `lifetime_too_long`, `replayed`.

The replay cache remembers each accepted nonce until its command expires (plus skew), at most
`max_entries` of them. When it is full of live nonces it evicts the soonest-expiring one and
raises a floor to that expiry: any later command expiring at or before the floor is refused
as `replayed`, because the cache can no longer tell. So memory is bounded and a replay never
passes. The cache is persisted (atomic write) so a restart does not reopen the window, which
matters most for `restart` itself.

A cache file that exists but cannot be read fails closed: every signed command is refused as
`replay_cache_unreadable` (logged at ERROR at start) until someone looks at the disk and moves
the file aside. Starting empty instead would let every recorded command of the last hour replay.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.auth.config import DEFAULT_SKEW_S
from gateway.errors import AuthCode, AuthError, ProtocolError
from gateway.protocol.clock import Clock
from gateway.protocol.command_doc import (
    CommandBody,
    is_signed_document,
    parse_command,
    verify_command,
)
from gateway.store.state_files import write_atomic
from gateway.uplink.commands import Command

__all__ = [
    "DEFAULT_MAX_LIFETIME_S",
    "REPLAY_FILE",
    "CommandVerifier",
    "ReplayCache",
]

_log = logging.getLogger(__name__)

DEFAULT_MAX_LIFETIME_S = 3600
DEFAULT_MAX_ENTRIES = 1024
REPLAY_FILE = "command_nonces.json"
_FILE_VERSION = 1


class ReplayCache:
    """Nonces of accepted commands until they expire; bounded, optionally persisted."""

    def __init__(self, path: Path | None = None, *, max_entries: int = DEFAULT_MAX_ENTRIES):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.path = path
        self.max_entries = max_entries
        self.floor = 0
        self.unreadable: str | None = None  # why the file could not be read: fail closed
        self._expiry: dict[str, int] = {}
        if path is not None:
            self._load(path)

    def __len__(self) -> int:
        return len(self._expiry)

    def check(self, nonce: str, expires_at: int) -> None:
        """AuthError(code='replayed') if `nonce` was seen or may have been forgotten."""
        if self.unreadable is not None:
            raise AuthError(
                f"replay cache {self.path} is unreadable ({self.unreadable}); signed commands"
                " are refused until it is moved aside",
                code=AuthCode.REPLAY_CACHE_UNREADABLE,
            )
        if nonce in self._expiry:
            raise AuthError(f"command nonce {nonce} was already used", code=AuthCode.REPLAYED)
        if expires_at <= self.floor:
            raise AuthError("command is older than the replay window", code=AuthCode.REPLAYED)

    def add(self, nonce: str, expires_at: int, now: float, skew_s: int) -> None:
        """Remember `nonce`; forget what has expired; evict (raising the floor) when full."""
        self._expiry[nonce] = expires_at
        for old in [n for n, exp in self._expiry.items() if exp + skew_s < now]:
            del self._expiry[old]
        while len(self._expiry) > self.max_entries:
            oldest = min(self._expiry, key=self._expiry.__getitem__)
            self.floor = max(self.floor, self._expiry.pop(oldest))
        if self.path is not None:
            self._save(self.path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError, RecursionError) as exc:
            self._refuse_all(path, f"{type(exc).__name__}: {exc}"[:200])
            return
        nonces = data.get("nonces") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("v") != _FILE_VERSION
            or not isinstance(nonces, dict)
        ):
            self._refuse_all(path, "unknown format")
            return
        self.floor = _int_or_zero(data.get("floor"))
        self._expiry = {str(n): _int_or_zero(e) for n, e in nonces.items()}

    def _refuse_all(self, path: Path, reason: str) -> None:
        self.unreadable = reason
        _log.error(
            "replay cache %s is unreadable (%s): every signed command is refused until the file"
            " is checked and moved aside (starting empty would let recorded commands replay)",
            path,
            reason,
        )

    def _save(self, path: Path) -> None:
        data = {"v": _FILE_VERSION, "floor": self.floor, "nonces": self._expiry}
        try:
            write_atomic(path, json.dumps(data, separators=(",", ":")).encode("utf-8"))
        except OSError as exc:
            _log.error("could not persist the replay cache %s: %s", path, exc)


class CommandVerifier:
    """The CommandDispatcher verifier for master-station signed commands."""

    def __init__(
        self,
        master_key: Ed25519PublicKey,
        gateway_id: str,
        clock: Clock,
        replay: ReplayCache,
        *,
        skew_s: int = DEFAULT_SKEW_S,
        max_lifetime_s: int = DEFAULT_MAX_LIFETIME_S,
    ) -> None:
        self.master_key = master_key
        self.gateway_id = gateway_id
        self.clock = clock
        self.replay = replay
        self.skew_s = skew_s
        self.max_lifetime_s = max_lifetime_s

    def __call__(self, command: Command) -> None:
        """Raise AuthError unless `command` is a fresh, genuine command for this gateway."""
        body = self.verify(command)
        self.replay.add(body.nonce, body.expires_at, self._now(), self.skew_s)
        _log.info("signed command %s accepted (nonce %s)", body.name, body.nonce)

    def verify(self, command: Command) -> CommandBody:
        """Every check except recording the nonce; returns the verified body."""
        if not is_signed_document(command.payload):
            raise AuthError("command is not a signed document", code=AuthCode.UNSIGNED)
        try:
            signed = parse_command(command.raw)
        except ProtocolError as exc:
            raise AuthError(f"malformed command document: {exc}", code=AuthCode.MALFORMED) from None
        verify_command(self.master_key, signed)
        body = signed.body
        if body.name != command.name:
            raise AuthError(
                f"signed for {body.name!r}, sent to {command.name!r}", code=AuthCode.WRONG_COMMAND
            )
        if body.gateway != self.gateway_id:
            raise AuthError(f"command is for gateway {body.gateway!r}", code=AuthCode.WRONG_GATEWAY)
        self._check_window(body)
        self.replay.check(body.nonce, body.expires_at)
        return body

    def _check_window(self, body: CommandBody) -> None:
        now = self._now()
        if body.expires_at - body.issued_at > self.max_lifetime_s:
            limit = self.max_lifetime_s
            raise AuthError(f"command valid longer than {limit} s", code=AuthCode.LIFETIME_TOO_LONG)
        if now + self.skew_s < body.issued_at:
            raise AuthError("command issued in the future", code=AuthCode.NOT_YET_VALID)
        if now - self.skew_s > body.expires_at:
            raise AuthError(f"command expired at {body.expires_at}", code=AuthCode.EXPIRED)

    def _now(self) -> float:
        return self.clock.now().timestamp()


def _int_or_zero(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
