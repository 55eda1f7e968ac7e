"""Seal bench: ATT round trips per operation, operation latency and sweep rate on the virtual radio.

Each round builds a fresh `bench.lock_rig` (LockWorld locks on a bumble LocalLink, the gateway's
LockService over TCP HCI, a real EventBuffer, TicketStore and MasterAuthority tickets) with the
connection budget at 5, waits for the boot reconciliation of every lock, then measures:

- sweep: the scheduler runs what a background reconciliation runs (connect, read the verified
  state, LOG_FETCH, disconnect) for every lock at once; `locks_swept_per_min` extrapolates it.
  The peak of simultaneous LE links is sampled on the wire and must stay within the budget;
- ops: alternating unseal/seal on a few locks, one at a time, each run the daemon's way
  (`SealOperations.execute`, then `wait` for the settled outcome) and timed from the call until
  the outcome is settled (its event is then durably committed). The in-session
  part is the scheduler action (link up and subscribed, until the disconnect starts);
- handheld over BLE (last, after the lock figures): a handheld central on the same radio pairs
  with the gateway's handheld GATT service and times `seal_state` requests in one session
  (`handheld_ble_request_p50_ms`, `_p95_ms`; bench/handheld_ble.py);
- round trips: counted on the wire by `bench.att_tap`, not inferred. An ATT round trip is a run
  of gateway PDUs answered by the lock. The seal operation itself is CHALLENGE_REQUEST and
  COMMAND; `execute` then fetches the log entry the lock wrote on the same link (LOG_FETCH).

Every figure is the median over rounds; per-op figures are medians or percentiles over ops.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.att_tap import (
    AttPdu,
    SealHandles,
    connections,
    exchanges,
    seal_handles,
    split_setup,
    turns,
)
from bench.handheld_ble import measure_requests
from bench.lock_rig import WAIT_S, LockRig, lock_rig
from firmware_sim.locks.peripheral import ADVERTISING_INTERVAL_MS
from firmware_sim.locks.world import address_for
from gateway.locks.scheduler import Urgency
from gateway.locks.session import LockSession

BUDGET = 5
OP_LOCKS = 4
OP_MESSAGES = ("CHALLENGE_REQUEST", "COMMAND")


def run(*, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Run the rounds and return the result object (headline figures last)."""
    rounds = 1 if quick else 3
    sweep_locks = 8 if quick else 20
    ops = 12 if quick else 40
    return asyncio.run(_measure(rounds, sweep_locks, ops, verbose))


@dataclass
class _Round:
    """What one round measured."""

    boot_sweep_s: float = 0.0
    sweep_s: float = 0.0
    sweep_peak_links: int = 0
    sweep_peak_sessions: int = 0
    sweep_round_trips: list[int] = field(default_factory=list)
    setup_round_trips: list[int] = field(default_factory=list)
    setup_ms: list[float] = field(default_factory=list)
    before_link_ms: list[float] = field(default_factory=list)
    op_ms: list[float] = field(default_factory=list)
    connected_ms: list[float] = field(default_factory=list)
    op_round_trips: list[int] = field(default_factory=list)
    op_writes: list[int] = field(default_factory=list)
    op_notifications: list[int] = field(default_factory=list)
    execute_round_trips: list[int] = field(default_factory=list)
    handheld_ble_ms: list[float] = field(default_factory=list)
    extra_connects: int = 0
    peak_links: int = 0
    att_mtu: int = 0


class _SessionSpy:
    """Wraps the scheduler's `run`: times each action, counts actions and sessions in flight."""

    def __init__(self, rig: LockRig) -> None:
        scheduler = rig.service.scheduler
        self._real = scheduler.run
        self.durations: list[tuple[Urgency, float]] = []
        self.running = 0
        self.peak = 0
        self.mtus: list[int] = []
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        scheduler.run = self._run  # type: ignore[method-assign]

    async def idle(self) -> None:
        """Wait until no session is queued, connecting, open or disconnecting."""
        async with asyncio.timeout(WAIT_S):
            await self._idle.wait()

    async def _run(
        self,
        seal_id: str,
        urgency: Urgency,
        action: Callable[[LockSession], Awaitable[Any]],
        **kwargs: Any,
    ) -> Any:
        async def timed(session: LockSession) -> Any:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.mtus.append(session.att_mtu)
            began = time.perf_counter()
            try:
                return await action(session)
            finally:
                self.durations.append((urgency, time.perf_counter() - began))
                self.running -= 1

        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._real(seal_id, urgency, timed, **kwargs)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()


async def _measure(rounds: int, sweep_locks: int, ops: int, verbose: bool) -> dict[str, Any]:
    results: list[_Round] = []
    for index in range(rounds):
        with tempfile.TemporaryDirectory(prefix="sealgw-bench-seal-") as tmp:
            async with lock_rig(Path(tmp), sweep_locks, max_connections=BUDGET) as rig:
                results.append(await _round(rig, sweep_locks, ops))
                # last, so the lock figures above see no handheld traffic on the radio
                results[-1].handheld_ble_ms = await measure_requests(
                    rig, Path(tmp) / "gw", ops, next(iter(rig.service.locks))
                )
        r = results[-1]
        _say(
            verbose,
            f"round {index + 1}: sweep {sweep_locks} locks {r.sweep_s:.3f} s "
            f"(peak {r.sweep_peak_links} links), op p50 {_pct(r.op_ms, 50):.1f} ms "
            f"p95 {_pct(r.op_ms, 95):.1f} ms, {_median(r.op_round_trips)} round trips per op, "
            f"handheld BLE request p50 {_pct(r.handheld_ble_ms, 50):.1f} ms",
        )
    return _result(results, rounds, sweep_locks, ops)


async def _round(rig: LockRig, sweep_locks: int, ops: int) -> _Round:
    r = _Round()
    spy = _SessionSpy(rig)
    await rig.wait_committed("seal.boot", sweep_locks)
    r.boot_sweep_s = time.perf_counter() - rig.started
    await spy.idle()
    await _sweep(rig, spy, r)
    await _ops(rig, spy, r, ops)
    r.peak_links = rig.tap.peak_links
    r.att_mtu = min(spy.mtus)
    assert r.peak_links <= BUDGET, f"{r.peak_links} links at once, budget {BUDGET}"
    return r


async def _sweep(rig: LockRig, spy: _SessionSpy, r: _Round) -> None:
    """Reconcile every lock at once through the scheduler; time it and watch the link count."""
    service, tap = rig.service, rig.tap
    tap.peak_links, spy.peak = 0, 0
    mark = tap.mark()
    began = time.perf_counter()
    await asyncio.gather(
        *(
            service.scheduler.run(seal_id, Urgency.BACKGROUND, _reconcile(rig, seal_id))
            for seal_id in service.locks
        )
    )
    r.sweep_s = time.perf_counter() - began
    r.sweep_peak_links, r.sweep_peak_sessions = tap.peak_links, spy.peak
    assert r.sweep_peak_links <= BUDGET and spy.peak <= BUDGET
    handles = seal_handles(next(iter(rig.locks.locks.values())).device)
    for number in range(1, len(service.locks) + 1):
        for link in connections(tap.since(mark, address_for(number))):
            setup, session = split_setup(link, handles.cccd)
            r.setup_round_trips.append(turns(setup))
            r.sweep_round_trips.append(turns(session))


async def _ops(rig: LockRig, spy: _SessionSpy, r: _Round, count: int) -> None:
    """Alternate unseal and seal on OP_LOCKS locks, one operation at a time."""
    service, tap = rig.service, rig.tap
    seals = list(service.locks)[:OP_LOCKS]
    ticket = rig.issue(seals)
    handles = seal_handles(rig.locks.locks[seals[0]].device)
    connects = service.scheduler.stats.connects
    for n in range(count):
        number = n % len(seals) + 1
        op = "unseal" if (n // len(seals)) % 2 == 0 else "seal"
        await spy.idle()
        spy.durations.clear()
        mark = tap.mark()
        began = time.perf_counter()
        result = await rig.run(rig.request(ticket, seals[number - 1], op))
        r.op_ms.append((time.perf_counter() - began) * 1000)
        if not result.ok:
            raise RuntimeError(f"{op} on {seals[number - 1]} failed: {result}")
        r.connected_ms += [d * 1000 for u, d in spy.durations if u is Urgency.HANDHELD]
        _count_op(tap.since(mark, address_for(number)), handles, r)
        r.before_link_ms.append((tap.since(mark, address_for(number))[0].t - began) * 1000)
    r.extra_connects = service.scheduler.stats.connects - connects - count


def _reconcile(rig: LockRig, seal_id: str) -> Callable[[LockSession], Awaitable[None]]:
    """What a background reconciliation does on its link: verified state, then the log."""
    lock = rig.service.locks[seal_id]
    return lambda session: rig.service.log_sync.refresh(lock, session)


def _count_op(pdus: list[AttPdu], handles: SealHandles, r: _Round) -> None:
    links = [link for link in connections(pdus) if link]
    if len(links) != 1:
        raise RuntimeError(f"expected one link for the operation, saw {len(links)}")
    setup, session = split_setup(links[0], handles.cccd)
    r.setup_round_trips.append(turns(setup))
    r.setup_ms.append((setup[-1].t - setup[0].t) * 1000)
    found = exchanges(session, handles)
    mine = [e for e in found if e.message in OP_MESSAGES]
    r.op_round_trips.append(sum(e.round_trips for e in mine))
    r.op_writes.append(sum(e.writes for e in mine))
    r.op_notifications.append(sum(e.notifications for e in mine))
    r.execute_round_trips.append(turns(session))


def _result(results: list[_Round], rounds: int, sweep_locks: int, ops: int) -> dict[str, Any]:
    sweep_rates = [sweep_locks / r.sweep_s * 60 for r in results]
    p50s = [_pct(r.op_ms, 50) for r in results]
    p95s = [_pct(r.op_ms, 95) for r in results]
    return {
        "bench": "seal",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "radio": "bumble LocalLink, gateway controller over TCP HCI",
        "att_mtu": min(r.att_mtu for r in results),
        "max_connections": BUDGET,
        "sweep_locks": sweep_locks,
        "sweep_runs_s": [round(r.sweep_s, 3) for r in results],
        "sweep_s": round(_median([r.sweep_s for r in results]), 3),
        "sweep_peak_sessions": max(r.sweep_peak_sessions for r in results),
        "sweep_round_trips_per_lock": _median([_median(r.sweep_round_trips) for r in results]),
        "boot_sweep_s": round(_median([r.boot_sweep_s for r in results]), 3),
        "setup_round_trips_per_link": _median([_median(r.setup_round_trips) for r in results]),
        "advertising_interval_ms": ADVERTISING_INTERVAL_MS,
        "op_before_link_p50_ms": round(_median([_pct(r.before_link_ms, 50) for r in results]), 1),
        "op_setup_wire_p50_ms": round(_median([_pct(r.setup_ms, 50) for r in results]), 1),
        "ops": ops,
        "op_locks": OP_LOCKS,
        "op_p50_runs_ms": [round(v, 1) for v in p50s],
        "connected_op_p50_ms": round(_median([_pct(r.connected_ms, 50) for r in results]), 1),
        "connected_op_p95_ms": round(_median([_pct(r.connected_ms, 95) for r in results]), 1),
        "background_connects_during_ops": sum(r.extra_connects for r in results),
        "writes_per_op": _median([_median(r.op_writes) for r in results]),
        "notifications_per_op": _median([_median(r.op_notifications) for r in results]),
        "att_round_trips_per_execute": _median([_median(r.execute_round_trips) for r in results]),
        "peak_connections": max(r.peak_links for r in results),
        "handheld_ble_requests": ops,
        "handheld_ble_request_p50_ms": round(
            _median([_pct(r.handheld_ble_ms, 50) for r in results]), 1
        ),
        "handheld_ble_request_p95_ms": round(
            _median([_pct(r.handheld_ble_ms, 95) for r in results]), 1
        ),
        "att_round_trips_per_op": _median([_median(r.op_round_trips) for r in results]),
        "op_p50_ms": round(_median(p50s), 1),
        "op_p95_ms": round(_median(p95s), 1),
        "locks_swept_per_min": round(_median(sweep_rates)),
    }


def _pct(values: list[float], percent: int) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * percent / 100) - 1)]


def _median(values: list[Any]) -> Any:
    return statistics.median(values)


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr)


logging.getLogger("gateway").setLevel(logging.WARNING)
