"""Theft correlation rules: each fires when it should and stays quiet when it should not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.meters.model import Measurement, MeterEvent, MeterEventKind, MeterReading
from gateway.meters.profiles import ValueKind
from gateway.meters.theft import TheftCorrelator
from gateway.protocol.events import Priority
from tests.fixtures.meters import FakeSeals, theft_section

T0 = datetime(2026, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def reading(
    at: datetime, kwh: float, *, volts: float | None = 230.0, seal: str = "SL-1", meter: str = "M-1"
) -> MeterReading:
    values = [Measurement("energy_import", kwh, "kWh", ValueKind.ENERGY)]
    if volts is not None:
        values.append(Measurement("voltage", volts, "V", ValueKind.VOLTAGE))
    return MeterReading(meter, at, "modbus", tuple(values), seal)


def cover(at: datetime, *, seal: str = "SL-1", terminal: bool = False) -> MeterEvent:
    kind = MeterEventKind.TERMINAL_COVER_OPENED if terminal else MeterEventKind.COVER_OPENED
    return MeterEvent("M-1", at, kind, "status", seal=seal)


def correlator(seals: FakeSeals | None = None, **settings: Any) -> TheftCorrelator:
    return TheftCorrelator(theft_section(**settings), seals or FakeSeals(states={"SL-1": "sealed"}))


def feed_hours(
    theft: TheftCorrelator, kwh_per_hour: list[float], *, start_kwh: float = 100.0
) -> list[Any]:
    """One reading per hour with the given consumption per hour; returns every draft."""
    drafts, energy = [], start_kwh
    drafts += theft.observe(reading(T0, energy))
    for hour, used in enumerate(kwh_per_hour, start=1):
        energy += used
        drafts += theft.observe(reading(T0 + hour * HOUR, energy))
    return drafts


# --- cover_open_under_seal ---------------------------------------------------------------


@pytest.mark.parametrize("terminal", [False, True])
def test_cover_open_under_seal_fires(terminal: bool) -> None:
    [draft] = correlator().observe(cover(T0, terminal=terminal))
    assert (draft.type, draft.subject, draft.priority) == (
        "theft.suspected",
        "M-1",
        Priority.ALARM,
    )
    assert draft.data["rule"] == "cover_open_under_seal"
    assert draft.data["seal"] == "SL-1" and draft.data["seal_state"] == "sealed"
    event = "terminal_cover_opened" if terminal else "cover_opened"
    assert draft.data["evidence"] == {"event": event, "source": "status", "count": 1}


@pytest.mark.parametrize(
    ("seals", "seal"),
    [
        (FakeSeals(states={"SL-1": "unsealed"}), "SL-1"),  # the box is open
        (FakeSeals(states={"SL-1": "sealed"}, authorized={"SL-1": (T0 - HOUR, T0 + HOUR)}), "SL-1"),
        (FakeSeals(states={}), "SL-1"),  # state unknown
        (FakeSeals(states={"SL-1": "sealed"}), ""),  # meter not mapped to a seal
        (FakeSeals(states={"SL-1": "tampered"}), "SL-1"),  # not armed: seal.tamper already raised
    ],
)
def test_cover_open_stays_quiet_when_not_armed(seals: FakeSeals, seal: str) -> None:
    assert correlator(seals).observe(cover(T0, seal=seal)) == []


def test_cover_open_fires_when_authorization_has_expired() -> None:
    seals = FakeSeals(states={"SL-1": "sealed"}, authorized={"SL-1": (T0 - 2 * HOUR, T0 - HOUR)})
    assert len(correlator(seals).observe(cover(T0))) == 1


def test_cover_rule_can_be_switched_off_and_other_events_are_ignored() -> None:
    assert correlator(cover_open_under_seal=False).observe(cover(T0)) == []
    assert correlator(enabled=False).observe(cover(T0)) == []
    magnetic = MeterEvent("M-1", T0, MeterEventKind.MAGNETIC_INTERFERENCE, "status", seal="SL-1")
    assert correlator().observe(magnetic) == []


def test_armed_states_are_configurable() -> None:
    seals = FakeSeals(states={"SL-1": "tampered"})
    assert len(correlator(seals, armed_states=["sealed", "tampered"]).observe(cover(T0))) == 1


def test_one_alarm_per_meter_and_rule_per_window() -> None:
    theft = correlator(window_s=3600)
    assert len(theft.observe(cover(T0))) == 1
    assert theft.observe(cover(T0 + timedelta(minutes=59))) == []
    assert len(theft.observe(cover(T0 + HOUR))) == 1


# --- energy_decrease_under_seal ----------------------------------------------------------


def test_energy_register_decrease_fires() -> None:
    theft = correlator()
    assert theft.observe(reading(T0, 500.0)) == []
    [draft] = theft.observe(reading(T0 + timedelta(minutes=1), 480.0))
    assert draft.data["rule"] == "energy_decrease_under_seal"
    assert draft.data["evidence"] == {"previous_kwh": 500.0, "current_kwh": 480.0, "voltage": 230.0}


@pytest.mark.parametrize(
    ("seals", "volts", "after"),
    [
        (FakeSeals(states={"SL-1": "sealed"}), 230.0, 499.995),  # within the tolerance
        (FakeSeals(states={"SL-1": "sealed"}), 0.0, 480.0),  # power is down
        (FakeSeals(states={"SL-1": "sealed"}), None, 480.0),  # no voltage to tell
        (FakeSeals(states={"SL-1": "sealed"}, authorized={"SL-1": (T0, T0 + HOUR)}), 230.0, 0.0),
        (FakeSeals(states={"SL-1": "unsealed"}), 230.0, 0.0),  # meter replaced with the box open
    ],
)
def test_energy_decrease_stays_quiet(seals: FakeSeals, volts: float | None, after: float) -> None:
    theft = correlator(seals)
    theft.observe(reading(T0, 500.0, volts=volts))
    assert theft.observe(reading(T0 + timedelta(minutes=1), after, volts=volts)) == []


def test_a_poll_without_its_import_register_is_not_a_decrease() -> None:
    """The import register timed out in this poll: the export register is not taken for it."""
    theft = correlator()
    forward = Measurement("forward_active_energy_total", 500.0, "kWh", ValueKind.ENERGY)
    reverse = Measurement("reverse_active_energy_total", 0.0, "kWh", ValueKind.ENERGY)
    volts = Measurement("voltage_a", 230.0, "V", ValueKind.VOLTAGE)
    before = MeterReading("M-1", T0, "dlt645", (forward, reverse, volts), "SL-1")
    partial = MeterReading(
        "M-1", T0 + timedelta(minutes=1), "dlt645", (reverse, volts), "SL-1",
        {"forward_active_energy_total": "timeout"},
    )  # fmt: skip
    assert partial.energy_kwh() is None
    assert theft.observe(before) == []
    assert theft.observe(partial) == []


# --- energy_drop_under_seal --------------------------------------------------------------


def test_consumption_drop_against_trailing_average_fires() -> None:
    theft = correlator(window_s=3600, min_windows=3, energy_drop_ratio=0.2)
    [draft] = feed_hours(theft, [1.0, 1.2, 0.8, 0.1])
    assert draft.data["rule"] == "energy_drop_under_seal"
    assert draft.ts == T0 + 4 * HOUR
    evidence = draft.data["evidence"]
    assert evidence["window_kwh"] == pytest.approx(0.1)
    assert evidence["trailing_mean_kwh"] == pytest.approx(1.0)
    assert evidence["trailing_windows"] == 3


def test_windows_straddled_by_polls_are_normalised() -> None:
    theft = correlator(window_s=3600, min_windows=2)
    drafts = theft.observe(reading(T0, 0.0))
    drafts += theft.observe(reading(T0 + HOUR, 1.0))
    drafts += theft.observe(reading(T0 + 2 * HOUR, 2.0))
    drafts += theft.observe(reading(T0 + 4 * HOUR, 3.0))  # 1 kWh over two hours: 0.5 per window
    assert drafts == []  # 0.5 is not below 0.2 x 1.0


@pytest.mark.parametrize(
    ("hours", "settings"),
    [
        ([1.0, 1.0, 1.0, 0.25], {}),  # not below the ratio
        ([1.0, 1.0, 0.1], {"min_windows": 3}),  # too little history
        ([0.05, 0.05, 0.05, 0.0], {"min_trailing_kwh": 0.1}),  # a vacant house
        ([1.0, 1.0, 1.0, 0.0], {"energy_drop_under_seal": False}),
    ],
)
def test_consumption_drop_stays_quiet(hours: list[float], settings: dict[str, Any]) -> None:
    merged = {"window_s": 3600, "min_windows": 3, **settings}
    assert feed_hours(correlator(**merged), hours) == []


def test_consumption_drop_during_an_outage_stays_quiet() -> None:
    theft = correlator(window_s=3600, min_windows=3)
    assert feed_hours(theft, [1.0, 1.0, 1.0]) == []
    outage = MeterEvent("M-1", T0 + 3.5 * HOUR, MeterEventKind.POWER_DOWN, "counter", seal="SL-1")
    assert theft.observe(outage) == []
    assert theft.observe(reading(T0 + 4 * HOUR, 103.05)) == []


def test_consumption_drop_with_low_voltage_stays_quiet() -> None:
    theft = correlator(window_s=3600, min_windows=3)
    feed_hours(theft, [1.0, 1.0, 1.0])
    assert theft.observe(reading(T0 + 3.5 * HOUR, 103.0, volts=20.0)) == []
    assert theft.observe(reading(T0 + 4 * HOUR, 103.05)) == []


def test_consumption_drop_stays_quiet_under_authority() -> None:
    seals = FakeSeals(
        states={"SL-1": "sealed"}, authorized={"SL-1": (T0 + 3 * HOUR, T0 + 5 * HOUR)}
    )
    assert feed_hours(correlator(seals, window_s=3600, min_windows=3), [1.0, 1.0, 1.0, 0.0]) == []


def test_rules_keep_meters_apart() -> None:
    theft = correlator(FakeSeals(states={"SL-1": "sealed", "SL-2": "sealed"}))
    theft.observe(reading(T0, 500.0, meter="M-1"))
    assert theft.observe(reading(T0, 100.0, meter="M-2", seal="SL-2")) == []  # a first reading
    assert theft.observe(reading(T0 + HOUR, 501.0, meter="M-1")) == []
