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
from dataclasses import dataclass
from datetime import datetime

from gateway.drivers.bus import BusStats
from gateway.drivers.bus_turns import BusTurns
from gateway.drivers.dlt645.lines import (
    DEFAULT_CONNECT_TIMEOUT,
    Dlt645Kind,
    Dlt645Line,
    Dlt645LineSpec,
    SerialLine,
    TcpLine,
    parse_dlt645_transport,
)
from gateway.errors import (
    DeviceTimeoutError,
    FrameError,
    GarbledReplyError,
    GatewayError,
    MeterRefusedError,
    ProtocolError,
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
    "open_dlt645_bus",
    "parse_dlt645_transport",
]

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 1.0
DEFAULT_GAP = 0.02
"""DL/T 645 asks for at least 20 ms after a reply (or a broadcast) before the next request."""
FRAME_SILENCE = 0.5
"""DL/T 645: at most 500 ms between the bytes of one frame."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Values read in one batch, and the identifiers the meter refused (with why)."""

    values: dict[int, Value]
    refused: dict[int, ErrorFlags]


class Dlt645Bus:
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
        self.stats = BusStats()
        self._turns: BusTurns[str] = BusTurns(_log, inter_frame_gap=inter_frame_gap, clock=clock)

    @property
    def name(self) -> str:
        """The line's description."""
        return self.line.name

    @property
    def inter_frame_gap(self) -> float:
        """Seconds of silence kept after each transaction."""
        return self._turns.inter_frame_gap

    async def read(self, address: str, di: int) -> Reading:
        """Read one data identifier from the meter at `address`."""
        self._count_request(address)
        try:
            reply = await self._transact(dlt645.read_request(address, di))
            reading = _check_reading(dlt645.parse_read_reply(reply), address, di)
        except GatewayError as exc:
            self._count_failure(address, exc)
            raise
        self.stats.ok += 1
        self._turns.succeeded(address)
        return reading

    async def read_batch(self, address: str, dis: Sequence[int]) -> BatchResult:
        """Read several identifiers from one meter; refusals are collected, other errors raise."""
        values: dict[int, Value] = {}
        refused: dict[int, ErrorFlags] = {}
        for di in dis:
            try:
                values[di] = (await self.read(address, di)).value
            except MeterRefusedError as exc:
                refused[di] = exc.flags
        return BatchResult(values, refused)

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

    def _count_failure(self, address: str, exc: GatewayError) -> None:
        self.stats.count_failure(exc)
        self._turns.failed(address, self.name, exc)


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
    return Dlt645Bus(line, timeout=timeout, inter_frame_gap=gap, clock=clock)


def _answers(frame: Frame, request: Frame) -> bool:
    same_function = frame.function == request.function
    return same_function and request.address in (frame.address, dlt645.WILDCARD)


def _check_reading(reading: Reading, address: str, di: int) -> Reading:
    if reading.di != di:
        raise GarbledReplyError(f"{address}: asked for {di:08X}, reply carries {reading.di:08X}")
    if reading.more:
        raise ProtocolError(f"{address}: {di:08X} needs follow-up frames, which are not supported")
    return reading
