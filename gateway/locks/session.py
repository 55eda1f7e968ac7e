"""One BLE session with a seal lock: fragments over GATT, request-response, verified answers.

The session writes fragments to the command characteristic and reassembles notifications of
the response characteristic (docs/protocol.md, sections 2-5). The pure steps of an exchange
come from gateway.protocol.seal_exchange; this layer adds I/O, timeouts and error meaning:

- before a COMMAND is written, a failure is `RetryableError` (nothing changed on the lock);
- once a COMMAND is written, any failure is `OutcomeUnknownError`: the lock may or may not
  have acted, and only its log (reconciliation) can tell; an outcome is never invented;
- a bad fragment, a malformed message or a failed MAC on a log answer is a broken or fake
  lock: `ProtocolError` / `AuthError`, and the session is dropped.

The lock drops a link idle for 5 s or up for 30 s (docs/protocol.md, section 2). A session
never starts an exchange on a link older than `LINK_BUDGET_S`, and `has_time` tells a long
log catch-up to stop (and go on over the next connection) before either limit is near.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

from gateway.drivers.ble.adapters import BleTransport
from gateway.errors import (
    AnswerTimeoutError,
    AuthError,
    GatewayError,
    LinkLostError,
    OutcomeUnknownError,
    ProtocolError,
    RetryableError,
)
from gateway.locks.state import LockSpec
from gateway.protocol.clock import Clock, SystemClock
from gateway.protocol.seal_crypto import ticket_tag
from gateway.protocol.seal_exchange import (
    LogBatch,
    TicketCredential,
    build_command,
    challenge_request,
    check_challenge,
    log_fetch,
    verify_log_entries,
    verify_result,
)
from gateway.protocol.seal_fragments import (
    ATT_OVERHEAD,
    COMMAND_CHAR_UUID,
    MIN_ATT_MTU,
    RESPONSE_CHAR_UUID,
    STATE_CHAR_UUID,
    Reassembler,
    fragment,
)
from gateway.protocol.seal_frames import (
    MAX_LOG_ENTRIES,
    NONCE_LEN,
    Challenge,
    CommandResult,
    ErrorCode,
    ErrorFrame,
    Frame,
    LogEntries,
    LogFetch,
    Operation,
    UnknownFrame,
    decode_message,
    encode,
)

__all__ = [
    "LINK_BUDGET_S",
    "LOCK_IDLE_LIMIT_S",
    "LOCK_LINK_LIMIT_S",
    "BleLockConnector",
    "CommandOutcome",
    "LockSession",
]

_log = logging.getLogger(__name__)

MAX_ATT_MTU = 517
MAX_UNKNOWN_SKIPPED = 4  # unknown message types skipped while waiting for one answer

LOCK_IDLE_LIMIT_S = 5.0  # the lock drops a link idle this long (protocol section 2)
LOCK_LINK_LIMIT_S = 30.0  # ... or up this long
LINK_BUDGET_S = 24.0  # no exchange starts on a link older than this
IDLE_MARGIN_S = 1.5  # a catch-up stops when the link was quiet this close to the idle limit


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """A verified answer and the challenge counter it consumed (persisted as a high-water mark)."""

    result: CommandResult
    counter: int


class _Lost:
    """Sentinel queued when the link drops."""


class LockSession:
    """Request-response messaging with one lock over one bleak client."""

    def __init__(self, lock_id: bytes, *, op_timeout_s: float, clock: Clock | None = None) -> None:
        self.lock_id = lock_id
        self.op_timeout_s = op_timeout_s
        self._clock: Clock = clock or SystemClock()
        self._opened_at = self._last_activity = self._clock.monotonic()
        self._client: BleakClient | None = None
        self._reassembler = Reassembler()
        self._inbox: asyncio.Queue[bytes | _Lost | ProtocolError] = asyncio.Queue()
        self._att_mtu = MIN_ATT_MTU
        self.lost = False

    # -- link lifecycle -----------------------------------------------------------------------

    async def open(self, client: BleakClient) -> None:
        """Subscribe to answers and size fragments; raise LinkLostError when that fails."""
        self._client = client
        self._opened_at = self._last_activity = self._clock.monotonic()
        try:
            command = client.services.get_characteristic(COMMAND_CHAR_UUID)
            if command is None or client.services.get_characteristic(RESPONSE_CHAR_UUID) is None:
                # Seen on BlueZ under load: services "resolved" without them, the same GATT
                # database complete on the next connect. Retried; a device that never has
                # them fails every attempt.
                raise LinkLostError(
                    f"lock {self.lock_id.hex()}: the seal service's characteristics were not "
                    "found on this connection"
                )
            room = int(command.max_write_without_response_size)
            self._att_mtu = max(MIN_ATT_MTU, min(MAX_ATT_MTU, room + ATT_OVERHEAD))
            await client.start_notify(RESPONSE_CHAR_UUID, self._on_notify)
        except (BleakError, TimeoutError) as exc:
            raise LinkLostError(f"lock {self.lock_id.hex()}: session setup failed: {exc}") from exc

    async def close(self) -> None:
        """Disconnect (idempotent; a link already gone is fine)."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(self.op_timeout_s):
                await client.disconnect()
        except (BleakError, TimeoutError) as exc:
            _log.debug("lock %s: disconnect failed: %s", self.lock_id.hex(), exc)

    def link_lost(self, _client: object = None) -> None:
        """Disconnected callback: wake whoever waits for an answer."""
        self.lost = True
        self._reassembler.reset()
        self._inbox.put_nowait(_Lost())

    def has_time(self) -> bool:
        """True while another exchange fits inside the lock's link limits."""
        now = self._clock.monotonic()
        quiet = now - self._last_activity < LOCK_IDLE_LIMIT_S - IDLE_MARGIN_S
        return quiet and now - self._opened_at < LINK_BUDGET_S

    @property
    def att_mtu(self) -> int:
        """The ATT MTU fragments are sized for."""
        return self._att_mtu

    # -- operations ---------------------------------------------------------------------------

    async def read_state(self) -> bytes:
        """The state characteristic: the lock's authenticated 21-byte advert payload."""
        client = self._require_client()
        try:
            async with asyncio.timeout(self.op_timeout_s):
                return bytes(await client.read_gatt_char(STATE_CHAR_UUID))
        except (BleakError, TimeoutError) as exc:
            raise LinkLostError(f"lock {self.lock_id.hex()}: state read failed: {exc}") from exc

    async def command(
        self,
        credential: TicketCredential,
        op: Operation,
        last_counter: int | None,
        arg: int = 0,
    ) -> CommandOutcome:
        """Challenge, then command; return the answer only once its MAC and echo are verified."""
        request = challenge_request()
        challenge = await self.request(request)
        if not isinstance(challenge, Challenge):
            raise _unexpected(challenge, "CHALLENGE")
        ctx = check_challenge(request, challenge, self.lock_id, last_counter)
        command = build_command(credential, ctx, challenge.counter, op, arg)
        tag = _ticket_tag(credential)
        try:
            answer = await self.request(command)
        except (RetryableError, ProtocolError) as exc:
            raise OutcomeUnknownError(str(exc), reason=_reason(exc), ticket_tag=tag) from exc
        if not isinstance(answer, CommandResult):
            reason = "lock_error" if isinstance(answer, ErrorFrame) else "unexpected_answer"
            raise OutcomeUnknownError(f"no COMMAND_RESULT: {answer}", reason=reason, ticket_tag=tag)
        try:
            verified = verify_result(credential, ctx, command, answer)
        except AuthError as exc:
            _log.warning("lock %s: answer failed verification (%s)", self.lock_id.hex(), exc.code)
            raise OutcomeUnknownError(str(exc), reason=exc.code, ticket_tag=tag) from exc
        return CommandOutcome(verified, challenge.counter)

    async def fetch_log(self, k_log: bytes, after: int) -> LogBatch:
        """One verified batch of log entries with index > `after`."""
        return await self._fetch(k_log, log_fetch(after, MAX_LOG_ENTRIES))

    async def probe_log_head(self, k_log: bytes) -> int:
        """The lock's log head from a fresh, MAC'd LOG_FETCH with max_count 0 (section 9)."""
        batch = await self._fetch(k_log, LogFetch(os.urandom(NONCE_LEN), 0, 0))
        return batch.head

    async def _fetch(self, k_log: bytes, request: LogFetch) -> LogBatch:
        answer = await self.request(request)
        if not isinstance(answer, LogEntries):
            raise _unexpected(answer, "LOG_ENTRIES")
        return verify_log_entries(k_log, self.lock_id, request, answer)

    async def request(self, frame: Frame) -> Frame:
        """Send one message and return the lock's answer (unknown message types are skipped)."""
        if self._clock.monotonic() - self._opened_at >= LINK_BUDGET_S:
            raise LinkLostError(f"lock {self.lock_id.hex()}: link time budget spent")
        self._drain()
        await self._send(encode(frame))
        for _ in range(MAX_UNKNOWN_SKIPPED):
            answer = decode_message(await self._receive())
            if not isinstance(answer, UnknownFrame):
                return answer
            _log.debug("lock %s: skipped message type %#04x", self.lock_id.hex(), answer.type)
        raise ProtocolError("lock keeps sending unknown message types")

    # -- internals ----------------------------------------------------------------------------

    def _require_client(self) -> BleakClient:
        if self._client is None or self.lost:
            raise LinkLostError(f"lock {self.lock_id.hex()}: no link")
        return self._client

    async def _send(self, message: bytes) -> None:
        client = self._require_client()
        try:
            for part in fragment(message, self._att_mtu):
                async with asyncio.timeout(self.op_timeout_s):
                    await client.write_gatt_char(COMMAND_CHAR_UUID, part, response=True)
                self._last_activity = self._clock.monotonic()
        except (BleakError, TimeoutError) as exc:
            raise LinkLostError(f"lock {self.lock_id.hex()}: write failed: {exc}") from exc

    async def _receive(self) -> bytes:
        try:
            async with asyncio.timeout(self.op_timeout_s):
                item = await self._inbox.get()
        except TimeoutError:
            raise AnswerTimeoutError(f"lock {self.lock_id.hex()}: no answer in time") from None
        if isinstance(item, _Lost):
            raise LinkLostError(f"lock {self.lock_id.hex()}: link lost")
        if isinstance(item, ProtocolError):
            raise item
        self._last_activity = self._clock.monotonic()
        return item

    def _drain(self) -> None:
        """Drop stale answers (a late reply to a timed-out request) before a new request."""
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if isinstance(item, _Lost):
                self._inbox.put_nowait(item)
                return

    def _on_notify(self, _characteristic: object, data: bytearray) -> None:
        try:
            message = self._reassembler.feed(bytes(data), time.monotonic())
        except ProtocolError as exc:
            self._inbox.put_nowait(ProtocolError(f"lock sent a bad fragment: {exc}"))
            return
        if message is not None:
            self._inbox.put_nowait(message)


def _unexpected(answer: Frame, wanted: str) -> GatewayError:
    if isinstance(answer, ErrorFrame) and answer.code is ErrorCode.BUSY:
        return RetryableError(f"lock is busy (wanted {wanted})")
    return ProtocolError(f"wanted {wanted}, lock answered {answer}")


def _reason(exc: Exception) -> str:
    if isinstance(exc, AnswerTimeoutError):
        return "timeout"
    return "link_lost" if isinstance(exc, RetryableError) else "bad_answer"


def _describe(exc: BaseException) -> str:
    """The error's text, or its type when it has none (a bare timeout)."""
    return str(exc) or type(exc).__name__


def _ticket_tag(credential: TicketCredential) -> bytes:
    return ticket_tag(credential.header)


class BleLockConnector:
    """Opens LockSessions through bleak on one adapter (the scheduler's Connector)."""

    def __init__(
        self,
        transport: BleTransport,
        locks: Mapping[str, LockSpec],
        *,
        op_timeout_s: float,
        addresses: Callable[[str], BLEDevice | str | None] | None = None,
        clock: Clock | None = None,
        discovered_only: bool = False,
    ) -> None:
        self._transport = transport
        self._locks = locks
        self._op_timeout_s = op_timeout_s
        self._addresses = addresses
        self._clock = clock
        self._discovered_only = discovered_only

    async def connect(self, seal_id: str, timeout_s: float) -> LockSession:
        """Connect to the seal's lock and subscribe to its answers.

        With `discovered_only` (BlueZ) only a device our scanner saw is connected to: BlueZ
        connects only to devices it discovered, and for an address alone bleak would start a
        discovery of its own, which BlueZ refuses while the gateway's scanner runs
        (org.bluez.Error.InProgress).
        """
        lock = self._locks[seal_id]
        seen = self._addresses(seal_id) if self._addresses else None
        address = seen or (None if self._discovered_only else lock.address)
        if not address:
            raise LinkLostError(
                f"seal {seal_id}: not heard by the scanner yet, nothing to connect to"
            )
        session = LockSession(lock.lock_id, op_timeout_s=self._op_timeout_s, clock=self._clock)
        client = self._transport.make_client(
            address, disconnected_callback=session.link_lost, timeout=timeout_s
        )
        try:
            await client.connect()
        except BleakError as exc:
            raise LinkLostError(f"seal {seal_id}: connect failed: {_describe(exc)}") from exc
        except TimeoutError:
            raise LinkLostError(
                f"seal {seal_id}: connect failed: not connected and resolved within {timeout_s:g} s"
            ) from None
        try:
            await session.open(client)
        except BaseException:
            await session.close()
            raise
        return session

    async def disconnect(self, link: LockSession) -> None:
        """Disconnect the session's client."""
        await link.close()
