"""The lock's security rules of docs/protocol.md at model level: time, ring, fragments, NVM."""

from __future__ import annotations

from pathlib import Path

from firmware_sim.locks.model import COUNTER_BLOCK, MAX_TIME_CORRECTION_S, LockModel
from firmware_sim.locks.nvm import LockNvm
from gateway.protocol import seal_fragments as frag
from gateway.protocol import seal_frames as sf
from gateway.protocol.clock import ManualClock
from tests.unit.firmware_sim.test_lock_model import (
    K_LOCK,
    LOCK_ID,
    NOW,
    START,
    Gateway,
    clock,
    gateway,
    lock,
    make_credential,
)

__all__ = ["clock", "gateway", "lock"]  # fixtures shared with test_lock_model

Op = sf.Operation
R = sf.ResultCode
DAY = 86_400


def test_a_valid_clock_takes_one_small_correction_a_day(
    clock: ManualClock, gateway: Gateway
) -> None:
    wide = make_credential(
        ops=frozenset({Op.SET_TIME}), ticket=9, not_before=NOW - DAY, not_after=NOW + 3 * DAY
    )
    too_far = NOW + MAX_TIME_CORRECTION_S + 1
    assert gateway.operate(wide, Op.SET_TIME, too_far).result is R.BAD_TIME
    assert gateway.operate(wide, Op.SET_TIME, NOW - 30).result is R.OK
    assert gateway.operate(wide, Op.SET_TIME, NOW - 60).result is R.BAD_TIME  # same day
    clock.advance(DAY)
    assert gateway.operate(wide, Op.SET_TIME, NOW + DAY - 90).result is R.OK


def test_a_ring_full_of_unfetched_tampers_blocks_until_fetched(clock: ManualClock) -> None:
    lock = LockModel(
        LOCK_ID, K_LOCK, clock=clock, state=sf.LockState.SEALED, wire_intact=True, log_capacity=3
    )
    gateway = Gateway(lock)
    lock.set_wire_intact(False)  # 2: TAMPER_WIRE_CUT
    lock.set_shell_open(True)  # 3: TAMPER_SHELL_OPEN
    lock.set_battery_low(True)  # 4 overwrites BOOT; now the oldest is an unfetched tamper
    lock.set_shell_open(False)
    lock.set_shell_open(True)  # not logged: the ring is blocked; the flag stays
    assert [e.index for e in lock.log_entries()] == [2, 3, 4]
    assert lock.flags & sf.StatusFlags.TAMPER
    assert gateway.send(sf.ChallengeRequest(bytes(16))) == sf.ErrorFrame(sf.ErrorCode.BUSY)
    assert [e.event for e in gateway.fetch(0).entries][:2] == [
        sf.LogEvent.TAMPER_WIRE_CUT,
        sf.LogEvent.TAMPER_SHELL_OPEN,
    ]
    assert isinstance(gateway.send(sf.ChallengeRequest(bytes(16))), sf.Challenge)


def test_a_late_continuation_answers_timeout(lock: LockModel, clock: ManualClock) -> None:
    parts = frag.fragment(sf.encode(sf.LogFetch(bytes(16), 0, 10)), 23)
    assert len(parts) == 2
    assert lock.handle_fragment(parts[0]) == []
    clock.advance(frag.REASSEMBLY_TIMEOUT_S + 1)
    answer = frag.Reassembler().feed(lock.handle_fragment(parts[1])[0], 0.0)
    assert answer == sf.encode(sf.ErrorFrame(sf.ErrorCode.TIMEOUT))


def test_nvm_keeps_counters_state_and_log_across_a_power_up(tmp_path: Path) -> None:
    clock = ManualClock(START)
    path = tmp_path / "SL-0001.nvm.json"
    lock = LockModel(LOCK_ID, K_LOCK, clock=clock, nvm=LockNvm(path), wire_intact=True)
    gateway = Gateway(lock)
    assert gateway.operate(make_credential(), Op.SEAL).result is R.OK
    adv_before = lock.adv_counter if lock.advert_payload() else 0

    again = LockModel(LOCK_ID, K_LOCK, clock=clock, nvm=LockNvm(path))
    _, challenge = Gateway(again).challenge()
    assert challenge.counter == COUNTER_BLOCK + 1  # resumes past the reserved block
    assert again.state is sf.LockState.SEALED
    assert [e.event for e in again.log_entries()] == [
        sf.LogEvent.BOOT,
        sf.LogEvent.SEALED,
        sf.LogEvent.BOOT,
    ]
    again.advert_payload()
    assert again.adv_counter > adv_before
