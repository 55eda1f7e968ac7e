"""The meter service against simulated meters: DL/T 645 over TCP and Modbus TCP (pymodbus)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from firmware_sim.meters.dlt645 import Dlt645TcpServer, MeterBus, SimMeter
from firmware_sim.meters.maps import DDS238_2
from firmware_sim.meters.modbus import ModbusLine, ModbusSimMeter
from gateway.drivers.dlt645.bus import SILENT_ABORT
from gateway.errors import ConfigError, ProfileError
from gateway.meters.config import TheftSection
from gateway.meters.profiles import load_profiles, parse_profile
from gateway.meters.service import MeterService
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import Priority
from tests.fixtures.meters import PROFILES, FakeSeals, Recorder, meters_section, theft_section

START = datetime(2026, 1, 1, 4, 0, tzinfo=UTC)  # 12:00 meter time: a steady 0.6 kW
A645, B645 = "000000000001", "000000000002"


def flat_load(_when: datetime) -> float:
    return 0.6


@dataclass
class Bench:
    """Simulated meters on two buses and the matching [meters] table."""

    clock: ManualClock
    dlt: dict[str, SimMeter]
    modbus: dict[int, ModbusSimMeter]
    table: dict[str, Any]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def bench(clock: ManualClock) -> AsyncIterator[Bench]:
    dlt = {a: SimMeter(a, clock, load=flat_load) for a in (A645, B645)}
    modbus = {
        2: ModbusSimMeter(2, DDS238_2, SimMeter("900000000002", clock, load=flat_load)),
    }
    line = ModbusLine(modbus.values())
    await line.start()
    async with Dlt645TcpServer(MeterBus(dlt.values())) as server:
        table = {
            "profiles_dir": str(PROFILES),
            "time_sync_s": 600,
            "heartbeat_polls": 4,
            "buses": [
                {
                    "name": "rs485-1",
                    "transport": f"dlt645-tcp://127.0.0.1:{server.port}",
                    "gap_s": 0,
                    "timeout_s": 0.3,
                },
                {
                    "name": "eth",
                    "transport": f"modbus-tcp://127.0.0.1:{line.port}",
                    "timeout_s": 0.3,
                },
            ],
            "meters": [
                {
                    "id": "M-1",
                    "bus": "rs485-1",
                    "profile": "dlt645-residential",
                    "address": A645,
                    "poll_s": 60,
                    "seal": "SL-1",
                },
                {
                    "id": "M-2",
                    "bus": "rs485-1",
                    "profile": "dlt645-residential",
                    "address": B645,
                    "poll_s": 60,
                    "district": "d-east",
                },
                {
                    "id": "M-3",
                    "bus": "eth",
                    "profile": "dds-single-phase",
                    "unit": 2,
                    "poll_s": 60,
                    "seal": "SL-3",
                },
            ],
        }
        yield Bench(clock, dlt, modbus, table)
    await line.close()


@pytest.fixture
async def service(bench: Bench) -> AsyncIterator[tuple[MeterService, Recorder, FakeSeals]]:
    recorder = Recorder()
    seals = FakeSeals(states={"SL-1": "sealed", "SL-3": "sealed"})
    svc = MeterService(
        meters_section(bench.table),
        recorder,
        bench.clock,
        seals,
        district="d-west",
        theft=TheftSection(),
    )
    yield svc, recorder, seals
    await svc.close()


def values(draft: Any) -> dict[str, float]:
    return {name: entry["value"] for name, entry in draft.data["values"].items()}


async def test_first_poll_reports_then_deadbands_and_heartbeat(service: Any, bench: Bench) -> None:
    svc, recorder, _ = service
    assert await svc.poll_once("M-1")
    [first] = recorder.of("meter.reading", "M-1")
    assert first.priority is Priority.TELEMETRY
    assert first.data["protocol"] == "dlt645" and first.data["seal"] == "SL-1"
    assert first.data["values"]["forward_active_energy_total"] == {"value": 1000.0, "unit": "kWh"}
    assert first.data["values"]["voltage_a"] == {"value": 230.0, "unit": "V"}
    bench.clock.advance(60)  # 0.01 kWh more: inside the 0.1 kWh deadband
    await svc.poll_once("M-1")
    for _ in range(2):
        bench.clock.advance(60)
        await svc.poll_once("M-1")
    assert len(recorder.of("meter.reading", "M-1")) == 1
    bench.clock.advance(60)
    await svc.poll_once("M-1")  # four polls after the report: heartbeat_polls = 4
    assert len(recorder.of("meter.reading", "M-1")) == 2
    bench.clock.advance(1200)  # +0.2 kWh: outside the deadband
    await svc.poll_once("M-1")
    latest = recorder.of("meter.reading", "M-1")[-1]
    assert len(recorder.of("meter.reading", "M-1")) == 3
    assert values(latest)["forward_active_energy_total"] == pytest.approx(
        1000.24
    )  # 0.6 kW x 24 min


async def test_voltage_change_beyond_deadband_reports(service: Any, bench: Bench) -> None:
    svc, recorder, _ = service
    await svc.poll_once("M-3")
    bench.modbus[2].meter.power_down()  # Modbus sim meters answer on, at 0 V
    await svc.poll_once("M-3")
    readings = recorder.of("meter.reading", "M-3")
    assert [values(r)["voltage"] for r in readings] == [230.0, 0.0]
    assert recorder.of("meter.event", "M-3") == []  # a DDS238-2 has no status word to say so


async def test_dead_meter_fails_once_then_recovers(service: Any, bench: Bench) -> None:
    svc, recorder, _ = service
    await svc.poll_once("M-2")
    bench.dlt[B645].dead = True
    assert not await svc.poll_once("M-2")
    assert not await svc.poll_once("M-2")
    [failed] = recorder.of("meter.read_failed", "M-2")
    assert failed.priority is Priority.STATE
    assert failed.data["reason"] == "timeout" and failed.data["bus"] == "rs485-1"
    assert svc.snapshot()["meters"]["M-2"]["failing"] is True
    bench.dlt[B645].dead = False
    assert await svc.poll_once("M-2")
    [recovered] = recorder.of("meter.read_recovered", "M-2")
    assert recovered.data["failed_polls"] == 2
    assert len(recorder.of("meter.reading", "M-2")) == 2  # reported again after recovery
    assert svc.read_success_rate().meters["M-2"] == pytest.approx(2 / 4)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("garble", "crc"),
        ("exception", "exception:2"),
        ("refused", "refused"),
        ("unavailable", "unavailable"),
    ],
)
async def test_failure_reasons(bench: Bench, fault: str, reason: str, unused_tcp_port: int) -> None:
    table = bench.table
    if fault == "garble":
        bench.dlt[A645].garble = True
    elif fault == "exception":  # a register map larger than the meter's: illegal data address
        table["meters"][2]["profile"] = "sdm630"
    elif fault == "refused":  # a single-phase meter asked only for phase B
        table["meters"][0]["profile"] = "phase-b"
    else:
        table["buses"][0]["transport"] = f"dlt645-tcp://127.0.0.1:{unused_tcp_port}"
    recorder = Recorder()
    meter = "M-3" if fault == "exception" else "M-1"
    profiles = _profiles_with_phase_b() if fault == "refused" else None
    svc = MeterService(meters_section(table), recorder, bench.clock, FakeSeals(), profiles=profiles)
    try:
        assert not await svc.poll_once(meter)
    finally:
        await svc.close()
    [failed] = recorder.of("meter.read_failed", meter)
    assert failed.data["reason"] == reason


def _profiles_with_phase_b() -> dict[str, Any]:
    profiles = load_profiles(PROFILES)
    data = {"name": "phase-b", "protocol": "dlt645", "identifiers": ["voltage_b", "current_b"]}
    profiles["phase-b"] = parse_profile(data, "test")
    return profiles


async def test_cover_open_raises_meter_event_and_theft(service: Any, bench: Bench) -> None:
    svc, recorder, _ = service
    await svc.poll_once("M-1")
    bench.dlt[A645].open_cover()
    await svc.poll_once("M-1")
    [event] = recorder.of("meter.event", "M-1")
    assert event.priority is Priority.AUDIT
    assert event.data == {
        "meter": "M-1",
        "event": "cover_opened",
        "source": "status+counter",
        "count": 1,
        "seal": "SL-1",
    }
    [theft] = recorder.of("theft.suspected", "M-1")
    assert theft.priority is Priority.ALARM
    assert (theft.data["rule"], theft.data["seal"]) == ("cover_open_under_seal", "SL-1")
    await svc.poll_once("M-1")  # still open: no new edge
    assert len(recorder.of("meter.event", "M-1")) == 1


async def test_cover_opened_and_closed_between_polls_is_caught_by_the_counter(
    service: Any, bench: Bench
) -> None:
    svc, recorder, seals = service
    seals.authorized["SL-1"] = (START, START + timedelta(hours=1))  # a work order is open
    await svc.poll_once("M-1")
    bench.dlt[A645].open_cover(terminal=True)
    bench.dlt[A645].close_cover(terminal=True)
    await svc.poll_once("M-1")
    [event] = recorder.of("meter.event", "M-1")
    assert (event.data["event"], event.data["source"]) == ("terminal_cover_opened", "counter")
    assert recorder.of("theft.suspected") == []  # authorized: no alarm


async def test_power_down_shows_as_failure_then_counted_event(service: Any, bench: Bench) -> None:
    svc, recorder, _ = service
    await svc.poll_once("M-2")
    bench.dlt[B645].power_down()  # a DL/T 645 meter without supply is silent
    await svc.poll_once("M-2")
    bench.clock.advance(60)
    bench.dlt[B645].power_up()
    await svc.poll_once("M-2")
    assert [d.type for d in recorder.drafts if d.subject == "M-2"] == [
        "meter.reading",
        "meter.read_failed",
        "meter.read_recovered",
        "meter.event",
        "meter.reading",
    ]
    assert recorder.of("meter.event", "M-2")[0].data["event"] == "power_down"


async def test_success_rate_per_meter_and_district(service: Any, bench: Bench) -> None:
    svc, _, _ = service
    assert svc.read_success_rate().meters["M-1"] is None
    for meter in ("M-1", "M-2", "M-3"):
        await svc.poll_once(meter)
    bench.dlt[A645].dead = True
    await svc.poll_once("M-1")
    rates = svc.read_success_rate()
    assert rates.meters == {"M-1": 0.5, "M-2": 1.0, "M-3": 1.0}
    assert rates.districts == {"d-west": pytest.approx(2 / 3), "d-east": 1.0}
    snapshot = svc.snapshot()
    assert snapshot["districts"] == {"d-west": 0.6667, "d-east": 1.0}
    assert snapshot["buses"]["rs485-1"]["timeouts"] == SILENT_ABORT  # then M-1 counts as silent
    assert snapshot["meters"]["M-1"]["failed_polls"] == 1


async def test_run_polls_on_period_and_syncs_time(service: Any, bench: Bench) -> None:
    svc, recorder, _ = service
    for meter in bench.dlt.values():
        meter.set_time(bench.clock.now() - timedelta(minutes=9))
    task = asyncio.create_task(svc.run())
    try:
        await svc.wait_for_polls(3)  # one poll of each meter at start
        assert svc.time_syncs == 1
        for meter in bench.dlt.values():
            assert meter.meter_time() == bench.clock.now()
        bench.clock.advance(60)
        await svc.wait_for_polls(6)
        assert svc.polls_done == 6
        assert svc.trackers["M-3"].polls == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(recorder.of("meter.reading")) == 3  # second polls were inside the deadbands


def test_unknown_profile_is_a_profile_error(bench: Bench) -> None:
    bench.table["meters"][0]["profile"] = "nope"
    with pytest.raises(ProfileError) as caught:
        MeterService(meters_section(bench.table), Recorder(), bench.clock, FakeSeals())
    assert caught.value.key == "meters.meters[0].profile"


@pytest.mark.parametrize(("meter", "profile"), [(0, "sdm630"), (2, "dlt645-residential")])
def test_profile_on_the_wrong_bus_names_the_key(bench: Bench, meter: int, profile: str) -> None:
    bench.table["meters"][meter]["profile"] = profile
    with pytest.raises(ConfigError) as caught:
        MeterService(meters_section(bench.table), Recorder(), bench.clock, FakeSeals())
    assert caught.value.key == f"meters.meters[{meter}].profile"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda t: t["meters"][1].update(id="M-1"), "meters.meters[1].id"),
        (lambda t: t["meters"][0].update(bus="nope"), "meters.meters[0].bus"),
        (lambda t: t["meters"][0].update(address="12"), "meters.meters[0].address"),
        (lambda t: t["buses"][1].update(name="rs485-1"), "meters.buses[1].name"),
        (lambda t: t["meters"][2].update(poll_s=0), "meters.meters[2].poll_s"),
    ],
)
def test_bad_meter_config_names_the_key(bench: Bench, change: Any, key: str) -> None:
    change(bench.table)
    with pytest.raises(ConfigError) as caught:
        meters_section(bench.table)
    assert caught.value.key == key


def test_deadbands_are_configured_per_meter(bench: Bench) -> None:
    bench.table["meters"][2]["deadbands"] = {"voltage": 5, "energy": 0.5}
    section = meters_section(bench.table)
    assert (section.meters[2].deadbands.voltage, section.meters[2].deadbands.energy) == (5.0, 0.5)
    assert section.meters[0].deadbands.voltage == 2.0
    bench.table["meters"][2]["deadbands"] = {"volts": 5}
    with pytest.raises(ConfigError) as caught:
        meters_section(bench.table)
    assert caught.value.key == "meters.meters[2].deadbands.volts"


def test_theft_section_defaults_and_bounds() -> None:
    section = theft_section()
    assert section.debounce == section.window_s == 3600
    assert theft_section(debounce_s=60).debounce == 60
    with pytest.raises(ConfigError) as caught:
        theft_section(energy_drop_ratio=2)
    assert caught.value.key == "theft.energy_drop_ratio"
