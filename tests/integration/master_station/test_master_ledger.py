"""The master ledger on both backends: SQLite (a file) and PostgreSQL (the local server)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit.verify import verify_file
from gateway.protocol.events import GENESIS_HASH, EventDraft, Priority, seal_event
from master_station.ledger.factory import open_ledger
from master_station.ledger.models import AddOutcome, Ledger, TicketRecord
from master_station.ledger.recent import RecentlyVerified
from tests.fixtures.master import T0, ChainBuilder, chain, schema_dsn, scratch_database


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """One scratch database per module run; each test gets a fresh schema in it."""
    with scratch_database() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return schema_dsn(request.getfixturevalue("pg_database"))


@pytest.fixture
def ledger(ledger_target: str) -> Iterator[Ledger]:
    led = open_ledger(ledger_target)
    yield led
    led.close()


def test_add_is_idempotent_on_event_id(ledger: Ledger) -> None:
    events = chain("gw-1", 5)
    results = [ledger.add(e.payload, topic_gateway="gw-1") for e in events]
    repeats = [ledger.add(e.payload) for e in events[:3]]
    assert [r.outcome for r in results] == [AddOutcome.STORED] * 5
    assert [r.outcome for r in repeats] == [AddOutcome.DUPLICATE] * 3
    assert ledger.count() == 5
    assert ledger.event_ids("gw-1") == {e.id for e in events}
    report = ledger.verify("gw-1")
    assert report.ok and report.duplicates == 3 and report.verified_seq == 5


def test_batch_add_classifies_each_payload(ledger: Ledger) -> None:
    events = chain("gw-1", 3)
    results = ledger.add_many([e.payload for e in [*events, events[0]]], ["gw-1"] * 4)
    assert [r.outcome for r in results] == [AddOutcome.STORED] * 3 + [AddOutcome.DUPLICATE]


def test_same_seq_with_another_id_is_a_conflict_and_the_first_is_kept(ledger: Ledger) -> None:
    original = chain("gw-1", 2)
    forged = seal_event(
        EventDraft("seal.sealed", "SL-1", {"x": 1}, Priority.AUDIT, T0), "gw-1", 2,
        original[0].hash,
    )  # fmt: skip
    for e in original:
        ledger.add(e.payload)
    result = ledger.add(forged.payload)
    assert result.outcome is AddOutcome.CONFLICT
    assert ledger.event_ids("gw-1") == {e.id for e in original}
    problems = ledger.problems("gw-1")
    assert [(p.kind, p.seq, p.event_id) for p in problems] == [("conflict", 2, forged.id)]
    assert ledger.add(forged.payload).outcome is AddOutcome.CONFLICT
    assert len(ledger.problems("gw-1")) == 1  # recorded once


def test_reused_id_with_other_content_is_a_conflict(ledger: Ledger) -> None:
    first = chain("gw-1", 1)[0]
    draft = EventDraft("synthetic.sample", "gw-1", {"n": 99}, Priority.AUDIT, T0, id=first.id)
    clash = seal_event(draft, "gw-1", 7, GENESIS_HASH)
    ledger.add(first.payload)
    result = ledger.add(clash.payload)
    assert result.outcome is AddOutcome.CONFLICT
    assert "already stored" in result.detail
    assert ledger.count("gw-1") == 1


def test_invalid_and_edited_payloads_are_refused_and_recorded(ledger: Ledger) -> None:
    event = chain("gw-1", 1)[0]
    edited = event.payload.replace(b'"n":0', b'"n":1')
    assert ledger.add(b"not json", topic_gateway="gw-1").outcome is AddOutcome.INVALID
    assert ledger.add(edited).outcome is AddOutcome.INVALID
    assert ledger.add(event.payload, topic_gateway="gw-2").outcome is AddOutcome.INVALID
    assert ledger.count() == 0
    kinds = sorted(p.kind for p in ledger.problems())
    assert kinds == ["edited", "invalid", "invalid"]


def test_gaps_are_missing_ranges_minus_announced_evictions(ledger: Ledger) -> None:
    events = chain("gw-1", 12)
    for e in events:
        if e.seq not in {3, 4, 7, 8, 9}:
            ledger.add(e.payload)
    assert ledger.gaps("gw-1") == [(3, 4), (7, 9)]
    assert ledger.check_chains(["gw-1", "gw-0"]) == {"gw-1": [(3, 4), (7, 9)], "gw-0": []}
    builder = ChainBuilder("gw-2")
    builder.samples(2)
    builder.samples(3)  # seq 3..5: evicted, never delivered
    builder.add("gateway.telemetry_evicted", data={"first_seq": 3, "last_seq": 5, "count": 3})
    builder.samples(1)
    for e in builder.events:
        if e.seq not in {3, 4, 5}:
            ledger.add(e.payload)
    assert ledger.gaps("gw-2") == []
    assert ledger.check_chain("gw-2") == []
    report = ledger.verify("gw-2")
    assert report.ok and report.verified_seq == 7 and report.evicted == ((3, 5),)


def test_verify_is_incremental_and_agrees_with_verify_chain(ledger: Ledger) -> None:
    events = chain("gw-1", 10)
    for e in events[:4] + events[5:]:
        ledger.add(e.payload)
    first = ledger.verify("gw-1")
    assert (first.verified_seq, first.gaps, first.head_seq) == (4, ((5, 5),), 10)
    assert ledger.verify("gw-1", full=True).gaps == ((5, 5),)
    ledger.add(events[4].payload)
    second = ledger.verify("gw-1")
    full = ledger.verify("gw-1", full=True)
    assert second.ok and full.ok
    assert second.verified_seq == full.verified_seq == 10
    assert second.verified_hash == full.verified_hash == events[-1].hash


def test_verify_finds_a_broken_link(ledger: Ledger) -> None:
    good = chain("gw-1", 3)
    relinked = seal_event(
        EventDraft("synthetic.sample", "gw-1", {"n": 3}, Priority.AUDIT, T0), "gw-1", 4, "f" * 64
    )
    for e in [*good, relinked]:
        ledger.add(e.payload)
    report = ledger.verify("gw-1")
    assert not report.ok
    assert [(p.kind, p.seq) for p in report.problems] == [("broken_link", 4)]
    assert report.verified_seq == 3
    assert [(p.kind, p.seq) for p in ledger.verify("gw-1", full=True).problems] == [
        ("broken_link", 4)
    ]


def test_checkpoint_claims_are_checked_against_the_chain(ledger: Ledger) -> None:
    builder = ChainBuilder("gw-1")
    builder.samples(2)
    sig = "A" * 86
    builder.add("gateway.checkpoint", data={"covers_seq": 2, "covers_hash": builder.events[1].hash,
                                            "sig": sig, "key_id": "sha256:x"})  # fmt: skip
    builder.add("gateway.checkpoint", data={"covers_seq": 1, "covers_hash": "e" * 64,
                                            "sig": sig, "key_id": "sha256:x"})  # fmt: skip
    for e in builder.events:
        ledger.add(e.payload)
    report = ledger.verify("gw-1")
    assert report.checkpoints == 1
    assert [(p.kind, p.seq) for p in report.problems] == [("checkpoint", 4)]
    assert report.verified_seq == 4  # a false claim is reported; the chain itself is sound


def test_seal_state_and_status_are_upserts(ledger: Ledger) -> None:
    ledger.put_seal_state("gw-1", "SL-1", b'{"seal":"SL-1","state":"unsealed"}')
    ledger.put_seal_state("gw-1", "SL-1", b'{"seal":"SL-1","state":"sealed"}')
    ledger.put_seal_state("gw-1", "SL-2", b'{"seal":"SL-2","state":"sealed"}')
    ledger.put_status("gw-1", b'{"state":"online"}')
    ledger.put_status("gw-1", b'{"state":"offline","reason":"connection_lost"}')
    states = {(s.gateway, s.key): s.payload["state"] for s in ledger.seal_states()}
    assert states == {("gw-1", "SL-1"): "sealed", ("gw-1", "SL-2"): "sealed"}
    assert [(s.gateway, s.payload["state"]) for s in ledger.statuses()] == [("gw-1", "offline")]
    ledger.put_seal_state("gw-1", "SL-2", b"")  # a cleared retained message
    assert [s.key for s in ledger.seal_states()] == ["SL-1"]
    assert ledger.gateways() == ["gw-1"]


def test_resend_claims_rate_limit_each_range(ledger: Ledger) -> None:
    claim = ledger.claim_resend
    assert claim("gw-1", (3, 5), requester="a", now=100.0, min_interval_s=30)
    assert not claim("gw-1", (3, 5), requester="b", now=110.0, min_interval_s=30)
    assert claim("gw-1", (3, 9), requester="b", now=111.0, min_interval_s=30)  # grew
    assert claim("gw-1", (20, 21), requester="b", now=112.0, min_interval_s=30)
    assert claim("gw-1", (3, 9), requester="a", now=141.5, min_interval_s=30)


def test_tickets_give_flows_and_queries_filter(ledger: Ledger) -> None:
    ledger.record_ticket(TicketRecord("ab" * 16, "gw-1", "rotation", "WO-1", "op-1",
                                      "meter_installer", 1, 2, 1))  # fmt: skip
    assert ledger.ticket_flows() == {"ab" * 16: "rotation"}
    builder = ChainBuilder("gw-1")
    builder.add("seal.tamper", "SL-1", {"cause": "wire_cut"})
    builder.samples(2)
    for e in builder.events:
        ledger.add(e.payload)
    alarms = ledger.events(priority="alarm")
    assert [(e.type, e.subject, e.data["cause"]) for e in alarms] == [
        ("seal.tamper", "SL-1", "wire_cut")
    ]
    assert len(ledger.events(types=["synthetic.sample"], since=builder.events[2].ts)) == 1
    hourly = ledger.hourly_counts("2026-11-22T00:00:00.000Z", "2026-11-23T00:00:00.000Z")
    assert sorted(hourly) == [("gw-1", 8, "seal.tamper", 1), ("gw-1", 8, "synthetic.sample", 2)]
    assert ledger.newest_ts() == builder.events[-1].ts


def test_sqlite_ledger_is_readable_by_audit_verify(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    led = open_ledger(path)
    events = chain("gw-1", 6)
    for e in events:
        led.add(e.payload)
    led.close()
    assert path.stat().st_mode & 0o077 == 0
    report = verify_file(path)
    assert report.ok
    summary = report.to_json()["gateways"]["gw-1"]
    assert (summary["events"], summary["head_seq"]) == (6, 6)


def test_postgres_ledger_is_shared_by_concurrent_masters(pg_database: str) -> None:
    dsn = schema_dsn(pg_database)
    first, second = open_ledger(dsn), open_ledger(dsn)
    assert first.shared and second.shared
    events = chain("gw-1", 200)
    outcomes: list[list[AddOutcome]] = [[], []]

    def feed(led: Ledger, slot: int) -> None:
        for e in events:
            outcomes[slot].append(led.add(e.payload).outcome)

    threads = [
        threading.Thread(target=feed, args=(led, i)) for i, led in enumerate([first, second])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stored = outcomes[0].count(AddOutcome.STORED) + outcomes[1].count(AddOutcome.STORED)
    assert stored == 200
    assert first.count() == 200 and first.verify("gw-1").ok
    first.close()
    second.close()


def test_one_batch_gives_what_adding_one_by_one_gives(ledger: Ledger) -> None:
    events = chain("gw-1", 3)
    twin = seal_event(
        EventDraft("synthetic.sample", "gw-1", {"n": 99}, Priority.AUDIT, T0), "gw-1", 2,
        events[0].hash,
    )  # fmt: skip
    payloads = [events[0].payload, events[1].payload, events[1].payload, twin.payload,
                b"{}", events[2].payload]  # fmt: skip
    outcomes = [r.outcome for r in ledger.add_many(payloads, ["gw-1"] * 6)]
    assert outcomes == [AddOutcome.STORED, AddOutcome.STORED, AddOutcome.DUPLICATE,
                        AddOutcome.CONFLICT, AddOutcome.INVALID, AddOutcome.STORED]  # fmt: skip
    assert ledger.event_ids("gw-1") == {e.id for e in events}
    assert sorted(p.kind for p in ledger.problems()) == ["conflict", "invalid"]
    assert ledger.verify("gw-1").duplicates == 1


def test_an_edit_at_rest_is_found_though_the_walk_knows_what_it_stored(
    ledger_target: str,
) -> None:
    recent = RecentlyVerified()
    led = open_ledger(ledger_target, recent=recent)
    events = chain("gw-1", 4)
    led.add_many([e.payload for e in events])
    assert len(recent) == 4
    edited = events[2].payload.replace(b'"n":2', b'"n":7')
    _execute(ledger_target, "UPDATE events SET payload = ? WHERE seq = 3", (edited,))
    report = led.verify("gw-1")
    assert [(p.kind, p.seq) for p in report.problems] == [("edited", 3)]
    assert report.verified_seq == 2
    assert len(recent) == 1  # seq 1 to 3 were read back against the record; 4 waits
    led.close()


def _execute(target: str, sql: str, params: tuple[object, ...]) -> None:
    """One statement on the ledger's database, behind the master's back."""
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), params)
        return
    with sqlite3.connect(target) as conn:
        conn.execute(sql, params)
