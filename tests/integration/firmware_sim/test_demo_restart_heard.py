"""The demo's KPI snapshot waits until the restarted gateway heard every lock again.

A restarted gateway republishes every seal as `online: false, last_seen: null` until it hears
the lock; a snapshot taken in that window counted those seals offline (lock_online_rate 0.2-0.75
on a loaded machine). The restart step now waits on `locks_heard_since`, read from a real ledger.
"""

from __future__ import annotations

import io
from pathlib import Path

from firmware_sim.demo.day import GATEWAY_ID, LOCKS, Day, Timeline, locks_heard_since
from gateway.protocol.canonical import canonical_bytes
from master_station.ledger.factory import open_ledger

BEFORE = "2026-12-07T10:00:00.000Z"  # heard by the gateway that was SIGKILLed
STARTED = "2026-12-07T10:00:05.000Z"  # gateway.started of the restarted process
AFTER = "2026-12-07T10:00:05.300Z"  # heard by the restarted process


def state(seal: str, *, online: bool, last_seen: str | None) -> bytes:
    return canonical_bytes({
        "seal": seal, "lock_id": "5ea1000000000001", "state": "sealed", "wire": "intact",
        "battery": "ok", "tamper": False, "online": online, "log_head": 3, "last_seen": last_seen,
    })  # fmt: skip


def test_restart_waits_until_every_lock_is_heard_by_the_new_process(tmp_path: Path) -> None:
    day = Day(tmp_path, 32.0, Timeline(io.StringIO(), total=1))
    heard = locks_heard_since(day, STARTED)
    seals = [f"SL-{n:04d}" for n in range(1, LOCKS + 1)]
    assert not heard(), "no ledger yet"
    ledger = open_ledger(day.ledger)
    try:
        for seal in seals:
            ledger.put_seal_state(GATEWAY_ID, seal, state(seal, online=True, last_seen=BEFORE))
        assert not heard(), "states of the killed process are not news of the restarted one"
        for seal in seals:
            ledger.put_seal_state(GATEWAY_ID, seal, state(seal, online=False, last_seen=None))
        assert not heard(), "the start-up republish says only: not heard yet"
        for seal in seals[:-1]:
            ledger.put_seal_state(GATEWAY_ID, seal, state(seal, online=True, last_seen=AFTER))
        assert not heard(), "one lock is still unheard"
        ledger.put_seal_state(GATEWAY_ID, seals[-1], state(seals[-1], online=True, last_seen=AFTER))
        assert heard()
    finally:
        ledger.close()
