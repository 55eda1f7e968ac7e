"""The one exception root of sealgw and the subtrees that tell a caller what to do.

- TransientError: the operation may succeed if retried later (timeouts, lost links).
- AuthError: a signature, MAC, certificate or policy check failed; do not retry.
- ProtocolError: a peer sent something malformed; drop it, count it, reset the session.
- ConfigError: the configuration is wrong; fix it, do not retry.
- StorageError: the durable buffer cannot take or keep data.
"""

from __future__ import annotations

from enum import IntEnum


class GatewayError(Exception):
    """Root of every error sealgw raises on purpose."""


class TransientError(GatewayError):
    """A failure that may go away when retried (radio, bus or broker trouble)."""


class DeviceTimeoutError(TransientError, TimeoutError):
    """A device did not answer in time."""

    def __init__(self, message: str, *, device: str | None = None) -> None:
        super().__init__(message)
        self.device = device


class AuthError(GatewayError):
    """An authentication, signature or authorization check failed. Never retried."""

    def __init__(self, message: str, *, code: str = "auth_failed") -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(GatewayError, ValueError):
    """A peer sent bytes that do not follow the protocol."""


class ConfigError(GatewayError, ValueError):
    """The configuration is invalid; `key` names the offending dotted key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason


class StorageError(GatewayError):
    """The durable buffer failed."""


class StorageFullError(StorageError):
    """An audit or alarm event could not be stored; new seal operations must be refused."""


class DuplicateEventError(StorageError):
    """An event with this id is already stored: a repeat, not a loss (deterministic ids)."""

    def __init__(self, message: str, *, event_id: str) -> None:
        super().__init__(message)
        self.event_id = event_id


class DatabaseCorruptError(StorageError):
    """The buffer file failed its integrity check and was moved aside to `moved_to`."""

    def __init__(self, message: str, *, moved_to: str) -> None:
        super().__init__(message)
        self.moved_to = moved_to


class FrameError(ProtocolError):
    """A complete but invalid frame; the caller drops `consumed` bytes and decodes again."""

    def __init__(self, message: str, *, consumed: int) -> None:
        super().__init__(message)
        self.consumed = consumed


class DeviceRejectedError(GatewayError):
    """A device understood a request and refused it with error `code`; retrying will not help."""

    def __init__(self, message: str, *, device: str, code: int) -> None:
        super().__init__(message)
        self.device = device
        self.code = code


class ExitCode(IntEnum):
    """Exit codes of every sealgw command and plug-in (systemd's unit relies on USAGE = 2)."""

    OK = 0
    FAILURE = 1  # the command ran and failed, or a gateway refused
    USAGE = 2  # bad arguments or config: fix them, do not restart
    INTERRUPTED = 130  # SIGINT (128 + 2)
    TERMINATED = 143  # SIGTERM (128 + 15)


def exit_code_for(exc: GatewayError) -> ExitCode:
    """USAGE for a ConfigError, FAILURE for any other GatewayError."""
    return ExitCode.USAGE if isinstance(exc, ConfigError) else ExitCode.FAILURE


# -- seal locks (gateway/locks) ------------------------------------------------------------------


class RetryableError(TransientError):
    """A lock session failed before anything state-changing reached the lock: safe to retry."""


class LinkLostError(RetryableError):
    """The link went down (or was never usable) before anything state-changing was sent."""


class AnswerTimeoutError(LinkLostError):
    """The lock did not answer within the per-operation timeout."""


class OutcomeUnknownError(GatewayError):
    """A COMMAND was sent but no verified answer came back; `reason` says why."""

    def __init__(self, message: str, *, reason: str, ticket_tag: bytes = b"") -> None:
        super().__init__(message)
        self.reason = reason
        self.ticket_tag = ticket_tag
