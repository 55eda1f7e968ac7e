"""Shutdown closes the trail: gateway.stopped and the final checkpoint are the last events."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from gateway.auth.provision import init_gateway
from gateway.config.loader import load_config
from gateway.daemon.app import Gateway
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import Event, EventType
from tests.fixtures.mosquitto import BrokerFactory, wait_until

GATEWAY = "gw-stop"
HEALTH_S = 1


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(
        f'[gateway]\nid = "{GATEWAY}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[uplink]\nurl = "{url}"\ndrain_rate_per_s = 0\n'
        f"[health]\ninterval_s = {HEALTH_S}\n"
    )
    return path


async def test_no_event_is_committed_after_the_stop_record_and_its_checkpoint(
    tmp_path: Path, mosquitto_factory: BrokerFactory
) -> None:
    broker = mosquitto_factory()
    init_gateway(tmp_path / "state", GATEWAY)
    clock = ManualClock(datetime.now(UTC))  # only the test fires the health timer
    gateway = Gateway(load_config(write_config(tmp_path, broker.url)), clock=clock)
    task = asyncio.create_task(gateway.run())
    await wait_until(lambda: gateway.uplink.connected, 15, "gateway online")
    committed: list[Event] = []
    forward = gateway.buffer.on_commit
    assert forward is not None

    def on_commit(events: Sequence[Event]) -> None:
        committed.extend(events)
        forward(events)
        if any(event.type == EventType.GATEWAY_STOPPED for event in events):
            clock.advance(HEALTH_S)  # every producer's timer fires right after the stop record

    gateway.buffer.on_commit = on_commit
    gateway.request_stop()
    await asyncio.wait_for(task, 20)

    types = [event.type for event in committed]
    assert types[-2:] == [EventType.GATEWAY_STOPPED, EventType.GATEWAY_CHECKPOINT], types
    stopped, checkpoint = committed[-2:]
    assert checkpoint.data["covers_seq"] == stopped.seq
