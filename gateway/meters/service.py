"""The meter service: polls every meter on its period and turns polls into events.

Events (docs/meters.md):
- meter.reading (telemetry): report-on-change with deadbands and a heartbeat;
- meter.event (audit): a status condition's rising edge or an event counter's step;
- meter.read_failed (state): once per transition into failure, with a reason;
- meter.read_recovered (state): the first good poll after a failure;
- theft.suspected (alarm): from gateway.meters.theft, when a TheftSection is given;
- district.line_loss (state), district.line_loss_alarm (alarm) and theft.suspected with rule
  line_loss_jump: from gateway.meters.lineloss, for districts with a district meter.

Each bus has one owner (ModbusBus or Dlt645Bus), which serializes the requests of every meter
on it; DL/T 645 buses also get a broadcast time sync every `time_sync_s`, but only while the
clock is trusted: `clock_synced` (the kernel's flag, from the daemon) does not say False, and
the time is not before 2025. Skipped syncs are counted (`time_syncs_skipped`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.drivers.bus import Bus, raise_if_cancelling
from gateway.drivers.dlt645.bus import Dlt645Bus
from gateway.errors import DuplicateEventError, GatewayError, ProfileError
from gateway.locks.view import SealStateView
from gateway.meters.config import MeterConfig, MetersSection, TheftSection
from gateway.meters.lineloss import District, LineLossMonitor
from gateway.meters.memory import MEMORY_FILE, MeterMemory
from gateway.meters.model import MeterEvent, MeterReading, Sample, primary_side
from gateway.meters.profiles import MeterProfile, load_profiles
from gateway.meters.readers import MeterReader, failure_reason, make_reader, open_buses
from gateway.meters.theft import TheftCorrelator
from gateway.meters.tracker import MeterTracker, PollOutcome
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.protocol.events import (
    Emit,
    Event,
    EventDraft,
    EventType,
    Priority,
    derived_event_id,
)

if TYPE_CHECKING:
    from gateway.drivers.modbus.bus import ModbusBus

__all__ = ["MeterService", "SealStateView", "SuccessRates"]

_log = logging.getLogger(__name__)

_PLAUSIBLE_FROM = datetime(2025, 1, 1, tzinfo=UTC)
"""Earlier than this release could have run: a clock reading it is wrong, whatever NTP says."""


@dataclass(frozen=True, slots=True)
class SuccessRates:
    """Read success (successful polls / polls) per meter and per district; None: no polls."""

    meters: Mapping[str, float | None]
    districts: Mapping[str, float | None]

    def to_json(self) -> dict[str, JSONValue]:
        """A JSON-ready copy, rates rounded to four decimals."""
        return {"meters": _rounded(self.meters), "districts": _rounded(self.districts)}


class MeterService:
    """Polls the configured meters and emits what they say."""

    def __init__(
        self,
        settings: MetersSection,
        emit: Emit,
        clock: Clock,
        seals: SealStateView,
        *,
        district: str = "district-1",
        theft: TheftSection | None = None,
        profiles: Mapping[str, MeterProfile] | None = None,
        state_dir: Path | None = None,
        clock_synced: Callable[[], bool | None] | None = None,
    ) -> None:
        self.settings = settings
        self._emit = emit
        self._clock = clock
        self.district = district
        self.theft = TheftCorrelator(theft, seals) if theft is not None else None
        self.profiles = dict(profiles) if profiles is not None else self._load_profiles()
        self.buses: dict[str, ModbusBus | Dlt645Bus] = open_buses(settings.buses)
        self.meters = {meter.id: meter for meter in settings.meters}
        self.readers = {meter.id: self._reader(i, meter) for i, meter in enumerate(settings.meters)}
        self.trackers = {
            meter.id: MeterTracker(meter.deadbands, settings.heartbeat_polls)
            for meter in settings.meters
        }
        self.line_loss = self._line_loss_monitor(theft, seals)
        self.polls_done = 0
        self.time_syncs = 0
        self.time_syncs_skipped = 0
        self._clock_synced = clock_synced
        self._polled = asyncio.Condition()
        self.memory = MeterMemory.load(state_dir / MEMORY_FILE if state_dir else None)
        for meter_id, tracker in self.trackers.items():
            remembered = self.memory.state(meter_id)
            if remembered is not None:
                tracker.restore(*remembered)

    async def run(self) -> None:
        """Poll every meter and sync DL/T 645 clocks until cancelled; closes the buses."""
        for draft in self.memory.pending():  # found before a restart, maybe not committed
            self._submit_durable(draft)
        try:
            async with asyncio.TaskGroup() as group:
                for meter in self.settings.meters:
                    group.create_task(self._poll_loop(meter), name=f"meter:{meter.id}")
                for name, bus in self.buses.items():
                    if isinstance(bus, Dlt645Bus) and self.settings.time_sync_s > 0:
                        group.create_task(self._time_sync_loop(bus), name=f"timesync:{name}")
        finally:
            await self.close()

    async def close(self) -> None:
        """Close every bus."""
        for bus in self.buses.values():
            await bus.close()

    async def poll_once(self, meter_id: str) -> bool:
        """Poll one meter now and emit what follows; True if the read succeeded."""
        meter = self.meters[meter_id]
        ts = self._clock.now()
        try:
            sample = await self.readers[meter_id].read()
        except (GatewayError, ValueError) as exc:
            self._on_failure(meter, exc, ts)
            ok = False
        else:
            self._on_success(meter, sample, ts)
            ok = True
        await self._count_poll()
        return ok

    async def sync_time(self) -> int:
        """Broadcast the time on every DL/T 645 bus now; returns how many syncs were sent."""
        sent = 0
        for bus in self.buses.values():
            if isinstance(bus, Dlt645Bus) and await self._sync(bus):
                sent += 1
        return sent

    async def wait_for_polls(self, count: int) -> None:
        """Wait until `count` polls (of any meter) have finished since start."""
        async with self._polled:
            await self._polled.wait_for(lambda: self.polls_done >= count)

    def read_success_rate(self) -> SuccessRates:
        """Successful polls / polls, per meter and per district."""
        meters = {mid: tracker.success_rate for mid, tracker in self.trackers.items()}
        totals: dict[str, list[int]] = {}
        for mid, tracker in self.trackers.items():
            pair = totals.setdefault(self._district(self.meters[mid]), [0, 0])
            pair[0] += tracker.ok
            pair[1] += tracker.polls
        districts = {name: (ok / polls if polls else None) for name, (ok, polls) in totals.items()}
        return SuccessRates(meters, districts)

    def snapshot(self) -> dict[str, JSONValue]:
        """Health of the meter service: per-meter state, per-district rates, bus counters."""
        meters: dict[str, JSONValue] = {mid: self._meter_health(mid) for mid in self.trackers}
        rates = self.read_success_rate().to_json()
        return {
            "meters": meters,
            "districts": rates["districts"],
            "buses": {name: _bus_health(bus) for name, bus in self.buses.items()},
            "time_syncs": self.time_syncs,
            "time_syncs_skipped": self.time_syncs_skipped,
        }

    # --- loops ----------------------------------------------------------------------------

    async def _poll_loop(self, meter: MeterConfig) -> None:
        due = self._clock.monotonic()
        while True:
            await self.poll_once(meter.id)
            raise_if_cancelling()  # a stop a library swallowed during the poll ends the loop
            due += meter.poll_s
            now = self._clock.monotonic()
            due = max(due, now)  # polls overran the period: skip the missed ones
            await self._clock.sleep(due - now)

    async def _time_sync_loop(self, bus: Dlt645Bus) -> None:
        while True:
            await self._sync(bus)
            await self._clock.sleep(self.settings.time_sync_s)

    async def _sync(self, bus: Dlt645Bus) -> bool:
        if not self._clock_trusted():
            self.time_syncs_skipped += 1
            log = _log.warning if self.time_syncs_skipped == 1 else _log.debug
            log("%s: time sync skipped: the system clock is not synchronised", bus.name)
            return False
        try:
            await bus.broadcast_time(self._clock.now())
        except GatewayError as exc:
            _log.warning("%s: time sync failed: %s", bus.name, exc)
            return False
        self.time_syncs += 1
        return True

    def _clock_trusted(self) -> bool:
        """Sync meters only from a clock the kernel calls synchronised, and never to the past."""
        if self._clock.now() < _PLAUSIBLE_FROM:
            return False
        return self._clock_synced is None or self._clock_synced() is not False

    async def _count_poll(self) -> None:
        async with self._polled:
            self.polls_done += 1
            self._polled.notify_all()

    # --- outcomes -------------------------------------------------------------------------

    def _on_success(self, meter: MeterConfig, sample: Sample, ts: datetime) -> None:
        sample = primary_side(sample, meter.ct_ratio, meter.vt_ratio)
        tracker = self.trackers[meter.id]
        outcome = tracker.on_success(sample)
        protocol = self.readers[meter.id].protocol
        reading = MeterReading(meter.id, ts, protocol, sample.values, meter.seal, sample.missing)
        if outcome.recovered_after:
            _log.info(
                "meter %s: reading again after %d failed polls", meter.id, outcome.recovered_after
            )
            data: dict[str, JSONValue] = {
                "meter": meter.id,
                "failed_polls": outcome.recovered_after,
            }
            self._send(EventType.METER_READ_RECOVERED, meter, data, Priority.STATE, ts)
        durable: list[EventDraft] = []
        for event in self._events(meter, outcome, ts):
            if self.line_loss is not None:  # the evidence a line-loss suspect is ranked by
                self.line_loss.observe_event(event)
            draft = _event_draft(event, tracker.counters.get(event.event))
            durable += [draft, *self._theft_drafts(event, draft.id)]
        self.memory.remember(meter.id, tracker.active or frozenset(), tracker.counters, durable)
        for draft in durable:
            self._submit_durable(draft)
        if outcome.report:
            self._send(EventType.METER_READING, meter, reading.to_data(), Priority.TELEMETRY, ts)
        self._correlate(reading)
        if self.line_loss is not None:
            energy = reading.energy_kwh()
            for draft in self.line_loss.observe_reading(meter.id, ts, energy, sample.frozen):
                self._submit(draft)

    def _on_failure(self, meter: MeterConfig, exc: Exception, ts: datetime) -> None:
        tracker = self.trackers[meter.id]
        reason = failure_reason(exc)
        if not tracker.on_failure(reason):
            _log.debug("meter %s: still failing (%s)", meter.id, reason)
            return
        _log.warning("meter %s: read failed (%s): %s", meter.id, reason, exc)
        data: dict[str, JSONValue] = {
            "meter": meter.id,
            "bus": meter.bus,
            "reason": reason,
            "detail": str(exc)[:200],
            "failed_polls": tracker.failed_polls,
        }
        self._send(EventType.METER_READ_FAILED, meter, data, Priority.STATE, ts)

    def _events(self, meter: MeterConfig, outcome: PollOutcome, ts: datetime) -> list[MeterEvent]:
        return [
            MeterEvent(
                meter.id, ts, edge.kind, edge.source, edge.count, meter.seal, edge.first_poll
            )
            for edge in outcome.events
        ]

    def _theft_drafts(self, event: MeterEvent, event_id: str) -> list[EventDraft]:
        """theft.suspected for a meter event, with ids derived from the event's."""
        if self.theft is None:
            return []
        return [
            replace(draft, id=derived_event_id(draft.ts, f"{event_id}|{i}"))
            for i, draft in enumerate(self.theft.observe(event))
        ]

    def _submit_durable(self, draft: EventDraft) -> None:
        """Submit an event kept pending in the memory; settle it once it is in the buffer."""

        def settled(future: asyncio.Future[Event]) -> None:
            error = None if future.cancelled() else future.exception()
            if future.cancelled() or (
                error is not None and not isinstance(error, DuplicateEventError)
            ):
                _log.warning(
                    "%s %s not stored yet (%s): kept for the next start",
                    draft.type,
                    draft.id,
                    error,
                )
                return
            self.memory.settle(draft.id)

        self._emit(draft).add_done_callback(settled)

    def _correlate(self, item: MeterReading | MeterEvent) -> None:
        if self.line_loss is not None and isinstance(item, MeterEvent):
            self.line_loss.observe_event(item)
        if self.theft is None:
            return
        for draft in self.theft.observe(item):
            self._submit(draft)

    def _send(
        self,
        type_: EventType,
        meter: MeterConfig,
        data: dict[str, JSONValue],
        priority: Priority,
        ts: datetime,
    ) -> None:
        self._submit(EventDraft(type_, meter.id, data, priority, ts))

    def _submit(self, draft: EventDraft) -> None:
        self._emit(draft).add_done_callback(_log_emit_failure)

    # --- construction and health ----------------------------------------------------------

    def _load_profiles(self) -> dict[str, MeterProfile]:
        if not self.settings.meters:
            return {}
        return load_profiles(self.settings.profiles_dir)

    def _reader(self, index: int, meter: MeterConfig) -> MeterReader:
        profile = self.profiles.get(meter.profile)
        if profile is None:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ProfileError(
                str(self.settings.profiles_dir),
                f"meters.meters[{index}].profile",
                f"no profile {meter.profile!r} (known: {known})",
            )
        key = f"meters.meters[{index}].profile"
        return make_reader(meter, profile, self.buses[meter.bus], key=key)

    def _line_loss_monitor(
        self, theft: TheftSection | None, seals: SealStateView
    ) -> LineLossMonitor | None:
        """Line loss for every district with a district meter, when the theft rules run."""
        if theft is None or not theft.enabled or not theft.line_loss:
            return None
        districts = []
        for supply in (m for m in self.settings.meters if m.district_meter):
            name = self._district(supply)
            customers = {
                m.id: m.seal
                for m in self.settings.meters
                if not m.district_meter and self._district(m) == name
            }
            districts.append(District(name, supply.id, customers))
        return LineLossMonitor(theft, districts, seals) if districts else None

    def _district(self, meter: MeterConfig) -> str:
        return meter.district or self.district

    def _meter_health(self, meter_id: str) -> dict[str, JSONValue]:
        tracker = self.trackers[meter_id]
        rate = tracker.success_rate
        return {
            "polls": tracker.polls,
            "ok": tracker.ok,
            "failed_polls": tracker.failed_polls,
            "failing": tracker.failing,
            "reason": tracker.last_reason if tracker.failing else None,
            "success_rate": None if rate is None else round(rate, 4),
        }


def _event_draft(event: MeterEvent, counter: int | None) -> EventDraft:
    """The meter.event draft, its id derived from the meter, the kind and the counter reached."""
    key = f"meter.event|{event.meter}|{event.event.value}|{event.source}|{counter}"
    ts = event.ts
    draft_id = derived_event_id(ts, key)
    return EventDraft(
        EventType.METER_EVENT, event.meter, event.to_data(), Priority.AUDIT, ts, id=draft_id
    )


def _bus_health(bus: Bus) -> dict[str, JSONValue]:
    stats = bus.stats
    return {
        "requests": stats.requests,
        "ok": stats.ok,
        "timeouts": stats.timeouts,
        "garbled": stats.garbled,
        "unavailable": stats.unavailable,
    }


def _rounded(rates: Mapping[str, float | None]) -> dict[str, JSONValue]:
    return {key: None if rate is None else round(rate, 4) for key, rate in rates.items()}


def _log_emit_failure(future: asyncio.Future[Event]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.debug("meter event not stored: %s", future.exception())
