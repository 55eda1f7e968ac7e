"""District line loss (台区线损): what entered a district against what its customers bought.

Pure: no I/O and no clock; time is the readings' `ts`. See docs/theft.md for the method, its
limits and every threshold (the `line_loss_*` keys of [theft]).

- Same instant. Every meter's energy is taken at the same boundaries: meter-local midnight
  (UTC+8) for daily intervals, multiples of `line_loss_interval_s` from it otherwise. A meter's
  DL/T 645 daily freeze gives its value there exactly, when the freeze time is within
  `line_loss_max_skew_s` of the boundary; otherwise the two readings around the boundary are
  interpolated linearly, if they are at most `line_loss_max_interp_s` apart.
- An interval closes when every meter has a value at both ends, or `line_loss_settle_s` after
  its end. A missing meter makes it *incomplete*: reported, never compared. "After" is on the
  later of the gateway's clock and the district's own timeline (the latest boundary any of its
  meters froze at), so meters whose clocks run ahead of the gateway's (a compressed simulated
  day, a gateway clock behind) cannot hold a day open for ever.
- supplied = the district meter's energy, sold = the customers' sum, loss = supplied - sold,
  rate = loss / supplied. A negative loss is a metering or mapping fault.
- Alarms: the rate leaves [min_rate, max_rate], or it rose `line_loss_jump` above the
  district's baseline (the median rate of its last `line_loss_baseline_intervals` complete,
  sound intervals, once there are `line_loss_min_baseline`).
- theft.suspected, rule line_loss_jump, on a jump while the supply did not drop: customers
  whose consumption fell at least `line_loss_min_drop_ratio` below their own baseline, ranked
  by how much of the excess loss their drop explains, plus the box's seal (tampered, or
  unsealed without a ticket) and the meter's events in the interval.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.locks.view import SealStateView
from gateway.meters.config import TheftSection
from gateway.meters.model import MeterEvent, MeterEventKind
from gateway.protocol.canonical import JSONValue
from gateway.protocol.events import EventDraft, EventType, Priority

__all__ = ["District", "LineLossMonitor", "boundary_at_or_before"]

_log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_METER_OFFSET_S = 8 * 3600
"""Boundaries are meter-local (UTC+8): a daily interval runs midnight to midnight, meter time."""
_SUSPECT_EVENTS = frozenset(
    {
        MeterEventKind.COVER_OPENED,
        MeterEventKind.TERMINAL_COVER_OPENED,
        MeterEventKind.MAGNETIC_INTERFERENCE,
        MeterEventKind.REVERSE_ENERGY,
    }
)
_TAMPER_WEIGHT = 0.5
_UNTICKETED_WEIGHT = 0.3
_EVENT_WEIGHT = 0.2
_MAX_SUSPECTS = 5


@dataclass(frozen=True, slots=True)
class District:
    """Who is in a district: its own meter and the customers' meters with their box seals."""

    name: str
    supply: str
    customers: Mapping[str, str]
    """Customer meter id to its box seal id ("" if none)."""


@dataclass(slots=True)
class _Meter:
    """Values at boundaries and the last reading of one meter."""

    points: dict[datetime, tuple[float, str]] = field(default_factory=dict)
    last: tuple[datetime, float] | None = None
    events: list[tuple[datetime, MeterEventKind]] = field(default_factory=list)
    history: deque[float] = field(default_factory=deque)


@dataclass(slots=True)
class _State:
    """The running state of one district."""

    district: District
    meters: dict[str, _Meter]
    next_end: datetime | None = None
    frozen_until: datetime | None = None
    """The latest boundary any of the district's meters gave a frozen value at."""
    rates: deque[float] = field(default_factory=deque)
    supplies: deque[float] = field(default_factory=deque)


def boundary_at_or_before(ts: datetime, interval_s: float) -> datetime:
    """The last interval boundary at or before `ts` (meter-local midnight for a day)."""
    seconds = (ts - _EPOCH).total_seconds() + _METER_OFFSET_S
    return _EPOCH + timedelta(seconds=seconds - seconds % interval_s - _METER_OFFSET_S)


class LineLossMonitor:
    """Per-interval line loss of every configured district, with its alarms."""

    def __init__(
        self, settings: TheftSection, districts: Sequence[District], seals: SealStateView
    ) -> None:
        self.settings = settings
        self.seals = seals
        self._interval = timedelta(seconds=settings.line_loss_interval_s)
        self._states = {
            d.name: _State(d, {m: _Meter() for m in (d.supply, *d.customers)}) for d in districts
        }
        self._district_of = {m: s for s in self._states.values() for m in s.meters}

    def observe_reading(
        self, meter: str, ts: datetime, kwh: float | None, frozen: tuple[datetime, float] | None
    ) -> list[EventDraft]:
        """Record one reading (and its daily freeze); the drafts of intervals it closes."""
        state = self._district_of.get(meter)
        if state is None or kwh is None:
            return []
        boundary = self._record(state.meters[meter], ts, kwh, frozen)
        if boundary is not None and (state.frozen_until is None or boundary > state.frozen_until):
            state.frozen_until = boundary
        if meter == state.district.supply and state.next_end is None:
            first = min(state.meters[meter].points, default=None)
            state.next_end = None if first is None else first + self._interval
        now = ts if state.frozen_until is None else max(ts, state.frozen_until)
        return self._close_due(state, now)

    def observe_event(self, event: MeterEvent) -> None:
        """Remember a meter event for the suspects' evidence."""
        state = self._district_of.get(event.meter)
        if state is not None and event.event in _SUSPECT_EVENTS:
            state.meters[event.meter].events.append((event.ts, event.event))

    # --- same-instant values ----------------------------------------------------------------

    def _record(
        self, meter: _Meter, ts: datetime, kwh: float, frozen: tuple[datetime, float] | None
    ) -> datetime | None:
        """Record the reading; the boundary its freeze gave a value at, if it did."""
        interval_s = self._interval.total_seconds()
        boundary_frozen = None
        if frozen is not None:
            when, value = frozen
            nearest = boundary_at_or_before(when + timedelta(seconds=interval_s / 2), interval_s)
            if abs((when - nearest).total_seconds()) <= self.settings.line_loss_max_skew_s:
                meter.points[nearest] = (value, "freeze")
                boundary_frozen = nearest
        if meter.last is not None:
            t0, e0 = meter.last
            if (ts - t0).total_seconds() <= self.settings.line_loss_max_interp_s:
                boundary = boundary_at_or_before(ts, interval_s)
                while boundary > t0:
                    share = (boundary - t0) / (ts - t0)
                    meter.points.setdefault(boundary, (e0 + (kwh - e0) * share, "interpolated"))
                    boundary -= self._interval
        meter.last = (ts, kwh)
        return boundary_frozen

    # --- closing intervals ------------------------------------------------------------------

    def _close_due(self, state: _State, now: datetime) -> list[EventDraft]:
        drafts: list[EventDraft] = []
        settle = timedelta(seconds=self.settings.line_loss_settle_s)
        while state.next_end is not None:
            end = state.next_end
            start = end - self._interval
            ready = all(start in m.points and end in m.points for m in state.meters.values())
            if not ready and now < end + settle:
                break
            drafts += self._close(state, start, end, now)
            state.next_end = end + self._interval
            for meter in state.meters.values():
                meter.points = {t: v for t, v in meter.points.items() if t >= end}
                meter.events = [(t, e) for t, e in meter.events if t >= end]
        return drafts

    def _close(
        self, state: _State, start: datetime, end: datetime, now: datetime
    ) -> list[EventDraft]:
        district = state.district
        used = {
            m: _delta(state.meters[m], start, end) for m in (district.supply, *district.customers)
        }
        supplied = used.pop(district.supply)
        missing = sorted(m for m, value in used.items() if value is None)
        sold = sum(value for value in used.values() if value is not None)
        data: dict[str, JSONValue] = {
            "district": district.name,
            "interval_start": _iso(start),
            "interval_end": _iso(end),
            "supplied_kwh": _round(supplied),
            "sold_kwh": round(sold, 3),
            "complete": supplied is not None and not missing,
            "missing": list(missing) if supplied is not None else [district.supply, *missing],
            "methods": _methods(state, end),
        }
        if supplied is None or missing:
            data |= {"loss_kwh": None, "rate": None, "status": "incomplete"}
            return [self._draft(EventType.DISTRICT_LINE_LOSS, district, data, Priority.STATE, now)]
        return self._complete(
            state, data=data, supplied=supplied, sold=sold, used=used, end=end, now=now
        )

    def _complete(
        self,
        state: _State,
        *,
        data: dict[str, JSONValue],
        supplied: float,
        sold: float,
        used: Mapping[str, float | None],
        end: datetime,
        now: datetime,
    ) -> list[EventDraft]:
        settings = self.settings
        loss = supplied - sold
        rate = loss / supplied if supplied > 0 else None
        baseline = self._baseline(state)
        status = _status(loss, rate, settings)
        data |= {
            "loss_kwh": round(loss, 3),
            "rate": None if rate is None else round(rate, 4),
            "baseline_rate": None if baseline is None else round(baseline, 4),
            "status": status,
            "qualified": status == "ok",
        }
        district = state.district
        drafts = [self._draft(EventType.DISTRICT_LINE_LOSS, district, data, Priority.STATE, now)]
        jump = (
            rate is not None and baseline is not None and rate - baseline >= settings.line_loss_jump
        )
        reasons = [
            r
            for r, on in (
                ("out_of_band", status == "out_of_band"),
                ("jump", jump),
                ("metering_fault", status == "metering_fault"),
            )
            if on
        ]
        if reasons:
            alarm = {
                **data,
                "reasons": list(reasons),
                "band": [settings.line_loss_min_rate, settings.line_loss_max_rate],
            }
            drafts.append(
                self._draft(
                    EventType.DISTRICT_LINE_LOSS_ALARM, district, alarm, Priority.ALARM, now
                )
            )
        if jump and rate is not None and baseline is not None:
            excess = (rate - baseline) * supplied
            drafts += self._suspects(
                state, used=used, supplied=supplied, excess_kwh=excess, data=data, end=end, now=now
            )
        if status != "metering_fault":
            _push(
                state.rates,
                rate if rate is not None else 0.0,
                settings.line_loss_baseline_intervals,
            )
            _push(state.supplies, supplied, settings.line_loss_baseline_intervals)
            for meter, value in used.items():
                if value is not None:
                    _push(state.meters[meter].history, value, settings.line_loss_baseline_intervals)
        return drafts

    def _baseline(self, state: _State) -> float | None:
        if len(state.rates) < self.settings.line_loss_min_baseline:
            return None
        return statistics.median(state.rates)

    # --- suspects -----------------------------------------------------------------------------

    def _suspects(
        self,
        state: _State,
        *,
        used: Mapping[str, float | None],
        supplied: float,
        excess_kwh: float,
        data: Mapping[str, JSONValue],
        end: datetime,
        now: datetime,
    ) -> list[EventDraft]:
        settings = self.settings
        usual_supply = statistics.mean(state.supplies) if state.supplies else supplied
        if supplied < (1 - settings.line_loss_supply_tolerance) * usual_supply:
            _log.info("%s: loss jumped but the supply fell too; no suspects", state.district.name)
            return []
        ranked = sorted(
            (
                s
                for s in (self._suspect(state, m, v, excess_kwh, end) for m, v in used.items())
                if s
            ),
            key=lambda s: (-float(s["score"]), str(s["meter"])),  # type: ignore[arg-type]
        )
        if not ranked:
            return []
        top = ranked[0]
        seal = str(top["seal"])
        if not seal:
            _log.warning("%s: top suspect %s has no box seal", state.district.name, top["meter"])
            return []
        evidence: dict[str, JSONValue] = {
            key: data[key]
            for key in ("district", "interval_start", "interval_end", "rate", "baseline_rate")
        }
        evidence |= {
            "excess_loss_kwh": round(excess_kwh, 3),
            "suspects": list(ranked[:_MAX_SUSPECTS]),
        }
        payload: dict[str, JSONValue] = {
            "meter": top["meter"],
            "seal": seal,
            "seal_state": top["seal_state"] or "sealed",
            "rule": "line_loss_jump",
            "evidence": evidence,
        }
        return [
            EventDraft(EventType.THEFT_SUSPECTED, str(top["meter"]), payload, Priority.ALARM, now)
        ]

    def _suspect(
        self, state: _State, meter: str, value: float | None, excess_kwh: float, end: datetime
    ) -> dict[str, JSONValue] | None:
        history = state.meters[meter].history
        if value is None or len(history) < self.settings.line_loss_min_baseline:
            return None
        usual = statistics.mean(history)
        drop = usual - value
        if usual <= 0 or drop / usual < self.settings.line_loss_min_drop_ratio:
            return None
        seal = state.district.customers.get(meter, "")
        seal_state = self.seals.seal_state(seal) if seal else None
        unticketed = seal_state == "unsealed" and not self.seals.unseal_authorized(seal, end)
        events = sorted({e.value for _, e in state.meters[meter].events})
        score = min(drop / excess_kwh, 1.0) if excess_kwh > 0 else 0.0
        score += _TAMPER_WEIGHT * (seal_state == "tampered") + _UNTICKETED_WEIGHT * unticketed
        score += _EVENT_WEIGHT * len(events)
        return {
            "meter": meter,
            "seal": seal,
            "seal_state": seal_state,
            "score": round(score, 3),
            "drop_kwh": round(drop, 3),
            "drop_ratio": round(drop / usual, 3),
            "unsealed_without_ticket": unticketed,
            "meter_events": list(events),
        }

    def _draft(
        self,
        type_: EventType,
        district: District,
        data: Mapping[str, JSONValue],
        priority: Priority,
        now: datetime,
    ) -> EventDraft:
        return EventDraft(type_, district.name, dict(data), priority, now)


def _delta(meter: _Meter, start: datetime, end: datetime) -> float | None:
    if start not in meter.points or end not in meter.points:
        return None
    return meter.points[end][0] - meter.points[start][0]


def _methods(state: _State, end: datetime) -> dict[str, JSONValue]:
    """How many meters gave a frozen value and how many an interpolated one, at the end."""
    counts = {"freeze": 0, "interpolated": 0}
    for meter in state.meters.values():
        point = meter.points.get(end)
        if point is not None:
            counts[point[1]] += 1
    return dict(counts)


def _status(loss: float, rate: float | None, settings: TheftSection) -> str:
    if loss < 0 and (rate is None or rate < settings.line_loss_min_rate):
        return "metering_fault"
    if rate is None or not settings.line_loss_min_rate <= rate <= settings.line_loss_max_rate:
        return "out_of_band"
    return "ok"


def _push(values: deque[float], value: float, keep: int) -> None:
    values.append(value)
    while len(values) > keep:
        values.popleft()


def _round(value: float | None) -> JSONValue:
    return None if value is None else round(value, 3)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")
