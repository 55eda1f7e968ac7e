"""The Modbus driver against real pymodbus servers over TCP and over a socat pseudo-terminal."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.drivers.modbus.bus import ModbusBus, open_bus, parse_transport
from gateway.drivers.modbus.transport import TransportKind
from gateway.errors import (
    BusUnavailableError,
    ConfigError,
    DeviceTimeoutError,
    GarbledResponseError,
    ModbusBusyError,
    ModbusExceptionCode,
    ModbusExceptionError,
    ProtocolError,
    TransientError,
)
from gateway.meters.plan import plan_profile, read_plan
from gateway.meters.profiles import MeterProfile, load_profile
from gateway.protocol.clock import ManualClock
from gateway.protocol.modbus_values import Number, RegisterFunction

PROFILES = Path(__file__).resolve().parents[3] / "config" / "profiles"
SDM_UNIT = 1
DDS_UNIT = 2
GARBLED_UNIT = 3
DEAD_UNIT = 9

# Values chosen to be exact in f32 and in the integer scales of the profiles.
SDM_VALUES: dict[str, Number] = {
    "voltage_l1": 230.5,
    "voltage_l2": 229.75,
    "voltage_l3": 231.25,
    "current_l1": 5.5,
    "current_l2": 4.25,
    "current_l3": 0.125,
    "power_l1": 1267.75,
    "power_l2": 976.5,
    "power_l3": 28.875,
    "power_factor_l1": 0.5,
    "power_factor_l2": 0.75,
    "power_factor_l3": 1.0,
    "power_total": 2273.125,
    "power_factor_total": 0.875,
    "frequency": 50.0,
    "energy_import": 12345.5,
    "energy_export": 12.25,
    "energy_total": 12357.75,
}
DDS_RAW: dict[str, int] = {
    "energy_total": 1_234_656,  # 12346.56 kWh
    "energy_import": 1_234_567,  # 12345.67 kWh
    "energy_export": 89,
    "voltage": 2305,
    "current": 512,
    "power": -1180,
    "power_factor": 985,
    "frequency": 4998,
}


def _words(profile: MeterProfile, raw: dict[str, Number]) -> dict[RegisterFunction, list[int]]:
    """The register image a meter with these raw values holds, gaps filled with zeros."""
    images: dict[RegisterFunction, list[int]] = {
        function: [0] * 400 for function in RegisterFunction
    }
    for spec in profile.registers:
        image = images[spec.function]
        image[spec.address : spec.end] = spec.format.encode(raw[spec.name])
    return images


def _device(unit: int, profile: MeterProfile, raw: dict[str, Number]) -> SimDevice:
    images = _words(profile, raw)
    bits = [SimData(0, values=False, datatype=DataType.BITS)]
    return SimDevice(
        unit,
        simdata=(
            bits,
            list(bits),
            [SimData(0, values=images[RegisterFunction.HOLDING], datatype=DataType.REGISTERS)],
            [SimData(0, values=images[RegisterFunction.INPUT], datatype=DataType.REGISTERS)],
        ),
    )


@pytest.fixture
def sdm630() -> MeterProfile:
    return load_profile(PROFILES / "sdm630.toml")


@pytest.fixture
def dds() -> MeterProfile:
    return load_profile(PROFILES / "dds-single-phase.toml")


@dataclass
class Wire:
    """What the server saw: (monotonic time, 'rx' | 'tx', unit) per frame."""

    log: list[tuple[float, str, int]] = field(default_factory=list)
    dead_units: set[int] = field(default_factory=set)
    garble_units: set[int] = field(default_factory=set)

    def trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus server trace_packet hook; RTU frames start with the unit id."""
        unit = data[0] if data else -1
        self.log.append((time.monotonic(), "tx" if sending else "rx", unit))
        if sending and unit in self.dead_units:
            return b""  # a silent meter: pymodbus's simulator would answer for unknown ids
        if sending and unit in self.garble_units:
            return data[:-1] + bytes([data[-1] ^ 0xFF])  # break the CRC
        return data


@pytest.fixture
async def tcp_port(sdm630: MeterProfile, dds: MeterProfile) -> AsyncIterator[int]:
    devices = [_device(SDM_UNIT, sdm630, SDM_VALUES), _device(DDS_UNIT, dds, DDS_RAW)]
    server = ModbusTcpServer(devices, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    yield server.transport.sockets[0].getsockname()[1]
    await server.shutdown()


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two linked pseudo-terminals from socat; ready once socat says it is transferring."""
    a, b = tmp_path / "A", tmp_path / "B"
    proc = subprocess.Popen(
        ["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "starting data transfer loop" in line:
            break
    else:
        pytest.fail(f"socat exited with {proc.wait()}")
    drain = threading.Thread(target=proc.stderr.read, daemon=True)
    drain.start()
    yield a, b
    proc.terminate()
    proc.wait(timeout=5)
    drain.join(timeout=5)
    proc.stderr.close()


@pytest.fixture
async def rtu(
    pty_pair: tuple[Path, Path], sdm630: MeterProfile, dds: MeterProfile
) -> AsyncIterator[tuple[Path, Wire]]:
    """An RTU server on one end of the pty pair; yields the client end and the wire log."""
    server_end, client_end = pty_pair
    wire = Wire(dead_units={DEAD_UNIT}, garble_units={GARBLED_UNIT})
    devices = [
        _device(SDM_UNIT, sdm630, SDM_VALUES),
        _device(DDS_UNIT, dds, DDS_RAW),
        _device(GARBLED_UNIT, dds, DDS_RAW),
        _device(DEAD_UNIT, dds, DDS_RAW),
    ]
    server = ModbusSerialServer(
        devices, port=str(server_end), baudrate=9600, trace_packet=wire.trace
    )
    await server.serve_forever(background=True)
    yield client_end, wire
    await server.shutdown()


def _expected_dds(dds: MeterProfile) -> dict[str, Number]:
    return {
        spec.name: spec.decode(spec.format.encode(DDS_RAW[spec.name])) for spec in dds.registers
    }


async def test_tcp_reads_every_profile_value(tcp_port: int, sdm630: MeterProfile) -> None:
    bus = open_bus(f"modbus-tcp://127.0.0.1:{tcp_port}", timeout=1.0)
    try:
        values = await read_plan(bus, SDM_UNIT, plan_profile(sdm630))
    finally:
        await bus.close()
    assert values == SDM_VALUES
    assert bus.stats.requests == len(plan_profile(sdm630).requests) == 2
    assert bus.stats.ok == 2


async def test_tcp_scaled_integers(tcp_port: int, dds: MeterProfile) -> None:
    bus = open_bus(f"modbus-tcp://127.0.0.1:{tcp_port}", timeout=1.0)
    try:
        values = await read_plan(bus, DDS_UNIT, plan_profile(dds))
    finally:
        await bus.close()
    assert values["energy_total"] == pytest.approx(12346.56)
    assert values["energy_import"] == pytest.approx(12345.67)
    assert values["energy_export"] == pytest.approx(0.89)
    assert values["voltage"] == pytest.approx(230.5)
    assert values["power"] == -1180
    assert values["frequency"] == pytest.approx(49.98)


async def test_illegal_address_becomes_typed_error(tcp_port: int) -> None:
    bus = open_bus(f"modbus-tcp://127.0.0.1:{tcp_port}", timeout=1.0)
    try:
        with pytest.raises(ModbusExceptionError) as caught:
            await bus.read(SDM_UNIT, RegisterFunction.INPUT, 0x2000, 2)
        words = await bus.read(SDM_UNIT, RegisterFunction.INPUT, 0, 2)  # the link survives
    finally:
        await bus.close()
    error = caught.value
    assert error.code == 2
    assert error.exception is ModbusExceptionCode.ILLEGAL_DATA_ADDRESS
    assert (error.unit, error.function, error.address) == (SDM_UNIT, 0x04, 0x2000)
    assert not isinstance(error, TransientError)
    assert words == [0x4366, 0x8000]  # 230.5 as f32
    assert bus.stats.refused == 1


def test_exception_codes_accept_unknown_values() -> None:
    assert ModbusExceptionCode.from_wire(0x06) is ModbusExceptionCode.SERVER_DEVICE_BUSY
    assert ModbusExceptionCode.from_wire(0x42) is None
    assert issubclass(ModbusBusyError, TransientError)


async def test_refused_tcp_connection_is_bus_unavailable(unused_tcp_port: int) -> None:
    bus = open_bus(f"modbus-tcp://127.0.0.1:{unused_tcp_port}", connect_timeout=1.0)
    with pytest.raises(BusUnavailableError):
        await bus.read(1, RegisterFunction.HOLDING, 0, 1)
    assert bus.stats.unavailable == 1


async def test_rtu_over_pty_reads_profile(rtu: tuple[Path, Wire], dds: MeterProfile) -> None:
    port, wire = rtu
    bus = open_bus(f"rtu://{port}?baud=9600&parity=N&stopbits=1", timeout=1.0)
    try:
        values = await read_plan(bus, DDS_UNIT, plan_profile(dds))
    finally:
        await bus.close()
    assert values == pytest.approx(_expected_dds(dds))
    assert [direction for _, direction, _ in wire.log] == ["rx", "tx"] * len(
        plan_profile(dds).requests
    )


async def test_rtu_dead_unit_times_out_quickly(rtu: tuple[Path, Wire]) -> None:
    port, _ = rtu
    bus = open_bus(f"rtu://{port}", timeout=0.2)
    started = time.monotonic()
    try:
        with pytest.raises(DeviceTimeoutError) as caught:
            await bus.read(DEAD_UNIT, RegisterFunction.HOLDING, 0, 2)
        elapsed = time.monotonic() - started
        words = await bus.read(DDS_UNIT, RegisterFunction.HOLDING, 0x0C, 1)
    finally:
        await bus.close()
    assert elapsed < 1.0
    assert caught.value.device is not None and caught.value.device.endswith(f"#{DEAD_UNIT}")
    assert words == [DDS_RAW["voltage"]]
    assert (bus.stats.timeouts, bus.stats.ok) == (1, 1)


async def test_rtu_bad_crc_is_a_protocol_error(rtu: tuple[Path, Wire]) -> None:
    port, _ = rtu
    bus = open_bus(f"rtu://{port}", timeout=0.2)
    try:
        with pytest.raises(GarbledResponseError) as caught:
            await bus.read(GARBLED_UNIT, RegisterFunction.HOLDING, 0, 2)
        words = await bus.read(DDS_UNIT, RegisterFunction.HOLDING, 0x0C, 1)
    finally:
        await bus.close()
    assert isinstance(caught.value, ProtocolError)
    assert words == [DDS_RAW["voltage"]]
    assert bus.stats.garbled == 1


async def test_two_meters_on_one_line_are_serialized(
    rtu: tuple[Path, Wire], sdm630: MeterProfile, dds: MeterProfile
) -> None:
    port, wire = rtu
    gap = 0.03
    bus = open_bus(f"rtu://{port}", timeout=1.0, inter_frame_gap=gap)
    sdm_plan, dds_plan = plan_profile(sdm630), plan_profile(dds)
    try:
        results = await asyncio.gather(
            *(read_plan(bus, SDM_UNIT, sdm_plan) for _ in range(3)),
            *(read_plan(bus, DDS_UNIT, dds_plan) for _ in range(3)),
        )
    finally:
        await bus.close()
    assert results[:3] == [SDM_VALUES] * 3
    assert results[3:] == [pytest.approx(_expected_dds(dds))] * 3
    frames = [(at, direction) for at, direction, _ in wire.log]
    per_round = len(sdm_plan.requests) + len(dds_plan.requests)
    assert [direction for _, direction in frames] == ["rx", "tx"] * 3 * per_round  # one at a time
    idle = [frames[i + 1][0] - frames[i][0] for i in range(1, len(frames) - 1, 2)]
    assert min(idle) >= gap
    assert {unit for _, _, unit in wire.log} == {SDM_UNIT, DDS_UNIT}


async def test_rs485_mode_on_a_port_without_it_names_the_key(rtu: tuple[Path, Wire]) -> None:
    port, _ = rtu
    bus = open_bus(f"rtu://{port}?rs485=1", key="meters.buses[0].transport")
    with pytest.raises(ConfigError) as caught:
        await bus.read(DDS_UNIT, RegisterFunction.HOLDING, 0, 1)
    assert caught.value.key == "meters.buses[0].transport.rs485"


class FakeTransport:
    """A line with no locking of its own, to show that the bus does the serializing."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.release: asyncio.Event = asyncio.Event()
        self.sent_at: list[float] = []
        self.clock: Callable[[], float] = lambda: 0.0

    name = "fake"
    connected = True
    heard_reply = False

    async def connect(self) -> None:
        """Always connected."""

    async def read_registers(
        self, function: RegisterFunction, address: int, count: int, unit: int
    ) -> list[int]:
        self.sent_at.append(self.clock())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await self.release.wait()
        self.in_flight -= 1
        return [unit] * count

    def close(self) -> None:
        """Nothing to close."""


async def test_bus_keeps_one_request_in_flight_and_the_gap() -> None:
    clock = ManualClock()
    fake = FakeTransport()
    fake.clock = clock.monotonic
    bus = ModbusBus(fake, timeout=5.0, inter_frame_gap=0.5, clock=clock)
    tasks = [asyncio.create_task(bus.read(unit, RegisterFunction.INPUT, 0, 2)) for unit in (1, 2)]
    for _ in range(5):
        await asyncio.sleep(0)  # let both tasks run as far as they can
    assert (fake.in_flight, len(fake.sent_at)) == (1, 1)
    fake.release.set()
    while len(fake.sent_at) < 2:
        await asyncio.sleep(0)
        clock.advance(0.1)
    assert [await task for task in tasks] == [[1, 1], [2, 2]]
    assert fake.max_in_flight == 1
    assert fake.sent_at[1] - fake.sent_at[0] >= 0.5


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("modbus://host:502", "expected modbus-tcp"),
        ("modbus-tcp://:502", "missing host"),
        ("modbus-tcp://host:99999", "port must be"),
        ("rtu-over-tcp://host", "needs a port"),
        ("rtu://dev/ttyUSB0", "three slashes"),
        ("rtu:///dev/ttyUSB0?baud=fast", "baud="),
        ("rtu:///dev/ttyUSB0?parity=X", "parity="),
        ("rtu:///dev/ttyUSB0?stopbits=3", "stopbits="),
        ("rtu:///dev/ttyUSB0?flow=1", "unknown option flow"),
        ("rtu:///dev/ttyUSB0?baud=9600&baud=2400", "given twice"),
        ("modbus-tcp://host:502?baud=9600", "takes no options"),
    ],
)
def test_bad_transport_strings_name_the_key(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_transport(text, key="meters.buses[1].transport")
    assert caught.value.key == "meters.buses[1].transport"
    assert reason in caught.value.reason


def test_transport_strings_parse() -> None:
    tcp = parse_transport("modbus-tcp://10.0.0.5")
    assert (tcp.kind, tcp.host, tcp.port) == (TransportKind.TCP, "10.0.0.5", 502)
    rtu = parse_transport("rtu:///dev/ttyUSB0?baud=2400&parity=e&stopbits=2&rs485=1&echo=1")
    assert (rtu.device, rtu.baud, rtu.parity, rtu.stopbits) == ("/dev/ttyUSB0", 2400, "E", 2)
    assert rtu.rs485 and rtu.echo and not rtu.rs485_invert
    assert rtu.default_gap() == pytest.approx(3.5 * 11 / 2400)
    bridge = parse_transport("rtu-over-tcp://192.168.1.7:8899")
    assert (bridge.kind, bridge.port, bridge.default_gap()) == (TransportKind.RTU_OVER_TCP, 8899, 0)
