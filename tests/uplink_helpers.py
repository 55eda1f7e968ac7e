"""Helpers shared by the uplink and command tests (not a fixture module)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from gateway.config.model import UplinkSection
from gateway.protocol.clock import Clock, ManualClock, SystemClock
from gateway.uplink.commands import CommandDispatcher
from gateway.uplink.uplink import Uplink
from tests.fixtures.fake_buffer import FakeEventBuffer
from tests.fixtures.mosquitto import Received, wait_until

GATEWAY = "gw-test"
ROOT = f"sealgw/v1/{GATEWAY}"


class SpyClock(ManualClock):
    """A ManualClock that tells how many coroutines are sleeping on it and not yet due."""

    @property
    def sleeping(self) -> int:
        return sum(1 for _deadline, future in self._sleepers if not future.done())


def make_uplink(
    url: str,
    source: FakeEventBuffer,
    *,
    clock: Clock | None = None,
    dispatcher: CommandDispatcher | None = None,
    gateway: str = GATEWAY,
    **settings: Any,
) -> Uplink:
    """An uplink with fast reconnects and no drain limit unless told otherwise."""
    options: dict[str, Any] = {
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        "drain_rate_per_s": 0,
        "keepalive_s": 10,
    }
    options.update(settings)
    uplink = Uplink(
        UplinkSection(url=url, **options),
        gateway,
        "",
        source,
        dispatcher or CommandDispatcher(),
        clock or SystemClock(),
        "0.1.0-test",
    )
    source.on_commit = lambda _events: uplink.wake()
    return uplink


@asynccontextmanager
async def running(
    uplink: Uplink, *, connect: bool = True, stop_timeout: float = 2.0
) -> AsyncIterator[asyncio.Task[None]]:
    """Run the uplink for the block; wait for the first connection unless told not to."""
    task = asyncio.create_task(uplink.run())
    try:
        if connect:
            await wait_until(lambda: uplink.connected or task.done(), 10, "uplink connected")
            if task.done():
                task.result()
        yield task
    finally:
        await uplink.stop(stop_timeout)
        await asyncio.wait_for(task, 5)


def events_of(messages: list[Received]) -> list[dict[str, Any]]:
    """The parsed event payloads among `messages`, in arrival order."""
    return [json.loads(m.payload) for m in messages if "/events/" in m.topic]


def seqs_of(messages: list[Received]) -> list[int]:
    return [e["seq"] for e in events_of(messages)]
