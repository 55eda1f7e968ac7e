"""What the gateway believes about each seal, changed only by verified input, and published.

`SealBeliefs` checks adverts (and state reads) against each lock's K_adv, keeps the seal records
(`state.SealStates`) and the reconciliation cursors, raises the advert-driven events
(seal.online, seal.offline, seal.tamper, seal.battery_low) and publishes the retained
`seals/{seal}/state`. It connects to nothing: when an advert says the log moved on or the seal
was tampered with, `observe_payload` tells its caller how urgently to reconcile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from gateway.errors import AuthError, ProtocolError, StorageError
from gateway.locks.scheduler import Urgency
from gateway.locks.state import LockSpec, LockStore, SealRecord, SealStates
from gateway.protocol.canonical import JSONValue, canonical_bytes
from gateway.protocol.clock import Clock
from gateway.protocol.events import Emit, Event, EventDraft, EventType, Priority
from gateway.protocol.seal_advert import (
    Advert,
    AdvertObservation,
    AdvertTracker,
    check_advert,
    decode_advert,
    short_id,
)
from gateway.protocol.seal_frames import LockState, LogEntry, WireLoop

__all__ = ["AdvertStats", "Heard", "PublishState", "SealBeliefs"]

_log = logging.getLogger(__name__)

STATE_REFRESH_S = 300.0  # republish an unchanged retained state at most this often

PublishState = Callable[[str, bytes], None]


@dataclass(slots=True)
class AdvertStats:
    """Advert counters for the health snapshot."""

    adverts: int = 0
    spoofed: int = 0
    malformed: int = 0


@dataclass(frozen=True, slots=True)
class Heard:
    """A verified advert or state payload: whose it was, and how soon its log wants fetching."""

    observation: AdvertObservation
    seal_id: str
    reconcile: Urgency | None


class SealBeliefs:
    """The seal records, their cursors and the retained state; the lock service's SealStateView."""

    def __init__(
        self,
        locks: Mapping[str, LockSpec],
        store: LockStore,
        emit: Emit,
        clock: Clock,
        publish: PublishState | None = None,
    ) -> None:
        self._locks = locks
        self._by_lock_id = {lock.lock_id: lock for lock in locks.values()}
        self._store = store
        self._emit = emit
        self._clock = clock
        self._publish = publish
        self.tracker = AdvertTracker({lock.lock_id: lock.k_adv for lock in locks.values()})
        self._unseeded: set[str] = set()
        self._by_short: dict[int, list[LockSpec]] = {}
        for lock in locks.values():
            self._by_short.setdefault(short_id(lock.lock_id), []).append(lock)
        self.states = SealStates(self._records())
        self._cursors = {s: store.load(lock.lock_id).cursor for s, lock in locks.items()}
        self.stats = AdvertStats()
        self.rejected: Counter[str] = Counter()

    # -- SealStateView --------------------------------------------------------------------------

    def seal_state(self, seal_id: str) -> str | None:
        """The seal's last verified state."""
        return self.states.seal_state(seal_id)

    def unseal_authorized(self, seal_id: str, at: datetime) -> bool:
        """An allowed unseal's window covers `at`."""
        return self.states.unseal_authorized(seal_id, at)

    # -- records ------------------------------------------------------------------------------

    def record(self, seal_id: str) -> SealRecord:
        """The state record of a configured seal."""
        record = self.states.get(seal_id)
        if record is None:
            raise KeyError(seal_id)
        return record

    def cursor(self, seal_id: str) -> int:
        """The highest log index reconciled into committed events."""
        return self._cursors[seal_id]

    def behind(self, seal_id: str) -> bool:
        """True when the lock's log head is past the reconciliation cursor."""
        return self.record(seal_id).log_head > self._cursors[seal_id]

    def set_unseal_window(self, lock: LockSpec, window: tuple[int, int] | None) -> None:
        """Open (or close, with None) the seal's authorized-unseal window, durably."""
        self.record(lock.seal_id).unseal_window = window
        self._store.set_unseal_window(lock.lock_id, window)

    # -- seeding the advert high-water mark (docs/protocol.md, section 9) --------------------

    def needs_seed(self, seal_id: str) -> bool:
        """True for a lock with no accepted advert and no seed yet: adverts wait for a probe."""
        return seal_id in self._unseeded

    def seed(self, lock: LockSpec, log_head: int) -> None:
        """Floor the first advert at a fresh, verified log head and the provisioning counter."""
        counter = lock.adv_counter_floor
        self._store.set_seed(lock.lock_id, counter, log_head)
        self.tracker.seed(lock.lock_id, counter=counter, log_head=log_head)
        self._unseeded.discard(lock.seal_id)
        _log.info("seal %s: advert floor seeded (log head %d, counter %d)", lock.seal_id,
                  log_head, counter)  # fmt: skip

    # -- verified input -------------------------------------------------------------------------

    def observe_payload(self, payload: bytes, *, source: str) -> Heard | None:
        """Verify an advert (or state) payload; count and drop spoofs and replays."""
        self.stats.adverts += 1
        try:
            waiting = self._awaiting_seed(payload)
            if waiting is not None:
                return waiting
            observation = self.tracker.observe(payload)
        except AuthError as exc:
            self._count_rejected(exc.code, source)
            if source == "state":
                raise
            return None
        except ProtocolError:
            self.stats.malformed += 1
            return None
        if observation is None:
            return None
        lock = self._by_lock_id[observation.lock_id]
        return Heard(observation, lock.seal_id, self._on_observation(lock, observation))

    def _awaiting_seed(self, payload: bytes) -> Heard | None:
        """A genuine advert of an unseeded lock: not believed yet, but its log wants a probe."""
        if not self._unseeded:
            return None
        advert = decode_advert(payload)
        for lock in self._by_short.get(advert.short_id, []):
            if lock.seal_id not in self._unseeded:
                continue
            check_advert(advert, lock.lock_id, lock.k_adv, None)
            _log.debug("seal %s: advert held back until the floor is seeded", lock.seal_id)
            observation = AdvertObservation(lock.lock_id, advert, fresh=False)
            return Heard(observation, lock.seal_id, Urgency.BACKGROUND)
        return None

    def apply_answer(self, seal_id: str, state: LockState, wire: WireLoop, flags: int) -> None:
        """A verified COMMAND_RESULT changed what we believe."""
        record = self.record(seal_id)
        record.state, record.wire, record.flags = state, wire, flags
        self.publish(record)

    def on_log_entry(self, seal_id: str) -> Callable[[LogEntry], None]:
        """What a reconciled entry changes: the wire loop it measured."""
        record = self.record(seal_id)

        def apply(entry: LogEntry) -> None:
            if entry.wire is not WireLoop.NOT_MEASURED or entry.state is LockState.UNSEALED:
                record.wire = entry.wire

        return apply

    def reconciled(self, seal_id: str, head: int, cursor: int) -> None:
        """A reconciliation reached `cursor`; the lock's log head is `head`."""
        self._cursors[seal_id] = max(self._cursors[seal_id], cursor)
        record = self.record(seal_id)
        record.log_head = max(record.log_head, head)
        self.publish(record)

    def check_offline(self, silent_s: float, stale_s: float) -> None:
        """Raise seal.offline for locks silent (or stuck on one advert) for too long."""
        for record in self.states.going_offline(self._clock.monotonic(), silent_s, stale_s):
            data: dict[str, JSONValue] = {"after_s": silent_s}
            _log.warning("seal %s is offline (silent %.0f s)", record.seal_id, silent_s)
            self._event(self._locks[record.seal_id], EventType.SEAL_OFFLINE, Priority.STATE, data)
            self.publish(record, force=True)

    # -- publishing -----------------------------------------------------------------------------

    def publish_all(self) -> None:
        """Publish every seal's retained state (at start-up)."""
        for record in self.states:
            self.publish(record, force=True)

    def publish(self, record: SealRecord, *, force: bool = False) -> None:
        """Publish the retained state if it changed (or is due for a refresh)."""
        if self._publish is None:
            return
        payload = self.states.payload(record)
        key = canonical_bytes({k: v for k, v in payload.items() if k != "last_seen"})
        now = self._clock.monotonic()
        if not force and key == record.published and now - record.published_at < STATE_REFRESH_S:
            return
        record.published, record.published_at = key, now
        self._publish(f"seals/{record.seal_id}/state", canonical_bytes(payload))

    # -- helpers --------------------------------------------------------------------------------

    def _records(self) -> list[SealRecord]:
        records = []
        for lock in self._locks.values():
            stored = self._store.load(lock.lock_id)
            record = SealRecord(lock.seal_id, lock.lock_id, unseal_window=stored.unseal_window)
            if stored.advert is None and stored.seed is not None:
                counter, log_head = stored.seed
                self.tracker.seed(lock.lock_id, counter=counter, log_head=log_head)
            elif stored.advert is None:
                self._unseeded.add(lock.seal_id)
            if stored.advert is not None:
                self.tracker.restore(lock.lock_id, stored.advert)
                record.state, record.flags = stored.advert.state, stored.advert.flags
                record.log_head = stored.advert.log_head
                record.wire = _advert_wire(stored.advert)
            records.append(record)
        return records

    def _count_rejected(self, code: str, source: str) -> None:
        self.stats.spoofed += 1
        self.rejected[code] += 1
        first = self.rejected[code] == 1
        (_log.warning if first else _log.debug)("%s rejected: %s", source, code)

    def _on_observation(self, lock: LockSpec, obs: AdvertObservation) -> Urgency | None:
        record = self.record(lock.seal_id)
        if self.states.heard(record, self._clock.monotonic(), self._clock.now(), fresh=obs.fresh):
            self._event(lock, EventType.SEAL_ONLINE, Priority.STATE, {"source": "advert"})
        urgency = None
        if obs.fresh:
            self._store.set_advert(lock.lock_id, obs.advert)
            urgency = self._apply_advert(lock, record, obs)
        if urgency is None and obs.advert.log_head > self._cursors[lock.seal_id]:
            urgency = Urgency.BACKGROUND
        self.publish(record)
        return urgency

    def _apply_advert(
        self, lock: LockSpec, record: SealRecord, obs: AdvertObservation
    ) -> Urgency | None:
        """Take a fresh advert's state and flags; an alarm reconcile when it newly says tamper."""
        advert = obs.advert
        was_tamper, was_low = record.tamper, record.battery_low
        record.state, record.flags = advert.state, advert.flags
        record.log_head = max(record.log_head, advert.log_head)
        wire = _advert_wire(advert)
        record.wire = record.wire if wire is None else wire
        data: dict[str, JSONValue] = {
            "source": "advert",
            "state": advert.state.name.lower(),
            "flags": advert.flags,
            "wire_cut": advert.wire_cut,
            "adv_counter": advert.counter,
            "log_head": advert.log_head,
        }
        urgency = None
        if (record.tamper or advert.wire_cut) and not was_tamper:
            self._event(lock, EventType.SEAL_TAMPER, Priority.ALARM, data)
            urgency = Urgency.ALARM
        if record.battery_low and not was_low:
            self._event(lock, EventType.SEAL_BATTERY_LOW, Priority.STATE, data)
        return urgency

    def _event(
        self, lock: LockSpec, kind: EventType, priority: Priority, data: Mapping[str, JSONValue]
    ) -> None:
        body: dict[str, JSONValue] = {"lock_id": lock.lock_id.hex(), **data}
        draft = EventDraft(kind, lock.seal_id, body, priority, self._clock.now())
        try:
            future = self._emit(draft)
        except StorageError as exc:
            _log.warning("seal %s: %s not stored: %s", lock.seal_id, kind, exc)
            return
        future.add_done_callback(_log_failure)


def _advert_wire(advert: Advert) -> WireLoop | None:
    """What a verified advert says of the wire loop: cut, or closed when sealed, else nothing."""
    if advert.wire_cut:
        return WireLoop.BROKEN
    return WireLoop.INTACT if advert.state is LockState.SEALED else None


def _log_failure(future: asyncio.Future[Event]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.warning("lock event not stored: %s", future.exception())
