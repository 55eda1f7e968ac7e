"""The lock service: scan, verify adverts, run seal operations, reconcile logs, publish state.

Layers below it: `lock_scheduler` (budget, serialized connects, priority, retries),
`lock_session` (fragments, request-response, verified answers over bleak), `lock_reconcile`
(log entries to events, exactly once) and `lock_state` (beliefs and `locks.db`). This module
wires them to the daemon: the event buffer, the ticket store, the policy and the uplink's
retained `seals/{seal}/state`. Design and event types: docs/locks.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from gateway.auth.policy import GatewayTrust, OperationRequest, RoleTable
from gateway.auth.ticket_store import TicketStore
from gateway.drivers.ble.adapters import BleTransport
from gateway.drivers.pacing import Backoff
from gateway.errors import AuthError, GatewayError, ProtocolError, StorageError
from gateway.locks.config import BleSection, read_key_file
from gateway.locks.operations import LockOperations, OperationResult
from gateway.locks.reconcile import PendingOutcome, Reconciler
from gateway.locks.scheduler import ConnectionScheduler, SchedulerSettings, Urgency
from gateway.locks.session import BleLockConnector, LockSession
from gateway.locks.state import LOCKS_DB_FILE, LockSpec, LockStore, SealRecord, SealStates
from gateway.protocol.canonical import JSONValue, canonical_bytes
from gateway.protocol.clock import Clock
from gateway.protocol.events import Event, EventDraft, Priority
from gateway.protocol.seal_advert import Advert, AdvertObservation, AdvertTracker
from gateway.protocol.seal_frames import LockState, LogEntry, WireLoop

__all__ = ["EventSink", "LockService", "OperationResult", "load_locks"]

_log = logging.getLogger(__name__)

STALE_AFTER_S = 2 * 600.0 + 60.0  # no advert counter increase for this long: stale (replay?)
STATE_REFRESH_S = 300.0  # republish an unchanged retained state at most this often
RECONCILE_BACKOFF = (5.0, 300.0)  # after a failed background reconcile


class EventSink(Protocol):
    """The part of EventBuffer the lock service uses."""

    def submit(self, draft: EventDraft) -> asyncio.Future[Event]:
        """Queue a draft; the future resolves at the durable commit."""
        ...

    @property
    def storage_full(self) -> bool:
        """True while audit and alarm events cannot be stored."""
        ...


@dataclass(slots=True)
class LockStats:
    """Counters for the health snapshot."""

    adverts: int = 0
    spoofed: int = 0
    malformed: int = 0
    reconciles_ok: int = 0
    reconciles_failed: int = 0


def load_locks(section: BleSection) -> tuple[LockSpec, ...]:
    """The configured locks with their K_adv and K_log read from the key files."""
    return tuple(
        LockSpec(
            seal_id=entry.seal_id,
            lock_id=entry.lock_id_bytes,
            address=entry.address,
            k_adv=read_key_file(entry.adv_key_file, f"ble.locks[{index}].adv_key_file"),
            k_log=read_key_file(entry.log_key_file, f"ble.locks[{index}].log_key_file"),
        )
        for index, entry in enumerate(section.locks)
    )


class LockService:
    """Seal locks over BLE: the daemon's `locks` component and its SealStateView."""

    def __init__(
        self,
        section: BleSection,
        *,
        gateway_id: str,
        transport: BleTransport,
        events: EventSink,
        tickets: TicketStore,
        trust: GatewayTrust,
        table: RoleTable,
        skew_s: int,
        clock: Clock,
        state_dir: Path,
        publish_state: Callable[[str, bytes], None] | None = None,
        locks: tuple[LockSpec, ...] | None = None,
    ) -> None:
        self.section = section
        self.gateway_id = gateway_id
        self._transport = transport
        self._events = events
        self.clock = clock
        self._clock = clock
        self._publish = publish_state
        self.locks = {lock.seal_id: lock for lock in (locks or load_locks(section))}
        self._by_lock_id = {lock.lock_id: lock for lock in self.locks.values()}
        self.store = LockStore.open(state_dir / LOCKS_DB_FILE)
        self.tracker = AdvertTracker({lock.lock_id: lock.k_adv for lock in self.locks.values()})
        self.states = SealStates(self._records())
        self._cursors = {s: self.store.load(lock.lock_id).cursor for s, lock in self.locks.items()}
        self._seen_address: dict[str, str] = {}
        connector = BleLockConnector(
            transport,
            self.locks,
            op_timeout_s=section.op_timeout_s,
            addresses=self._seen_address.get,
        )
        self.scheduler: ConnectionScheduler[LockSession] = ConnectionScheduler(
            connector,
            SchedulerSettings(
                max_connections=section.max_connections,
                connect_timeout_s=section.connect_timeout_s,
                retries=section.retries,
            ),
            clock,
        )
        self.reconciler = Reconciler(gateway_id, self.store, events.submit, clock)
        self.pending: dict[str, dict[bytes, PendingOutcome]] = {s: {} for s in self.locks}
        self.ops = LockOperations(self, tickets=tickets, trust=trust, table=table, skew_s=skew_s)
        self.stats = LockStats()
        self.rejected: Counter[str] = Counter()
        self._reconciling: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._cooldown: dict[str, tuple[float, Backoff]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- public API ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Scan until cancelled, watching for silent locks; reconciles run as they are needed."""
        for record in self.states:
            self._publish_state(record, force=True)
        watcher = asyncio.create_task(self._offline_loop(), name="sealgw-locks-offline")
        try:
            await self._scan()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await self._stop_reconciles()

    async def execute(self, request: OperationRequest) -> OperationResult:
        """Decide, audit, run and record one seal operation a handheld asked for."""
        return await self.ops.execute(request)

    def close(self) -> None:
        """Close locks.db (after run() returned)."""
        self.store.close()

    def seal_state(self, seal_id: str) -> str | None:
        """SealStateView: the seal's last verified state."""
        return self.states.seal_state(seal_id)

    def unseal_authorized(self, seal_id: str, at: datetime) -> bool:
        """SealStateView: an allowed unseal's window covers `at`."""
        return self.states.unseal_authorized(seal_id, at)

    def snapshot(self) -> dict[str, JSONValue]:
        """Health figures: locks seen, connected, offline; adverts rejected; operations."""
        records = list(self.states)
        sched = self.scheduler.stats
        return {
            "locks": len(records),
            "seen": sum(1 for r in records if r.last_seen is not None),
            "connected": len(self.scheduler.connected),
            "offline": sum(1 for r in records if r.online is False),
            "queued": self.scheduler.queued,
            "adverts": self.stats.adverts,
            "spoofed_adverts": self.stats.spoofed,
            "malformed_adverts": self.stats.malformed,
            "rejected": dict(self.rejected),
            "ops_ok": self.ops.stats.ok,
            "ops_failed": self.ops.stats.failed,
            "ops_denied": self.ops.stats.denied,
            "ops_unknown": self.ops.stats.unknown,
            "connects": sched.connects,
            "connect_failures": sched.connect_failures,
            "reconciled_entries": self.reconciler.entries,
            "reconciles_failed": self.stats.reconciles_failed,
        }

    def request_reconcile(self, seal_id: str, urgency: Urgency = Urgency.BACKGROUND) -> None:
        """Fetch the seal's new log entries soon (coalesced; cooled down after failures)."""
        if seal_id in self._reconciling:
            self._again.add(seal_id)
            return
        cooldown = self._cooldown.get(seal_id)
        if cooldown is not None and self._clock.monotonic() < cooldown[0]:
            return
        task = asyncio.create_task(self._reconcile(seal_id, urgency), name=f"reconcile-{seal_id}")
        self._reconciling[seal_id] = task

    # -- sessions -----------------------------------------------------------------------------

    async def session_common(self, lock: LockSpec, session: LockSession) -> None:
        """What every connection does: read the verified state, then reconcile the log."""
        self.observe_payload(await session.read_state(), source="state")
        await self.reconcile_on(lock, session)

    async def reconcile_on(self, lock: LockSpec, session: LockSession) -> None:
        """Reconcile over an open session and note the new cursor."""
        pending = self.pending[lock.seal_id]
        head = await self.reconciler.run(session, lock, pending, self._applied(lock))
        self._cursors[lock.seal_id] = max(self._cursors[lock.seal_id], head)
        record = self._record(lock)
        record.log_head = max(record.log_head, head)
        self._publish_state(record)

    def emit(self, draft: EventDraft) -> asyncio.Future[Event]:
        """Submit a draft to the buffer."""
        return self._events.submit(draft)

    @property
    def storage_ok(self) -> bool:
        """False while the buffer refuses audit events."""
        return not self._events.storage_full

    def record(self, seal_id: str) -> SealRecord:
        """The state record of a configured seal."""
        record = self.states.get(seal_id)
        if record is None:
            raise KeyError(seal_id)
        return record

    def apply_answer(self, seal_id: str, state: LockState, wire: WireLoop, flags: int) -> None:
        """A verified COMMAND_RESULT changed what we believe."""
        record = self.record(seal_id)
        record.state, record.wire, record.flags = state, wire, flags
        self._publish_state(record)

    # -- scanning and adverts -------------------------------------------------------------------

    async def _scan(self) -> None:
        scanner = self._transport.make_scanner(
            self._on_advert, scanning_mode=self.section.scan_mode
        )
        if not self.section.scan_interval_s:
            async with scanner:
                await asyncio.Event().wait()
        while True:
            async with scanner:
                await self._clock.sleep(self.section.scan_window_s)
            await self._clock.sleep(self.section.scan_interval_s - self.section.scan_window_s)

    def _on_advert(self, device: BLEDevice, data: AdvertisementData) -> None:
        payload = data.manufacturer_data.get(self.section.company_id)
        if payload is None:
            return
        observation = self.observe_payload(bytes(payload), source="advert")
        if observation is not None:
            lock = self._by_lock_id[observation.lock_id]
            self._seen_address[lock.seal_id] = device.address

    def observe_payload(self, payload: bytes, *, source: str) -> AdvertObservation | None:
        """Verify an advert (or state) payload; count and drop spoofs and replays."""
        self.stats.adverts += 1
        try:
            observation = self.tracker.observe(payload)
        except AuthError as exc:
            self._count_rejected(exc.code, source)
            if source == "state":
                raise
            return None
        except ProtocolError:
            self.stats.malformed += 1
            return None
        if observation is not None:
            self._on_observation(observation)
        return observation

    def _count_rejected(self, code: str, source: str) -> None:
        self.stats.spoofed += 1
        self.rejected[code] += 1
        first = self.rejected[code] == 1
        (_log.warning if first else _log.debug)("%s rejected: %s", source, code)

    def _on_observation(self, obs: AdvertObservation) -> None:
        lock = self._by_lock_id[obs.lock_id]
        record = self._record(lock)
        if self.states.heard(record, self._clock.monotonic(), self._clock.now(), fresh=obs.fresh):
            self._event(lock, "seal.online", Priority.STATE, {"source": "advert"})
        if obs.fresh:
            self.store.set_advert(lock.lock_id, obs.advert)
            self._apply_advert(lock, record, obs)
        if obs.advert.log_head > self._cursors[lock.seal_id]:
            self.request_reconcile(lock.seal_id)
        self._publish_state(record)

    def _apply_advert(self, lock: LockSpec, record: SealRecord, obs: AdvertObservation) -> None:
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
        if (record.tamper or advert.wire_cut) and not was_tamper:
            self._event(lock, "seal.tamper", Priority.ALARM, data)
            self.request_reconcile(lock.seal_id, Urgency.ALARM)
        if record.battery_low and not was_low:
            self._event(lock, "seal.battery_low", Priority.STATE, data)

    # -- background work ------------------------------------------------------------------------

    async def _reconcile(self, seal_id: str, urgency: Urgency) -> None:
        lock = self.locks[seal_id]
        try:
            while True:
                self._again.discard(seal_id)
                await self._reconcile_once(lock, urgency)
                behind = self._record(lock).log_head > self._cursors[seal_id]
                if seal_id not in self._again or not behind:
                    return
        finally:
            self._reconciling.pop(seal_id, None)

    async def _reconcile_once(self, lock: LockSpec, urgency: Urgency) -> None:
        try:
            await self.scheduler.run(
                lock.seal_id, urgency, lambda session: self.session_common(lock, session)
            )
        except (GatewayError, TimeoutError) as exc:
            self.stats.reconciles_failed += 1
            _, backoff = self._cooldown.get(lock.seal_id, (0.0, Backoff(*RECONCILE_BACKOFF)))
            delay = backoff.next_delay()
            self._cooldown[lock.seal_id] = (self._clock.monotonic() + delay, backoff)
            (_log.warning if backoff.attempt == 1 else _log.debug)(
                "seal %s: reconciliation failed (%s); next try in %.0f s", lock.seal_id, exc, delay
            )
            self._again.discard(lock.seal_id)
            return
        self._cooldown.pop(lock.seal_id, None)
        self.stats.reconciles_ok += 1

    async def _stop_reconciles(self) -> None:
        tasks = list(self._reconciling.values()) + list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _offline_loop(self) -> None:
        silent_s = self.section.offline_after_s
        stale_s = max(silent_s, STALE_AFTER_S)
        interval = max(0.05, min(30.0, silent_s / 4))
        while True:
            await self._clock.sleep(interval)
            for record in self.states.going_offline(self._clock.monotonic(), silent_s, stale_s):
                lock = self.locks[record.seal_id]
                data: dict[str, JSONValue] = {"after_s": silent_s}
                _log.warning("seal %s is offline (silent %.0f s)", record.seal_id, silent_s)
                self._event(lock, "seal.offline", Priority.STATE, data)
                self._publish_state(record, force=True)

    # -- helpers --------------------------------------------------------------------------------

    def _records(self) -> list[SealRecord]:
        records = []
        for lock in self.locks.values():
            stored = self.store.load(lock.lock_id)
            record = SealRecord(lock.seal_id, lock.lock_id, unseal_window=stored.unseal_window)
            if stored.advert is not None:
                self.tracker.restore(lock.lock_id, stored.advert)
                record.state, record.flags = stored.advert.state, stored.advert.flags
                record.log_head = stored.advert.log_head
                record.wire = _advert_wire(stored.advert)
            records.append(record)
        return records

    def _record(self, lock: LockSpec) -> SealRecord:
        return self.record(lock.seal_id)

    def _applied(self, lock: LockSpec) -> Callable[[LogEntry], None]:
        record = self._record(lock)

        def apply(entry: LogEntry) -> None:
            if entry.wire is not WireLoop.NOT_MEASURED or entry.state is LockState.UNSEALED:
                record.wire = entry.wire

        return apply

    def _event(
        self, lock: LockSpec, kind: str, priority: Priority, data: Mapping[str, JSONValue]
    ) -> None:
        body: dict[str, JSONValue] = {"lock_id": lock.lock_id.hex(), **data}
        draft = EventDraft(kind, lock.seal_id, body, priority, self._clock.now())
        try:
            future = self._events.submit(draft)
        except StorageError as exc:
            _log.warning("seal %s: %s not stored: %s", lock.seal_id, kind, exc)
            return
        future.add_done_callback(_log_failure)

    def _publish_state(self, record: SealRecord, *, force: bool = False) -> None:
        if self._publish is None:
            return
        payload = self.states.payload(record)
        key = canonical_bytes({k: v for k, v in payload.items() if k != "last_seen"})
        now = self._clock.monotonic()
        if not force and key == record.published and now - record.published_at < STATE_REFRESH_S:
            return
        record.published, record.published_at = key, now
        self._publish(f"seals/{record.seal_id}/state", canonical_bytes(payload))


def _advert_wire(advert: Advert) -> WireLoop | None:
    """What a verified advert says of the wire loop: cut, or closed when sealed, else nothing."""
    if advert.wire_cut:
        return WireLoop.BROKEN
    return WireLoop.INTACT if advert.state is LockState.SEALED else None


def _log_failure(future: asyncio.Future[Event]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.warning("lock event not stored: %s", future.exception())
