"""Finding 2: one idle BLE link must not lock the gateway out."""

from __future__ import annotations

import asyncio
from pathlib import Path

from firmware_sim.locks.peripheral import LINK_IDLE_S, LINK_MAX_S
from gateway.protocol import seal_frames as sf
from gateway.protocol.clock import ManualClock
from tests.fixtures.mosquitto import wait_until
from tests.security.radio import T0, connect, credential, radio, run_command

WAIT_S = 10.0


async def test_an_idle_link_is_dropped_and_the_gateway_gets_through(tmp_path: Path) -> None:
    async with radio(tmp_path) as bench:
        clock = bench.world.clock
        assert isinstance(clock, ManualClock)
        lock = bench.world.locks["SL-0001"]
        squatter = await connect(bench, "SL-0001")  # connects and then sends nothing
        assert lock.connected

        clock.advance(LINK_IDLE_S + 1)
        await asyncio.wait_for(squatter.gone.wait(), WAIT_S)
        await wait_until(lambda: not lock.connected, WAIT_S)

        gateway = await connect(bench, "SL-0001")
        unseal = credential(bench, "SL-0001", ("unseal",), T0 - 60, T0 + 3600)
        opened = await run_command(gateway, unseal, sf.Operation.UNSEAL)
        await gateway.client.disconnect()
        assert opened.result is sf.ResultCode.OK


async def test_a_chatty_link_is_dropped_after_the_link_limit(tmp_path: Path) -> None:
    async with radio(tmp_path) as bench:
        clock = bench.world.clock
        assert isinstance(clock, ManualClock)
        squatter = await connect(bench, "SL-0001")
        # Never idle: a LOG_FETCH just inside every idle limit, until the hard limit passes.
        for _ in range(int(LINK_MAX_S // (LINK_IDLE_S - 1)) + 1):
            if squatter.gone.is_set():
                break
            answer = await squatter.request(sf.LogFetch(bytes(16), 0, 0))
            assert isinstance(answer, sf.LogEntries)
            clock.advance(LINK_IDLE_S - 1)
        await asyncio.wait_for(squatter.gone.wait(), WAIT_S)
        assert clock.monotonic() >= LINK_MAX_S
