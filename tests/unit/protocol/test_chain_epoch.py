"""Chain epochs: an announced epoch verifies, an unannounced break does not."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from gateway.protocol.chain import announced_ranges, epoch_start, link_ok, verify_chain
from gateway.protocol.events import GENESIS_HASH, EventDraft, Priority, seal_event

TS = datetime(2026, 1, 1, tzinfo=UTC)


def chain(count: int, start: int = 1, prev: str = GENESIS_HASH) -> list[dict[str, Any]]:
    objs = []
    for seq in range(start, start + count):
        draft = EventDraft("seal.sealed", "SL-1", {"n": seq}, Priority.AUDIT, TS)
        event = seal_event(draft, "gw-1", seq, prev)
        prev = event.hash
        objs.append(json.loads(event.payload))
    return objs


def epoch_event(seq: int, prev: dict[str, Any], lost: tuple[int, int]) -> dict[str, Any]:
    data = {
        "epoch": 1,
        "reason": "rollback",
        "prev_seq": seq - 1,
        "prev_hash": prev["hash"],
        "lost_first_seq": lost[0],
        "lost_last_seq": lost[1],
        "lost_count": lost[1] - lost[0] + 1,
        "acked_seq": seq - 1,
    }
    draft = EventDraft("gateway.chain_epoch", "gw-1", data, Priority.ALARM, TS)
    return json.loads(seal_event(draft, "gw-1", seq, GENESIS_HASH).payload)


def after(epoch: dict[str, Any], count: int) -> list[dict[str, Any]]:
    return chain(count, epoch["seq"] + 1, epoch["hash"])


def test_announced_epoch_verifies() -> None:
    old = chain(10)
    epoch = epoch_event(11, old[-1], (6, 10))
    report = verify_chain([*old, epoch, *after(epoch, 3)])
    assert report.ok, report.problems
    assert epoch_start(epoch) is not None
    assert announced_ranges(epoch) == [(6, 10)]


def test_lost_history_announced_by_the_epoch_is_no_gap() -> None:
    old = chain(10)
    epoch = epoch_event(11, old[-1], (6, 10))
    assert verify_chain([*old[:5], epoch, *after(epoch, 2)]).ok


def test_unannounced_restart_is_a_broken_link() -> None:
    old = chain(10)
    restarted = chain(3, start=11)  # seq 11 with a zero prev_hash but no epoch event
    report = verify_chain([*old, *restarted])
    assert [(p.kind, p.seq) for p in report.problems] == [("broken_link", 11)]


def test_epoch_naming_another_hash_is_a_broken_link() -> None:
    old = chain(10)
    epoch = epoch_event(11, old[3], (11, 10))  # names the hash of seq 4, not seq 10
    report = verify_chain([*old, epoch])
    assert [(p.kind, p.seq) for p in report.problems] == [("broken_link", 11)]


def test_removed_epoch_leaves_a_gap() -> None:
    old = chain(10)
    epoch = epoch_event(11, old[-1], (11, 10))
    assert not verify_chain([*old, *after(epoch, 2)]).ok


def test_link_ok_rules() -> None:
    old = chain(2)
    assert link_ok(old[0], None) and link_ok(old[1], old[0]["hash"])
    assert not link_ok(old[1], "f" * 64)
    epoch = epoch_event(3, old[1], (3, 2))
    assert link_ok(epoch, old[1]["hash"]) and link_ok(epoch, None)
    assert not link_ok(epoch, old[0]["hash"])
    wrong_seq = {**epoch, "seq": 7}
    assert epoch_start(wrong_seq) is None and not link_ok(wrong_seq, old[1]["hash"])
