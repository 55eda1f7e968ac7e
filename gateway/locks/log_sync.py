"""Keeping each lock's log reconciled: on every link, and in the background when adverts ask.

`LogSync.refresh` is what every connection does (read the verified state, then reconcile the
log on the same link). `LogSync.request` schedules a background reconciliation through the
connection scheduler, coalesced per seal and cooled down with jittered backoff after failures.
It also holds the operations whose log entry is still expected (`PendingOutcome`), so the
entry's event carries the request's context whichever link fetches it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.drivers.pacing import Backoff
from gateway.errors import GatewayError
from gateway.locks.beliefs import SealBeliefs
from gateway.locks.reconcile import PendingOutcome, Reconciler
from gateway.locks.scheduler import ConnectionScheduler, Urgency
from gateway.locks.session import LockSession
from gateway.locks.state import LockSpec
from gateway.protocol.clock import Clock

__all__ = ["RECONCILE_BACKOFF", "LogSync", "ReconcileStats"]

_log = logging.getLogger(__name__)

RECONCILE_BACKOFF = (5.0, 300.0)  # after a failed background reconcile


@dataclass(slots=True)
class ReconcileStats:
    """Background reconciliation counters for the health snapshot."""

    ok: int = 0
    failed: int = 0


class LogSync:
    """Reconciles lock logs into events over the links the scheduler grants."""

    def __init__(
        self,
        locks: Mapping[str, LockSpec],
        beliefs: SealBeliefs,
        scheduler: ConnectionScheduler[LockSession],
        reconciler: Reconciler,
        clock: Clock,
    ) -> None:
        self._locks = locks
        self._beliefs = beliefs
        self._scheduler = scheduler
        self._reconciler = reconciler
        self._clock = clock
        self._pending: dict[str, dict[bytes, PendingOutcome]] = {s: {} for s in locks}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._cooldown: dict[str, tuple[float, Backoff]] = {}
        self.stats = ReconcileStats()

    # -- on a link ------------------------------------------------------------------------------

    async def refresh(self, lock: LockSpec, session: LockSession) -> None:
        """What every connection does: seed if needed, read the verified state, reconcile."""
        if self._beliefs.needs_seed(lock.seal_id):
            self._beliefs.seed(lock, await session.probe_log_head(lock.k_log))
        heard = self._beliefs.observe_payload(await session.read_state(), source="state")
        if heard is not None and heard.reconcile is not None:
            self.request(heard.seal_id, heard.reconcile)
        await self.reconcile_on(lock, session)

    async def reconcile_on(self, lock: LockSpec, session: LockSession) -> None:
        """Reconcile over an open session, note the new cursor; the rest over another link."""
        pending = self._pending[lock.seal_id]
        on_entry = self._beliefs.on_log_entry(lock.seal_id)
        progress = await self._reconciler.run(session, lock, pending, on_entry)
        self._beliefs.reconciled(lock.seal_id, progress.head, progress.cursor)
        if not progress.complete:
            _log.debug("seal %s: catch-up goes on over a new link at %d of %d",
                       lock.seal_id, progress.cursor, progress.head)  # fmt: skip
            self.request(lock.seal_id)

    # -- operations awaiting their log entry -----------------------------------------------------

    def expect(self, seal_id: str, outcome: PendingOutcome) -> None:
        """Remember an operation until its log entry is reconciled (or `forget` is called)."""
        self._pending[seal_id][outcome.ticket_tag] = outcome

    def expected(self, seal_id: str, ticket_tag: bytes) -> PendingOutcome:
        """The operation remembered under `ticket_tag`."""
        return self._pending[seal_id][ticket_tag]

    def forget(self, seal_id: str, ticket_tag: bytes) -> None:
        """Stop carrying the operation's context (its event is committed)."""
        self._pending[seal_id].pop(ticket_tag, None)

    # -- in the background ----------------------------------------------------------------------

    def request(self, seal_id: str, urgency: Urgency = Urgency.BACKGROUND) -> None:
        """Fetch the seal's new log entries soon (coalesced; cooled down after failures)."""
        if seal_id in self._running:
            self._again.add(seal_id)
            return
        cooldown = self._cooldown.get(seal_id)
        if cooldown is not None and self._clock.monotonic() < cooldown[0]:
            return
        task = asyncio.create_task(self._reconcile(seal_id, urgency), name=f"reconcile-{seal_id}")
        self._running[seal_id] = task

    async def stop(self) -> None:
        """Cancel the background reconciliations still running."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _reconcile(self, seal_id: str, urgency: Urgency) -> None:
        lock = self._locks[seal_id]
        try:
            while True:
                self._again.discard(seal_id)
                await self._reconcile_once(lock, urgency)
                if seal_id not in self._again or not self._beliefs.behind(seal_id):
                    return
        finally:
            self._running.pop(seal_id, None)

    async def _reconcile_once(self, lock: LockSpec, urgency: Urgency) -> None:
        try:
            await self._scheduler.run(
                lock.seal_id, urgency, lambda session: self.refresh(lock, session)
            )
        except (GatewayError, TimeoutError) as exc:
            self.stats.failed += 1
            _, backoff = self._cooldown.get(lock.seal_id, (0.0, Backoff(*RECONCILE_BACKOFF)))
            delay = backoff.next_delay()
            self._cooldown[lock.seal_id] = (self._clock.monotonic() + delay, backoff)
            (_log.warning if backoff.attempt == 1 else _log.debug)(
                "seal %s: reconciliation failed (%s); next try in %.0f s", lock.seal_id, exc, delay
            )
            self._again.discard(lock.seal_id)
            return
        self._cooldown.pop(lock.seal_id, None)
        self.stats.ok += 1
