"""The gateway follows the lock's rules: link limits, unlogged answers, NEEDS_AUDIT, seeding,
tagged entries after a failed fetch, and seal.unreachable when someone else holds the link.

Real LockWorld locks on a bumble radio, the real lock service and buffer (tests/fixtures/locks).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import firmware_sim.locks.model as lock_model
from firmware_sim.radio import serve_controller
from gateway.drivers.ble.adapters import BleAdapters
from gateway.locks.state import LOCKS_DB_FILE, LockStore
from gateway.protocol.events import Event
from tests.fixtures.locks import bench, log_events
from tests.fixtures.mosquitto import wait_until

WAIT_S = 20.0
OTHER_COMPANY = 0x1234  # the gateway listens for another company id: the locks' adverts are ignored


def _of(kind: str, seal: str = "SL-0001") -> object:
    return lambda e: e.type == kind and e.subject == seal


async def test_an_unlogged_answer_is_committed_from_the_answer_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with bench(tmp_path, count=1) as b:
        assert b.service is not None
        await b.wait_events(_of("seal.boot"))
        ticket = b.issue(max_uses=5)
        # Every challenge has expired by the time its COMMAND arrives: the lock logs the first
        # such rejection and answers later ones within a minute with log_index 0.
        monkeypatch.setattr(lock_model, "CHALLENGE_TTL_S", -1.0)
        logged = await b.run(b.request(ticket, op="unseal"))
        assert (logged.status, logged.reason) == ("failed", "challenge_expired")
        assert logged.log_index

        unlogged = await b.run(b.request(ticket, op="unseal"))

        assert (unlogged.status, unlogged.reason, unlogged.log_index) == (
            "failed",
            "challenge_expired",
            0,
        )
        failed = await b.wait_events(_of("seal.op_failed"), count=2)
        from_answer = failed[-1]
        assert from_answer.data["log_index"] == 0
        assert from_answer.data["source"] == "answer"
        assert from_answer.data["reason"] == "challenge_expired"
        store = LockStore.open(tmp_path / "gw" / LOCKS_DB_FILE)
        try:
            assert 0 not in store.load(b.locks.lock_ids["SL-0001"]).emitted
        finally:
            store.close()


async def test_needs_audit_fails_the_operation_with_that_reason(tmp_path: Path) -> None:
    async with bench(tmp_path, count=1, company_id=OTHER_COMPANY) as b:
        assert b.service is not None
        await b.wait_events(_of("seal.boot"))  # read once at start; adverts never reach us
        assert b.service.seal_state("SL-0001") == "sealed"
        b.locks.inject("SL-0001", "wire_cut")  # tampered; the gateway still believes sealed
        ticket = b.issue()

        outcome = await b.run(b.request(ticket, op="unseal"))

        assert (outcome.status, outcome.reason) == ("failed", "needs_audit")
        reply = outcome.to_json()  # what the handheld gets
        assert (reply["status"], reply["reason"]) == ("failed", "needs_audit")
        failed = (await b.wait_events(_of("seal.op_failed")))[0]
        assert failed.data["reason"] == "needs_audit"
        assert failed.data["result"] == "needs_audit"
        assert b.locks.locks["SL-0001"].model.state.name == "TAMPERED"


async def test_a_replayed_advert_from_before_provisioning_is_refused_after_seeding(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path, count=1, company_id=OTHER_COMPANY) as b:
        await b.stop_service()
        lock = b.locks.locks["SL-0001"]
        lock_id = b.locks.lock_ids["SL-0001"]
        captured = lock.advert_payload  # recorded by an attacker before the gateway came
        b.locks.inject("SL-0001", "low_battery")  # the lock's log and counter move on
        for path in (tmp_path / "gw").glob(LOCKS_DB_FILE + "*"):
            path.unlink()  # a gateway just provisioned: no high-water marks
        service = await b.start_service()

        service.beliefs.observe_payload(captured, source="advert")  # before the probe
        assert service.beliefs.tracker.last(lock_id) is None  # held back, not believed

        await b.wait_events(_of("seal.battery_low"))  # probed, seeded, read, reconciled
        assert not service.beliefs.needs_seed("SL-0001")
        assert service.beliefs.observe_payload(captured, source="advert") is None
        assert service.rejected["advert_replay"] == 1
        assert service.beliefs.record("SL-0001").battery_low


async def test_a_long_catch_up_is_split_across_links_within_the_lock_limits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with bench(tmp_path, count=1) as b:
        assert b.service is not None
        await b.wait_events(_of("seal.boot"))
        connects = b.service.scheduler.stats.connects
        real_on_commit = b.buffer.on_commit

        def slow_commit(events: object) -> None:  # a Pi's fsync: 3 s of lock time per commit
            b.clock.advance(3.0)
            assert real_on_commit is not None
            real_on_commit(events)  # type: ignore[arg-type]

        b.buffer.on_commit = slow_commit
        caplog.set_level(logging.INFO, logger="firmware_sim")
        model = b.locks.locks["SL-0001"].model
        for _ in range(120):  # 120 entries: 12 batches, 36 s of commits on one link
            model.set_battery_low(True)
            model.set_battery_low(False)
        b.locks.locks["SL-0001"].sync()
        head = model.head

        store, lock_id = b.service.store, b.locks.lock_ids["SL-0001"]
        await b.wait_for(lambda: store.load(lock_id).cursor >= head, WAIT_S)

        indexes = [i for seal, i in log_events(await b.events()) if seal == "SL-0001"]
        assert sorted(indexes) == list(range(1, head + 1))
        assert b.service.log_sync.stats.failed == 0
        assert b.service.scheduler.stats.connects >= connects + 2
        assert "dropping an idle or overlong link" not in caplog.text


async def test_a_failed_fetch_after_the_command_still_forwards_the_tagged_entry(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path, count=1) as b:
        assert b.service is not None
        await b.wait_events(_of("seal.boot"))
        lock = b.locks.locks["SL-0001"]
        head = lock.model.head
        ticket = b.issue()
        b.locks.inject("SL-0001", "slow:5")  # the answer waits 5 s of lock time
        started = await b.service.operations.execute(b.request(ticket, op="unseal"))
        await wait_until(lambda: lock.model.head > head, WAIT_S, "the lock acted")
        b.clock.advance(25.0)  # the answer comes late in the link's life: no time to fetch

        outcome = await b.service.operations.wait(started.op_id)

        assert outcome is not None and outcome.ok, outcome
        b.locks.inject("SL-0001", "fast")
        unsealed = (await b.wait_events(_of("seal.unsealed")))[0]
        assert (unsealed.data["source"], unsealed.data["log_index"]) == ("answer", head + 1)
        entry = (await b.wait_events(_of("seal.log_entry")))[0]
        assert entry.data["log_index"] == head + 1
        assert entry.data["event"] == "unsealed"
        assert entry.data["outcome_from"] == "answer"
        logged = lock.model.log_entries()[-1]
        assert entry.data["tag"] == logged.tag.hex()
        assert entry.data["audit_tag"] == logged.audit_tag.hex()
        assert entry.id != unsealed.id
        events = [e for e in await b.events() if e.type in ("seal.unsealed", "seal.log_entry")]
        assert len(events) == 2  # one outcome, one tagged entry: nothing counted twice


async def test_a_lock_held_by_someone_else_is_reported_unreachable(tmp_path: Path) -> None:
    async with bench(tmp_path, count=1, unreachable_after_s=2.0) as b:
        assert b.service is not None
        await b.wait_events(_of("seal.boot"))
        await wait_until(lambda: not b.service.scheduler.connected, WAIT_S, "no link of ours")
        attacker_radio = await serve_controller(b.locks.server.controller.link, name="attacker")
        attacker = BleAdapters()
        lock = b.locks.locks["SL-0001"]
        try:
            client = attacker.get(attacker_radio.adapter).make_client(lock.address, timeout=5)
            await client.connect()  # the lock's one link: it stops advertising
            assert lock.connected

            b.clock.advance(3.0)  # silent for 3 s of scanning

            alarms = await b.wait_events(_of("seal.unreachable"))
        finally:
            await attacker.close()
            await attacker_radio.close()
        alarm: Event = alarms[0]
        assert alarm.priority.name == "ALARM"
        assert alarm.data["silent_s"] >= 2.0
        assert alarm.data["last_seen"]
        assert b.service.snapshot()["unreachable"] == 1
        await wait_until(lambda: b.service.snapshot()["unreachable"] == 0, WAIT_S, "cleared")
        assert len([e for e in await b.events() if e.type == "seal.unreachable"]) == 1


async def test_busy_from_a_ring_blocked_by_tampers_is_fetched_then_retried(tmp_path: Path) -> None:
    async with bench(tmp_path, count=1, company_id=OTHER_COMPANY) as b:
        assert b.service is not None
        await b.wait_events(_of("seal.boot"))  # read once at start; adverts never reach us
        lock = b.locks.locks["SL-0001"]
        for _ in range(256):  # the ring's capacity
            lock.model.set_shell_open(True)  # a tamper entry the lock keeps until fetched
            lock.model.set_shell_open(False)
        lock.sync()
        ticket = b.issue()
        retries = b.service.scheduler.stats.retries

        started = await b.service.operations.execute(b.request(ticket, op="unseal"))
        await wait_until(lambda: b.service.scheduler.stats.retries > retries, WAIT_S, "BUSY")
        b.clock.advance(1.0)  # the retry backoff
        outcome = await b.service.operations.wait(started.op_id)

        assert outcome is not None
        assert (outcome.status, outcome.reason) == ("failed", "needs_audit")  # the lock answered
        tampers = await b.wait_events(_of("seal.tamper"), count=256)
        assert all(e.data["source"] == "log" for e in tampers)
