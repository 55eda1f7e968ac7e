"""Seal lock messages: bytes in, frames out. Layouts are specified in docs/protocol.md.

Every message is `version(1) | type(1) | body_length(2, big-endian) | body`. The codec is pure
and does no cryptography: MAC fields are carried as bytes and checked in seal_crypto and
seal_exchange. Wire enums accept unknown values (as UNKNOWN_n members), so newer firmware does
not crash an older gateway; an unknown message type decodes to UnknownFrame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Self, TypeAlias

from gateway.errors import ProtocolError

__all__ = [
    "AUDIT_BIT",
    "HEADER_LEN",
    "LOCK_ID_LEN",
    "MAC_LEN",
    "MAX_BODY_LEN",
    "MAX_LOCKS_PER_TICKET",
    "MAX_LOG_ENTRIES",
    "MAX_MESSAGE_LEN",
    "NONCE_LEN",
    "PROTOCOL_VERSION",
    "Challenge",
    "ChallengeRequest",
    "Command",
    "CommandResult",
    "ErrorCode",
    "ErrorFrame",
    "Frame",
    "LockState",
    "LogEntries",
    "LogEntry",
    "LogEvent",
    "LogFetch",
    "MessageType",
    "Operation",
    "ResultCode",
    "StatusFlags",
    "TicketHeader",
    "UnknownFrame",
    "WireEnum",
    "WireLoop",
    "decode",
    "decode_log_entry",
    "decode_message",
    "decode_ticket_header",
    "encode",
    "encode_log_entry",
    "encode_ticket_header",
    "log_entry_fields",
    "mac_input",
]

PROTOCOL_VERSION = 1
HEADER_LEN = 4
MAX_MESSAGE_LEN = 512
MAX_BODY_LEN = MAX_MESSAGE_LEN - HEADER_LEN
MAC_LEN = 16
NONCE_LEN = 16
LOCK_ID_LEN = 8
TICKET_ID_LEN = 16
TAG_LEN = 8
MAX_LOCKS_PER_TICKET = 16
MAX_LOG_ENTRIES = 10
TICKET_HEADER_VERSION = 1
AUDIT_BIT = 0x80
"""Bit 7 of a ticket header's ops byte: issued under the audit flow (may unseal TAMPERED)."""
LOG_ENTRY_FIELDS_LEN = 28
LOG_ENTRY_LEN = LOG_ENTRY_FIELDS_LEN + 2 * TAG_LEN

_HEADER = struct.Struct(">BBH")
_TICKET_FIXED = struct.Struct(">B16sIIB8sB")
_CHALLENGE = struct.Struct(">8s16sII")
_COMMAND_FIXED = struct.Struct(">IBIB")
_RESULT = struct.Struct(">IBBBBBII16s")
_LOG_FETCH = struct.Struct(">16sIB")
_LOG_ENTRIES_FIXED = struct.Struct(">IIB")
_LOG_ENTRY = struct.Struct(">IIBBBB8s8s8s8s")


class WireEnum(IntEnum):
    """An IntEnum of one wire byte that turns unknown values into UNKNOWN_n pseudo-members."""

    @classmethod
    def _missing_(cls, value: object) -> Self | None:
        if not isinstance(value, int) or not 0 <= value <= 0xFF:
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member

    @property
    def known(self) -> bool:
        """True when this value is defined by this version of the protocol."""
        return self._name_ in type(self).__members__


class MessageType(WireEnum):
    """Message type byte (docs/protocol.md, section 4)."""

    CHALLENGE_REQUEST = 0x01
    CHALLENGE = 0x02
    COMMAND = 0x03
    COMMAND_RESULT = 0x04
    LOG_FETCH = 0x05
    LOG_ENTRIES = 0x06
    ERROR = 0x7F


class Operation(WireEnum):
    """A state-changing operation a ticket may allow."""

    UNSEAL = 0x01
    SEAL = 0x02
    SET_TIME = 0x03


class LockState(WireEnum):
    """What the lock reports about itself."""

    UNKNOWN = 0x00
    SEALED = 0x01
    UNSEALED = 0x02
    TAMPERED = 0x03
    FAULT = 0x04


class WireLoop(WireEnum):
    """Continuity of the sealing wire loop; meaningful while sealed."""

    NOT_MEASURED = 0x00
    INTACT = 0x01
    BROKEN = 0x02


class ResultCode(WireEnum):
    """Outcome of a command, in COMMAND_RESULT and in log entries."""

    OK = 0x00
    BAD_MAC = 0x01
    # 0x02 is reserved.
    REPLAY = 0x03
    CHALLENGE_EXPIRED = 0x04
    WRONG_LOCK = 0x05
    NOT_YET_VALID = 0x06
    EXPIRED = 0x07
    OP_NOT_ALLOWED = 0x08
    BAD_STATE = 0x09
    WIRE_OPEN = 0x0A
    MECHANICAL_FAULT = 0x0B
    CLOCK_INVALID = 0x0C
    BAD_TIME = 0x0D
    BAD_TICKET = 0x0E
    NEEDS_AUDIT = 0x0F


class ErrorCode(WireEnum):
    """Unauthenticated transport-level errors in an ERROR message."""

    BAD_FRAGMENT = 0x01
    BAD_FRAME = 0x02
    UNSUPPORTED_VERSION = 0x03
    UNKNOWN_TYPE = 0x04
    UNEXPECTED_MESSAGE = 0x05
    BUSY = 0x06
    TIMEOUT = 0x07


class LogEvent(WireEnum):
    """Kind of a lock log entry."""

    BOOT = 0x01
    SEALED = 0x02
    UNSEALED = 0x03
    OP_REJECTED = 0x04
    TAMPER_WIRE_CUT = 0x05
    TAMPER_SHELL_OPEN = 0x06
    BATTERY_LOW = 0x07
    FAULT = 0x08
    TIME_SET = 0x09


class StatusFlags:
    """Bits of the status flags byte shared by COMMAND_RESULT, the advert and log answers."""

    TAMPER = 0x01
    BATTERY_LOW = 0x02
    WIRE_CUT = 0x04
    CLOCK_INVALID = 0x08
    FAULT = 0x10


@dataclass(frozen=True, slots=True)
class TicketHeader:
    """The part of a master-station ticket a lock checks; its SHA-256 keys K_TL."""

    ticket_id: bytes
    not_before: int
    not_after: int
    ops: frozenset[Operation]
    operator: bytes
    lock_ids: tuple[bytes, ...]
    version: int = TICKET_HEADER_VERSION
    audit: bool = False
    """Issued under the audit flow: the only header that may UNSEAL a TAMPERED lock."""

    def allows(self, op: Operation) -> bool:
        """True when the header lists `op`."""
        return op in self.ops

    def covers(self, lock_id: bytes) -> bool:
        """True when `lock_id` is in the header's scope."""
        return lock_id in self.lock_ids


@dataclass(frozen=True, slots=True)
class ChallengeRequest:
    """Gateway asks for a fresh challenge and contributes its own nonce."""

    gw_nonce: bytes


@dataclass(frozen=True, slots=True)
class Challenge:
    """Lock's fresh nonce, its command counter and RTC (unauthenticated until the answer)."""

    lock_id: bytes
    nonce: bytes
    counter: int
    rtc: int


@dataclass(frozen=True, slots=True)
class Command:
    """A state-changing command bound to one challenge and one ticket header."""

    counter: int
    op: Operation
    arg: int
    header: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The lock's MAC'd answer to a Command."""

    counter: int
    op: Operation
    result: ResultCode
    state: LockState
    wire: WireLoop
    flags: int
    log_index: int
    rtc: int
    mac: bytes


@dataclass(frozen=True, slots=True)
class LogFetch:
    """Ask for log entries with index greater than `after`, at most `max_count`."""

    gw_nonce: bytes
    after: int
    max_count: int


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One lock log record with its log-key tag and its audit tag (for the master station)."""

    index: int
    rtc: int
    event: LogEvent
    result: ResultCode
    state: LockState
    wire: WireLoop
    ticket_tag: bytes
    operator: bytes
    tag: bytes
    audit_tag: bytes


@dataclass(frozen=True, slots=True)
class LogEntries:
    """Answer to LogFetch: ring bounds, the entries and a MAC under K_log."""

    head: int
    oldest: int
    entries: tuple[LogEntry, ...]
    mac: bytes


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """Unauthenticated transport error; never evidence of lock state."""

    code: ErrorCode


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A message of a type this version does not know; skipped, not fatal."""

    type: int
    body: bytes


Frame: TypeAlias = (
    ChallengeRequest
    | Challenge
    | Command
    | CommandResult
    | LogFetch
    | LogEntries
    | ErrorFrame
    | UnknownFrame
)


def decode(buf: bytes | bytearray | memoryview) -> tuple[int, Frame | None]:
    """Decode one message from the front of `buf`: (bytes used, frame), or (0, None) for more."""
    if len(buf) < HEADER_LEN:
        return 0, None
    version, type_byte, length = _HEADER.unpack_from(buf)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported seal protocol version {version}")
    if length > MAX_BODY_LEN:
        raise ProtocolError(f"message body of {length} bytes exceeds {MAX_BODY_LEN}")
    if len(buf) < HEADER_LEN + length:
        return 0, None
    body = bytes(buf[HEADER_LEN : HEADER_LEN + length])
    return HEADER_LEN + length, _decode_body(type_byte, body)


def decode_message(data: bytes) -> Frame:
    """Decode exactly one complete message (as delivered by the reassembler)."""
    used, frame = decode(data)
    if frame is None or used != len(data):
        raise ProtocolError(f"expected one whole message, got {len(data)} bytes")
    return frame


def encode(frame: Frame) -> bytes:
    """Encode `frame` as one message; raise ProtocolError if a field does not fit."""
    type_byte, body = _encode_body(frame)
    if len(body) > MAX_BODY_LEN:
        raise ProtocolError(f"message body of {len(body)} bytes exceeds {MAX_BODY_LEN}")
    return _HEADER.pack(PROTOCOL_VERSION, type_byte, len(body)) + body


def mac_input(frame: Command | CommandResult | LogEntries) -> bytes:
    """The encoded message up to, not including, its trailing MAC field."""
    return encode(frame)[:-MAC_LEN]


def encode_ticket_header(header: TicketHeader) -> bytes:
    """The canonical binary ticket header (docs/protocol.md, section 6)."""
    _check_len("ticket_id", header.ticket_id, TICKET_ID_LEN)
    _check_len("operator", header.operator, TAG_LEN)
    if not 1 <= len(header.lock_ids) <= MAX_LOCKS_PER_TICKET:
        raise ProtocolError(f"a ticket header names 1..{MAX_LOCKS_PER_TICKET} locks")
    for lock_id in header.lock_ids:
        _check_len("lock_id", lock_id, LOCK_ID_LEN)
    _check_ops(frozenset(header.ops))
    ops_mask = sum(1 << (op - 1) for op in header.ops if 1 <= op <= 7)
    ops_mask |= AUDIT_BIT if header.audit else 0
    fixed = _pack(
        _TICKET_FIXED,
        header.version,
        header.ticket_id,
        header.not_before,
        header.not_after,
        ops_mask,
        header.operator,
        len(header.lock_ids),
    )
    return fixed + b"".join(header.lock_ids)


def decode_ticket_header(data: bytes) -> TicketHeader:
    """Parse a canonical ticket header; reject anything but exactly one canonical encoding."""
    if len(data) < _TICKET_FIXED.size:
        raise ProtocolError("ticket header truncated")
    version, ticket_id, nb, na, ops_mask, operator, count = _TICKET_FIXED.unpack_from(data)
    if version != TICKET_HEADER_VERSION:
        raise ProtocolError(f"unsupported ticket header version {version}")
    if not 1 <= count <= MAX_LOCKS_PER_TICKET:
        raise ProtocolError(f"ticket header names {count} locks")
    if len(data) != _TICKET_FIXED.size + count * LOCK_ID_LEN:
        raise ProtocolError("ticket header length does not match its lock count")
    if nb > na:
        raise ProtocolError("ticket header window ends before it starts")
    ids = data[_TICKET_FIXED.size :]
    lock_ids = tuple(ids[i : i + LOCK_ID_LEN] for i in range(0, len(ids), LOCK_ID_LEN))
    ops = frozenset(Operation(bit + 1) for bit in range(7) if ops_mask >> bit & 1)
    _check_ops(ops)
    audit = bool(ops_mask & AUDIT_BIT)
    return TicketHeader(ticket_id, nb, na, ops, operator, lock_ids, version, audit)


def _check_ops(ops: frozenset[Operation]) -> None:
    # docs/protocol.md, section 7: a clock-setting ticket never opens a lock.
    if Operation.SET_TIME in ops and Operation.UNSEAL in ops:
        raise ProtocolError("a ticket header never grants SET_TIME together with UNSEAL")


def log_entry_fields(entry: LogEntry) -> bytes:
    """The 28 bytes of an entry that both tags cover."""
    return encode_log_entry(entry)[:LOG_ENTRY_FIELDS_LEN]


def encode_log_entry(entry: LogEntry) -> bytes:
    """One 44-byte log entry record."""
    return _pack(
        _LOG_ENTRY,
        entry.index,
        entry.rtc,
        entry.event,
        entry.result,
        entry.state,
        entry.wire,
        _exact("ticket_tag", entry.ticket_tag, TAG_LEN),
        _exact("operator", entry.operator, TAG_LEN),
        _exact("tag", entry.tag, TAG_LEN),
        _exact("audit_tag", entry.audit_tag, TAG_LEN),
    )


def decode_log_entry(data: bytes) -> LogEntry:
    """Parse one 44-byte log entry record."""
    if len(data) != LOG_ENTRY_LEN:
        raise ProtocolError(f"log entry must be {LOG_ENTRY_LEN} bytes, got {len(data)}")
    index, rtc, event, result, state, wire, ticket, operator, tag, audit = _LOG_ENTRY.unpack(data)
    return LogEntry(
        index,
        rtc,
        LogEvent(event),
        ResultCode(result),
        LockState(state),
        WireLoop(wire),
        ticket,
        operator,
        tag,
        audit,
    )


def _decode_body(type_byte: int, body: bytes) -> Frame:
    kind = MessageType(type_byte)
    if kind is MessageType.CHALLENGE_REQUEST:
        return ChallengeRequest(_whole(body, NONCE_LEN, "CHALLENGE_REQUEST"))
    if kind is MessageType.CHALLENGE:
        return Challenge(*_unpack(_CHALLENGE, body, "CHALLENGE"))
    if kind is MessageType.COMMAND:
        return _decode_command(body)
    if kind is MessageType.COMMAND_RESULT:
        return _decode_result(body)
    if kind is MessageType.LOG_FETCH:
        nonce, after, max_count = _unpack(_LOG_FETCH, body, "LOG_FETCH")
        return LogFetch(nonce, after, max_count)
    if kind is MessageType.LOG_ENTRIES:
        return _decode_log_entries(body)
    if kind is MessageType.ERROR:
        return ErrorFrame(ErrorCode(_whole(body, 1, "ERROR")[0]))
    return UnknownFrame(type_byte, body)


def _decode_command(body: bytes) -> Command:
    if len(body) < _COMMAND_FIXED.size + MAC_LEN:
        raise ProtocolError("COMMAND truncated")
    counter, op, arg, header_len = _COMMAND_FIXED.unpack_from(body)
    if len(body) != _COMMAND_FIXED.size + header_len + MAC_LEN:
        raise ProtocolError("COMMAND length does not match its header length")
    header = body[_COMMAND_FIXED.size : _COMMAND_FIXED.size + header_len]
    return Command(counter, Operation(op), arg, header, body[-MAC_LEN:])


def _decode_result(body: bytes) -> CommandResult:
    counter, op, result, state, wire, flags, index, rtc, mac = _unpack(_RESULT, body, "RESULT")
    return CommandResult(
        counter,
        Operation(op),
        ResultCode(result),
        LockState(state),
        WireLoop(wire),
        flags,
        index,
        rtc,
        mac,
    )


def _decode_log_entries(body: bytes) -> LogEntries:
    fixed = _LOG_ENTRIES_FIXED.size
    if len(body) < fixed + MAC_LEN:
        raise ProtocolError("LOG_ENTRIES truncated")
    head, oldest, count = _LOG_ENTRIES_FIXED.unpack_from(body)
    if count > MAX_LOG_ENTRIES or len(body) != fixed + count * LOG_ENTRY_LEN + MAC_LEN:
        raise ProtocolError("LOG_ENTRIES length does not match its entry count")
    records = body[fixed : fixed + count * LOG_ENTRY_LEN]
    entries = tuple(
        decode_log_entry(records[i : i + LOG_ENTRY_LEN])
        for i in range(0, len(records), LOG_ENTRY_LEN)
    )
    return LogEntries(head, oldest, entries, body[-MAC_LEN:])


def _encode_body(frame: Frame) -> tuple[int, bytes]:
    if isinstance(frame, ChallengeRequest):
        return MessageType.CHALLENGE_REQUEST, _exact("gw_nonce", frame.gw_nonce, NONCE_LEN)
    if isinstance(frame, Challenge):
        return MessageType.CHALLENGE, _encode_challenge(frame)
    if isinstance(frame, Command):
        return MessageType.COMMAND, _encode_command(frame)
    if isinstance(frame, CommandResult):
        return MessageType.COMMAND_RESULT, _encode_result(frame)
    if isinstance(frame, LogFetch):
        nonce = _exact("gw_nonce", frame.gw_nonce, NONCE_LEN)
        return MessageType.LOG_FETCH, _pack(_LOG_FETCH, nonce, frame.after, frame.max_count)
    if isinstance(frame, LogEntries):
        return MessageType.LOG_ENTRIES, _encode_log_entries(frame)
    if isinstance(frame, ErrorFrame):
        return MessageType.ERROR, bytes([frame.code])
    if MessageType(frame.type).known or not 0 <= frame.type <= 0xFF:
        raise ProtocolError(f"UnknownFrame cannot carry type {frame.type}")
    return frame.type, frame.body


def _encode_challenge(frame: Challenge) -> bytes:
    lock_id = _exact("lock_id", frame.lock_id, LOCK_ID_LEN)
    nonce = _exact("nonce", frame.nonce, NONCE_LEN)
    return _pack(_CHALLENGE, lock_id, nonce, frame.counter, frame.rtc)


def _encode_command(frame: Command) -> bytes:
    fixed = _pack(_COMMAND_FIXED, frame.counter, frame.op, frame.arg, len(frame.header))
    return fixed + frame.header + _exact("mac", frame.mac, MAC_LEN)


def _encode_result(frame: CommandResult) -> bytes:
    return _pack(
        _RESULT,
        frame.counter,
        frame.op,
        frame.result,
        frame.state,
        frame.wire,
        frame.flags,
        frame.log_index,
        frame.rtc,
        _exact("mac", frame.mac, MAC_LEN),
    )


def _encode_log_entries(frame: LogEntries) -> bytes:
    if len(frame.entries) > MAX_LOG_ENTRIES:
        raise ProtocolError(f"at most {MAX_LOG_ENTRIES} log entries per answer")
    fixed = _pack(_LOG_ENTRIES_FIXED, frame.head, frame.oldest, len(frame.entries))
    records = b"".join(encode_log_entry(entry) for entry in frame.entries)
    return fixed + records + _exact("mac", frame.mac, MAC_LEN)


def _unpack(layout: struct.Struct, body: bytes, name: str) -> tuple[Any, ...]:
    if len(body) != layout.size:
        raise ProtocolError(f"{name} body must be {layout.size} bytes, got {len(body)}")
    return layout.unpack(body)


def _whole(body: bytes, size: int, name: str) -> bytes:
    if len(body) != size:
        raise ProtocolError(f"{name} body must be {size} bytes, got {len(body)}")
    return body


def _pack(layout: struct.Struct, *values: object) -> bytes:
    try:
        return layout.pack(*values)
    except struct.error as exc:
        raise ProtocolError(f"field out of range: {exc}") from None


def _exact(name: str, value: bytes, size: int) -> bytes:
    _check_len(name, value, size)
    return value


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ProtocolError(f"{name} must be {size} bytes, got {len(value)}")
