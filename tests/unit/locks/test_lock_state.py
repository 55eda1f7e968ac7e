"""Pure parts of the lock service: deterministic event ids, entry events, locks.db, seal beliefs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gateway.locks.beliefs import SealBeliefs
from gateway.locks.reconcile import entry_draft, lock_event_id
from gateway.locks.state import LockSpec, LockStore, SealRecord, SealStates
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import EventDraft
from gateway.protocol.seal_advert import Advert, encode_advert, short_id, sign_advert
from gateway.protocol.seal_frames import LockState, LogEntry, LogEvent, ResultCode, WireLoop

LOCK = LockSpec("SL-0001", bytes.fromhex("5ea1000000000001"), "", bytes(32), bytes(32))
RTC = 1767229200


def entry(index: int, event: LogEvent, result: ResultCode = ResultCode.OK) -> LogEntry:
    return LogEntry(
        index, RTC, event, result, LockState.SEALED, WireLoop.BROKEN,
        bytes(8), bytes(8), b"\x11" * 8, b"\x22" * 8,
    )  # fmt: skip


def test_event_ids_are_fixed_by_gateway_lock_and_index() -> None:
    first = lock_event_id("gw-1", LOCK.lock_id, "log", 7, RTC)
    assert first == lock_event_id("gw-1", LOCK.lock_id, "log", 7, RTC)
    assert len(first) == 26
    assert first != lock_event_id("gw-1", LOCK.lock_id, "log", 8, RTC)
    assert first != lock_event_id("gw-2", LOCK.lock_id, "log", 7, RTC)
    assert first != lock_event_id("gw-1", bytes.fromhex("5ea1000000000002"), "log", 7, RTC)
    # The time part is the lock's RTC, as in every ULID: ids sort by the entry's time.
    assert first[:10] == EventDraft("a.b", "x", {}, 0, datetime.fromtimestamp(RTC, UTC)).id[:10]  # type: ignore[arg-type]


def test_entry_events_carry_the_macd_fields() -> None:
    tamper = entry_draft("gw-1", LOCK, entry(5, LogEvent.TAMPER_WIRE_CUT), None)
    assert (tamper.type, tamper.priority.name, tamper.subject) == (
        "seal.tamper",
        "ALARM",
        "SL-0001",
    )
    assert tamper.data["cause"] == "wire_cut"
    assert tamper.data["log_index"] == 5
    assert tamper.data["audit_tag"] == "22" * 8
    assert len(str(tamper.data["entry"])) == 88
    assert tamper.id == lock_event_id("gw-1", LOCK.lock_id, "log", 5, RTC)
    rejected = entry_draft("gw-1", LOCK, entry(6, LogEvent.OP_REJECTED, ResultCode.REPLAY), None)
    assert (rejected.type, rejected.data["reason"]) == ("seal.op_rejected", "replay")
    unknown = entry_draft("gw-1", LOCK, entry(7, LogEvent(0x42)), None)
    assert unknown.type == "seal.log_entry"


def test_lock_store_keeps_cursor_counter_advert_and_emitted(tmp_path: Path) -> None:
    store = LockStore.open(tmp_path / "locks.db")
    assert store.load(LOCK.lock_id).cursor == 0
    store.mark_emitted(LOCK.lock_id, [4, 6])
    store.advance(LOCK.lock_id, 5)
    store.advance(LOCK.lock_id, 3)  # never backwards
    store.set_counter(LOCK.lock_id, 9)
    store.set_counter(LOCK.lock_id, 2)
    advert = Advert(1, LockState.SEALED, 0, 12, 5, b"\x00" * 6)
    store.set_advert(LOCK.lock_id, advert)
    store.set_unseal_window(LOCK.lock_id, (10, 20))
    store.close()

    record = LockStore.open(tmp_path / "locks.db").load(LOCK.lock_id)
    assert (record.cursor, record.counter, record.advert) == (5, 9, advert)
    assert record.emitted == frozenset({6})
    assert record.unseal_window == (10, 20)


def test_seal_states_offline_online_and_unseal_window() -> None:
    record = SealRecord("SL-0001", LOCK.lock_id, state=LockState.SEALED)
    states = SealStates([record])
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    assert states.heard(record, 0.0, moment, fresh=True) is False
    assert states.going_offline(10.0, silent_s=20.0, stale_s=100.0) == []
    assert states.going_offline(30.0, silent_s=20.0, stale_s=100.0) == [record]
    assert states.going_offline(31.0, silent_s=20.0, stale_s=100.0) == []  # reported once
    assert states.heard(record, 32.0, moment, fresh=False) is True  # back online
    assert states.going_offline(150.0, silent_s=1000.0, stale_s=100.0) == [record]  # stale
    assert states.seal_state("SL-0001") == "sealed"
    assert states.seal_state("SL-0404") is None
    record.unseal_window = (int(moment.timestamp()), int(moment.timestamp()) + 60)
    assert states.unseal_authorized("SL-0001", moment)
    assert not states.unseal_authorized("SL-0001", datetime(2026, 1, 2, tzinfo=UTC))


def test_a_persisted_seed_floors_the_first_advert_after_a_restart(tmp_path: Path) -> None:
    lock = LockSpec("SL-0001", LOCK.lock_id, "", b"\x07" * 32, bytes(32), adv_counter_floor=3)

    def advert(counter: int, head: int) -> bytes:
        unsigned = Advert(short_id(lock.lock_id), LockState.SEALED, 0, counter, head, bytes(6))
        return encode_advert(sign_advert(unsigned, lock.lock_id, lock.k_adv))

    def no_events(draft: EventDraft) -> None:
        raise AssertionError(f"unexpected event {draft.type}")

    path = tmp_path / "locks.db"
    store = LockStore.open(path)
    beliefs = SealBeliefs({lock.seal_id: lock}, store, no_events, ManualClock())  # type: ignore[arg-type]
    assert beliefs.needs_seed("SL-0001")
    assert beliefs.observe_payload(advert(9, 9), source="advert") is not None  # held back
    assert beliefs.tracker.last(lock.lock_id) is None
    beliefs.seed(lock, log_head=5)
    store.close()

    store = LockStore.open(path)  # a restart before any advert was accepted
    assert store.load(lock.lock_id).seed == (3, 5)
    beliefs = SealBeliefs({lock.seal_id: lock}, store, no_events, ManualClock())  # type: ignore[arg-type]
    assert not beliefs.needs_seed("SL-0001")
    assert beliefs.observe_payload(advert(4, 4), source="advert") is None  # head before the probe
    assert beliefs.observe_payload(advert(3, 6), source="advert") is None  # provisioning counter
    assert beliefs.rejected["advert_replay"] == 2
    heard = beliefs.observe_payload(advert(9, 9), source="advert")
    assert heard is not None and heard.observation.fresh
    store.close()
