"""Simulated DL/T 645-2007 meters on one RS-485 bus, served over TCP.

The protocol logic (`MeterBus.handle`, bytes in and bytes out) knows nothing of the transport,
so the same bus can later sit on a pseudo-terminal. `Dlt645TcpServer` is the TCP transport.
Time comes from an injected clock (`Clock`), so tests advance energy without sleeping.

The data identifiers a meter answers (`SimMeter._read`) are written from DL/T 645-2007
"Multi-function watt-hour meter communication protocol", Appendix A (data identifier tables),
not from the gateway's profiles: A.1 energy (00 00 xx 00 combined active, 00 01 xx 00 forward,
00 02 xx 00 reverse; xx = 00 total, 01-04 tariffs, FF the block), A.3 variables (02 01 ph 00
voltage, 02 02 ph 00 current, 02 03 ph 00 active power, 02 06 ph 00 power factor, ph = 00 total
or 01-03 phase A-C; 02 80 00 02 frequency), A.4 event records (03 11 00 00/01 power-down count
and last record, 03 30 0D 00/01 meter cover, 03 30 0E 00/01 terminal cover) and A.5 parameters
(04 00 01 01/02 date and time, 04 00 05 01-07 status words 1-7, 04 00 05 FF their block), and
A.6 freeze data (05 06 00 01 time of the last daily freeze, 05 06 01 01 forward active energy
then: the meter freezes at meter-local midnight).
Only the frame and value codec (gateway.protocol.dlt645) is shared with the gateway. Not sure:
that every meter answers the 04 00 05 FF status-word block (some answer only single words),
and the exact layout of the cover records beyond the start/end times and the two energies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from decimal import Decimal

from gateway.errors import FrameError, ProtocolError
from gateway.protocol import dlt645
from gateway.protocol.clock import Clock
from gateway.protocol.dlt645 import (
    METER_TZ,
    CoverRecord,
    ErrorFlags,
    Frame,
    Function,
    OutageRecord,
    StatusWord7,
    Value,
)

__all__ = ["Dlt645TcpServer", "LoadCurve", "MeterBus", "SimMeter", "residential_load"]

_LOGGER = logging.getLogger(__name__)

LoadCurve = Callable[[datetime], float]
"""Active power in kW drawn at a given meter-local time."""

_ZEROS = (Decimal("0.00"),) * 6
_STEP_SECONDS = 60.0
_TARIFF_BY_HOUR = (4,) * 8 + (2,) * 3 + (3,) * 6 + (2,) * 2 + (1,) * 2 + (2,) * 2 + (4,)
"""Tariff 1 sharp, 2 peak, 3 flat, 4 valley, for hours 0-23 (a typical Chinese TOU table)."""


def residential_load(when: datetime) -> float:
    """A household day: low at night, a morning bump, an evening peak."""
    hour = when.hour
    if 18 <= hour < 22:
        return 2.0
    if 7 <= hour < 9:
        return 1.2
    if 9 <= hour < 18:
        return 0.6
    return 0.25


@dataclass
class _Cover:
    """Open/close history of one cover (meter or terminal)."""

    count: int = 0
    open_now: bool = False
    last: CoverRecord = field(default_factory=lambda: CoverRecord(None, None, _ZEROS, _ZEROS))


class SimMeter:
    """One meter: energy registers driven by a load curve, status words, events and faults."""

    def __init__(
        self,
        address: str,
        clock: Clock,
        *,
        load: LoadCurve = residential_load,
        phases: int = 1,
        forward_kwh: Decimal = Decimal("1000.00"),
    ) -> None:
        Frame(address, Function.READ_DATA)  # validates the address
        self.address = address
        self.phases = phases
        self.dead = False
        self.garble = False
        self.silent_on: set[int] = set()
        """Identifiers this meter ignores (no reply at all), as real meters do for some."""
        self.raw_values: dict[int, bytes] = {}
        """Identifiers answered with these value bytes instead (e.g. an all-zero date)."""
        self.chunk: int | None = None
        """Longest value part of one reply; longer values go out in follow-up frames (B1/92)."""
        self.bypass = 0.0
        """Share of the load that flows around the meter (a bypass after a tamper): not metered."""
        self.freezes: list[tuple[datetime, tuple[Decimal, ...]]] = []
        """Daily freezes at meter-local midnight: (freeze time, forward energy total + tariffs)."""
        self.refuse_follow_ups = False
        """Refuse read-follow-up requests, as a meter that lost the rest of a value does."""
        self.clock_settable = True
        """Whether a broadcast time sync sets the clock (not on a compressed simulated day)."""
        self._pending: dict[int, list[bytes]] = {}
        self.status_words = [0] * 7
        self.meter_cover = _Cover()
        self.terminal_cover = _Cover()
        self.outage_count = 0
        self.last_outage = OutageRecord(None, None)
        self._clock = clock
        self._load = load
        self.forward_kwh = [float(forward_kwh), 0.0, 0.0, 0.0, 0.0]
        self.reverse_kwh = [0.0] * 5
        self._offset = timedelta()
        self._powered = True
        self._last_tick = clock.monotonic()

    # --- faults --------------------------------------------------------------------------

    def open_cover(self, *, terminal: bool = False) -> None:
        """Open the meter (or terminal) cover: count it, record it, raise the status bit."""
        cover, bit = self._cover(terminal)
        if cover.open_now:
            return
        self.advance()
        cover.count += 1
        cover.open_now = True
        cover.last = CoverRecord(self.meter_time(), None, self._snapshot(), _ZEROS)
        self.status_words[6] |= int(bit)

    def close_cover(self, *, terminal: bool = False) -> None:
        """Close the cover: finish the record and clear the status bit."""
        cover, bit = self._cover(terminal)
        if not cover.open_now:
            return
        self.advance()
        cover.open_now = False
        last = cover.last
        cover.last = CoverRecord(last.start, self.meter_time(), last.before, self._snapshot())
        self.status_words[6] &= ~int(bit)

    def power_down(self) -> None:
        """Cut the supply: the meter stops metering and goes silent on RS-485."""
        if not self._powered:
            return
        self.advance()
        self._powered = False
        self.outage_count += 1
        self.last_outage = OutageRecord(self.meter_time(), None)

    def power_up(self) -> None:
        """Restore the supply and close the power-down record."""
        if self._powered:
            return
        self._powered = True
        self._last_tick = self._clock.monotonic()
        self.last_outage = OutageRecord(self.last_outage.start, self.meter_time())

    # --- state ----------------------------------------------------------------------------

    @property
    def powered(self) -> bool:
        """Whether the supply is on (the meter meters)."""
        return self._powered

    @property
    def online(self) -> bool:
        """Whether the meter answers on the bus at all."""
        return self._powered and not self.dead

    def meter_time(self) -> datetime:
        """The meter's own clock, in meter-local time."""
        return (self._clock.now() + self._offset).astimezone(METER_TZ)

    def set_time(self, when: datetime) -> None:
        """Set the meter clock, as a broadcast time sync does."""
        self._offset = when - self._clock.now()

    def load_kw(self, when: datetime) -> float:
        """The power the customer really draws at `when`, metered or not."""
        return self._load(when)

    def power_kw(self) -> float:
        """Active power the meter measures now (a bypass takes its share away)."""
        if not self._powered:
            return 0.0
        return self._load(self.meter_time()) * (1.0 - self.bypass)

    def advance(self) -> None:
        """Integrate the load curve up to now, in one-minute steps, into the tariff registers."""
        now = self._clock.monotonic()
        elapsed = max(now - self._last_tick, 0.0)
        self._last_tick = now
        if not self._powered:
            return
        moment = self.meter_time() - timedelta(seconds=elapsed)
        while elapsed > 0:
            midnight = datetime.combine(moment.date() + timedelta(days=1), dtime(), METER_TZ)
            step = min(elapsed, _STEP_SECONDS, (midnight - moment).total_seconds())
            energy = self._load(moment) * (1.0 - self.bypass) * step / 3600.0
            self.forward_kwh[0] += energy
            self.forward_kwh[_TARIFF_BY_HOUR[moment.hour]] += energy
            moment += timedelta(seconds=step)
            elapsed -= step
            if moment >= midnight:  # the daily freeze (DL/T 645 05 06 xx 01)
                self.freezes.append((midnight, tuple(_kwh(v) for v in self.forward_kwh)))

    def value(self, di: int) -> Value | None:
        """The present value of `di`, or None if this meter does not hold it."""
        self.advance()
        return self._read(di) if self._powered else None

    # --- replies --------------------------------------------------------------------------

    def reply(self, frame: Frame) -> Frame | None:
        """The reply frame to a request addressed to this meter (None for broadcasts)."""
        if frame.function == Function.BROADCAST_TIME:
            when = dlt645.parse_time_sync(frame)
            if not self.clock_settable:
                _LOGGER.info("meter %s: time sync to %s ignored", self.address, when.isoformat())
                return None
            _LOGGER.info("meter %s: clock set to %s by a broadcast", self.address, when.isoformat())
            self.set_time(when)
            return None
        if frame.function == Function.READ_ADDRESS:
            return dlt645.address_reply(self.address)
        if frame.function == Function.READ_DATA:
            return self._read_reply(dlt645.parse_read_request(frame))
        if frame.function == Function.READ_FOLLOW_UP and len(frame.data) == 5:
            return self._follow_up_reply(int.from_bytes(frame.data[:4], "little"), frame.data[4])
        return dlt645.error_reply(self.address, frame.function, ErrorFlags.OTHER)

    def answers(self, frame: Frame) -> bool:
        """Whether this meter replies at all (it ignores the identifiers in `silent_on`)."""
        if frame.function != Function.READ_DATA or len(frame.data) < 4:
            return True
        return int.from_bytes(frame.data[:4], "little") not in self.silent_on

    def _read_reply(self, di: int) -> Frame:
        raw = self.raw_values.get(di)
        if raw is None:
            value = self.value(di)
            if value is None:
                return dlt645.error_reply(self.address, Function.READ_DATA, ErrorFlags.NO_DATA)
            raw = dlt645.encode_value(di, value)
        if self.chunk is None or len(raw) <= self.chunk:
            return dlt645.read_reply(self.address, di, raw)
        parts = [raw[i : i + self.chunk] for i in range(0, len(raw), self.chunk)]
        self._pending[di] = parts[1:]
        return dlt645.read_reply(self.address, di, parts[0], more=True)

    def _follow_up_reply(self, di: int, seq: int) -> Frame:
        """Frame `seq` (1, 2, ...) of a value announced by a B1 reply: 92, or B2 if more follow."""
        parts = self._pending.get(di, [])
        if self.refuse_follow_ups or not 1 <= seq <= len(parts):
            return dlt645.error_reply(self.address, Function.READ_FOLLOW_UP, ErrorFlags.NO_DATA)
        data = di.to_bytes(4, "little") + parts[seq - 1] + bytes([seq])
        more = seq < len(parts)
        return Frame(self.address, Function.READ_FOLLOW_UP, data, reply=True, more=more)

    def _cover(self, terminal: bool) -> tuple[_Cover, int]:
        if terminal:
            return self.terminal_cover, StatusWord7.TERMINAL_COVER_OPEN
        return self.meter_cover, StatusWord7.METER_COVER_OPEN

    def _snapshot(self) -> tuple[Decimal, ...]:
        """Forward, reverse and four-quadrant reactive energy, as a cover record holds them."""
        return (_kwh(self.forward_kwh[0]), _kwh(self.reverse_kwh[0]), *(Decimal("0.00"),) * 4)

    def _read(self, di: int) -> Value | None:
        family, index = di & 0xFFFF00FF, di >> 8 & 0xFF
        per_index = {
            0x00000000: self._combined_energy,
            0x00010000: lambda i: _energy(self.forward_kwh, i),
            0x00020000: lambda i: _energy(self.reverse_kwh, i),
            0x02010000: self._voltage,
            0x02020000: self._current,
            0x02030000: self._power,
            0x02060000: self._power_factor,
        }.get(family)
        if per_index is not None:
            return per_index(index)
        if 0x04000501 <= di <= 0x04000507:
            return self.status_words[di - 0x04000501]
        scalar = self._scalars().get(di)
        return None if scalar is None else scalar()

    def _scalars(self) -> dict[int, Callable[[], Value | None]]:
        return {
            0x02800002: lambda: Decimal("50.00"),
            0x040005FF: lambda: tuple(self.status_words),
            0x04000101: lambda: self.meter_time().date(),
            0x04000102: lambda: self.meter_time().time(),
            0x03300D00: lambda: self.meter_cover.count,
            0x03300D01: lambda: self.meter_cover.last,
            0x03300E00: lambda: self.terminal_cover.count,
            0x03300E01: lambda: self.terminal_cover.last,
            0x05060001: lambda: self.freezes[-1][0] if self.freezes else None,
            0x05060101: lambda: self.freezes[-1][1] if self.freezes else None,
            0x03110000: lambda: self.outage_count,
            0x03110001: lambda: self.last_outage,
        }

    def _combined_energy(self, index: int) -> Value | None:
        """Combined active energy with the default mode word: forward plus reverse."""
        total = [f + r for f, r in zip(self.forward_kwh, self.reverse_kwh, strict=True)]
        return _energy(total, index)

    def _phase(self, phase: int, value: Decimal) -> Decimal | None:
        return value if 1 <= phase <= self.phases else None

    def _voltage(self, phase: int) -> Value | None:
        volts = Decimal("230.0") if self._powered else Decimal("0.0")
        return self._phase(phase, volts)

    def _current(self, phase: int) -> Value | None:
        amps = self.power_kw() * 1000 / 230.0 / 0.95 / self.phases
        return self._phase(phase, Decimal(f"{amps:.3f}"))

    def _power(self, phase: int) -> Value | None:
        if phase == 0:
            return Decimal(f"{self.power_kw():.4f}")
        return self._phase(phase, Decimal(f"{self.power_kw() / self.phases:.4f}"))

    def _power_factor(self, phase: int) -> Value | None:
        return Decimal("0.950") if phase == 0 else self._phase(phase, Decimal("0.950"))


def _kwh(value: float) -> Decimal:
    return Decimal(f"{value:.2f}")


def _energy(registers: list[float], index: int) -> Value | None:
    """Register `index` (0 total, 1-4 tariffs) or the whole block (0xFF)."""
    if index == 0xFF:
        return tuple(_kwh(value) for value in registers)
    return _kwh(registers[index]) if index < len(registers) else None


class MeterBus:
    """Several meters on one half-duplex bus; `handle` is the whole protocol, bytes to bytes."""

    def __init__(self, meters: Iterable[SimMeter]) -> None:
        self.meters = {meter.address: meter for meter in meters}

    def handle(self, request: bytes) -> bytes | None:
        """The bytes the bus sends back for one request frame, or None if nobody answers."""
        try:
            _used, frame = dlt645.decode(request)
        except ProtocolError as exc:
            _LOGGER.debug("bus ignores bad request: %s", exc)
            return None
        return None if frame is None else self.handle_frame(frame)

    def handle_frame(self, frame: Frame) -> bytes | None:
        """The reply bytes for one decoded request frame."""
        if frame.reply:
            return None
        replies = [r for r in (self._reply(m, frame) for m in self._targets(frame)) if r]
        if len(replies) > 1:
            _LOGGER.debug("%d meters answered at once; the bus garbles them", len(replies))
            return _collided(replies)
        return replies[0] if replies else None

    def _targets(self, frame: Frame) -> list[SimMeter]:
        """Meters addressed: all on broadcast, those matching AA wildcard bytes, or one."""
        if frame.address == dlt645.BROADCAST:
            return [m for m in self.meters.values() if m.online]
        if "AA" in _pairs(frame.address):
            return [m for m in self.meters.values() if m.online and _matches(frame.address, m)]
        meter = self.meters.get(frame.address)
        return [meter] if meter is not None and meter.online else []

    def _reply(self, meter: SimMeter, frame: Frame) -> bytes | None:
        if not meter.answers(frame):
            return None
        try:
            reply = meter.reply(frame)
        except ProtocolError as exc:
            _LOGGER.debug("meter %s ignores request: %s", meter.address, exc)
            return None
        if reply is None:
            return None
        wire = dlt645.encode(reply, preamble=dlt645.WAKE_UP_LEN)
        return _garbled(wire) if meter.garble else wire


def _pairs(address: str) -> list[str]:
    return [address[i : i + 2] for i in range(0, 12, 2)]


def _matches(pattern: str, meter: SimMeter) -> bool:
    """DL/T 645-2007 section 4 shortened addressing: AAH bytes of `pattern` match any digit pair."""
    pairs = zip(_pairs(pattern), _pairs(meter.address), strict=True)
    return all(want in ("AA", got) for want, got in pairs)


def _collided(replies: list[bytes]) -> bytes:
    """What the master hears when several meters drive the line at once: a wired-AND mix."""
    size = max(len(reply) for reply in replies)
    mixed = bytearray(b"\xff" * size)
    for reply in replies:
        for index, byte in enumerate(reply.ljust(size, b"\xff")):
            mixed[index] &= byte
    return bytes(mixed)


def _garbled(wire: bytes) -> bytes:
    """Flip the checksum byte, as line noise on the reply would."""
    return wire[:-2] + bytes([wire[-2] ^ 0xFF]) + wire[-1:]


class Dlt645TcpServer:
    """Serves a MeterBus on a TCP port; each connection is one bus master."""

    def __init__(self, bus: MeterBus, host: str = "127.0.0.1", port: int = 0) -> None:
        self.bus = bus
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Start listening; return the bound port."""
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        _LOGGER.info("DL/T 645 simulator on %s:%d", self._host, self._port)
        return self._port

    @property
    def port(self) -> int:
        """The bound port (0 before start)."""
        return self._port

    async def close(self) -> None:
        """Stop listening, end every open connection (closing its socket), and wait for them.

        Server.wait_closed() on Python 3.11 neither ends nor waits for the connection
        handlers, so a client still connected would leave its socket to the garbage collector.
        """
        if self._server is not None:
            self._server.close()
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await self._server.wait_closed()

    async def __aenter__(self) -> Dlt645TcpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while chunk := await reader.read(4096):
                buffer += chunk
                for reply in self._drain(buffer):
                    writer.write(reply)
                await writer.drain()
        except ConnectionError as exc:
            _LOGGER.debug("client left: %s", exc)
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    def _drain(self, buffer: bytearray) -> list[bytes]:
        """Take every complete frame off `buffer`; return the replies in order."""
        replies: list[bytes] = []
        while True:
            try:
                used, frame = dlt645.decode(buffer)
            except FrameError as exc:
                del buffer[: exc.consumed]
                continue
            if not used:
                return replies
            del buffer[:used]
            reply = self.bus.handle_frame(frame) if frame is not None else None
            if reply is not None:
                replies.append(reply)
