"""District line loss on the simulator's physics: 20 honest days, a bypass, faults, gaps.

The simulated district (firmware_sim.meters.district) supplies the energies; readings go to
the monitor as the meter service would hand them over: customers with their DL/T 645 daily
freeze, the district meter (no freeze data, like a Modbus meter) by interpolation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from firmware_sim.meters.district import SimDistrict
from gateway.meters.lineloss import District, LineLossMonitor, boundary_at_or_before
from gateway.meters.model import MeterEvent, MeterEventKind
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import EventDraft, Priority
from tests.fixtures.meters import FakeSeals, theft_section

START = datetime(2026, 3, 1, 14, 0, tzinfo=UTC)  # 22:00 meter time
POLL = timedelta(minutes=30)
SEALS = {f"SL-{n}": "sealed" for n in range(1, 6)}


def build(
    seed: int, seals: FakeSeals, **settings: Any
) -> tuple[SimDistrict, ManualClock, LineLossMonitor]:
    clock = ManualClock(START)
    sim = SimDistrict(clock, 5, seed=seed)
    district = District(
        "D-1",
        "TOTAL",
        {f"C-{n}": f"SL-{n}" for n in range(1, 6)},
    )
    return sim, clock, LineLossMonitor(theft_section(**settings), [district], seals)


def run_days(
    sim: SimDistrict, clock: ManualClock, monitor: LineLossMonitor, days: float
) -> list[EventDraft]:
    drafts: list[EventDraft] = []
    for _ in range(int(days * 24 * 3600 / POLL.total_seconds())):
        clock.advance(POLL.total_seconds())
        now = clock.now()
        sim.district_meter.advance()
        drafts += monitor.observe_reading("TOTAL", now, sim.district_meter.forward_kwh[0], None)
        for n, customer in enumerate(sim.customers, 1):
            customer.advance()
            frozen = customer.freezes[-1] if customer.freezes else None
            freeze = None if frozen is None else (frozen[0], float(frozen[1][0]))
            drafts += monitor.observe_reading(f"C-{n}", now, customer.forward_kwh[0], freeze)
    return drafts


def of(drafts: list[EventDraft], type_: str) -> list[EventDraft]:
    return [d for d in drafts if d.type == type_]


@pytest.mark.parametrize("seed", range(1, 21))
def test_twenty_seeded_honest_days_raise_nothing(seed: int) -> None:
    """Each seed's fifth day is judged against a baseline of its first four: no alarm, no theft."""
    sim, clock, monitor = build(seed, FakeSeals(states=dict(SEALS)))
    drafts = run_days(sim, clock, monitor, 5.1)  # 22:00 start: five whole days
    days = of(drafts, "district.line_loss")
    assert len(days) == 5
    judged = days[-1].data
    assert judged["baseline_rate"] is not None, "the day was compared with a baseline"
    assert judged["complete"] is True and judged["status"] == "ok"
    assert judged["rate"] == pytest.approx(0.04 / 1.04, abs=0.005)  # technical loss and noise
    assert judged["methods"] == {"freeze": 5, "interpolated": 1}
    assert of(drafts, "district.line_loss_alarm") == []
    assert of(drafts, "theft.suspected") == []


def test_twenty_consecutive_honest_days_raise_no_alarm_or_suspect() -> None:
    sim, clock, monitor = build(7, FakeSeals(states=dict(SEALS)))
    drafts = run_days(sim, clock, monitor, 20.5)
    days = of(drafts, "district.line_loss")
    assert len(days) == 20
    assert all(d.data["status"] == "ok" and d.data["qualified"] for d in days)
    assert of(drafts, "district.line_loss_alarm") == []
    assert of(drafts, "theft.suspected") == []
    assert days[-1].data["baseline_rate"] is not None


def test_bypass_after_a_tamper_names_the_bypassed_meter() -> None:
    seals = FakeSeals(states=dict(SEALS))
    sim, clock, monitor = build(3, seals)
    drafts = run_days(sim, clock, monitor, 5.5)
    assert of(drafts, "theft.suspected") == []
    seals.states["SL-3"] = "tampered"
    sim.bypass(2, 0.6)  # C-3: 60 % of its load around the meter from now on
    monitor.observe_event(MeterEvent("C-3", clock.now(), MeterEventKind.COVER_OPENED, "status"))
    drafts = run_days(sim, clock, monitor, 1.0)
    [alarm] = of(drafts, "district.line_loss_alarm")
    assert alarm.priority is Priority.ALARM and "jump" in alarm.data["reasons"]
    [theft] = of(drafts, "theft.suspected")
    assert theft.priority is Priority.ALARM
    assert (theft.subject, theft.data["meter"], theft.data["rule"]) == (
        "C-3",
        "C-3",
        "line_loss_jump",
    )
    assert theft.data["seal"] == "SL-3" and theft.data["seal_state"] == "tampered"
    suspects = theft.data["evidence"]["suspects"]
    assert suspects[0]["meter"] == "C-3" and suspects[0]["meter_events"] == ["cover_opened"]
    assert suspects[0]["drop_ratio"] > 0.3


def test_missing_customer_makes_the_interval_incomplete() -> None:
    sim, clock, monitor = build(4, FakeSeals(states=dict(SEALS)))
    drafts: list[EventDraft] = []
    for _ in range(int(30 * 3600 / POLL.total_seconds())):
        clock.advance(POLL.total_seconds())
        now = clock.now()
        sim.district_meter.advance()
        drafts += monitor.observe_reading("TOTAL", now, sim.district_meter.forward_kwh[0], None)
        for n, customer in enumerate(sim.customers[:4], 1):  # C-5 never answers
            customer.advance()
            drafts += monitor.observe_reading(f"C-{n}", now, customer.forward_kwh[0], None)
    [day] = of(drafts, "district.line_loss")
    assert day.data["complete"] is False and day.data["status"] == "incomplete"
    assert day.data["missing"] == ["C-5"] and day.data["rate"] is None
    assert of(drafts, "district.line_loss_alarm") == []


def test_negative_loss_is_a_metering_fault() -> None:
    monitor = LineLossMonitor(theft_section(), [District("D", "T", {"C": "SL-C"})], FakeSeals())
    t0 = boundary_at_or_before(START, 86400)
    drafts: list[EventDraft] = []
    for day, (total, customer) in enumerate([(100.0, 10.0), (150.0, 70.0)]):
        at = t0 + timedelta(days=day)
        drafts += monitor.observe_reading("T", at, total, (at, total))
        drafts += monitor.observe_reading("C", at, customer, (at, customer))
    [day] = of(drafts, "district.line_loss")
    assert day.data["loss_kwh"] == -10.0 and day.data["status"] == "metering_fault"
    [alarm] = of(drafts, "district.line_loss_alarm")
    assert alarm.data["reasons"] == ["out_of_band", "metering_fault"] or alarm.data["reasons"] == [
        "metering_fault"
    ]


def test_boundaries_are_meter_local_midnight() -> None:
    at = datetime(2026, 3, 1, 15, 59, tzinfo=UTC)  # 23:59 meter time
    assert boundary_at_or_before(at, 86400) == datetime(2026, 2, 28, 16, 0, tzinfo=UTC)
    assert boundary_at_or_before(at + timedelta(minutes=1), 86400) == datetime(
        2026, 3, 1, 16, 0, tzinfo=UTC
    )


def test_a_missed_freeze_closes_its_day_incomplete_on_the_meters_timeline() -> None:
    """Meter clocks ahead of the gateway's (a compressed simulated day, or a gateway clock
    behind): a day one meter never froze for closes incomplete once the others are a settle
    period past it, and the days after it are still reported."""
    monitor = LineLossMonitor(theft_section(), [District("D", "T", {"C": "SL-C"})], FakeSeals())
    t0 = boundary_at_or_before(START, 86400) + timedelta(days=30)  # freezes a month ahead
    drafts: list[EventDraft] = []
    for day in range(5):
        at, read_at = t0 + timedelta(days=day), START + timedelta(seconds=day)
        drafts += monitor.observe_reading("T", read_at, 100.0 * day, (at, 100.0 * day))
        if day != 2:  # C was not read at all while its freeze of day 2 was the last one
            drafts += monitor.observe_reading("C", read_at, 96.0 * day, (at, 96.0 * day))
    days = of(drafts, "district.line_loss")
    assert [d.data["status"] for d in days] == ["ok", "incomplete", "incomplete", "ok"]
    assert days[1].data["missing"] == ["C"]
