"""The DL/T 645-2007 bus owner (a drivers.bus.Bus): one request at a time on a serial line or TCP.

The line (gateway.drivers.dlt645.lines) is chosen by a transport string: `dlt645-tcp://host:port`
or `dlt645-serial:///dev/ttyUSB0?baud=2400&parity=E` (see docs/meters.md).

The bus sends the 0xFE wake-up preamble before every request, keeps the inter-frame gap after
every transaction, flushes stale input before sending, treats `frame_silence` without a byte
inside a half-received frame as the end of that frame (the buffer is flushed, as DL/T 645 asks
after 500 ms), and gives each request `timeout` seconds. Failures are typed: DeviceTimeoutError
(silence), GarbledReplyError (a ProtocolError: bad checksum or no valid frame), MeterRefusedError
(an abnormal reply) and LineUnavailableError (the port or socket cannot be opened).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gateway.drivers.bus_turns import TurnTakingBus
from gateway.drivers.dlt645.lines import (
    DEFAULT_CONNECT_TIMEOUT,
    Dlt645Kind,
    Dlt645Line,
    Dlt645LineSpec,
    SerialLine,
    TcpLine,
    parse_dlt645_transport,
)
from gateway.drivers.modbus.transport import at_least_silence
from gateway.errors import (
    DeviceTimeoutError,
    FollowUpError,
    FrameError,
    GarbledReplyError,
    GatewayError,
    MeterRefusedError,
    MeterValueError,
    ProtocolError,
    ReplyMismatchError,
)
from gateway.protocol import dlt645
from gateway.protocol.clock import Clock
from gateway.protocol.dlt645 import ErrorFlags, Frame, Reading, Value

__all__ = [
    "BatchResult",
    "Dlt645Bus",
    "Dlt645Kind",
    "Dlt645Line",
    "Dlt645LineSpec",
    "SerialLine",
    "TcpLine",
    "matches",
    "open_dlt645_bus",
    "parse_dlt645_transport",
]

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 1.0
DEFAULT_GAP = 0.02
"""DL/T 645 asks for at least 20 ms after a reply (or a broadcast) before the next request."""
FRAME_SILENCE = 0.5
"""DL/T 645: at most 500 ms between the bytes of one frame."""
MAX_FOLLOW_UPS = 16
"""Follow-up frames taken for one identifier before the reply counts as broken."""
SILENT_ABORT = 2
"""Identifiers without a valid reply, with none answered, before a batch gives up."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Values read in one batch, the identifiers the meter refused, and those that failed."""

    values: dict[int, Value]
    refused: dict[int, ErrorFlags]
    failed: dict[int, GatewayError] = field(default_factory=dict)


class Dlt645Bus(TurnTakingBus[str]):
    """The single owner of one DL/T 645 line; serializes every request on it."""

    def __init__(
        self,
        line: Dlt645Line,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        inter_frame_gap: float = DEFAULT_GAP,
        frame_silence: float = FRAME_SILENCE,
        preamble: int = dlt645.WAKE_UP_LEN,
        clock: Clock | None = None,
    ) -> None:
        if timeout <= 0 or inter_frame_gap < 0 or frame_silence <= 0:
            raise ValueError("timeout and frame_silence must be > 0, inter_frame_gap >= 0")
        self.line = line
        self.timeout = timeout
        self.frame_silence = frame_silence
        self.preamble = preamble
        super().__init__(_log, inter_frame_gap=inter_frame_gap, clock=clock)

    @property
    def name(self) -> str:
        """The line's description."""
        return self.line.name

    async def read(self, address: str, di: int) -> Reading:
        """Read one data identifier, following B1 replies with read-follow-up (0x12) requests."""
        self._count_request(address)
        try:
            reply = await self._transact(dlt645.read_request(address, di))
            first = _check_reading(dlt645.parse_read_reply(reply, raw=True), address, di)
            raw = bytes(first.value) if isinstance(first.value, bytes) else b""
            if first.more:
                raw += await self._follow_ups(address, di)
            value = _decode(address, di, raw)
        except GatewayError as exc:
            self._count_failure(address, exc)
            raise
        self._count_ok(address)
        return Reading(reply.address, di, value, dlt645.DATA_ITEMS.get(di))

    async def read_batch(self, address: str, dis: Sequence[int]) -> BatchResult:
        """Read several identifiers from one meter, each on its own.

        A refusal or a failure of one identifier is kept with that identifier. A meter that
        gives no valid reply to its first `SILENT_ABORT` identifiers is taken as silent and the
        batch stops there; a line that cannot be opened raises LineUnavailableError.
        """
        values: dict[int, Value] = {}
        refused: dict[int, ErrorFlags] = {}
        failed: dict[int, GatewayError] = {}
        for di in dis:
            try:
                values[di] = (await self.read(address, di)).value
            except MeterRefusedError as exc:
                refused[di] = exc.flags
            except (DeviceTimeoutError, ProtocolError) as exc:
                failed[di] = exc
                if _silent(values, refused, failed):
                    break
        return BatchResult(values, refused, failed)

    async def _follow_ups(self, address: str, di: int) -> bytes:
        """The data of the follow-up frames 1, 2, ... until a reply without the more bit."""
        raw = b""
        for seq in range(1, MAX_FOLLOW_UPS + 1):
            reply = await self._transact(dlt645.read_follow_up_request(address, di, seq))
            try:
                part = _check_reading(dlt645.parse_read_reply(reply, raw=True), address, di)
            except MeterRefusedError as exc:
                raise FollowUpError(f"{address}: {di:08X} follow-up {seq} refused") from exc
            if part.seq != seq or not isinstance(part.value, bytes):
                raise FollowUpError(f"{address}: {di:08X} follow-up {seq} came back as {part.seq}")
            raw += part.value
            if not part.more:
                return raw
        raise FollowUpError(f"{address}: {di:08X} still has more after {MAX_FOLLOW_UPS} frames")

    async def probe(self, address: str, di: int) -> Frame | None:
        """One read request for address discovery: the reply frame (normal or abnormal), or
        None on silence; GarbledReplyError when several meters answered at once. No failure
        is counted or logged: silence is the common answer of a search."""
        self.stats.count_request(address)
        try:
            return await self._transact(dlt645.read_request(address, di))
        except DeviceTimeoutError:
            return None

    async def probe_address(self) -> str | None:
        """The all-AA read-address (0x13): the address of the one meter on the bus, or None."""
        self.stats.count_request(dlt645.WILDCARD)
        try:
            reply = await self._transact(dlt645.read_address_request())
        except DeviceTimeoutError:
            return None
        return dlt645.parse_address_reply(reply)

    async def broadcast_time(self, when: datetime) -> None:
        """Send a broadcast time sync (no meter answers it)."""
        await self._transact(dlt645.time_sync_frame(when), expect_reply=False)
        self.stats.broadcasts += 1
        _log.info("%s: broadcast time sync %s", self.name, when.isoformat())

    async def close(self) -> None:
        """Close the line after the request in progress, if any."""
        async with self._turns.lock:
            self.line.close()

    async def _transact(self, request: Frame, *, expect_reply: bool = True) -> Frame:
        async with self._turns.turn():
            if not self.line.connected:
                await self.line.connect()
            self.line.flush()
            self.line.write(dlt645.encode(request, preamble=self.preamble))
            return await self._await_reply(request) if expect_reply else request

    async def _await_reply(self, request: Frame) -> Frame:
        buffer = bytearray()
        heard = False
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    chunk = await self._next_chunk(partial=bool(buffer))
                    if chunk is None:
                        buffer.clear()  # silence inside a frame ends it
                        continue
                    heard = True
                    buffer += chunk
                    reply = self._take_reply(buffer, request)
                    if reply is not None:
                        return reply
        except TimeoutError:
            raise self._silence_error(request.address, heard=heard) from None

    async def _next_chunk(self, *, partial: bool) -> bytes | None:
        if not partial:
            return await self.line.receive()
        try:
            async with asyncio.timeout(self.frame_silence):
                return await self.line.receive()
        except TimeoutError:
            return None

    def _take_reply(self, buffer: bytearray, request: Frame) -> Frame | None:
        """The reply to `request` from `buffer`, skipping echoes and other traffic."""
        while buffer:
            try:
                used, frame = dlt645.decode(buffer)
            except FrameError as exc:
                del buffer[: exc.consumed]
                raise GarbledReplyError(f"{self._device(request.address)}: {exc}") from exc
            if used == 0:
                return None
            del buffer[:used]
            if frame is not None and frame.reply and _answers(frame, request):
                return frame
        return None

    def _silence_error(self, address: str, *, heard: bool) -> GatewayError:
        device = self._device(address)
        if heard:
            return GarbledReplyError(f"{device}: bytes received but no valid reply frame")
        return DeviceTimeoutError(f"{device}: no reply within {self.timeout:g} s", device=device)

    def _device(self, address: str) -> str:
        return f"{self.name}#{address}"

    def _count_request(self, address: str) -> None:
        self.stats.count_request(address)


def open_dlt645_bus(
    text: str,
    *,
    key: str = "transport",
    timeout: float = DEFAULT_TIMEOUT,
    inter_frame_gap: float | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    clock: Clock | None = None,
) -> Dlt645Bus:
    """A bus for a DL/T 645 transport string; the gap defaults to 20 ms."""
    spec = parse_dlt645_transport(text, key=key)
    line: Dlt645Line
    if spec.serial is not None:
        line = SerialLine(spec.serial)
    else:
        line = TcpLine(spec.host, spec.port, connect_timeout=connect_timeout)
    gap = DEFAULT_GAP if inter_frame_gap is None else inter_frame_gap
    if spec.serial is not None:  # 20 ms, or 3.5 characters where that is longer (1200 baud)
        gap = at_least_silence(
            spec.serial, inter_frame_gap, max(DEFAULT_GAP, spec.serial.default_gap())
        )
    return Dlt645Bus(line, timeout=timeout, inter_frame_gap=gap, clock=clock)


def _answers(frame: Frame, request: Frame) -> bool:
    same_function = frame.function == request.function
    return same_function and matches(request.address, frame.address)


def matches(pattern: str, address: str) -> bool:
    """Whether `address` answers `pattern`, whose AA bytes are wildcards (shortened addressing)."""
    pairs = zip(_bytes_of(pattern), _bytes_of(address), strict=True)
    return all(want in ("AA", got) for want, got in pairs)


def _bytes_of(address: str) -> list[str]:
    return [address[i : i + 2] for i in range(0, 12, 2)]


def _check_reading(reading: Reading, address: str, di: int) -> Reading:
    if reading.di != di:
        raise ReplyMismatchError(f"{address}: asked for {di:08X}, reply carries {reading.di:08X}")
    return reading


def _decode(address: str, di: int, raw: bytes) -> Value:
    try:
        return dlt645.decode_value(di, raw)
    except ProtocolError as exc:
        raise MeterValueError(f"{address}: {di:08X}: {exc}", di=di) from exc


def _silent(
    values: dict[int, Value], refused: dict[int, ErrorFlags], failed: dict[int, GatewayError]
) -> bool:
    """Nothing answered, and `SILENT_ABORT` identifiers got silence or garbage."""
    if values or refused or len(failed) < SILENT_ABORT:
        return False
    return all(isinstance(exc, DeviceTimeoutError | GarbledReplyError) for exc in failed.values())
