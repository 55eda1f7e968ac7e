"""DL/T 645 meters that misbehave per identifier, through the real bus and the meter service.

A meter silent on one identifier, one that sends an all-zero date, one that splits a long value
into follow-up frames: each still publishes what it can, and names the rest with its reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.meters.dlt645 import Dlt645TcpServer, MeterBus, SimMeter
from firmware_sim.meters.fleet import Dlt645SerialServer, PtyPair
from gateway.drivers.dlt645.bus import SILENT_ABORT, Dlt645Bus, matches, open_dlt645_bus
from gateway.errors import DeviceTimeoutError, FollowUpError, MeterValueError
from gateway.meters.profiles import parse_profile
from gateway.meters.readers import Dlt645Reader, failure_reason
from gateway.meters.service import MeterService
from gateway.protocol.clock import ManualClock
from gateway.protocol.dlt645 import DI_BY_NAME, CoverRecord
from tests.fixtures.meters import FakeSeals, Recorder, meters_section

START = datetime(2026, 1, 1, 4, 0, tzinfo=UTC)
ONE, TWO = "000000000001", "000000000002"
ENERGY = DI_BY_NAME["forward_active_energy_total"]
VOLTAGE = DI_BY_NAME["voltage_a"]
OUTAGES = DI_BY_NAME["power_down_count"]
DATE = DI_BY_NAME["date"]
COVER_LAST = DI_BY_NAME["meter_cover_open_last"]
NAMES = ["forward_active_energy_total", "voltage_a", "power_down_count", "date"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def meters(clock: ManualClock) -> list[SimMeter]:
    return [SimMeter(ONE, clock), SimMeter(TWO, clock, forward_kwh=Decimal("42.50"))]


@pytest.fixture
async def server(meters: list[SimMeter]) -> AsyncIterator[Dlt645TcpServer]:
    async with Dlt645TcpServer(MeterBus(meters)) as server:
        yield server


@pytest.fixture
async def bus(server: Dlt645TcpServer) -> AsyncIterator[Dlt645Bus]:
    bus = open_dlt645_bus(f"dlt645-tcp://127.0.0.1:{server.port}", timeout=0.2, inter_frame_gap=0)
    yield bus
    await bus.close()


async def test_silent_identifier_fails_alone(bus: Dlt645Bus, meters: list[SimMeter]) -> None:
    meters[0].silent_on.add(OUTAGES)
    batch = await bus.read_batch(ONE, [OUTAGES, ENERGY, VOLTAGE])
    assert batch.values == {ENERGY: Decimal("1000.00"), VOLTAGE: Decimal("230.0")}
    assert isinstance(batch.failed[OUTAGES], DeviceTimeoutError)
    assert failure_reason(batch.failed[OUTAGES]) == "timeout"


async def test_bad_date_drops_only_the_date(bus: Dlt645Bus, meters: list[SimMeter]) -> None:
    meters[0].raw_values[DATE] = bytes(4)
    batch = await bus.read_batch(ONE, [ENERGY, DATE, VOLTAGE])
    assert set(batch.values) == {ENERGY, VOLTAGE}
    error = batch.failed[DATE]
    assert isinstance(error, MeterValueError) and error.di == DATE
    assert "bad meter date 00000000" in str(error)
    assert failure_reason(error) == "out_of_range"


async def test_follow_up_frames_are_read_and_joined(bus: Dlt645Bus, meters: list[SimMeter]) -> None:
    meters[0].open_cover()
    meters[0].chunk = 16  # 60 bytes: a B1 reply, then 92 frames 1..3 (B2, B2, 92)
    reading = await bus.read(ONE, COVER_LAST)
    assert isinstance(reading.value, CoverRecord)
    assert reading.value == meters[0].meter_cover.last
    assert bus.stats.requests == 1 and bus.stats.ok == 1


async def test_broken_follow_up_is_its_own_reason(bus: Dlt645Bus, meters: list[SimMeter]) -> None:
    meters[0].chunk = 16
    meters[0].refuse_follow_ups = True
    with pytest.raises(FollowUpError) as caught:
        await bus.read(ONE, COVER_LAST)
    assert failure_reason(caught.value) == "follow_up"
    batch = await bus.read_batch(ONE, [COVER_LAST, ENERGY])
    assert batch.values == {ENERGY: Decimal("1000.00")}
    assert failure_reason(batch.failed[COVER_LAST]) == "follow_up"


async def test_silent_meter_stops_the_batch_early(bus: Dlt645Bus, meters: list[SimMeter]) -> None:
    meters[0].dead = True
    batch = await bus.read_batch(ONE, [ENERGY, VOLTAGE, OUTAGES, DATE])
    assert batch.values == {} and len(batch.failed) == SILENT_ABORT
    assert bus.stats.timeouts == SILENT_ABORT


def test_shortened_address_matching() -> None:
    assert matches("AAAAAAAAAA01", "123456789001")
    assert matches("AAAAAAAA9001", "123456789001")
    assert not matches("AAAAAAAAAA02", "123456789001")
    assert matches("123456789001", "123456789001")


# --- through the meter service ----------------------------------------------------------


def service_for(server: Dlt645TcpServer, clock: ManualClock) -> tuple[MeterService, Recorder]:
    profile = parse_profile(
        {"name": "t645", "protocol": "dlt645", "identifiers": NAMES}, "test:t645"
    )
    table = {
        "buses": [
            {
                "name": "rs485",
                "transport": f"dlt645-tcp://127.0.0.1:{server.port}",
                "gap_s": 0,
                "timeout_s": 0.2,
            }
        ],
        "meters": [
            {"id": "M-1", "bus": "rs485", "profile": "t645", "address": ONE, "poll_s": 60},
            {"id": "M-2", "bus": "rs485", "profile": "t645", "address": TWO, "poll_s": 60},
        ],
        "heartbeat_polls": 1,
    }
    recorder = Recorder()
    service = MeterService(
        meters_section(table), recorder, clock, FakeSeals(), profiles={"t645": profile}
    )
    return service, recorder


async def test_silent_identifier_is_published_missing_then_unsupported(
    server: Dlt645TcpServer, meters: list[SimMeter], clock: ManualClock
) -> None:
    meters[0].silent_on.add(OUTAGES)
    meters[1].raw_values[DATE] = bytes(4)
    service, recorder = service_for(server, clock)
    try:
        for _ in range(5):
            assert await service.poll_once("M-1")
            assert await service.poll_once("M-2")
            clock.advance(60)
        support = service.readers["M-1"].support  # type: ignore[attr-defined]
        assert support.unsupported == {OUTAGES}
    finally:
        await service.close()
    assert recorder.of("meter.read_failed") == []
    one = recorder.of("meter.reading", "M-1")
    assert len(one) == 5
    assert [r.data["missing"] for r in one] == [{"power_down_count": "timeout"}] * 3 + [
        {"power_down_count": "unsupported"}
    ] * 2
    assert all(set(r.data["values"]) == {"forward_active_energy_total", "voltage_a"} for r in one)
    two = recorder.of("meter.reading", "M-2")
    assert two[0].data["missing"] == {"date": "out_of_range"}
    assert two[0].data["values"]["power_down_count"] == {"value": 0}
    timeouts = service.buses["rs485"].stats.timeouts
    assert timeouts == 3  # polls 4 and 5 skipped the unsupported identifier


async def test_follow_up_frames_on_a_serial_pty(tmp_path: Path, meters: list[SimMeter]) -> None:
    pty = PtyPair(tmp_path, "645")
    await pty.start()
    meters[1].open_cover()
    meters[1].chunk = 24
    server = Dlt645SerialServer(MeterBus(meters), pty.server_end)
    await server.start()
    bus = open_dlt645_bus(f"dlt645-serial://{pty.client_end}", timeout=1.0)
    try:
        reading = await bus.read(TWO, COVER_LAST)
        energy = await bus.read(TWO, ENERGY)
    finally:
        await bus.close()
        await server.close()
        await pty.close()
    assert reading.value == meters[1].meter_cover.last
    assert energy.value == Decimal("42.50")


class _FreezesWhileRead(SimMeter):
    """A meter whose midnight comes between the gateway's two freeze reads of one poll."""

    def __init__(self, address: str, clock: ManualClock) -> None:
        super().__init__(address, clock)
        self.clock = clock
        self.armed = False

    def value(self, di: int) -> Any:
        if self.armed and di == DI_BY_NAME["daily_frozen_forward_energy"]:
            self.armed = False
            self.clock.advance(2)  # 23:59:59 -> 00:00:01: the meter freezes right now
        return super().value(di)


async def test_a_freeze_between_the_two_freeze_reads_is_not_paired(clock: ManualClock) -> None:
    """The freeze time of one day must not go with the frozen energy of the next."""
    meter = _FreezesWhileRead(ONE, clock)
    clock.advance(12 * 3600)  # past a meter-local midnight: a first daily freeze
    clock.advance(24 * 3600 - 1)  # 23:59:59 the next day, meter time
    names = ("forward_active_energy_total", "daily_freeze_time", "daily_frozen_forward_energy")
    async with Dlt645TcpServer(MeterBus([meter])) as server:
        bus = open_dlt645_bus(f"dlt645-tcp://127.0.0.1:{server.port}", timeout=0.2,
                              inter_frame_gap=0)  # fmt: skip
        try:
            reader = Dlt645Reader(bus, ONE, names)
            meter.armed = True
            racing = await reader.read()
            settled = await reader.read()
        finally:
            await bus.close()
    assert racing.frozen is None
    assert settled.frozen is not None
    when, kwh = settled.frozen
    assert (when, Decimal(str(kwh))) == (meter.freezes[-1][0], meter.freezes[-1][1][0])
