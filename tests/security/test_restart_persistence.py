"""Finding 6: a restarted lock keeps its counters and log, so saved high-water marks hold."""

from __future__ import annotations

from pathlib import Path

from firmware_sim.locks.world import LockWorld
from gateway.drivers.ble.adapters import BleAdapters
from gateway.locks.config import read_key_file
from gateway.protocol import seal_advert as adv
from gateway.protocol import seal_exchange as ex
from gateway.protocol import seal_frames as sf
from gateway.protocol.clock import ManualClock
from tests.integration.firmware_sim.test_lock_peripheral import Bench, _next_advert
from tests.security.radio import connect


async def _session(
    world: LockWorld, tracker: adv.AdvertTracker | None
) -> tuple[adv.AdvertTracker, adv.Advert, int, list[sf.LogEntry]]:
    """Start `world`, take a fresh advert, one challenge and the whole log; stop it."""
    adapters = BleAdapters()
    await world.start()
    try:
        bench = Bench(world, adapters.get(world.adapter), world.truth.path or Path())
        tracker = tracker or bench.advert_tracker()
        lock = world.locks["SL-0001"]
        seen = await _next_advert(bench, lock.address, tracker)
        session = await connect(bench, "SL-0001")
        request = ex.challenge_request()
        challenge = await session.request(request)
        assert isinstance(challenge, sf.Challenge)
        lock_id = world.lock_ids["SL-0001"]
        k_log = read_key_file(world.keys["SL-0001"].log_key_file)
        entries = await session.fetch_log(k_log, lock_id, page=10)
        await session.client.disconnect()
        return tracker, seen.advert, challenge.counter, entries
    finally:
        await adapters.close()
        await world.close()


async def test_restart_on_the_same_state_dir_keeps_counters_and_log(tmp_path: Path) -> None:
    clock = ManualClock()
    first = LockWorld(1, tmp_path / "sim", tmp_path / "truth.jsonl", clock=clock)
    tracker, advert, counter, entries = await _session(first, None)

    again = LockWorld(1, tmp_path / "sim", tmp_path / "truth.jsonl", clock=clock)
    _, advert2, counter2, entries2 = await _session(again, tracker)  # saved high-water marks

    assert advert2.counter > advert.counter  # the tracker accepted it: no advert_replay
    assert counter2 > counter  # no counter_rollback
    assert entries2[: len(entries)] == entries
    assert [e.event for e in entries2[len(entries) :]] == [sf.LogEvent.BOOT]
