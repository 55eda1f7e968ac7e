"""The bench's simulated meters end to end: the gateway's meter service reads every sim bus."""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_sim.meters.fleet import FAULTS, MeterSim
from gateway.meters.config import TheftSection
from gateway.meters.service import MeterService
from gateway.protocol.clock import ManualClock
from tests.fixtures.meters import FakeSeals, Recorder, meters_section

START = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)  # 18:00 meter time: the evening peak, 2 kW


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[MeterSim]:
    async with MeterSim(
        tmp_path / "sim", clock=ManualClock(START), truth=tmp_path / "truth.jsonl"
    ) as running:
        yield running


@pytest.fixture
async def service(sim: MeterSim) -> AsyncIterator[tuple[MeterService, Recorder]]:
    text = sim.meters_toml(seals={"M-645-3": "SL-3", "M-DDS-2": "SL-2"}, poll_s=30)
    section = meters_section(tomllib.loads(text)["meters"])
    recorder = Recorder()
    seals = FakeSeals(states={"SL-2": "sealed", "SL-3": "sealed"})
    assert isinstance(sim.clock, ManualClock)
    svc = MeterService(section, recorder, sim.clock, seals, theft=TheftSection())
    yield svc, recorder
    await svc.close()


def truth_lines(sim: MeterSim) -> list[dict[str, object]]:
    assert sim.truth is not None
    return [json.loads(line) for line in sim.truth.read_text().splitlines()]


async def test_every_sim_bus_is_readable_end_to_end(
    sim: MeterSim, service: tuple[MeterService, Recorder]
) -> None:
    svc, recorder = service
    dlt645_meters = [sim.meters[mid] for mid, info in sim.info.items() if info.address]
    for meter in dlt645_meters:
        meter.set_time(START - timedelta(minutes=5))  # skewed until the broadcast sync
    task = asyncio.create_task(svc.run())
    try:
        await svc.wait_for_polls(len(svc.meters))
        assert svc.time_syncs == 2  # both DL/T 645 buses (TCP and serial)
        sim.open_cover("M-645-3")  # on the DL/T 645 serial line, sealed
        sim.open_cover("M-DDS-2", terminal=True)  # Modbus RTU, sealed: a DDS238-2 can't tell
        sim.set_dead("M-SDM-1")
        assert isinstance(sim.clock, ManualClock)
        sim.clock.advance(30)
        await svc.wait_for_polls(2 * len(svc.meters))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    first_readings = {d.subject for d in recorder.of("meter.reading")}
    assert first_readings == set(sim.info)
    events = {(d.subject, d.data["event"]) for d in recorder.of("meter.event")}
    assert events == {("M-645-3", "cover_opened")}
    assert {d.data["seal"] for d in recorder.of("theft.suspected")} == {"SL-3"}
    truth = {(r["meter"], r["kind"]) for r in truth_lines(sim) if r["meter"] != "M-SDM-1"}
    assert truth == {("M-645-3", "meter_event"), ("M-DDS-2", "meter_fault")}
    [failed] = recorder.of("meter.read_failed")
    assert (failed.subject, failed.data["reason"]) == ("M-SDM-1", "timeout")
    polls = 2 * len(sim.info)  # two polls each, one of them failed
    assert svc.read_success_rate().districts == {"district-1": pytest.approx((polls - 1) / polls)}
    for meter in dlt645_meters:
        assert meter.meter_time() == sim.clock.now()


async def test_truth_file_records_generated_meter_events(sim: MeterSim) -> None:
    sim.inject("M-645-1", "cover_open")
    sim.inject("M-645-1", "cover_open")  # already open: nothing new happened
    sim.inject("M-645-1", "terminal_cover_open")
    sim.inject("M-DDS-1", "power_down")
    sim.inject("M-DDS-1", "magnetic")
    sim.inject("M-DDS-1", "garble")
    lines = truth_lines(sim)
    events = [(line["meter"], line["event"]) for line in lines if line["kind"] == "meter_event"]
    assert events == [("M-645-1", "cover_opened"), ("M-645-1", "terminal_cover_opened")]
    faults = [line["fault"] for line in lines if line["kind"] == "meter_fault"]
    assert faults == ["power_down", "magnetic_interference", "garble"]  # no DDS238-2 sensor
    assert sim.senses("M-645-1", "power_down") and not sim.senses(
        "M-645-1", "magnetic_interference"
    )
    assert not sim.senses("M-SDM-1", "cover_opened")
    assert lines[0]["ts"] == "2026-01-01T10:00:00.000Z" and lines[0]["bus"] == "sim-645"
    with pytest.raises(KeyError):
        sim.inject("M-645-1", "explode")
    assert {"cover_open", "power_down", "dead", "garble"} <= set(FAULTS)


async def test_modbus_energy_follows_the_load_curve(
    sim: MeterSim, service: tuple[MeterService, Recorder]
) -> None:
    svc, recorder = service
    await svc.poll_once("M-DDS-1")
    assert isinstance(sim.clock, ManualClock)
    sim.clock.advance(1800)  # half an hour of the 2 kW evening peak
    await svc.poll_once("M-DDS-1")
    readings = recorder.of("meter.reading", "M-DDS-1")
    energies = [r.data["values"]["energy_import"]["value"] for r in readings]
    assert energies == [1000.0, 1001.0]
    assert readings[-1].data["values"]["power"] == {"value": 2000, "unit": "W"}
