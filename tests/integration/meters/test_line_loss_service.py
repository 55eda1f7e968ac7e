"""District line loss through the real buses: a simulated district on DL/T 645 and Modbus.

Five customers are DL/T 645 meters (with daily freeze data) on one TCP bus; the district meter
is a three-phase DTSU666 (Modbus TCP, no freeze data, so its midnight value is interpolated).
Honest days raise no alarm; a bypass after a tamper raises theft.suspected naming the meter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from firmware_sim.meters.district import SimDistrict
from firmware_sim.meters.dlt645 import Dlt645TcpServer, MeterBus
from firmware_sim.meters.maps import DTSU666
from firmware_sim.meters.modbus import ModbusLine, ModbusSimMeter
from gateway.meters.config import TheftSection
from gateway.meters.profiles import load_profiles, parse_profile
from gateway.meters.service import MeterService
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import EventDraft, Priority
from tests.fixtures.meters import PROFILES, FakeSeals, Recorder, meters_section
from tests.integration.contract.test_mqtt_schemas import chain, validate_events

START = datetime(2026, 3, 1, 14, 30, tzinfo=UTC)  # 22:30 meter time
POLL_S = 7200  # the default line_loss_max_interp_s: readings 2 h apart still interpolate
CUSTOMER_IDS = [f"C-{n}" for n in range(1, 6)]
IDENTIFIERS = [
    "forward_active_energy_total",
    "voltage_a",
    "status_word_7",
    "meter_cover_open_count",
    "daily_freeze_time",
    "daily_frozen_forward_energy",
]


@dataclass
class Rig:
    sim: SimDistrict
    clock: ManualClock
    service: MeterService
    recorder: Recorder
    seals: FakeSeals

    async def poll_all(self) -> None:
        for meter in ("TOTAL", *CUSTOMER_IDS):
            await self.service.poll_once(meter)

    async def run_hours(self, hours: int) -> None:
        for _ in range(hours * 3600 // POLL_S):
            self.clock.advance(POLL_S)
            await self.poll_all()

    def of(self, type_: str) -> list[EventDraft]:
        return self.recorder.of(type_)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = ManualClock(START)
    sim = SimDistrict(clock, 5, seed=11)
    profiles = load_profiles(PROFILES)
    profiles["dlt645-freeze"] = parse_profile(
        {"name": "dlt645-freeze", "protocol": "dlt645", "identifiers": IDENTIFIERS}, "test"
    )
    line = ModbusLine([ModbusSimMeter(1, DTSU666, sim.district_meter)])
    await line.start()
    async with Dlt645TcpServer(MeterBus(sim.customers)) as server:
        customers: list[dict[str, Any]] = [
            {
                "id": meter_id,
                "bus": "rs485",
                "profile": "dlt645-freeze",
                "address": meter.address,
                "seal": f"SL-{n}",
                "district": "D-7",
            }
            for n, (meter_id, meter) in enumerate(zip(CUSTOMER_IDS, sim.customers, strict=True), 1)
        ]
        table = {
            "time_sync_s": 0,
            "buses": [
                {
                    "name": "rs485",
                    "transport": f"dlt645-tcp://127.0.0.1:{server.port}",
                    "gap_s": 0,
                    "timeout_s": 0.2,
                },
                {"name": "eth", "transport": f"modbus-tcp://127.0.0.1:{line.port}"},
            ],
            "meters": [
                {
                    "id": "TOTAL",
                    "bus": "eth",
                    "profile": "dtsu666",
                    "unit": 1,
                    "district": "D-7",
                    "district_meter": True,
                },
                *customers,
            ],
        }
        seals = FakeSeals(states={f"SL-{n}": "sealed" for n in range(1, 6)})
        recorder = Recorder()
        service = MeterService(
            meters_section(table), recorder, clock, seals, theft=TheftSection(), profiles=profiles
        )
        rig = Rig(sim, clock, service, recorder, seals)
        await rig.poll_all()  # 22:30: the readings before the first midnight
        yield rig
        await service.close()
    await line.close()


async def test_honest_days_then_a_bypass_names_the_meter(rig: Rig) -> None:
    await rig.run_hours(4 * 24)  # midnights at +1.5 h, +25.5 h, ...: three whole days
    days = rig.of("district.line_loss")
    assert len(days) == 3
    assert all(d.data["status"] == "ok" and d.data["complete"] for d in days)
    assert days[-1].data["methods"] == {"freeze": 5, "interpolated": 1}
    assert rig.of("district.line_loss_alarm") == [] and rig.of("theft.suspected") == []

    rig.seals.states["SL-3"] = "tampered"
    rig.sim.customers[2].open_cover()  # the box and the meter cover opened to fit the bypass
    rig.sim.customers[2].close_cover()
    rig.sim.bypass(2, 0.6)  # 22:30: 1.5 h of it fall in the day that ends now
    await rig.run_hours(28)  # the next whole day is stolen from
    [alarm] = rig.of("district.line_loss_alarm")
    assert alarm.subject == "D-7" and alarm.priority is Priority.ALARM
    assert "jump" in alarm.data["reasons"]
    [theft] = [d for d in rig.of("theft.suspected") if d.data["rule"] == "line_loss_jump"]
    assert theft.data["meter"] == "C-3" and theft.data["seal_state"] == "tampered"
    top = theft.data["evidence"]["suspects"][0]
    assert top["meter"] == "C-3" and top["meter_events"] == ["cover_opened"]
    assert validate_events(chain([*days, alarm, theft])) == {
        "district.line_loss",
        "district.line_loss_alarm",
        "theft.suspected",
    }


async def test_a_silent_customer_makes_the_day_incomplete(rig: Rig) -> None:
    rig.sim.customers[4].dead = True
    await rig.run_hours(30)
    [day] = rig.of("district.line_loss")
    assert day.data["status"] == "incomplete" and day.data["missing"] == ["C-5"]
    assert rig.of("district.line_loss_alarm") == []
