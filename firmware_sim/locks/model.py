"""The seal lock firmware as a pure state machine: bytes in, bytes out, no radio.

The BLE simulator wraps LockModel in a GATT server: writes to the command characteristic go
to `handle_fragment` (or `handle_message` for whole messages), the returned fragments are
notified on the response characteristic, `advert()` is the advertising data and
`state_value()` the state characteristic. Everything follows docs/protocol.md.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.errors import AuthError, ProtocolError
from gateway.protocol import seal_crypto as crypto
from gateway.protocol.clock import Clock
from gateway.protocol.seal_advert import (
    Advert,
    advertising_data,
    encode_advert,
    short_id,
    sign_advert,
)
from gateway.protocol.seal_fragments import MIN_ATT_MTU, Reassembler, fragment
from gateway.protocol.seal_frames import (
    LOCK_ID_LEN,
    MAC_LEN,
    MAX_LOG_ENTRIES,
    NONCE_LEN,
    TAG_LEN,
    Challenge,
    ChallengeRequest,
    Command,
    CommandResult,
    ErrorCode,
    ErrorFrame,
    Frame,
    LockState,
    LogEntries,
    LogEntry,
    LogEvent,
    LogFetch,
    Operation,
    ResultCode,
    StatusFlags,
    TicketHeader,
    UnknownFrame,
    WireLoop,
    decode_message,
    decode_ticket_header,
    encode,
)

__all__ = ["DEFAULT_SKEW_S", "LockModel"]

_log = logging.getLogger(__name__)

DEFAULT_SKEW_S = 120
CHALLENGE_TTL_S = 30.0
ADVERT_HEARTBEAT_S = 600.0
_NO_TAG = bytes(TAG_LEN)
_COUNTER_MAX = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class _Pending:
    nonce: bytes
    counter: int
    gw_nonce: bytes
    issued_at: float


@dataclass(frozen=True, slots=True)
class _Verdict:
    result: ResultCode
    header: TicketHeader | None


class LockModel:
    """One lock: keys, RTC, counters, sensors, the log ring and the command state machine."""

    def __init__(
        self,
        lock_id: bytes,
        k_lock: bytes,
        *,
        clock: Clock,
        rng: Callable[[int], bytes] = os.urandom,
        state: LockState = LockState.UNSEALED,
        wire_intact: bool = False,
        log_capacity: int = 256,
        skew_s: int = DEFAULT_SKEW_S,
        att_mtu: int = MIN_ATT_MTU,
    ) -> None:
        if len(lock_id) != LOCK_ID_LEN:
            raise ValueError(f"lock id must be {LOCK_ID_LEN} bytes")
        self.lock_id = lock_id
        self._k_lock = k_lock
        self._keys = crypto.derive_lock_keys(k_lock, lock_id)
        self._clock = clock
        self._rng = rng
        self._skew_s = skew_s
        self.att_mtu = att_mtu
        # Persistent (NVM) state.
        self.state = state
        self.counter = 0
        self.adv_counter = 0
        self._log: deque[LogEntry] = deque(maxlen=log_capacity)
        self._next_index = 1
        self._rtc_offset = 0
        self._rtc_valid = True
        self._time_floor = 0
        self._tamper = False
        # Sensors.
        self.wire_intact = wire_intact
        self.shell_open = False
        self.battery_low = False
        # Fault hooks; the transport reads answer_delay_s and drop_link.
        self.actuator_failures = 0
        self.answer_delay_s = 0.0
        self.drop_link = False
        # Volatile (per connection) state.
        self._pending: _Pending | None = None
        self._reassembler = Reassembler()
        self._advert_content: tuple[int, int, int] | None = None
        self._advert_at = 0.0
        self._append(LogEvent.BOOT)

    # -- transport-facing API --------------------------------------------------------------

    def handle_fragment(self, data: bytes) -> list[bytes]:
        """Take one written fragment; return the fragments to notify (maybe none yet)."""
        try:
            message = self._reassembler.feed(data, self._clock.monotonic())
        except ProtocolError as exc:
            _log.debug("lock %s: bad fragment: %s", self.lock_id.hex(), exc)
            return fragment(encode(ErrorFrame(ErrorCode.BAD_FRAGMENT)), self.att_mtu)
        if message is None:
            return []
        return fragment(self.handle_message(message), self.att_mtu)

    def handle_message(self, data: bytes) -> bytes:
        """Take one whole message; return the whole answer message."""
        try:
            frame = decode_message(data)
        except ProtocolError as exc:
            _log.debug("lock %s: bad message: %s", self.lock_id.hex(), exc)
            code = ErrorCode.UNSUPPORTED_VERSION if data[:1] not in (b"", b"\x01") else None
            return encode(ErrorFrame(code or ErrorCode.BAD_FRAME))
        return encode(self._dispatch(frame, data))

    def disconnect(self) -> None:
        """The link dropped: forget the challenge and any partial message."""
        self._pending = None
        self._reassembler.reset()

    def advert(self) -> bytes:
        """Legacy advertising data (Flags AD + manufacturer AD), at most 31 bytes."""
        return advertising_data(self.advert_payload())

    def advert_payload(self) -> bytes:
        """The 21-byte manufacturer payload, MAC'd under K_adv."""
        self._refresh_advert_counter()
        advert = Advert(short_id(self.lock_id), self.state, self.flags, self.adv_counter, self.head)
        return encode_advert(sign_advert(advert, self.lock_id, self._keys.advert))

    def state_value(self) -> bytes:
        """Value of the state characteristic: the same authenticated payload as the advert."""
        return self.advert_payload()

    # -- sensors and fault hooks ----------------------------------------------------------

    def set_wire_intact(self, intact: bool) -> None:
        """Wire-loop sensor; a break while sealed is a tamper."""
        was, self.wire_intact = self.wire_intact, intact
        if was and not intact and self.state is LockState.SEALED:
            self._raise_tamper(LogEvent.TAMPER_WIRE_CUT)

    def set_shell_open(self, is_open: bool) -> None:
        """Shell switch; opening it is a tamper in any state."""
        was, self.shell_open = self.shell_open, is_open
        if is_open and not was:
            self._raise_tamper(LogEvent.TAMPER_SHELL_OPEN)

    def set_battery_low(self, low: bool) -> None:
        """Battery monitor; logged when it first goes low."""
        was, self.battery_low = self.battery_low, low
        if low and not was:
            self._append(LogEvent.BATTERY_LOW)

    def fail_actuations(self, count: int = 1) -> None:
        """Make the next `count` motor actuations fail mechanically."""
        self.actuator_failures = count

    def lose_time(self) -> None:
        """Simulate an RTC reset (battery swap): commands need SET_TIME first."""
        self._rtc_valid = False

    def reboot(self) -> None:
        """Power cycle: volatile state goes, NVM stays, a BOOT entry is written."""
        self.disconnect()
        self._append(LogEvent.BOOT)

    # -- read-only views ------------------------------------------------------------------

    @property
    def rtc(self) -> int:
        """The lock's RTC in Unix seconds."""
        return int(self._clock.now().timestamp()) + self._rtc_offset

    @property
    def head(self) -> int:
        """Index of the newest log entry (0 when the log is empty)."""
        return self._next_index - 1

    @property
    def flags(self) -> int:
        """The status flags byte."""
        bits = StatusFlags.TAMPER if self._tamper else 0
        bits |= StatusFlags.BATTERY_LOW if self.battery_low else 0
        bits |= StatusFlags.WIRE_CUT if self._wire_reported() is WireLoop.BROKEN else 0
        bits |= StatusFlags.CLOCK_INVALID if not self._clock_ok() else 0
        return bits | (StatusFlags.FAULT if self.state is LockState.FAULT else 0)

    def log_entries(self) -> tuple[LogEntry, ...]:
        """Everything still in the ring, oldest first."""
        return tuple(self._log)

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, frame: Frame, raw: bytes) -> Frame:
        if isinstance(frame, ChallengeRequest):
            return self._issue_challenge(frame)
        if isinstance(frame, Command):
            return self._handle_command(frame)
        if isinstance(frame, LogFetch):
            return self._handle_log_fetch(frame, raw)
        if isinstance(frame, UnknownFrame):
            return ErrorFrame(ErrorCode.UNKNOWN_TYPE)
        return ErrorFrame(ErrorCode.UNEXPECTED_MESSAGE)

    def _issue_challenge(self, request: ChallengeRequest) -> Frame:
        if self.counter >= _COUNTER_MAX:
            return ErrorFrame(ErrorCode.BUSY)
        self.counter += 1
        nonce = self._rng(NONCE_LEN)
        self._pending = _Pending(nonce, self.counter, request.gw_nonce, self._clock.monotonic())
        return Challenge(self.lock_id, nonce, self.counter, self.rtc)

    def _handle_command(self, command: Command) -> Frame:
        pending, self._pending = self._pending, None
        if pending is None:
            return ErrorFrame(ErrorCode.UNEXPECTED_MESSAGE)
        ctx = crypto.SessionContext(self.lock_id, pending.nonce, pending.gw_nonce)
        k_tl = crypto.derive_ticket_key(self._k_lock, command.header)
        verdict = self._verify(command, pending, ctx, k_tl)
        result = verdict.result
        if result is ResultCode.OK:
            result = self._execute(command)
        index = self._log_outcome(command, verdict.header, result)
        return self._answer(command, result, index, ctx, k_tl)

    def _verify(
        self, command: Command, pending: _Pending, ctx: crypto.SessionContext, k_tl: bytes
    ) -> _Verdict:
        if self._clock.monotonic() - pending.issued_at > CHALLENGE_TTL_S:
            return _Verdict(ResultCode.CHALLENGE_EXPIRED, None)
        if command.counter != pending.counter:
            return _Verdict(ResultCode.REPLAY, None)
        try:
            crypto.verify_command(k_tl, ctx, command)
        except AuthError:
            return _Verdict(ResultCode.BAD_MAC, None)
        try:
            header = decode_ticket_header(command.header)
        except ProtocolError:
            return _Verdict(ResultCode.BAD_TICKET, None)
        return _Verdict(self._check_ticket(header, command), header)

    def _check_ticket(self, header: TicketHeader, command: Command) -> ResultCode:
        if not header.covers(self.lock_id):
            return ResultCode.WRONG_LOCK
        if not command.op.known or not header.allows(command.op):
            return ResultCode.OP_NOT_ALLOWED
        if command.op is Operation.SET_TIME:
            return self._check_new_time(header, command.arg)
        if not self._clock_ok():
            return ResultCode.CLOCK_INVALID
        if self.rtc < header.not_before - self._skew_s:
            return ResultCode.NOT_YET_VALID
        if self.rtc > header.not_after + self._skew_s:
            return ResultCode.EXPIRED
        return self._check_state(command.op)

    def _check_new_time(self, header: TicketHeader, new_time: int) -> ResultCode:
        in_window = header.not_before - self._skew_s <= new_time <= header.not_after + self._skew_s
        if not in_window or new_time < self._time_floor:
            return ResultCode.BAD_TIME
        return ResultCode.OK

    def _check_state(self, op: Operation) -> ResultCode:
        if op is Operation.UNSEAL and self.state is LockState.UNSEALED:
            return ResultCode.BAD_STATE
        if op is Operation.SEAL and self.state in (LockState.SEALED, LockState.TAMPERED):
            return ResultCode.BAD_STATE
        if op is Operation.SEAL and not self.wire_intact:
            return ResultCode.WIRE_OPEN
        return ResultCode.OK

    def _execute(self, command: Command) -> ResultCode:
        if command.op is Operation.SET_TIME:
            self._rtc_offset = command.arg - int(self._clock.now().timestamp())
            self._rtc_valid = True
            return ResultCode.OK
        if self.actuator_failures > 0:
            self.actuator_failures -= 1
            self.state = LockState.FAULT
            return ResultCode.MECHANICAL_FAULT
        if command.op is Operation.SEAL:
            self.state = LockState.SEALED
            self._tamper = False
        else:
            self.state = LockState.UNSEALED
        return ResultCode.OK

    def _log_outcome(
        self, command: Command, header: TicketHeader | None, result: ResultCode
    ) -> int:
        tag = crypto.ticket_tag(command.header)
        operator = header.operator if header is not None else _NO_TAG
        return self._append(_event_for(command.op, result), result, tag, operator)

    def _answer(
        self,
        command: Command,
        result: ResultCode,
        index: int,
        ctx: crypto.SessionContext,
        k_tl: bytes,
    ) -> CommandResult:
        unsigned = CommandResult(
            command.counter,
            command.op,
            result,
            self.state,
            self._wire_reported(),
            self.flags,
            index,
            self.rtc,
            bytes(MAC_LEN),
        )
        mac = crypto.answer_mac(k_tl, ctx, command.mac, unsigned)
        return replace(unsigned, mac=mac)

    def _handle_log_fetch(self, request: LogFetch, raw: bytes) -> LogEntries:
        count = min(request.max_count, MAX_LOG_ENTRIES)
        entries = tuple(e for e in self._log if e.index > request.after)[:count]
        oldest = self._log[0].index if self._log else 0
        unsigned = LogEntries(self.head, oldest, entries, bytes(MAC_LEN))
        mac = crypto.log_answer_mac(self._keys.log, self.lock_id, request.gw_nonce, raw, unsigned)
        return replace(unsigned, mac=mac)

    # -- helpers ---------------------------------------------------------------------------

    def _append(
        self,
        event: LogEvent,
        result: ResultCode = ResultCode.OK,
        ticket: bytes = _NO_TAG,
        operator: bytes = _NO_TAG,
    ) -> int:
        rtc = self.rtc
        if self._clock_ok():
            self._time_floor = max(self._time_floor, rtc)
        draft = LogEntry(
            self._next_index,
            rtc,
            event,
            result,
            self.state,
            self._wire_reported(),
            ticket,
            operator,
            _NO_TAG,
            _NO_TAG,
        )
        self._log.append(crypto.sealed_entry(self._keys.log, self._keys.audit, self.lock_id, draft))
        self._next_index += 1
        return draft.index

    def _raise_tamper(self, event: LogEvent) -> None:
        self._tamper = True
        if self.state is LockState.SEALED:
            self.state = LockState.TAMPERED
        self._append(event)

    def _wire_reported(self) -> WireLoop:
        if self.state not in (LockState.SEALED, LockState.TAMPERED):
            return WireLoop.NOT_MEASURED
        return WireLoop.INTACT if self.wire_intact else WireLoop.BROKEN

    def _clock_ok(self) -> bool:
        return self._rtc_valid and self.rtc >= self._time_floor

    def _refresh_advert_counter(self) -> None:
        content = (int(self.state), self.flags, self.head)
        now = self._clock.monotonic()
        if content != self._advert_content or now - self._advert_at >= ADVERT_HEARTBEAT_S:
            self.adv_counter += 1
            self._advert_content = content
            self._advert_at = now


def _event_for(op: Operation, result: ResultCode) -> LogEvent:
    if result is ResultCode.MECHANICAL_FAULT:
        return LogEvent.FAULT
    if result is not ResultCode.OK:
        return LogEvent.OP_REJECTED
    if op is Operation.SET_TIME:
        return LogEvent.TIME_SET
    return LogEvent.SEALED if op is Operation.SEAL else LogEvent.UNSEALED
