"""The daemon's component supervisor: backoff that resets after a healthy run; stop wins."""

from __future__ import annotations

import asyncio

from gateway.daemon.supervisor import Supervisor
from gateway.protocol.clock import ManualClock


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_backoff_resets_after_a_healthy_run() -> None:
    clock = ManualClock()
    supervisor = Supervisor(clock, backoff_min_s=1.0, backoff_max_s=60.0)
    runs: list[float] = []
    healthy = asyncio.Event()

    async def component() -> None:
        runs.append(clock.monotonic())
        if len(runs) == 7:
            await clock.sleep(60.0)  # a long, healthy run, then a failure
            healthy.set()
        raise RuntimeError("radio gone")

    supervisor.start("locks", component)
    await _settle()
    while len(runs) < 7:  # six quick failures: the backoff climbs towards 60 s
        clock.advance(60.0)
        await _settle()
    clock.advance(60.0)
    await healthy.wait()
    await _settle()

    clock.advance(1.0)  # the first failure after a healthy run waits at most backoff_min_s
    await _settle()

    assert len(runs) == 8
    await supervisor.stop()


async def test_an_error_raised_while_stopping_does_not_restart_the_component() -> None:
    clock = ManualClock()
    supervisor = Supervisor(clock)
    started = 0

    async def component() -> None:
        nonlocal started
        started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise TimeoutError("HCI command timed out") from None  # a frozen controller

    supervisor.start("locks", component)
    await _settle()

    await asyncio.wait_for(supervisor.stop(), 5.0)

    assert started == 1
    assert supervisor.restarts() == {"locks": 0}


async def test_a_clean_up_stuck_on_a_silent_peer_is_cancelled_after_the_grace() -> None:
    """A component whose clean-up awaits an answer that never comes still stops."""
    supervisor = Supervisor(ManualClock())
    cleaned: list[str] = []

    async def component() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            try:
                await asyncio.Event().wait()  # e.g. HCI "stop scanning", never answered
            finally:
                cleaned.append("cut short")

    supervisor.start("locks", component)
    await _settle()

    await asyncio.wait_for(supervisor.stop(grace_s=0.05), 5.0)

    assert cleaned == ["cut short"]
    assert supervisor.restarts() == {"locks": 0}
