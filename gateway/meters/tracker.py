"""Per-meter bookkeeping of the meter service: report-on-change, edges, failures, success rate.

Pure: no I/O, no clock. The service feeds it each poll's outcome and acts on the answer.

- A reading is reported when it is the first since start or since a failure, when any value
  moved by more than its kind's deadband since the last *reported* reading (status values on
  any change), or when `heartbeat_polls` polls have passed without a report.
- A meter event is raised once per condition per poll: on the rising edge of a status condition
  (a condition already present at the first poll counts, marked `first_poll`), or when an event
  counter went up (which also catches an opening that closed between two polls). A counter
  seen for the first time, or one that went down (cleared), only sets the baseline.
- A failure is reported once, on the transition from success (or start) into failure.

`restore` starts a tracker from the conditions and counters a previous run saw (the service
keeps them in gateway.meters.memory), so a step across a restart is an event and a condition
still present is not a new edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.meters.config import Deadbands
from gateway.meters.model import Measurement, MeterEventKind, Sample
from gateway.meters.profiles import ValueKind

__all__ = ["EdgeEvent", "MeterTracker", "PollOutcome"]


@dataclass(frozen=True, slots=True)
class EdgeEvent:
    """One event a poll raised: the kind, what showed it, and how many occurrences."""

    kind: MeterEventKind
    source: str
    count: int
    first_poll: bool = False


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """What the service should emit after a successful poll."""

    report: bool
    events: tuple[EdgeEvent, ...]
    recovered_after: int = 0


@dataclass(slots=True)
class MeterTracker:
    """The running state of one meter."""

    deadbands: Deadbands
    heartbeat_polls: int
    polls: int = 0
    ok: int = 0
    failed_polls: int = 0
    consecutive_failures: int = 0
    last_reason: str = ""
    reported: dict[str, int | float] | None = None
    reported_missing: Mapping[str, str] = field(default_factory=dict)
    polls_since_report: int = 0
    active: frozenset[MeterEventKind] | None = None
    counters: dict[MeterEventKind, int] = field(default_factory=dict)

    @property
    def failing(self) -> bool:
        """True after a failed poll until the next good one."""
        return self.consecutive_failures > 0

    @property
    def success_rate(self) -> float | None:
        """Successful polls / polls, None before the first poll."""
        return self.ok / self.polls if self.polls else None

    def restore(
        self, active: frozenset[MeterEventKind], counters: dict[MeterEventKind, int]
    ) -> None:
        """Start from what a previous run last saw: edges and steps are then against that."""
        self.active = active
        self.counters = dict(counters)

    def on_failure(self, reason: str) -> bool:
        """Count a failed poll; True if this is the transition into failure."""
        self.polls += 1
        self.failed_polls += 1
        self.consecutive_failures += 1
        self.last_reason = reason
        return self.consecutive_failures == 1

    def on_success(self, sample: Sample) -> PollOutcome:
        """Count a good poll and decide what to report."""
        self.polls += 1
        self.ok += 1
        recovered_after, self.consecutive_failures = self.consecutive_failures, 0
        report = recovered_after > 0 or self._worth_reporting(sample.values)
        report = report or dict(sample.missing) != dict(self.reported_missing)
        if report:
            self.reported = {m.name: m.value for m in sample.values}
            self.reported_missing = sample.missing
            self.polls_since_report = 0
        else:
            self.polls_since_report += 1
        events = self._edges(sample.active, sample.counters)
        return PollOutcome(report, events, recovered_after)

    def _worth_reporting(self, values: tuple[Measurement, ...]) -> bool:
        if self.reported is None or self.polls_since_report + 1 >= self.heartbeat_polls:
            return True
        return any(self._moved(item) for item in values)

    def _moved(self, item: Measurement) -> bool:
        assert self.reported is not None
        last = self.reported.get(item.name)
        if last is None:
            return True
        if item.kind is ValueKind.STATUS:
            return item.value != last
        return abs(item.value - last) > _deadband(self.deadbands, item)

    def _edges(
        self, active: frozenset[MeterEventKind], counters: Mapping[MeterEventKind, int]
    ) -> tuple[EdgeEvent, ...]:
        first = self.active is None
        rising = active - (self.active or frozenset())
        self.active = active
        steps = self._counter_steps(counters)
        events = []
        for kind in MeterEventKind:  # a stable order
            if kind in rising or kind in steps:
                events.append(_edge(kind, kind in rising, steps.get(kind, 0), first))
        return tuple(events)

    def _counter_steps(self, counters: Mapping[MeterEventKind, int]) -> dict[MeterEventKind, int]:
        steps: dict[MeterEventKind, int] = {}
        for kind, value in counters.items():
            last = self.counters.get(kind)
            if last is not None and value > last:
                steps[kind] = value - last
            self.counters[kind] = value
        return steps


def _edge(kind: MeterEventKind, rose: bool, step: int, first_poll: bool) -> EdgeEvent:
    source = "status+counter" if rose and step else "status" if rose else "counter"
    return EdgeEvent(kind, source, max(step, 1), first_poll and rose)


_KIND_FIELDS = {
    ValueKind.ENERGY: "energy",
    ValueKind.VOLTAGE: "voltage",
    ValueKind.CURRENT: "current",
    ValueKind.POWER: "power",
    ValueKind.POWER_FACTOR: "power_factor",
    ValueKind.FREQUENCY: "frequency",
}
_UNIT_FACTORS = {"kW": 0.001, "Wh": 1000.0, "kV": 0.001, "mA": 1000.0}
"""Deadbands are in W, kWh, V, A: a value in another unit gets the deadband converted."""


def _deadband(deadbands: Deadbands, item: Measurement) -> float:
    band: float = getattr(deadbands, _KIND_FIELDS[item.kind])
    return band * _UNIT_FACTORS.get(item.unit, 1.0)
