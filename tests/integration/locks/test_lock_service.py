"""The lock service end to end: LockWorld locks on a bumble radio, reached through bleak."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bumble import hci
from bumble.device import Device
from bumble.host import Host

from firmware_sim.locks.model import LockModel
from firmware_sim.locks.peripheral import LockPeripheral
from firmware_sim.locks.world import lock_id_for
from firmware_sim.radio import SpecController, attach_host
from gateway.errors import LinkLostError
from gateway.handheld.api import OperationsBackend
from gateway.locks.scheduler import Urgency
from gateway.locks.session import BleLockConnector, LockSession
from gateway.protocol.events import Event
from gateway.protocol.seal_exchange import (
    build_command,
    challenge_request,
    check_challenge,
    verify_result,
)
from gateway.protocol.seal_frames import Challenge, CommandResult, LockState, Operation, ResultCode
from tests.fixtures.auth import HOUR, T0
from tests.fixtures.locks import Bench, bench, log_events


def state_of(retained: dict[str, bytes], seal: str) -> dict[str, object]:
    raw = retained.get(f"seals/{seal}/state")
    return json.loads(raw) if raw else {}


async def test_scan_gives_verified_state_and_reconciles_boot_entries(lock_bench: Bench) -> None:
    seals = ["SL-0001", "SL-0002", "SL-0003"]
    await lock_bench.wait_for(
        lambda: all(state_of(lock_bench.retained, s).get("online") for s in seals)
    )
    assert all(state_of(lock_bench.retained, s)["state"] == "sealed" for s in seals)
    boots = await lock_bench.wait_events(lambda e: e.type == "seal.boot", count=3)
    assert sorted(e.subject for e in boots) == seals
    assert all(e.data["log_index"] == 1 and e.data["source"] == "log" for e in boots)
    assert lock_bench.service is not None
    assert lock_bench.service.seal_state("SL-0001") == "sealed"
    snap = lock_bench.service.snapshot()
    assert snap["seen"] == 3
    assert snap["spoofed_adverts"] == 0


async def test_unseal_then_seal_end_to_end(lock_bench: Bench) -> None:
    assert lock_bench.service is not None
    await lock_bench.wait_for(lambda: state_of(lock_bench.retained, "SL-0001").get("online"))
    ticket = lock_bench.issue()
    lock = lock_bench.locks.locks["SL-0001"].model

    result = await lock_bench.run(lock_bench.request(ticket, op="unseal"))

    assert result.ok, result
    assert (result.status, result.state, result.log_index) == ("done", "unsealed", 2)
    assert lock.state is LockState.UNSEALED
    events = await lock_bench.events()
    kinds = [e.type for e in events if e.subject == "SL-0001" and e.priority.name == "AUDIT"]
    assert kinds[-3:] == ["seal.op_requested", "seal.op_allowed", "seal.unsealed"]
    unsealed = next(e for e in events if e.type == "seal.unsealed")
    assert unsealed.data["log_index"] == 2
    assert unsealed.data["operator"] == "op-0042"
    assert unsealed.data["ticket_id"] == ticket.ticket_id
    assert unsealed.data["audit_tag"] == lock.log_entries()[-1].audit_tag.hex()
    assert lock_bench.service.seal_state("SL-0001") == "unsealed"
    assert lock_bench.service.unseal_authorized("SL-0001", lock_bench.clock.now())
    assert lock_bench.tickets.uses(ticket.ticket_id) == 1

    result = await lock_bench.run(lock_bench.request(ticket, op="seal"))

    assert result.ok, result
    assert (result.state, result.wire, result.log_index) == ("sealed", "intact", 3)
    sealed = (await lock_bench.wait_events(lambda e: e.type == "seal.sealed"))[0]
    assert sealed.data["wire_loop"] == "intact"
    assert sealed.data["log_index"] == 3
    assert not lock_bench.service.unseal_authorized("SL-0001", lock_bench.clock.now())
    assert state_of(lock_bench.retained, "SL-0001")["state"] == "sealed"
    assert lock_bench.service.snapshot()["ops_ok"] == 2
    per_entry = log_events(await lock_bench.events())
    assert len(per_entry) == len(set(per_entry))


async def test_tamper_is_raised_from_the_advert_then_reconciled(lock_bench: Bench) -> None:
    assert lock_bench.service is not None
    await lock_bench.wait_events(lambda e: e.type == "seal.boot", count=3)
    connects = lock_bench.service.scheduler.stats.connects

    lock_bench.locks.inject("SL-0002", "wire_cut")

    tampers = await lock_bench.wait_events(lambda e: e.type == "seal.tamper", count=2)
    from_advert, from_log = tampers
    assert from_advert.data["source"] == "advert"
    assert from_advert.priority.name == "ALARM"
    assert from_advert.data["wire_cut"] is True
    assert from_advert.seq < from_log.seq
    assert (from_log.data["source"], from_log.data["cause"]) == ("log", "wire_cut")
    assert from_log.data["log_index"] == 2
    assert (
        lock_bench.service.scheduler.stats.connects == connects + 1
    )  # one connect, after the alarm
    assert lock_bench.service.seal_state("SL-0002") == "tampered"
    state = state_of(lock_bench.retained, "SL-0002")
    assert (state["state"], state["tamper"], state["wire"]) == ("tampered", True, "broken")

    lock_bench.locks.inject("SL-0003", "low_battery")
    low = await lock_bench.wait_events(lambda e: e.type == "seal.battery_low", count=2)
    assert {e.data["source"] for e in low} == {"advert", "log"}
    assert low[0].priority.name == "STATE"


async def test_spoofed_and_replayed_adverts_are_rejected_and_counted(lock_bench: Bench) -> None:
    assert lock_bench.service is not None
    await lock_bench.wait_events(lambda e: e.type == "seal.boot", count=3)
    old_payload = lock_bench.locks.locks["SL-0003"].advert_payload
    lock_bench.locks.inject("SL-0003", "low_battery")  # the real lock moves its counter on
    await lock_bench.wait_events(lambda e: e.type == "seal.battery_low", count=2)
    # A rogue lock with the right id but not the right key, on the same radio.
    clock = lock_bench.clock
    rogue_model = LockModel(lock_id_for(3), os.urandom(32), clock=clock)
    rogue_model.set_shell_open(True)
    link = lock_bench.locks.server.controller.link
    rogue = LockPeripheral("ROGUE", rogue_model, link, "F5:EA:10:00:FF:03", clock=clock)
    lock_bench.spy_adverts()
    await rogue.start()
    try:
        await lock_bench.wait_for(lambda: lock_bench.service.rejected["bad_advert_mac"] >= 3)
    finally:
        await rogue.close()
    assert (
        lock_bench.service.beliefs.observe_payload(old_payload, source="advert") is None
    )  # replay
    assert lock_bench.service.rejected["advert_replay"] == 1
    snap = lock_bench.service.snapshot()
    assert snap["spoofed_adverts"] >= 4
    assert lock_bench.service.seal_state("SL-0003") == "sealed"
    tampers = [e for e in await lock_bench.events() if e.type == "seal.tamper"]
    assert tampers == []


async def test_replayed_command_frame_is_rejected_by_the_lock_and_logged(lock_bench: Bench) -> None:
    service = lock_bench.service
    assert service is not None
    await lock_bench.wait_events(lambda e: e.type == "seal.boot", count=3)
    ticket = lock_bench.issue()
    credential = lock_bench.tickets.credential(ticket.ticket_id, "SL-0001")
    lock = service.locks["SL-0001"]
    answers: list[CommandResult] = []

    async def replay(session: LockSession) -> None:
        request = challenge_request()
        first = await session.request(request)
        assert isinstance(first, Challenge)
        ctx = check_challenge(request, first, lock.lock_id, None)
        command = build_command(credential, ctx, first.counter, Operation.UNSEAL)
        answer = await session.request(command)
        assert isinstance(answer, CommandResult)
        answers.append(verify_result(credential, ctx, command, answer))
        again = challenge_request()
        second = await session.request(again)
        assert isinstance(second, Challenge)
        ctx2 = check_challenge(again, second, lock.lock_id, first.counter)
        replayed = await session.request(command)  # the same bytes, an old challenge
        assert isinstance(replayed, CommandResult)
        answers.append(verify_result(credential, ctx2, command, replayed))
        await service.log_sync.reconcile_on(lock, session)

    await service.scheduler.run("SL-0001", Urgency.HANDHELD, replay)

    assert [a.result for a in answers] == [ResultCode.OK, ResultCode.REPLAY]
    rejected = await lock_bench.wait_events(lambda e: e.type == "seal.op_rejected")
    assert rejected[0].data["reason"] == "replay"
    assert rejected[0].data["log_index"] == answers[1].log_index
    assert (
        lock_bench.locks.locks["SL-0001"].model.state is LockState.UNSEALED
    )  # only the first acted


async def test_forged_answer_is_detected_and_the_truth_comes_from_the_log(
    lock_bench: Bench,
) -> None:
    assert lock_bench.service is not None
    await lock_bench.wait_events(lambda e: e.type == "seal.boot", count=3)
    ticket = lock_bench.issue()
    lock_bench.locks.inject("SL-0001", "corrupt")

    result = await lock_bench.run(lock_bench.request(ticket, op="unseal"))

    assert (result.ok, result.status, result.reason) == (False, "unknown", "bad_answer_mac")
    events = await lock_bench.events()
    assert [e.type for e in events if e.type == "seal.unsealed"] == []
    unconfirmed = [e for e in events if e.type == "seal.op_unconfirmed"]
    assert unconfirmed[0].data["reason"] == "bad_answer_mac"
    recovered = await lock_bench.wait_events(lambda e: e.type == "seal.unsealed")
    assert recovered[0].data["log_index"] == 2
    assert recovered[0].data["work_order"] == ticket.work_order  # context kept for the log
    assert lock_bench.service.snapshot()["ops_unknown"] == 1


async def test_operations_outside_ticket_scope_or_window_are_denied(lock_bench: Bench) -> None:
    assert lock_bench.service is not None
    await lock_bench.wait_events(lambda e: e.type == "seal.boot", count=3)
    ticket = lock_bench.issue()
    later = lock_bench.issue(not_before=T0 + 3 * HOUR, not_after=T0 + 4 * HOUR)
    seal_only = lock_bench.issue(ops=["seal"])
    cases = [
        (lock_bench.request(ticket, seal_id="SL-0003"), "seal_out_of_scope"),
        (lock_bench.request(later), "ticket_not_yet_valid"),
        (lock_bench.request(seal_only), "operation_not_in_ticket"),
        (lock_bench.request(ticket, op="seal"), "seal_state_forbids"),
        (lock_bench.request(ticket, seal_id="SL-0099"), "seal_out_of_scope"),
    ]
    for request, reason in cases:
        result = await lock_bench.run(request)
        assert (result.ok, result.status, result.reason) == (False, "denied", reason)
    denied = [e.data["reason"] for e in await lock_bench.events() if e.type == "seal.op_denied"]
    assert denied == [reason for _, reason in cases]
    assert lock_bench.service.scheduler.stats.connects == 3  # the boot reconciliations only
    assert all(m.model.state is LockState.SEALED for m in lock_bench.locks.locks.values())


async def test_link_dropped_mid_command_gives_no_false_done(lock_bench: Bench) -> None:
    assert lock_bench.service is not None
    await lock_bench.wait_events(lambda e: e.type == "seal.boot", count=3)
    ticket = lock_bench.issue()
    lock_bench.locks.inject("SL-0002", "drop_link")

    result = await lock_bench.run(lock_bench.request(ticket, seal_id="SL-0002"))

    assert (result.ok, result.status, result.reason) == (False, "unknown", "link_lost")
    assert lock_bench.locks.locks["SL-0002"].model.state is LockState.UNSEALED  # it did act
    assert [e for e in await lock_bench.events() if e.type == "seal.unsealed"] == []
    recovered = await lock_bench.wait_events(lambda e: e.type == "seal.unsealed")
    assert (recovered[0].subject, recovered[0].data["log_index"]) == ("SL-0002", 2)
    assert recovered[0].data["operator"] == "op-0042"
    assert lock_bench.service.seal_state("SL-0002") == "unsealed"
    assert log_events(await lock_bench.events()).count(("SL-0002", 2)) == 1


async def test_a_lock_gone_out_of_range_mid_command_fails_clearly_and_recovers(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path) as b:
        assert b.service is not None
        await b.wait_events(lambda e: e.type == "seal.boot", count=3)
        ticket = b.issue()
        b.locks.inject("SL-0002", "out_of_range_on_command")

        result = await b.run(b.request(ticket, seal_id="SL-0002"))

        # The lock acted, then left: the link timed out; nothing is claimed.
        assert (result.ok, result.status, result.reason) == (False, "unknown", "link_lost")
        assert b.locks.locks["SL-0002"].model.state is LockState.UNSEALED
        unconfirmed = await b.wait_events(lambda e: e.type == "seal.op_unconfirmed")
        assert unconfirmed[0].data["reason"] == "link_lost"
        # The alarm reconciliation that follows cannot reach it, gives up, and holds nothing.
        scheduler, budget = b.service.scheduler, b.service.section.max_connections
        failed = b.service.log_sync.stats
        await _advance_until(b, lambda _events: failed.failed)
        await _advance_until(
            b, lambda _: scheduler.budget.free == budget and not scheduler.connected
        )

        b.locks.inject("SL-0002", "in_range")
        recovered = await _advance_until(
            b, lambda events: [e for e in events if e.type == "seal.unsealed"]
        )
        assert (recovered[0].subject, recovered[0].data["log_index"]) == ("SL-0002", 2)
        assert recovered[0].data["operator"] == "op-0042"

        again = await b.run(b.request(ticket, seal_id="SL-0002", op="seal"))
        assert (again.ok, again.state, again.log_index) == (True, "sealed", 3)
        assert log_events(await b.events()).count(("SL-0002", 2)) == 1


async def _advance_until(b: Bench, found: Callable[[list[Event]], Any]) -> Any:
    """Step the manual clock (retry backoffs sleep on it) until `found(events)` is truthy."""
    for _ in range(400):
        hit = found(await b.events())
        if hit:
            return hit
        b.clock.advance(0.5)
        await asyncio.sleep(0.05)
    raise AssertionError("not reached while the clock advanced 200 s")


async def test_reconciliation_is_exactly_once_across_a_restart(
    lock_bench: Bench, tmp_path: Path
) -> None:
    assert lock_bench.service is not None
    await lock_bench.wait_events(lambda e: e.type == "seal.boot", count=3)
    ticket = lock_bench.issue()
    assert (await lock_bench.run(lock_bench.request(ticket, seal_id="SL-0002"))).ok
    lock_bench.locks.inject("SL-0001", "low_battery")
    lock_bench.locks.inject("SL-0001", "shell_open")
    await lock_bench.wait_events(lambda e: e.type == "seal.tamper" and "log_index" in e.data)
    await lock_bench.wait_events(lambda e: e.type == "seal.battery_low" and "log_index" in e.data)
    await lock_bench.stop_service()
    # The crash window: events committed, cursors not yet written. Entries arrive meanwhile.
    with sqlite3.connect(tmp_path / "gw" / "locks.db") as db:
        db.execute("UPDATE locks SET cursor = 0")
    lock_bench.locks.inject("SL-0003", "reboot")

    service = await lock_bench.start_service()
    heads = lock_bench.spy_reconciles()
    await lock_bench.wait_for(lambda: len(heads) >= 3)

    truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    expected = sorted((t["seal"], t["index"]) for t in truth if t["kind"] == "lock_log")
    seen = log_events(await lock_bench.events())
    assert sorted(seen) == expected  # every entry, each exactly once
    assert ("SL-0003", 2) in seen
    assert service.reconciler.duplicates >= 5  # re-fetched entries were refused as repeats


async def test_offline_after_silence_and_online_again(tmp_path: Path) -> None:
    async with bench(tmp_path, count=1, offline_after_s=5.0, unreachable_after_s=2.0) as b:
        assert b.service is not None
        await b.wait_for(lambda: state_of(b.retained, "SL-0001").get("online"))
        peripheral = b.locks.locks["SL-0001"]
        await peripheral.device.stop_advertising()

        b.clock.advance(6.0)

        offline = await b.wait_events(lambda e: e.type == "seal.offline")
        assert offline[0].subject == "SL-0001"
        assert offline[0].priority.name == "STATE"
        assert state_of(b.retained, "SL-0001")["online"] is False
        assert b.service.snapshot()["offline"] == 1

        await peripheral.device.start_advertising(
            auto_restart=True,
            advertising_data=peripheral.device.advertising_data,
            advertising_interval_min=100,
            advertising_interval_max=100,
        )
        online = await b.wait_events(lambda e: e.type == "seal.online")
        assert online[0].seq > offline[0].seq
        assert state_of(b.retained, "SL-0001")["online"] is True


async def test_handheld_backend_denies_at_once_and_reports_the_outcome(lock_bench: Bench) -> None:
    assert lock_bench.service is not None
    await lock_bench.wait_events(lambda e: e.type == "seal.boot", count=3)
    backend: OperationsBackend = lock_bench.service.operations  # what the daemon hands the handheld
    ticket = lock_bench.issue()
    assert [t.ticket_id for t in await backend.list_tickets("op-0042")] == [ticket.ticket_id]

    denied = await backend.execute(lock_bench.request(ticket, seal_id="SL-0003"))
    assert denied.to_json() == {
        "op_id": denied.op_id,
        "op": "unseal",
        "seal_id": "SL-0003",
        "status": "denied",
        "reason": "seal_out_of_scope",
        "result": "denied",
        "state": "",
        "log_index": None,
    }

    pending = await backend.execute(lock_bench.request(ticket))
    assert pending.to_json()["status"] == "pending"
    await lock_bench.service.operations.wait(pending.op_id)  # the command running in the background
    found = await backend.result(pending.op_id)
    assert found is not None
    assert {k: v for k, v in found.to_json().items() if k != "op_id"} == {
        "op": "unseal",
        "seal_id": "SL-0001",
        "status": "done",
        "reason": "",
        "result": "done",
        "state": "unsealed",
        "log_index": 2,
    }
    status = await backend.seal_state("SL-0001")
    assert status is not None
    assert status.state == "unsealed"


async def test_a_connect_says_why_it_failed(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        transport = b.adapters.get(b.locks.adapter)
        specs = b.service.locks if b.service is not None else {}
        # BlueZ connects only to devices its scan found: no advert seen, no connect attempted.
        blind = BleLockConnector(transport, specs, op_timeout_s=2.0, discovered_only=True)
        with pytest.raises(LinkLostError, match="SL-0001: not heard by the scanner yet"):
            await blind.connect("SL-0001", 2.0)
        # A lock that does not answer: the timeout is named, not an empty message.
        b.locks.inject("SL-0003", "out_of_range")
        direct = BleLockConnector(transport, specs, op_timeout_s=2.0)
        with pytest.raises(LinkLostError, match=r"SL-0003: connect failed: not connected .* 1 s"):
            await direct.connect("SL-0003", 1.0)


async def test_an_outcome_settles_before_its_link_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_close = LockSession.close

    async def slow_close(session: LockSession) -> None:
        await asyncio.sleep(1.0)  # bluetoothd waits 2 s before it drops a link
        await real_close(session)

    monkeypatch.setattr(LockSession, "close", slow_close)
    async with bench(tmp_path) as b:
        assert b.service is not None
        budget, scheduler = b.service.section.max_connections, b.service.scheduler
        await b.wait_events(lambda e: e.type == "seal.boot", count=3)
        await _polled(lambda: scheduler.budget.free == budget)
        ticket = b.issue()

        result = await b.run(b.request(ticket, op="unseal"))

        assert (result.ok, result.state) == (True, "unsealed")
        assert scheduler.budget.free == budget - 1  # its link is still being closed
        await _polled(lambda: scheduler.budget.free == budget)


async def _polled(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition no commit or publish announces (the scheduler's budget)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_peer_without_the_seal_service_is_a_retryable_link_failure(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        controller = SpecController("stranger", link=b.locks.link)
        stranger = Device(
            name="stranger",
            address=hci.Address("F5:EA:10:00:00:99"),
            host=Host(*attach_host(controller)),
        )
        await stranger.power_on()
        await stranger.start_advertising(auto_restart=True)
        specs = b.service.locks if b.service is not None else {}
        connector = BleLockConnector(
            b.adapters.get(b.locks.adapter),
            specs,
            op_timeout_s=2.0,
            addresses=lambda _seal: "F5:EA:10:00:00:99",
        )
        # BlueZ under load once resolved a lock's services without them; the next connect
        # had them. So it is retried, not taken for a protocol violation.
        with pytest.raises(LinkLostError, match="characteristics were not found"):
            await connector.connect("SL-0001", 3.0)
        await stranger.stop_advertising()
        b.locks.link.remove_controller(controller)
