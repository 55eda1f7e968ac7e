"""The seal lock firmware as a pure state machine: bytes in, bytes out, no radio.

The BLE simulator wraps LockModel in a GATT server: writes to the command characteristic go
to `handle_fragment` (or `handle_message` for whole messages), the returned fragments are
notified on the response characteristic, `advert()` is the advertising data and
`state_value()` the state characteristic. Everything follows docs/protocol.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from firmware_sim.locks.nvm import LockNvm
from firmware_sim.locks.ring import LogRing
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
from gateway.protocol.seal_fragments import MIN_ATT_MTU, FragmentTimeoutError, Reassembler, fragment
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
    MessageType,
    Operation,
    ResultCode,
    StatusFlags,
    TicketHeader,
    UnknownFrame,
    WireLoop,
    decode_log_entry,
    decode_message,
    decode_ticket_header,
    encode,
    encode_log_entry,
)

__all__ = [
    "ADV_COUNTER_BLOCK",
    "CHALLENGE_BURST",
    "CHALLENGE_REFILL_S",
    "COUNTER_BLOCK",
    "DEFAULT_SKEW_S",
    "MAX_TIME_CORRECTION_S",
    "REJECT_LOG_INTERVAL_S",
    "TIME_CORRECTION_INTERVAL_S",
    "TIME_FLOOR_PERSIST_S",
    "LockModel",
    "fragment_error",
]

_log = logging.getLogger(__name__)

DEFAULT_SKEW_S = 120
CHALLENGE_TTL_S = 30.0
ADVERT_HEARTBEAT_S = 600.0
COUNTER_BLOCK = 64
"""Command counter values reserved per flash write (docs/protocol.md, section 5)."""
ADV_COUNTER_BLOCK = 64
"""Advert counter values reserved per flash write (section 9)."""
CHALLENGE_BURST = 16
"""Challenges a lock issues back to back before it answers ERROR(BUSY) (section 5)."""
CHALLENGE_REFILL_S = 1.0
"""One more challenge allowed per this many seconds; a MAC-verified COMMAND refunds its own."""
REJECT_LOG_INTERVAL_S = 60.0
"""At most one unauthenticated OP_REJECTED entry per this long; the rest are counted (section 8)."""
MAX_TIME_CORRECTION_S = 60
"""Largest SET_TIME step while the clock is valid (section 7)."""
TIME_CORRECTION_INTERVAL_S = 86_400
"""At most one SET_TIME correction per this many RTC seconds while the clock is valid."""
TIME_FLOOR_PERSIST_S = 600
"""The persisted time floor lags the RTC by at most this much (section 7)."""
_NO_TAG = bytes(TAG_LEN)
_COUNTER_MAX = 0xFFFF_FFFF
_UNAUTHENTICATED = frozenset({ResultCode.CHALLENGE_EXPIRED, ResultCode.REPLAY, ResultCode.BAD_MAC})


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
        nvm: LockNvm | None = None,
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
        self._nvm = nvm or LockNvm()
        # Persistent (NVM) state.
        self.state = state
        self.counter = 0
        self.adv_counter = 0
        self._counter_reserved = 0
        self._adv_reserved = 0
        self._ring = LogRing(log_capacity)
        self._rtc_offset = 0
        self._rtc_valid = True
        self._time_floor = 0
        self._floor_saved = 0
        self._corrected_at = 0
        self._tamper = False
        # Sensors.
        self.wire_intact = wire_intact
        self.shell_open = False
        self.battery_low = False
        # Fault hooks; the transport reads answer_delay_s and drop_link.
        self.actuator_failures = 0
        self.answer_delay_s = 0.0
        self.drop_link = False
        # Volatile state.
        self._pending: _Pending | None = None
        self._reassembler = Reassembler()
        self._advert_content: tuple[int, int, int] | None = None
        self._advert_at = 0.0
        self._tokens = float(CHALLENGE_BURST)
        self._tokens_at = clock.monotonic()
        self._rejects_logged_at: float | None = None
        self._rejects_suppressed = 0
        self._restore(self._nvm.load())
        self._append(LogEvent.BOOT)

    # -- transport-facing API --------------------------------------------------------------

    def handle_fragment(self, data: bytes) -> list[bytes]:
        """Take one written fragment; return the fragments to notify (maybe none yet)."""
        try:
            message = self._reassembler.feed(data, self._clock.monotonic())
        except ProtocolError as exc:
            _log.debug("lock %s: bad fragment: %s", self.lock_id.hex(), exc)
            return fragment(encode(ErrorFrame(fragment_error(exc))), self.att_mtu)
        if message is None:
            return []
        return fragment(self.handle_message(message), self.att_mtu)

    def handle_message(self, data: bytes) -> bytes:
        """Take one whole message; return the whole answer message."""
        self._touch_floor()
        try:
            frame = decode_message(data)
        except ProtocolError as exc:
            _log.debug("lock %s: bad message: %s", self.lock_id.hex(), exc)
            if data[1:2] == bytes([MessageType.COMMAND]):
                self._pending = None  # every COMMAND consumes the challenge (section 5)
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
        self._touch_floor()
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
        self._save()

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
        """Simulate an RTC reset (battery swap): RAM goes too, so the floor is the saved one."""
        self._rtc_valid = False
        self._time_floor = self._floor_saved
        self._save()

    def reboot(self) -> None:
        """Power cycle: volatile state goes, NVM stays, a BOOT entry is written."""
        self.disconnect()
        self._restore(self._nvm.load())
        self._append(LogEvent.BOOT)

    # -- read-only views ------------------------------------------------------------------

    @property
    def rtc(self) -> int:
        """The lock's RTC in Unix seconds."""
        return int(self._clock.now().timestamp()) + self._rtc_offset

    @property
    def head(self) -> int:
        """Index of the newest log entry (0 when the log is empty)."""
        return self._ring.head

    @property
    def time_floor(self) -> int:
        """The time floor (section 7): the RTC never legitimately reads below it."""
        return self._time_floor

    @property
    def nvm_writes(self) -> int:
        """Flash writes so far (what a flood of requests would wear)."""
        return self._nvm.writes

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
        return self._ring.entries()

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
        if self.counter >= _COUNTER_MAX or self._ring.blocked or not self._take_token():
            return ErrorFrame(ErrorCode.BUSY)
        self.counter += 1
        if self.counter > self._counter_reserved:
            self._counter_reserved = min(self.counter + COUNTER_BLOCK - 1, _COUNTER_MAX)
            self._save()
        nonce = self._rng(NONCE_LEN)
        self._pending = _Pending(nonce, self.counter, request.gw_nonce, self._clock.monotonic())
        return Challenge(self.lock_id, nonce, self.counter, self.rtc)

    def _handle_command(self, command: Command) -> Frame:
        pending, self._pending = self._pending, None
        if pending is None:
            return ErrorFrame(ErrorCode.UNEXPECTED_MESSAGE)
        if self._ring.blocked:
            return ErrorFrame(ErrorCode.BUSY)
        ctx = crypto.SessionContext(self.lock_id, pending.nonce, pending.gw_nonce)
        k_tl = crypto.derive_ticket_key(self._k_lock, command.header)
        verdict = self._verify(command, pending, ctx, k_tl)
        result = verdict.result
        if result not in _UNAUTHENTICATED:
            self._refund_token()
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
        return self._check_state(command.op, header)

    def _check_new_time(self, header: TicketHeader, new_time: int) -> ResultCode:
        """Section 7: set an invalid clock into the window, or nudge a valid one a little."""
        if not self._in_window(header, new_time):
            return ResultCode.BAD_TIME
        if not self._clock_ok():
            return ResultCode.OK if new_time >= self._time_floor else ResultCode.BAD_TIME
        rtc = self.rtc
        recent = self._corrected_at > 0 and rtc - self._corrected_at < TIME_CORRECTION_INTERVAL_S
        if recent or abs(new_time - rtc) > MAX_TIME_CORRECTION_S:
            return ResultCode.BAD_TIME
        return ResultCode.OK if self._in_window(header, rtc) else ResultCode.BAD_TIME

    def _in_window(self, header: TicketHeader, t: int) -> bool:
        return header.not_before - self._skew_s <= t <= header.not_after + self._skew_s

    def _check_state(self, op: Operation, header: TicketHeader) -> ResultCode:
        if op is Operation.UNSEAL and self.state is LockState.UNSEALED:
            return ResultCode.BAD_STATE
        if op is Operation.UNSEAL and self.state is LockState.TAMPERED and not header.audit:
            return ResultCode.NEEDS_AUDIT
        if op is Operation.SEAL and self.state in (LockState.SEALED, LockState.TAMPERED):
            return ResultCode.BAD_STATE
        if op is Operation.SEAL and not self.wire_intact:
            return ResultCode.WIRE_OPEN
        return ResultCode.OK

    def _execute(self, command: Command) -> ResultCode:
        if command.op is Operation.SET_TIME:
            self._set_time(command.arg)
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

    def _set_time(self, new_time: int) -> None:
        if self._clock_ok():
            self._corrected_at = new_time  # a correction: the next one waits a day
        self._rtc_offset = new_time - int(self._clock.now().timestamp())
        self._rtc_valid = True
        self._time_floor = self._floor_saved = new_time

    def _log_outcome(
        self, command: Command, header: TicketHeader | None, result: ResultCode
    ) -> int:
        tag = crypto.ticket_tag(command.header)
        if result in _UNAUTHENTICATED:
            return self._log_unauthenticated(tag, result)
        operator = header.operator if header is not None else _NO_TAG
        return self._append(_event_for(command.op, result), result, tag, operator)

    def _log_unauthenticated(self, tag: bytes, result: ResultCode) -> int:
        """Section 8: one entry per REJECT_LOG_INTERVAL_S; it carries the count skipped since."""
        now = self._clock.monotonic()
        last = self._rejects_logged_at
        if (last is not None and now - last < REJECT_LOG_INTERVAL_S) or self._ring.blocked:
            self._rejects_suppressed += 1
            return 0
        count = min(self._rejects_suppressed, _COUNTER_MAX).to_bytes(4, "big") + bytes(4)
        self._rejects_logged_at, self._rejects_suppressed = now, 0
        return self._append(LogEvent.OP_REJECTED, result, tag, count)

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
        pinned = len(self._ring.unfetched)
        entries = self._ring.fetch(request.after, min(request.max_count, MAX_LOG_ENTRIES))
        if len(self._ring.unfetched) != pinned:
            self._save()
        unsigned = LogEntries(self.head, self._ring.oldest, entries, bytes(MAC_LEN))
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
        """Write one entry and persist; 0 when the ring is blocked (section 8)."""
        if self._ring.blocked:
            _log.warning("lock %s: log full of unfetched security entries", self.lock_id.hex())
            return 0
        rtc = self.rtc
        if self._clock_ok():
            self._time_floor = self._floor_saved = max(self._time_floor, rtc)
        draft = LogEntry(
            self._ring.next_index,
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
        self._ring.append(
            crypto.sealed_entry(self._keys.log, self._keys.audit, self.lock_id, draft)
        )
        self._save()
        return draft.index

    def _raise_tamper(self, event: LogEvent) -> None:
        self._tamper = True
        if self.state is LockState.SEALED:
            self.state = LockState.TAMPERED
        self._append(event)
        self._save()

    def _wire_reported(self) -> WireLoop:
        if self.state not in (LockState.SEALED, LockState.TAMPERED):
            return WireLoop.NOT_MEASURED
        return WireLoop.INTACT if self.wire_intact else WireLoop.BROKEN

    def _clock_ok(self) -> bool:
        return self._rtc_valid and self.rtc >= self._time_floor

    def _touch_floor(self) -> None:
        """The floor follows a valid clock; it is persisted when it moved TIME_FLOOR_PERSIST_S."""
        if not self._clock_ok():
            return
        self._time_floor = self.rtc
        if self._time_floor - self._floor_saved >= TIME_FLOOR_PERSIST_S:
            self._floor_saved = self._time_floor
            self._save()

    def _take_token(self) -> bool:
        now = self._clock.monotonic()
        refill = (now - self._tokens_at) / CHALLENGE_REFILL_S
        self._tokens, self._tokens_at = min(CHALLENGE_BURST, self._tokens + refill), now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _refund_token(self) -> None:
        self._tokens = min(CHALLENGE_BURST, self._tokens + 1)

    def _refresh_advert_counter(self) -> None:
        content = (int(self.state), self.flags, self.head)
        now = self._clock.monotonic()
        if content != self._advert_content or now - self._advert_at >= ADVERT_HEARTBEAT_S:
            self.adv_counter += 1
            self._advert_content = content
            self._advert_at = now
            if self.adv_counter > self._adv_reserved:
                self._adv_reserved = self.adv_counter + ADV_COUNTER_BLOCK - 1
                self._save()

    # -- NVM -------------------------------------------------------------------------------

    def _save(self) -> None:
        self._nvm.save(
            {
                "state": int(self.state),
                "counter_reserved": self._counter_reserved,
                "adv_reserved": self._adv_reserved,
                "entries": [encode_log_entry(e).hex() for e in self._ring.entries()],
                "next_index": self._ring.next_index,
                "unfetched": sorted(self._ring.unfetched),
                "rtc_offset": self._rtc_offset,
                "rtc_valid": self._rtc_valid,
                "time_floor": self._floor_saved,
                "corrected_at": self._corrected_at,
                "tamper": self._tamper,
                "wire_intact": self.wire_intact,
            }
        )

    def _restore(self, saved: dict[str, Any] | None) -> None:
        """Load NVM after a power-up; counters resume past the blocks reserved before."""
        if saved is None:
            return
        self.state = LockState(saved["state"])
        self.counter = self._counter_reserved = saved["counter_reserved"]
        self.adv_counter = self._adv_reserved = saved["adv_reserved"]
        entries = [decode_log_entry(bytes.fromhex(e)) for e in saved["entries"]]
        self._ring = LogRing(self._ring.capacity, entries, saved["next_index"], saved["unfetched"])
        self._rtc_offset, self._rtc_valid = saved["rtc_offset"], saved["rtc_valid"]
        self._time_floor = self._floor_saved = saved["time_floor"]
        self._corrected_at, self._tamper = saved["corrected_at"], saved["tamper"]
        self.wire_intact = saved["wire_intact"]
        self._advert_content = None


def fragment_error(exc: ProtocolError) -> ErrorCode:
    """ERROR code for a bad fragment: TIMEOUT when its message timed out (section 3)."""
    return ErrorCode.TIMEOUT if isinstance(exc, FragmentTimeoutError) else ErrorCode.BAD_FRAGMENT


def _event_for(op: Operation, result: ResultCode) -> LogEvent:
    if result is ResultCode.MECHANICAL_FAULT:
        return LogEvent.FAULT
    if result is not ResultCode.OK:
        return LogEvent.OP_REJECTED
    if op is Operation.SET_TIME:
        return LogEvent.TIME_SET
    return LogEvent.SEALED if op is Operation.SEAL else LogEvent.UNSEALED
