"""Eviction notices: exact runs excuse only their seqs and keep the links beside them checkable."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from gateway.audit.verify import AuditOutcome, GatewayKeys, audit_events
from gateway.protocol.chain import announced_ranges, eviction_runs, verify_chain
from gateway.protocol.events import GENESIS_HASH, EventDraft, Priority, event_hash, seal_event

TS = datetime(2026, 1, 1, tzinfo=UTC)


def trail(notice: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Seqs 1..7 (2, 3, 5 telemetry, 4 an unseal) and a notice at 8; `notice` None: derived."""
    objs, prev = [], GENESIS_HASH
    for seq in range(1, 8):
        kind, priority = ("meter.reading", Priority.TELEMETRY)
        if seq in {1, 4, 6, 7}:
            kind, priority = ("seal.unsealed", Priority.AUDIT)
        event = seal_event(EventDraft(kind, "X", {"n": seq}, priority, TS), "gw-1", seq, prev)
        prev = event.hash
        objs.append(json.loads(event.payload))
    data = notice or {
        "first_seq": 2,
        "last_seq": 5,
        "count": 3,
        "runs": [[2, 3], [5, 5]],
        "run_hashes": [
            [objs[1]["prev_hash"], objs[2]["hash"]],
            [objs[4]["prev_hash"], objs[4]["hash"]],
        ],
    }
    draft = EventDraft("gateway.telemetry_evicted", "gw-1", data, Priority.STATE, TS)
    objs.append(json.loads(seal_event(draft, "gw-1", 8, prev).payload))
    return [obj for obj in objs if obj["seq"] not in {2, 3, 5}]


def kinds(objs: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(p.kind, p.seq) for p in verify_chain(objs).problems]


def test_exact_runs_excuse_only_their_seqs() -> None:
    objs = trail(None)
    assert announced_ranges(objs[-1]) == [(2, 3), (5, 5)]
    assert kinds(objs) == []
    assert kinds([obj for obj in objs if obj["seq"] != 4]) == [("gap", 4)]


def test_a_rehashed_event_between_runs_is_a_broken_link() -> None:
    objs = trail(None)
    forged = next(obj for obj in objs if obj["seq"] == 4)
    forged["type"] = "seal.op_denied"
    forged["hash"] = event_hash(forged)
    assert ("broken_link", 4) in kinds(objs)


def test_malformed_runs_announce_nothing() -> None:
    bad = {"first_seq": 2, "last_seq": 5, "count": 3, "runs": [[2, 3]], "run_hashes": []}
    objs = trail(bad)
    assert eviction_runs(objs[-1]) == []
    assert kinds(objs) == [("gap", 2), ("gap", 3), ("gap", 5)]


def test_an_old_notice_excuses_its_range_but_is_weak() -> None:
    objs = trail({"first_seq": 2, "last_seq": 5, "count": 3})
    report = verify_chain([obj for obj in objs if obj["seq"] != 4])
    assert report.ok
    assert [(w.seq, w.first, w.last) for w in report.weak] == [(8, 2, 5)]


def test_the_offline_verifier_calls_an_old_notice_unverifiable() -> None:
    objs = trail({"first_seq": 2, "last_seq": 5, "count": 3})
    report = audit_events(objs, GatewayKeys())
    assert report.outcome is AuditOutcome.UNSIGNED and not report.problems
    assert report.to_json()["gateways"]["gw-1"]["unverifiable_evictions"] == [[8, 2, 5]]
