"""Theft correlation: meter observations against box seal state, as documented rules.

Pure: no I/O and no clock; time is the observation's `ts`. Feed every meter event and every
successful reading (reported or not) to `TheftCorrelator.observe`; it returns theft.suspected
drafts (alarm priority). The rules, precisely (docs/theft.md):

A meter is *armed* when it maps to a seal, the seal's state is one of `armed_states`
("sealed" by default), and no authorized unseal covers the seal at the observation's time.
An unmapped meter, or a seal whose state is unknown (None), is never armed: no alarm.

- cover_open_under_seal: a meter event cover_opened or terminal_cover_opened on an armed
  meter fires. Power does not matter: the meter records a cover opening on its own battery.
- energy_decrease_under_seal: the import energy register fell by more than
  `decrease_tolerance_kwh` since the previous reading, the meter is powered and armed.
- energy_drop_under_seal: consumption over a window of `window_s` (normalised to `window_s`
  when polls straddle it) is below `energy_drop_ratio` x the mean of up to `trailing_windows`
  earlier windows, at least `min_windows` of them exist, their mean is at least
  `min_trailing_kwh`, the meter was powered for the whole window and is armed.

*Powered* means a voltage value of at least `powered_voltage`; a reading without a voltage, a
lower voltage, or a power_down event inside the window counts as not powered. Each rule fires
at most once per meter per `debounce` seconds.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from gateway.locks.view import SealStateView
from gateway.meters.config import TheftSection
from gateway.meters.model import MeterEvent, MeterEventKind, MeterReading
from gateway.protocol.canonical import JSONValue
from gateway.protocol.events import EventDraft, EventType, Priority

__all__ = ["TheftCorrelator", "TheftRule"]

_log = logging.getLogger(__name__)

_COVER_EVENTS = frozenset({MeterEventKind.COVER_OPENED, MeterEventKind.TERMINAL_COVER_OPENED})


class TheftRule(StrEnum):
    """The `rule` of a theft.suspected event."""

    COVER_OPEN_UNDER_SEAL = "cover_open_under_seal"
    ENERGY_DECREASE_UNDER_SEAL = "energy_decrease_under_seal"
    ENERGY_DROP_UNDER_SEAL = "energy_drop_under_seal"


@dataclass(slots=True)
class _Window:
    """The consumption window in progress for one meter."""

    start: datetime
    start_kwh: float
    unpowered: bool


@dataclass(slots=True)
class _History:
    """What the rules remember about one meter."""

    last_kwh: float | None = None
    window: _Window | None = None
    trailing: deque[float] = field(default_factory=deque)


class TheftCorrelator:
    """Applies the theft rules to meter readings and events."""

    def __init__(self, settings: TheftSection, seals: SealStateView) -> None:
        self.settings = settings
        self.seals = seals
        self._history: dict[str, _History] = {}
        self._fired: dict[tuple[str, TheftRule], datetime] = {}

    def observe(self, item: MeterReading | MeterEvent) -> list[EventDraft]:
        """theft.suspected drafts raised by one reading or event (usually none)."""
        if not self.settings.enabled:
            return []
        if isinstance(item, MeterEvent):
            return self.observe_event(item)
        return self.observe_reading(item)

    def observe_event(self, event: MeterEvent) -> list[EventDraft]:
        """Rule cover_open_under_seal; a power_down event also spoils the energy window."""
        if event.event is MeterEventKind.POWER_DOWN:
            window = self._meter(event.meter).window
            if window is not None:
                window.unpowered = True
        if event.event not in _COVER_EVENTS or not self.settings.cover_open_under_seal:
            return []
        evidence: dict[str, JSONValue] = {
            "event": event.event.value,
            "source": event.source,
            "count": event.count,
        }
        return self._fire(
            TheftRule.COVER_OPEN_UNDER_SEAL, event.meter, event.seal, event.ts, evidence
        )

    def observe_reading(self, reading: MeterReading) -> list[EventDraft]:
        """Rules energy_decrease_under_seal and energy_drop_under_seal."""
        energy = reading.energy_kwh()
        if energy is None:
            return []
        volts = reading.voltage()
        powered = volts is not None and volts >= self.settings.powered_voltage
        history = self._meter(reading.meter)
        drafts = self._check_decrease(reading, history, energy, powered, volts)
        drafts += self._check_window(reading, history, energy, powered, volts)
        history.last_kwh = energy
        return drafts

    def _check_decrease(
        self,
        reading: MeterReading,
        history: _History,
        energy: float,
        powered: bool,
        volts: float | None,
    ) -> list[EventDraft]:
        last = history.last_kwh
        rule_on = self.settings.energy_decrease_under_seal
        if not rule_on or last is None or not powered:
            return []
        if last - energy <= self.settings.decrease_tolerance_kwh:
            return []
        evidence: dict[str, JSONValue] = {
            "previous_kwh": round(last, 3),
            "current_kwh": round(energy, 3),
            "voltage": volts,
        }
        return self._fire(
            TheftRule.ENERGY_DECREASE_UNDER_SEAL, reading.meter, reading.seal, reading.ts, evidence
        )

    def _check_window(
        self,
        reading: MeterReading,
        history: _History,
        energy: float,
        powered: bool,
        volts: float | None,
    ) -> list[EventDraft]:
        window = history.window
        if window is None:
            history.window = _Window(reading.ts, energy, not powered)
            return []
        window.unpowered |= not powered
        elapsed = (reading.ts - window.start).total_seconds()
        if elapsed < self.settings.window_s:
            return []
        history.window = _Window(reading.ts, energy, not powered)
        if window.unpowered:
            return []  # an outage explains a low window; it does not join the average either
        used = (energy - window.start_kwh) * self.settings.window_s / elapsed
        if used < 0:
            return []  # a falling register is energy_decrease_under_seal's case
        drafts = self._judge_window(reading, history, used, volts)
        history.trailing.append(used)
        while len(history.trailing) > self.settings.trailing_windows:
            history.trailing.popleft()
        return drafts

    def _judge_window(
        self, reading: MeterReading, history: _History, used: float, volts: float | None
    ) -> list[EventDraft]:
        settings = self.settings
        if not settings.energy_drop_under_seal or len(history.trailing) < settings.min_windows:
            return []
        mean = sum(history.trailing) / len(history.trailing)
        if mean < settings.min_trailing_kwh or used >= settings.energy_drop_ratio * mean:
            return []
        evidence: dict[str, JSONValue] = {
            "window_s": settings.window_s,
            "window_kwh": round(used, 3),
            "trailing_mean_kwh": round(mean, 3),
            "trailing_windows": len(history.trailing),
            "ratio": settings.energy_drop_ratio,
            "voltage": volts,
        }
        return self._fire(
            TheftRule.ENERGY_DROP_UNDER_SEAL, reading.meter, reading.seal, reading.ts, evidence
        )

    def _fire(
        self, rule: TheftRule, meter: str, seal: str, ts: datetime, evidence: dict[str, JSONValue]
    ) -> list[EventDraft]:
        state = self._armed_state(seal, ts)
        if state is None or self._debounced(meter, rule, ts):
            return []
        self._fired[(meter, rule)] = ts
        _log.warning("theft suspected on meter %s (seal %s): %s", meter, seal, rule.value)
        data: dict[str, JSONValue] = {
            "meter": meter,
            "seal": seal,
            "seal_state": state,
            "rule": rule.value,
            "evidence": evidence,
        }
        return [EventDraft(EventType.THEFT_SUSPECTED, meter, data, Priority.ALARM, ts)]

    def _armed_state(self, seal: str, ts: datetime) -> str | None:
        """The seal's state if the meter is armed, else None."""
        if not seal:
            return None
        state = self.seals.seal_state(seal)
        if state is None or state not in self.settings.armed_states:
            return None
        return None if self.seals.unseal_authorized(seal, ts) else state

    def _debounced(self, meter: str, rule: TheftRule, ts: datetime) -> bool:
        last = self._fired.get((meter, rule))
        return last is not None and (ts - last).total_seconds() < self.settings.debounce

    def _meter(self, meter: str) -> _History:
        return self._history.setdefault(meter, _History())
