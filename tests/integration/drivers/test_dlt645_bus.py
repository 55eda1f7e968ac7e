"""The DL/T 645 bus owner against the simulated meters over TCP and over a socat pty pair."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from firmware_sim.meters.dlt645 import Dlt645TcpServer, MeterBus, SimMeter
from firmware_sim.meters.fleet import Dlt645SerialServer, PtyPair
from gateway.drivers.dlt645.bus import (
    Dlt645Bus,
    Dlt645Kind,
    open_dlt645_bus,
    parse_dlt645_transport,
)
from gateway.errors import (
    ConfigError,
    DeviceTimeoutError,
    GarbledReplyError,
    LineUnavailableError,
    MeterRefusedError,
    ProtocolError,
)
from gateway.protocol import dlt645
from gateway.protocol.clock import ManualClock
from gateway.protocol.dlt645 import DI_BY_NAME, ErrorFlags

ONE, TWO = "000000000001", "000000000002"
START = datetime(2026, 1, 1, tzinfo=UTC)
ENERGY = DI_BY_NAME["forward_active_energy_total"]
VOLTAGE_A = DI_BY_NAME["voltage_a"]
VOLTAGE_B = DI_BY_NAME["voltage_b"]
COVERS = DI_BY_NAME["meter_cover_open_count"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def meters(clock: ManualClock) -> list[SimMeter]:
    return [SimMeter(ONE, clock), SimMeter(TWO, clock, forward_kwh=Decimal("42.50"))]


@pytest.fixture
async def tcp_bus(meters: list[SimMeter]) -> AsyncIterator[Dlt645Bus]:
    async with Dlt645TcpServer(MeterBus(meters)) as server:
        bus = open_dlt645_bus(
            f"dlt645-tcp://127.0.0.1:{server.port}", timeout=0.3, inter_frame_gap=0
        )
        yield bus
        await bus.close()


async def test_batch_reads_values_and_collects_refusals(tcp_bus: Dlt645Bus) -> None:
    batch = await tcp_bus.read_batch(TWO, [ENERGY, VOLTAGE_A, VOLTAGE_B, COVERS])
    assert batch.values == {ENERGY: Decimal("42.50"), VOLTAGE_A: Decimal("230.0"), COVERS: 0}
    assert batch.refused == {VOLTAGE_B: ErrorFlags.NO_DATA}  # a single-phase meter
    assert (tcp_bus.stats.requests, tcp_bus.stats.ok, tcp_bus.stats.refused) == (4, 3, 1)


async def test_single_refused_read_raises_meter_refused(tcp_bus: Dlt645Bus) -> None:
    with pytest.raises(MeterRefusedError) as caught:
        await tcp_bus.read(ONE, VOLTAGE_B)
    assert caught.value.flags == ErrorFlags.NO_DATA
    assert caught.value.address == ONE


async def test_dead_meter_times_out_and_the_bus_recovers(
    tcp_bus: Dlt645Bus, meters: list[SimMeter]
) -> None:
    meters[0].dead = True
    started = time.monotonic()
    with pytest.raises(DeviceTimeoutError) as caught:
        await tcp_bus.read(ONE, ENERGY)
    assert time.monotonic() - started < 1.0
    assert caught.value.device is not None and caught.value.device.endswith(f"#{ONE}")
    assert (await tcp_bus.read(TWO, ENERGY)).value == Decimal("42.50")
    assert (tcp_bus.stats.timeouts, tcp_bus.stats.ok) == (1, 1)


async def test_bad_checksum_is_a_garbled_reply(tcp_bus: Dlt645Bus, meters: list[SimMeter]) -> None:
    meters[0].garble = True
    with pytest.raises(GarbledReplyError) as caught:
        await tcp_bus.read(ONE, ENERGY)
    assert isinstance(caught.value, ProtocolError)
    assert "checksum" in str(caught.value)
    meters[0].garble = False
    assert (await tcp_bus.read(ONE, ENERGY)).value == Decimal("1000.00")
    assert tcp_bus.stats.garbled == 1


async def test_broadcast_time_sync_sets_every_meter_clock(
    tcp_bus: Dlt645Bus, meters: list[SimMeter], clock: ManualClock
) -> None:
    for meter in meters:
        meter.set_time(clock.now() - timedelta(minutes=17))
    await tcp_bus.broadcast_time(clock.now())
    await tcp_bus.read(ONE, ENERGY)  # the sync has no reply; a read after it proves it was handled
    for meter in meters:
        assert meter.meter_time() == clock.now()
    assert tcp_bus.stats.broadcasts == 1


async def test_refused_connection_is_line_unavailable(unused_tcp_port: int) -> None:
    bus = open_dlt645_bus(f"dlt645-tcp://127.0.0.1:{unused_tcp_port}", timeout=0.3)
    with pytest.raises(LineUnavailableError):
        await bus.read(ONE, ENERGY)
    assert bus.stats.unavailable == 1


async def test_requests_carry_the_fe_preamble(meters: list[SimMeter]) -> None:
    received = bytearray()
    bus_model = MeterBus(meters)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = await reader.read(4096)
        received.extend(chunk)
        writer.write(bus_model.handle(chunk) or b"")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    bus = open_dlt645_bus(f"dlt645-tcp://127.0.0.1:{port}", timeout=1.0)
    try:
        reading = await bus.read(ONE, ENERGY)
    finally:
        await bus.close()
        server.close()
        await server.wait_closed()
    assert bytes(received[:5]) == b"\xfe\xfe\xfe\xfe\x68"
    assert bytes(received[4:]) == dlt645.encode(dlt645.read_request(ONE, ENERGY), preamble=0)
    assert reading.value == Decimal("1000.00")


@pytest.fixture
async def serial_line(tmp_path: Path, meters: list[SimMeter]) -> AsyncIterator[Path]:
    pty = PtyPair(tmp_path, "645")
    await pty.start()
    server = Dlt645SerialServer(MeterBus(meters), pty.server_end)
    await server.start()
    yield pty.client_end
    await server.close()
    await pty.close()


async def test_serial_line_over_a_pty_reads_and_syncs(
    serial_line: Path, meters: list[SimMeter], clock: ManualClock
) -> None:
    bus = open_dlt645_bus(f"dlt645-serial://{serial_line}", timeout=1.0)
    meters[1].set_time(clock.now() + timedelta(hours=3))
    try:
        batch = await bus.read_batch(TWO, [ENERGY, VOLTAGE_A])
        await bus.broadcast_time(clock.now())
        await bus.read(ONE, ENERGY)
    finally:
        await bus.close()
    assert batch.values == {ENERGY: Decimal("42.50"), VOLTAGE_A: Decimal("230.0")}
    assert meters[1].meter_time() == clock.now()
    assert not bus.line.connected


async def test_missing_serial_device_is_line_unavailable(tmp_path: Path) -> None:
    bus = open_dlt645_bus(f"dlt645-serial://{tmp_path}/nope", timeout=0.3)
    with pytest.raises(LineUnavailableError):
        await bus.read(ONE, ENERGY)


class FakeLine:
    """A line that answers through MeterBus.handle, with scripted extras, and counts in-flight."""

    def __init__(self, bus: MeterBus, *, echo: bool = False, junk: bytes = b"") -> None:
        self.bus = bus
        self.echo = echo
        self.junk = junk
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.sent: list[bytes] = []
        self.release = asyncio.Event()
        self.release.set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.flushes = 0

    name = "fake"
    connected = True

    async def connect(self) -> None:
        """Always connected."""

    def write(self, data: bytes) -> None:
        self.sent.append(data)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        asyncio.get_running_loop().create_task(self._answer(data))

    async def _answer(self, data: bytes) -> None:
        await self.release.wait()
        if self.junk:
            self.inbox.put_nowait(self.junk)
            await asyncio.sleep(0.08)  # longer than the bus's frame_silence: the junk is flushed
        if self.echo:
            self.inbox.put_nowait(data)
        reply = self.bus.handle(data)
        self.in_flight -= 1
        if reply:
            self.inbox.put_nowait(reply)

    async def receive(self) -> bytes:
        return await self.inbox.get()

    def flush(self) -> None:
        self.flushes += 1
        while not self.inbox.empty():
            self.inbox.get_nowait()

    def close(self) -> None:
        """Nothing to close."""


async def test_one_request_at_a_time_with_the_gap(meters: list[SimMeter]) -> None:
    clock = ManualClock()
    line = FakeLine(MeterBus(meters))
    line.release.clear()
    bus = Dlt645Bus(line, timeout=5.0, inter_frame_gap=0.5, clock=clock)
    tasks = [asyncio.create_task(bus.read(address, ENERGY)) for address in (ONE, TWO)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(line.sent) == 1  # the second waits for the first
    line.release.set()
    first = await tasks[0]
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(line.sent) == 1  # and then for the gap
    clock.advance(0.5)
    second = await tasks[1]
    assert (first.value, second.value) == (Decimal("1000.00"), Decimal("42.50"))
    assert line.max_in_flight == 1
    assert line.flushes == 2  # stale input is dropped before each request


async def test_local_echo_is_skipped(meters: list[SimMeter]) -> None:
    bus = Dlt645Bus(FakeLine(MeterBus(meters), echo=True), timeout=1.0, inter_frame_gap=0)
    assert (await bus.read(TWO, ENERGY)).value == Decimal("42.50")


async def test_silence_inside_a_frame_flushes_it(meters: list[SimMeter]) -> None:
    junk = b"\x68" + bytes.fromhex(ONE)[::-1] + b"\x68\x91\x40"  # a header promising 64 bytes
    line = FakeLine(MeterBus(meters), junk=junk)
    bus = Dlt645Bus(line, timeout=2.0, inter_frame_gap=0, frame_silence=0.05)
    assert (await bus.read(ONE, ENERGY)).value == Decimal("1000.00")


def test_transport_strings_parse() -> None:
    serial = parse_dlt645_transport("dlt645-serial:///dev/ttyUSB0")
    assert serial.kind is Dlt645Kind.SERIAL and serial.serial is not None
    assert (serial.serial.device, serial.serial.baud, serial.serial.parity) == (
        "/dev/ttyUSB0",
        2400,
        "E",
    )
    fast = parse_dlt645_transport("dlt645-serial:///dev/ttyS1?baud=9600&parity=N&echo=1")
    assert fast.serial is not None and (fast.serial.baud, fast.serial.parity, fast.serial.echo) == (
        9600,
        "N",
        True,
    )
    tcp = parse_dlt645_transport("dlt645-tcp://10.0.0.9:8899")
    assert (tcp.kind, tcp.host, tcp.port) == (Dlt645Kind.TCP, "10.0.0.9", 8899)
    assert tcp.describe() == "dlt645-tcp://10.0.0.9:8899"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("dlt645://host:1", "expected dlt645-tcp"),
        ("dlt645-tcp://host", "needs host:port"),
        ("dlt645-serial://dev/ttyUSB0", "three slashes"),
        ("dlt645-serial:///dev/ttyUSB0?parity=X", "parity="),
        ("dlt645-serial:///dev/ttyUSB0?speed=1", "unknown option speed"),
    ],
)
def test_bad_transport_strings_name_the_key(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_dlt645_transport(text, key="meters.buses[2].transport")
    assert caught.value.key == "meters.buses[2].transport"
    assert reason in caught.value.reason
