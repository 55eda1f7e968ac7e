"""The bus owners on a real-feeling RS-485 line: an adapter that echoes, a reply in pieces,
the inter-frame silence per baud rate, a strict meter that refuses reserved registers, and
CT/VT ratios. The line is a pseudo-terminal proxy (firmware_sim.meters.rs485) between socat
pty pairs; the meters are the simulator's, served by pymodbus or the DL/T 645 serial server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from firmware_sim.meters.dlt645 import MeterBus, SimMeter
from firmware_sim.meters.fleet import Dlt645SerialServer
from firmware_sim.meters.maps import DTSU666
from firmware_sim.meters.modbus import ModbusLine, ModbusSimMeter
from firmware_sim.meters.rs485 import EchoSplitProxy
from gateway.drivers.dlt645.bus import DEFAULT_GAP, open_dlt645_bus
from gateway.drivers.modbus.bus import open_bus
from gateway.drivers.modbus.transport import parse_transport
from gateway.errors import ModbusExceptionError
from gateway.meters.plan import EVERY_GAP, plan_profile, plan_reads, read_plan
from gateway.meters.profiles import load_profiles
from gateway.meters.readers import failure_reason
from gateway.meters.service import MeterService
from gateway.protocol.clock import ManualClock
from gateway.protocol.dlt645 import DI_BY_NAME
from tests.fixtures.meters import PROFILES, FakeSeals, Recorder, meters_section

START = datetime(2026, 1, 1, 4, 0, tzinfo=UTC)


def flat_load(_when: datetime) -> float:
    return 0.6


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[EchoSplitProxy]:
    proxy = EchoSplitProxy(tmp_path, echo=True, split=3)
    await proxy.start()
    yield proxy
    await proxy.close()


def dtsu(clock: ManualClock, *, strict: bool = True) -> ModbusSimMeter:
    meter = ModbusSimMeter(1, DTSU666, SimMeter("900000000001", clock, load=flat_load, phases=3))
    meter.strict = strict
    return meter


async def test_dlt645_ignores_its_echo_and_joins_split_replies(
    proxy: EchoSplitProxy, clock: ManualClock
) -> None:
    meters = [SimMeter("000000000001", clock), SimMeter("000000000002", clock)]
    server = Dlt645SerialServer(MeterBus(meters), proxy.meter_end)
    await server.start()
    bus = open_dlt645_bus(f"dlt645-serial://{proxy.gateway_end}?echo=1", timeout=2.0)
    names = ["forward_active_energy_total", "voltage_a", "meter_cover_open_count"]
    try:
        batch = await bus.read_batch("000000000002", [DI_BY_NAME[n] for n in names])
        again = await bus.read("000000000001", DI_BY_NAME["forward_active_energy_total"])
    finally:
        await bus.close()
        await server.close()
    assert list(batch.values.values()) == [Decimal("1000.00"), Decimal("230.0"), 0]
    assert batch.failed == {} and again.value == Decimal("1000.00")
    assert bus.stats.garbled == 0
    requests = [data for _, kind, data in proxy.log if kind == "request"]
    assert len(requests) == 4  # each request once: the echo came back, was never re-sent
    assert all(gap >= DEFAULT_GAP for gap in proxy.requests_after_replies())


async def test_modbus_rtu_echo_split_and_silence_per_baud(
    proxy: EchoSplitProxy, clock: ManualClock
) -> None:
    line = ModbusLine([dtsu(clock)], serial=proxy.meter_end)
    await line.start()
    profile = load_profiles(PROFILES)["dtsu666"]
    transport = f"rtu://{proxy.gateway_end}?baud=1200&echo=1"
    floor = parse_transport(transport).default_gap()  # 3.5 x 11 bits at 1200 baud: 32 ms
    bus = open_bus(transport, timeout=2.0, inter_frame_gap=0)  # too short: raised to the floor
    try:
        values = await read_plan(bus, 1, plan_profile(profile))
    finally:
        await bus.close()
        await line.close()
    assert bus.inter_frame_gap == pytest.approx(floor)
    assert len(values) == 24
    assert values["voltage_l1"] == pytest.approx(230.0)
    assert values["energy_import"] == pytest.approx(1000.0)
    gaps = proxy.requests_after_replies()
    assert len(gaps) == len(plan_profile(profile).requests) - 1
    assert all(gap >= floor for gap in gaps)


async def test_strict_meter_refuses_reserved_reads_and_the_shipped_plan_avoids_them(
    clock: ManualClock,
) -> None:
    line = ModbusLine([dtsu(clock)])
    await line.start()
    profile = load_profiles(PROFILES)["dtsu666"]
    every_gap = plan_reads(profile.registers, max_gap=16, readable=EVERY_GAP)
    bus = open_bus(f"modbus-tcp://127.0.0.1:{line.port}", timeout=1.0)
    try:
        values = await read_plan(bus, 1, plan_profile(profile))
        with pytest.raises(ModbusExceptionError) as caught:
            await read_plan(bus, 1, every_gap)
    finally:
        await bus.close()
        await line.close()
    assert len(values) == 24
    assert caught.value.code == 2
    assert failure_reason(caught.value) == "exception:2"


async def test_ct_and_vt_ratios_give_primary_side_values(clock: ManualClock) -> None:
    line = ModbusLine([dtsu(clock)])
    await line.start()
    table = {
        "profiles_dir": str(PROFILES),
        "time_sync_s": 0,
        "buses": [{"name": "eth", "transport": f"modbus-tcp://127.0.0.1:{line.port}"}],
        "meters": [
            {"id": "PLAIN", "bus": "eth", "profile": "dtsu666", "unit": 1},
            {
                "id": "CT",
                "bus": "eth",
                "profile": "dtsu666",
                "unit": 1,
                "ct_ratio": 40,
                "vt_ratio": 100,
            },
        ],
    }
    recorder = Recorder()
    service = MeterService(meters_section(table), recorder, clock, FakeSeals())
    try:
        assert await service.poll_once("PLAIN")
        assert await service.poll_once("CT")
    finally:
        await service.close()
    plain, scaled = (
        {n: e["value"] for n, e in recorder.of("meter.reading", m)[0].data["values"].items()}
        for m in ("PLAIN", "CT")
    )
    assert scaled["current_l1"] == pytest.approx(plain["current_l1"] * 40)
    assert scaled["voltage_l1"] == pytest.approx(plain["voltage_l1"] * 100)
    assert scaled["power_total"] == pytest.approx(plain["power_total"] * 4000)
    assert scaled["energy_import"] == pytest.approx(plain["energy_import"] * 4000)
    assert scaled["power_factor_total"] == plain["power_factor_total"]
    assert scaled["frequency"] == plain["frequency"]


def test_rs485_delays_are_config() -> None:
    spec = parse_transport("rtu:///dev/ttyS1?rs485=1&rs485_delay_tx_ms=2&rs485_delay_rx_ms=1")
    assert spec.rs485_settings() == {
        "rts_level_for_tx": True,
        "rts_level_for_rx": False,
        "delay_before_tx": 0.002,
        "delay_before_rx": 0.001,
    }
    inverted = parse_transport("rtu:///dev/ttyS1?rs485=1&rs485_invert=1").rs485_settings()
    assert (inverted["rts_level_for_tx"], inverted["delay_before_tx"]) == (False, None)
