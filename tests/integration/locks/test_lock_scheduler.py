"""The connection scheduler against a fake connector: budget, serialized connects, priority, retry."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from gateway.errors import GatewayError, RetryableError, TransientError
from gateway.locks.scheduler import (
    ConnectionScheduler,
    PriorityGate,
    SchedulerSettings,
    Urgency,
)
from gateway.protocol.clock import ManualClock

WAIT_S = 5.0


class AutoClock(ManualClock):
    """A ManualClock whose sleep advances time at once, recording what was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


@dataclass
class FakeConnector:
    """Counts concurrent connects and links; fails the first `failures` connects."""

    failures: int = 0
    connect_gate: asyncio.Event | None = None
    connecting: int = 0
    max_connecting: int = 0
    links: int = 0
    max_links: int = 0
    connects: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    async def connect(self, seal_id: str, timeout_s: float) -> str:
        assert timeout_s > 0
        self.connecting += 1
        self.max_connecting = max(self.max_connecting, self.connecting)
        try:
            if self.connect_gate is not None:
                await self.connect_gate.wait()
            else:
                await asyncio.sleep(0)
            self.connects.append(seal_id)
            if self.failures > 0:
                self.failures -= 1
                raise TransientError("radio trouble")
        finally:
            self.connecting -= 1
        self.links += 1
        self.max_links = max(self.max_links, self.links)
        return seal_id

    async def disconnect(self, link: str) -> None:
        self.links -= 1
        self.closed.append(link)


def scheduler(
    connector: FakeConnector, clock: ManualClock | None = None, **settings: float
) -> ConnectionScheduler[str]:
    values = {"max_connections": 5, "retries": 2, "backoff_min_s": 0.5, "backoff_max_s": 8.0}
    values.update(settings)
    return ConnectionScheduler(
        connector,
        SchedulerSettings(**values),  # type: ignore[arg-type]
        clock or AutoClock(),
        rng=random.Random(7),
    )


async def test_budget_is_honoured() -> None:
    connector = FakeConnector()
    sched = scheduler(connector, max_connections=2)
    release = asyncio.Event()
    started: list[str] = []

    async def hold(link: str) -> str:
        started.append(link)
        await release.wait()
        return link

    tasks = [asyncio.create_task(sched.run(f"SL-{i}", Urgency.BACKGROUND, hold)) for i in range(5)]
    while len(started) < 2:
        await asyncio.sleep(0)
    assert len(sched.connected) == 2
    assert sched.queued == 3
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert sorted(results) == [f"SL-{i}" for i in range(5)]
    assert connector.max_links == 2
    assert sorted(connector.closed) == sorted(results)
    assert sched.stats.sessions_ok == 5


async def test_connects_are_serialized_even_with_budget_left() -> None:
    gate = asyncio.Event()
    connector = FakeConnector(connect_gate=gate)
    sched = scheduler(connector, max_connections=5)

    async def act(link: str) -> str:
        return link

    tasks = [asyncio.create_task(sched.run(f"SL-{i}", Urgency.BACKGROUND, act)) for i in range(4)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert connector.connecting == 1  # the others wait for the connect gate, not the radio
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert connector.max_connecting == 1
    assert len(connector.connects) == 4


async def test_handheld_goes_before_queued_background_work() -> None:
    connector = FakeConnector()
    sched = scheduler(connector, max_connections=1)
    release = asyncio.Event()
    order: list[str] = []

    async def first(link: str) -> None:
        await release.wait()

    async def note(link: str) -> None:
        order.append(link)

    holder = asyncio.create_task(sched.run("SL-hold", Urgency.BACKGROUND, first))
    while not sched.connected:
        await asyncio.sleep(0)
    queued = [
        asyncio.create_task(sched.run("SL-bg1", Urgency.BACKGROUND, note)),
        asyncio.create_task(sched.run("SL-bg2", Urgency.BACKGROUND, note)),
        asyncio.create_task(sched.run("SL-alarm", Urgency.ALARM, note)),
        asyncio.create_task(sched.run("SL-hand", Urgency.HANDHELD, note)),
    ]
    while sched.queued < 4:
        await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, *queued), WAIT_S)
    assert order == ["SL-hand", "SL-alarm", "SL-bg1", "SL-bg2"]


async def test_one_link_per_seal_at_a_time() -> None:
    connector = FakeConnector()
    sched = scheduler(connector, max_connections=5)
    active: list[int] = [0]
    peak: list[int] = [0]

    async def act(link: str) -> None:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        await asyncio.sleep(0)
        active[0] -= 1

    await asyncio.gather(*(sched.run("SL-1", Urgency.BACKGROUND, act) for _ in range(3)))
    assert peak[0] == 1
    assert connector.connects == ["SL-1"] * 3


async def test_failed_connects_are_retried_with_jittered_backoff() -> None:
    connector = FakeConnector(failures=2)
    clock = AutoClock()
    sched = scheduler(connector, clock, retries=2, backoff_min_s=0.5, backoff_max_s=8.0)

    async def act(link: str) -> str:
        return "done"

    assert await sched.run("SL-1", Urgency.HANDHELD, act) == "done"
    assert connector.connects == ["SL-1"] * 3
    assert len(clock.slept) == 2
    assert 0.5 <= clock.slept[0] <= 0.5  # first ceiling is the minimum
    assert 0.5 <= clock.slept[1] <= 1.0  # the ceiling doubles
    assert sched.stats.connect_failures == 2
    assert sched.stats.retries == 2


async def test_retries_run_out() -> None:
    connector = FakeConnector(failures=10)
    clock = AutoClock()
    sched = scheduler(connector, clock, retries=1)

    async def act(link: str) -> None:
        raise AssertionError("never connected")

    with pytest.raises(RetryableError):
        await sched.run("SL-1", Urgency.BACKGROUND, act)
    assert len(connector.connects) == 2
    assert sched.stats.sessions_failed == 1
    assert sched.connected == frozenset()


async def test_action_errors_are_not_retried_unless_retryable() -> None:
    connector = FakeConnector()
    sched = scheduler(connector, retries=3)
    calls: list[str] = []

    async def unknown_outcome(link: str) -> None:
        calls.append(link)
        raise GatewayError("command sent, answer lost")

    with pytest.raises(GatewayError):
        await sched.run("SL-1", Urgency.HANDHELD, unknown_outcome)
    assert calls == ["SL-1"]
    assert connector.closed == ["SL-1"]  # the link is closed whatever happens

    async def flaky(link: str) -> str:
        calls.append(link)
        if len(calls) < 3:
            raise RetryableError("challenge lost")
        return "ok"

    assert await sched.run("SL-1", Urgency.HANDHELD, flaky) == "ok"
    assert len(calls) == 3


async def test_priority_gate_passes_a_slot_on_when_a_waiter_is_cancelled() -> None:
    gate = PriorityGate(1)
    await gate.acquire(Urgency.BACKGROUND)
    cancelled = asyncio.create_task(gate.acquire(Urgency.HANDHELD))
    waiting = asyncio.create_task(gate.acquire(Urgency.BACKGROUND))
    await asyncio.sleep(0)
    cancelled.cancel()
    gate.release()
    await asyncio.wait_for(waiting, WAIT_S)
    assert gate.free == 0
    gate.release()
    assert gate.free == 1


async def test_a_busy_lock_is_retried_after_at_least_a_second_by_default() -> None:
    connector = FakeConnector()
    clock = AutoClock()
    sched = ConnectionScheduler(connector, SchedulerSettings(), clock, rng=random.Random(7))
    answers = ["busy", "busy", "ok"]

    async def act(link: str) -> str:
        answer = answers.pop(0)
        if answer == "busy":
            raise RetryableError("lock is busy (wanted CHALLENGE)")  # ERROR(BUSY)
        return answer

    assert await sched.run("SL-1", Urgency.HANDHELD, act) == "ok"
    assert len(clock.slept) == 2
    assert all(delay >= 1.0 for delay in clock.slept)
