"""Issue 13 item 6: wall-clock jumps.

- A +4 day jump does not prune, in one pass, the delivered rows kept for cmd/resend (a real
  buffer file, its clock stepped).
- A daemon whose clock is 30 years behind and not synchronised never broadcasts a DL/T 645
  time sync to the simulator's meters; with a synchronised clock it does (the control).
- A daemon whose wall clock steps 4 days forward raises gateway.clock_jump.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.mosquitto import MosquittoBroker
from gateway.config.model import BufferSection
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import EventDraft, Priority
from gateway.store.buffer import EventBuffer
from master_station.subscriber import EventSubscriber
from tests.e2e.faults.daemon import (
    GATEWAY,
    log_text,
    simulator,
    start_gateway,
    stop_gateway,
    write_config,
)
from tests.fixtures.procs import poll_until

FOUR_DAYS_S = 4 * 86400.0
THIRTY_YEARS_S = 30 * 365.25 * 86400.0


def _published(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM events WHERE published = 1").fetchone()[0])


async def test_a_jump_forward_does_not_prune_the_resend_window_at_once(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "buffer.db"
    buffer = EventBuffer(path, GATEWAY, BufferSection(retain_published_s=3600), clock)
    await buffer.open()
    try:
        for n in range(2719):
            buffer.submit(
                EventDraft("meter.reading", "M-1", {"n": n}, Priority.TELEMETRY, clock.now())
            )
        await buffer.append(EventDraft("meter.reading", "M-1", {}, Priority.TELEMETRY, clock.now()))
        await buffer.mark_published(list(range(1, 2721)))
        clock.advance(60)
        clock.jump_wall(FOUR_DAYS_S)
        await buffer.prune()
        assert buffer.stats.pruned_published == 0
        clock.advance(3600 + 120)  # an hour of real time later they are old enough
        await buffer.prune()
        assert buffer.stats.pruned_published == 2720
    finally:
        await buffer.close()
    assert _published(path) == 0


@pytest.mark.parametrize(
    ("offset_s", "synced", "syncs"),
    [(-THIRTY_YEARS_S, "0", False), (0.0, "1", True)],
    ids=["30-years-behind-unsynced", "synced-control"],
)
def test_meters_are_never_synced_from_an_unsynchronised_clock(
    tmp_path: Path, mosquitto: MosquittoBroker, offset_s: float, synced: str, syncs: bool
) -> None:
    offset = tmp_path / "offset"
    offset.write_text(str(offset_s))
    env = {"SEALGW_TEST_CLOCK_OFFSET_FILE": str(offset), "SEALGW_TEST_CLOCK_SYNCED": synced}
    with simulator(tmp_path, mosquitto.url, meters=True, log_level="INFO") as (config, _sim):
        gateway = start_gateway(config, **env)
        try:
            poll_until(lambda: "own address" in log_text(config), 60, "the BLE adapter open")
            if syncs:
                poll_until(lambda: "clock set to" in _sim_log(tmp_path), 60, "a time sync")
            else:
                skipped = "time sync skipped: the system clock is not synchronised"
                poll_until(lambda: log_text(config).count(skipped) >= 2, 60, "skips on both buses")
        finally:
            code = stop_gateway(gateway)
    assert code == 0
    assert ("clock set to" in _sim_log(tmp_path)) is syncs
    assert "clock set to 19" not in _sim_log(tmp_path)


def _sim_log(tmp_path: Path) -> str:
    return (tmp_path / "sim.log").read_text(errors="replace")


def test_a_wall_clock_jump_raises_gateway_clock_jump(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    offset = tmp_path / "offset"
    offset.write_text("0")
    config = write_config(tmp_path, mosquitto.url)
    with EventSubscriber(mosquitto.host, mosquitto.port) as subscriber:
        gateway = start_gateway(config, SEALGW_TEST_CLOCK_OFFSET_FILE=str(offset))
        try:
            assert subscriber.wait_for(lambda: bool(_of_type(subscriber, "gateway.started")), 30)
            offset.write_text(str(FOUR_DAYS_S))
            assert subscriber.wait_for(
                lambda: bool(_of_type(subscriber, "gateway.clock_jump")), 30
            ), log_text(config)[-2000:]
        finally:
            code = stop_gateway(gateway)
        assert code == 0
    [jump] = _of_type(subscriber, "gateway.clock_jump")
    assert jump["priority"] == "alarm"
    assert abs(jump["data"]["jump_s"] - FOUR_DAYS_S) < 60


def _of_type(subscriber: EventSubscriber, type_: str) -> list[dict[str, Any]]:
    """Events of one type, one per id (QoS 1 may deliver a copy twice)."""
    return list({e["id"]: e for e in list(subscriber.events) if e["type"] == type_}.values())
