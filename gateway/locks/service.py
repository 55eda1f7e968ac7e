"""The lock service: the locks domain put together, scanning, and the daemon's `locks` component.

`LockService` builds the parts and passes each its collaborators; none of them points back
at the service:

- `beliefs.SealBeliefs`: verified adverts, seal records, cursors, retained `seals/{seal}/state`;
- `scheduler.ConnectionScheduler` over `session.BleLockConnector`: the BLE link budget;
- `reconcile.Reconciler` and `log_sync.LogSync`: lock log entries to events, exactly once;
- `operations.SealOperations`: the one way a seal operation runs; the handheld service's
  `OperationsBackend`.

The service itself scans (adverts go to the beliefs, which say when a log wants fetching),
watches for silent locks, and is the `SealStateView` of the meter and theft code. Design and
event types: docs/locks.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from gateway.auth.policy import GatewayTrust, RoleTable
from gateway.auth.ticket_store import TicketStore
from gateway.drivers.ble.adapters import BleTransport, BlueZTransport
from gateway.locks.beliefs import PublishState, SealBeliefs
from gateway.locks.config import BleSection, read_key_file
from gateway.locks.log_sync import LogSync
from gateway.locks.operations import PolicySettings, SealOperations
from gateway.locks.presence import ReachWatch
from gateway.locks.reconcile import Reconciler
from gateway.locks.scanning import ScanSupervisor
from gateway.locks.scheduler import ConnectionScheduler, SchedulerSettings
from gateway.locks.session import BleLockConnector, LockSession
from gateway.locks.state import LOCKS_DB_FILE, LockSpec, LockStore
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.protocol.events import Emit

__all__ = ["LockService", "load_locks"]

_log = logging.getLogger(__name__)

STALE_AFTER_S = 2 * 600.0 + 60.0  # no advert counter increase for this long: stale (replay?)


def load_locks(section: BleSection) -> tuple[LockSpec, ...]:
    """The configured locks with their K_adv and K_log read from the key files."""
    return tuple(
        LockSpec(
            seal_id=entry.seal_id,
            lock_id=entry.lock_id_bytes,
            address=entry.address,
            k_adv=read_key_file(entry.adv_key_file, f"ble.locks[{index}].adv_key_file"),
            k_log=read_key_file(entry.log_key_file, f"ble.locks[{index}].log_key_file"),
            adv_counter_floor=entry.adv_counter,
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
        emit: Emit,
        storage_full: Callable[[], bool],
        tickets: TicketStore,
        trust: GatewayTrust,
        table: RoleTable,
        skew_s: int,
        clock: Clock,
        state_dir: Path,
        publish_state: PublishState | None = None,
        locks: tuple[LockSpec, ...] | None = None,
    ) -> None:
        self.section = section
        self._transport = transport
        self._clock = clock
        self.locks = {lock.seal_id: lock for lock in (locks or load_locks(section))}
        self.store = LockStore.open(state_dir / LOCKS_DB_FILE)
        self.beliefs = SealBeliefs(self.locks, self.store, emit, clock, publish_state)
        self._seen_device: dict[str, BLEDevice] = {}
        self._discovered_only = isinstance(transport, BlueZTransport)
        connector = BleLockConnector(
            transport,
            self.locks,
            op_timeout_s=section.op_timeout_s,
            addresses=self._address,
            clock=clock,
            discovered_only=self._discovered_only,
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
        self.reconciler = Reconciler(gateway_id, self.store, emit, clock)
        self.log_sync = LogSync(self.locks, self.beliefs, self.scheduler, self.reconciler, clock)
        self.operations = SealOperations(
            gateway_id=gateway_id,
            locks=self.locks,
            beliefs=self.beliefs,
            store=self.store,
            scheduler=self.scheduler,
            log_sync=self.log_sync,
            reconciler=self.reconciler,
            tickets=tickets,
            policy=PolicySettings(trust, table, skew_s),
            emit=emit,
            storage_full=storage_full,
            clock=clock,
        )
        self.radio = ScanSupervisor(
            section, transport, self._on_advert, gateway_id=gateway_id, emit=emit, clock=clock
        )
        self.reach = ReachWatch(
            self.locks,
            self.beliefs.states,
            emit,
            clock,
            scan_time=self.radio.scan_time,
            unreachable_after_s=section.unreachable_after_s,
            offline_after_s=section.offline_after_s,
        )

    # -- the daemon's component -----------------------------------------------------------------

    async def run(self) -> None:
        """Scan until cancelled, watching for silent locks; reconciles run as they are needed."""
        self.beliefs.publish_all()
        self._seed_known_addresses()
        watcher = asyncio.create_task(self._offline_loop(), name="sealgw-locks-offline")
        try:
            await self.radio.run()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await self.operations.close()
            await self.log_sync.stop()

    def close(self) -> None:
        """Close locks.db (after run() returned)."""
        self.store.close()

    def snapshot(self) -> dict[str, JSONValue]:
        """Health figures: locks seen, connected, offline; adverts rejected; operations."""
        records = list(self.beliefs.states)
        sched, adverts, ops = self.scheduler.stats, self.beliefs.stats, self.operations.stats
        return {
            "locks": len(records),
            "seen": sum(1 for r in records if r.last_seen is not None),
            "connected": len(self.scheduler.connected),
            "offline": sum(1 for r in records if r.online is False),
            "unreachable": self.reach.unreachable,
            **self.radio.snapshot(),
            "queued": self.scheduler.queued,
            "adverts": adverts.adverts,
            "spoofed_adverts": adverts.spoofed,
            "malformed_adverts": adverts.malformed,
            "rejected": dict(self.rejected),
            "ops_ok": ops.ok,
            "ops_failed": ops.failed,
            "ops_denied": ops.denied,
            "ops_unknown": ops.unknown,
            "connects": sched.connects,
            "connect_failures": sched.connect_failures,
            "reconciled_entries": self.reconciler.entries,
            "reconciles_failed": self.log_sync.stats.failed,
        }

    @property
    def rejected(self) -> Counter[str]:
        """Adverts and state payloads rejected, by reason code."""
        return self.beliefs.rejected

    # -- SealStateView --------------------------------------------------------------------------

    def seal_state(self, seal_id: str) -> str | None:
        """The seal's last verified state."""
        return self.beliefs.seal_state(seal_id)

    def unseal_authorized(self, seal_id: str, at: datetime) -> bool:
        """An allowed unseal's window covers `at`."""
        return self.beliefs.unseal_authorized(seal_id, at)

    # -- scanning -------------------------------------------------------------------------------

    def _on_advert(self, device: BLEDevice, data: AdvertisementData) -> None:
        payload = data.manufacturer_data.get(self.section.company_id)
        if payload is None:
            return
        heard = self.beliefs.observe_payload(bytes(payload), source="advert")
        if heard is None:
            return
        self._seen_device[heard.seal_id] = device
        self.reach.heard(heard.seal_id)
        if heard.reconcile is not None:
            self.log_sync.request(heard.seal_id, heard.reconcile)

    def _address(self, seal_id: str) -> BLEDevice | None:
        """The device our own scanner saw: connecting to it needs no second discovery.

        On BlueZ, a connect by address string makes bleak start a discovery of its own, which
        BlueZ refuses with org.bluez.Error.InProgress while the gateway's scanner is running
        (one discovery per D-Bus client), so BlueZ connects wait for an advert. Found by the
        BlueZ test bed (docs/ble-transport.md).
        """
        return self._seen_device.get(seal_id)

    def _seed_known_addresses(self) -> None:
        """Probe unseeded locks whose address is configured (others once an advert names it).

        Not on BlueZ, which connects only to devices it discovered: there the first advert of
        an unseeded lock asks for its probe (SealBeliefs.observe_payload).
        """
        if self._discovered_only:
            return
        for seal_id, lock in self.locks.items():
            if lock.address and self.beliefs.needs_seed(seal_id):
                self.log_sync.request(seal_id)

    async def _offline_loop(self) -> None:
        silent_s = self.section.offline_after_s
        stale_s = max(silent_s, STALE_AFTER_S)
        interval = max(0.05, min(30.0, silent_s / 4, self.section.unreachable_after_s / 4))
        while True:
            await self._clock.sleep(interval)
            self.beliefs.check_offline(silent_s, stale_s)
            self.reach.check(self.scheduler.connected)
