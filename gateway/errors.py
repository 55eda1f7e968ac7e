"""The one exception root of sealgw and the subtrees that tell a caller what to do.

- TransientError: the operation may succeed if retried later (timeouts, lost links, busy
  devices, a daemon not yet running).
- AuthError: a signature, MAC, certificate or policy check failed; do not retry.
- ProtocolError: a peer sent something malformed; drop it, count it, reset the session.
- ConfigError: the configuration is wrong; fix it, do not retry.
- StorageError: the durable buffer cannot take or keep data.
- DeviceRejectedError, ModbusExceptionError: a device understood and refused; do not retry
  (except ModbusBusyError, which is also a TransientError).
- ProvisionError, ControlError, AuditInputError: a command-line operation cannot go on; report.

Every class a module raises on purpose is defined here, so a caller needs one import to
handle a whole subtree. Errors of gateway.locks and gateway.uplink join them later.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.protocol.dlt645 import ErrorFlags, Function

__all__ = [
    "AnswerTimeoutError",
    "AuditInputError",
    "AuthCode",
    "AuthError",
    "BluetoothUnavailableError",
    "BusUnavailableError",
    "ConfigError",
    "ControlError",
    "DatabaseCorruptError",
    "DeviceRejectedError",
    "DeviceTimeoutError",
    "DuplicateEventError",
    "ExitCode",
    "FollowUpError",
    "FrameError",
    "GarbledReplyError",
    "GarbledResponseError",
    "GatewayError",
    "GatewayNotRunningError",
    "LineUnavailableError",
    "LinkLostError",
    "MeterRefusedError",
    "MeterValueError",
    "ModbusBusyError",
    "ModbusExceptionCode",
    "ModbusExceptionError",
    "OutcomeUnknownError",
    "ProbeError",
    "ProfileError",
    "ProtocolError",
    "ProvisionError",
    "ReplyMismatchError",
    "RetryableError",
    "StateFileCorruptError",
    "StorageError",
    "StorageFullError",
    "TransientError",
    "exit_code_for",
]


class GatewayError(Exception):
    """Root of every error sealgw raises on purpose."""


# --- TransientError: retry later -----------------------------------------------------------


class TransientError(GatewayError):
    """A failure that may go away when retried (radio, bus or broker trouble)."""


class DeviceTimeoutError(TransientError, TimeoutError):
    """A device did not answer in time."""

    def __init__(self, message: str, *, device: str | None = None) -> None:
        super().__init__(message)
        self.device = device


class BluetoothUnavailableError(TransientError):
    """BlueZ cannot be reached over D-Bus, has no such adapter, or refused a registration."""

    def __init__(self, message: str, *, adapter: str, dbus_error: str = "") -> None:
        super().__init__(message)
        self.adapter = adapter
        self.dbus_error = dbus_error


class BusUnavailableError(TransientError):
    """A Modbus line itself cannot be opened or reached (port missing, TCP refused)."""


class LineUnavailableError(TransientError):
    """A DL/T 645 serial port or TCP socket cannot be opened, or it closed under us."""


class GatewayNotRunningError(TransientError, ConnectionError):
    """Nothing answers on the control socket at `path`."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"no gateway running: cannot connect to {path} ({reason})")
        self.path = path
        self.reason = reason


# --- AuthError: never retried --------------------------------------------------------------


class AuthCode(StrEnum):
    """Why an AuthError was raised; the values are the wire strings of refusals and events.

    Handheld sessions use gateway.protocol.handheld.HandheldReason for their own codes.
    """

    AUTH_FAILED = "auth_failed"
    BAD_SIGNATURE = "bad_signature"
    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    BAD_CREDENTIAL = "bad_credential"
    BAD_KEY = "bad_key"
    WRONG_GATEWAY = "wrong_gateway"
    WRONG_RECIPIENT = "wrong_recipient"
    WRONG_LOCK = "wrong_lock"
    WRONG_COMMAND = "wrong_command"
    UNKNOWN_TICKET = "unknown_ticket"
    USES_EXHAUSTED = "uses_exhausted"
    TICKET_EXPIRED = "ticket_expired"
    TICKET_REVOKED = "ticket_revoked"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    LIFETIME_TOO_LONG = "lifetime_too_long"
    STALE_REVOCATION_LIST = "stale_revocation_list"
    CONFLICT = "conflict"
    REPLAYED = "replayed"
    VERIFIER_MISSING = "verifier_missing"
    REPLAY_CACHE_UNREADABLE = "replay_cache_unreadable"
    BAD_MAC = "bad_mac"
    BAD_ANSWER_MAC = "bad_answer_mac"
    BAD_ENTRY_TAG = "bad_entry_tag"
    BAD_AUDIT_TAG = "bad_audit_tag"
    BAD_LOG_MAC = "bad_log_mac"
    BAD_ADVERT_MAC = "bad_advert_mac"
    ADVERT_WRONG_LOCK = "advert_wrong_lock"
    ADVERT_CONFLICT = "advert_conflict"
    ADVERT_REPLAY = "advert_replay"
    COUNTER_ROLLBACK = "counter_rollback"
    ANSWER_MISMATCH = "answer_mismatch"
    BAD_GATEWAY = "bad_gateway"
    GATEWAY_MISMATCH = "gateway_mismatch"


class AuthError(GatewayError):
    """An authentication, signature or authorization check failed. Never retried.

    `code` is an AuthCode (or a HandheldReason); a plain string is still accepted.
    """

    def __init__(self, message: str, *, code: str = AuthCode.AUTH_FAILED) -> None:
        super().__init__(message)
        self.code = code


# --- ProtocolError: drop, count, reset -----------------------------------------------------


class ProtocolError(GatewayError, ValueError):
    """A peer sent bytes that do not follow the protocol."""


class FrameError(ProtocolError):
    """A complete but invalid frame; the caller drops `consumed` bytes and decodes again."""

    def __init__(self, message: str, *, consumed: int) -> None:
        super().__init__(message)
        self.consumed = consumed


class GarbledResponseError(ProtocolError):
    """Modbus: bytes came back, but no valid frame for the request (CRC, framing, wrong unit)."""


class GarbledReplyError(ProtocolError):
    """DL/T 645: bytes came back but no valid reply frame (bad checksum, end byte or length)."""


class FollowUpError(ProtocolError):
    """DL/T 645: a reply announced follow-up frames (B1) and the follow-up sequence broke."""


class ReplyMismatchError(ProtocolError):
    """DL/T 645: a valid reply frame answered something else (another identifier)."""


class MeterValueError(ProtocolError):
    """DL/T 645: a reply frame was valid but its value is not (bad BCD, a date out of range)."""

    def __init__(self, message: str, *, di: int) -> None:
        super().__init__(message)
        self.di = di


# --- ConfigError: fix the configuration ----------------------------------------------------


class ConfigError(GatewayError, ValueError):
    """The configuration is invalid; `key` names the offending dotted key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason


class ProfileError(ConfigError):
    """A profile is invalid; `source` names the file and `key` the dotted key inside it."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(key, reason)
        self.source = source
        self.args = (f"{source}: {key}: {reason}" if key else f"{source}: {reason}",)


# --- StorageError: the buffer cannot take or keep data -------------------------------------


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


class StateFileCorruptError(StorageError):
    """A state or key file in the state dir does not parse; `path` names it."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


# --- A device refused: retrying will not help (unless it said busy) -------------------------


class DeviceRejectedError(GatewayError):
    """A device understood a request and refused it with error `code`; retrying will not help."""

    def __init__(self, message: str, *, device: str, code: int) -> None:
        super().__init__(message)
        self.device = device
        self.code = code


class MeterRefusedError(DeviceRejectedError):
    """A DL/T 645 meter answered with an abnormal reply; `flags` says why."""

    def __init__(self, address: str, function: Function, flags: ErrorFlags) -> None:
        super().__init__(
            f"meter {address} refused {function.name}: {flags!r}", device=address, code=int(flags)
        )
        self.address = address
        self.function = function
        self.flags = flags


class ModbusExceptionCode(IntEnum):
    """Exception codes of the Modbus Application Protocol, section 7."""

    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SERVER_DEVICE_FAILURE = 0x04
    ACKNOWLEDGE = 0x05
    SERVER_DEVICE_BUSY = 0x06
    MEMORY_PARITY_ERROR = 0x08
    GATEWAY_PATH_UNAVAILABLE = 0x0A
    GATEWAY_TARGET_NO_RESPONSE = 0x0B

    @classmethod
    def from_wire(cls, code: int) -> ModbusExceptionCode | None:
        """The known code, or None for one a newer device invented."""
        try:
            return cls(code)
        except ValueError:
            return None


class ModbusExceptionError(GatewayError):
    """The device answered with a Modbus exception response; `code` is its exception code."""

    def __init__(self, message: str, *, code: int, unit: int, function: int, address: int) -> None:
        super().__init__(message)
        self.code = code
        self.exception = ModbusExceptionCode.from_wire(code)
        self.unit = unit
        self.function = function
        self.address = address


class ModbusBusyError(ModbusExceptionError, TransientError):
    """An exception response that says "try later" (busy, acknowledge, gateway trouble)."""


# --- Operations run from the command line --------------------------------------------------


class ProvisionError(GatewayError):
    """Provisioning could not complete; `paths` names the files involved."""

    def __init__(self, message: str, *, paths: tuple[Path, ...] = ()) -> None:
        super().__init__(message)
        self.paths = paths


class IdentityRequiredError(ProvisionError):
    """The daemon will not run without the identity key that signs its checkpoints."""


class ControlError(GatewayError):
    """The gateway answered a control request with an error."""


class AuditInputError(GatewayError):
    """The input or a key cannot be read at all (a usage or I/O error, not a finding)."""


class ProbeError(GatewayError):
    """A probe (`sealgw probe`) could not measure: its broker, lock or work did not behave."""


class ExitCode(IntEnum):
    """Exit codes of every sealgw command and plug-in (systemd's unit relies on USAGE = 2)."""

    OK = 0
    FAILURE = 1  # the command ran and failed, or a gateway refused
    USAGE = 2  # bad arguments or config: fix them, do not restart
    NO_IDENTITY = 78  # EX_CONFIG: no usable identity.key; run `sealgw init` (docs/audit.md)
    IDENTITY_CORRUPT = 3  # the identity key does not parse: restore it, do not restart
    INTERRUPTED = 130  # SIGINT (128 + 2)
    TERMINATED = 143  # SIGTERM (128 + 15)


def exit_code_for(exc: GatewayError) -> ExitCode:
    """USAGE for a ConfigError, NO_IDENTITY without identity, IDENTITY_CORRUPT for a bad one.

    Every other corrupt state file is moved aside and the gateway carries on; only the
    identity key reaches the top (gateway.auth.provision.load_identity).
    """
    if isinstance(exc, IdentityRequiredError):
        return ExitCode.NO_IDENTITY
    if isinstance(exc, ConfigError):
        return ExitCode.USAGE
    if isinstance(exc, StateFileCorruptError):
        return ExitCode.IDENTITY_CORRUPT
    return ExitCode.FAILURE


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
