"""The console bench's ledger holds what the listener would have left, and its pages are timed
only when `sealgw master serve` answers them with that ledger's content (SQLite, PostgreSQL)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench.console_pages import PAGES, time_console
from bench.ledger_gen import GeneratedRow, LedgerPlan, generate
from bench.master_console import build, bulk_connection
from master_station.ledger.factory import open_ledger
from master_station.ledger.rollup import rollups_for
from tests.fixtures.master import schema_dsn, scratch_database

# 4 gateways in 2 districts over 2 days ending today: about 5,700 events, tampers, thefts,
# work orders and line losses
PLAN = LedgerPlan(gateways=4, districts=2, meters=4, seals=4, days=2)
LISTENER_BATCH = 200
# every rollup table, with the columns its fold writes (kpi_daily's snapshot columns and the
# alarms' clock stamps come from the moment, not from the events)
FOLDED = {
    "kpi_daily": "gateway, day, events, alarms, tampers, thefts, sealed, unsealed, denied,"
    " meter_polls, meter_ok",
    "meter_counters": "gateway, meter, seq, polls, ok",
    "console_gateways": "gateway, district, started_seq",
    "console_seals": "gateway, seal, lock_id, state, wire, tamper, state_seq, sealed_seq,"
    " ticket_id, online, online_seq",
    "console_seal_events": "gateway, seal, seq, type, ts",
    "console_alarms": "alarm_id, source, gateway, seq, type, subject, seal, ts, detail, status,"
    " cleared_seq, events",
    "console_alarm_events": "gateway, seq, alarm_id, event_id",
    "line_loss_daily": "district, day, gateway, seq, rate, status, qualified, complete",
    "rollup_meta": "name, value",
}


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with scratch_database() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _target(backend: str, tmp_path: Path, request: pytest.FixtureRequest, name: str) -> str:
    if backend == "sqlite":
        return str(tmp_path / f"{name}.db")
    return schema_dsn(request.getfixturevalue("pg_database"))


def test_the_bulk_build_folds_the_rollups_the_listener_would_have_left(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    plan = PLAN.ending(datetime.now(UTC).date())
    rows = list(generate(plan))
    target = _target(backend, tmp_path, request, "bulk")
    bulk = open_ledger(target)
    conn = bulk_connection(backend, target)
    try:
        built = build(bulk, conn, backend, plan, len(rows))
    finally:
        conn.close()
    # the listener's way: gateways interleaved, stored in batches, each batch folded after it
    listened = open_ledger(_target(backend, tmp_path, request, "listened"))
    rollups = rollups_for(listened)
    interleaved = _round_robin(rows)
    for start in range(0, len(interleaved), LISTENER_BATCH):
        payloads = [r.payload for r in interleaved[start : start + LISTENER_BATCH]]
        results = listened.add_many(payloads)
        assert all(r.stored for r in results)
        rollups.stored(payloads)
    rollups.tick()
    try:
        assert built.events == len(rows) and built.fold_seconds > 0
        for table, columns in FOLDED.items():
            bulk_rows, listened_rows = _rows(bulk, table, columns), _rows(listened, table, columns)
            assert bulk_rows == listened_rows, table
            assert bulk_rows, f"{table} is empty: the plan exercises nothing there"
    finally:
        bulk.close()
        listened.close()


def test_every_page_is_timed_with_its_content_for_both_users(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ledger, target = _built(backend, tmp_path, request)
    try:
        result = time_console(ledger, target, tmp_path, 2)
        alarm = ledger.db.query(  # type: ignore[attr-defined]
            "SELECT gateway, seal, status FROM console_alarms WHERE alarm_id = ?",
            (result["sample"]["alarm"],),
        )
    finally:
        ledger.close()
    sample = result["sample"]
    assert alarm == [(sample["gateway"], sample["seal"], "open")]
    assert sample["district"] in ("d-000", "d-001")
    for user in ("admin", "district_manager"):
        assert list(result[user]) == list(PAGES)
        assert all(ms > 0 for ms in result[user].values())
        assert all(ms > 0 for ms in result["first_request"][user].values())
    medians = [ms for user in ("admin", "district_manager") for ms in result[user].values()]
    assert result["slowest_ms"] == max(medians)
    assert result["pages_under_1s"] is (max(medians) < 1000)
    assert result["rounds"] == 2


def test_a_page_without_the_ledgers_content_is_refused_not_timed(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from bench.console_pages import sample_of

    ledger, target = _built(backend, tmp_path, request)
    try:
        wrong = dataclasses.replace(sample_of(ledger), alarm_id="01NOSUCHALARM0000000000000")
        with pytest.raises(RuntimeError, match="page alarms"):
            time_console(ledger, target, tmp_path, 1, sample=wrong)
    finally:
        ledger.close()


def _built(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Any, str]:
    plan = PLAN.ending(datetime.now(UTC).date())
    target = _target(backend, tmp_path, request, "ledger")
    ledger = open_ledger(target)
    conn = bulk_connection(backend, target)
    try:
        build(ledger, conn, backend, plan, 10_000)
    finally:
        conn.close()
    return ledger, target


def _round_robin(rows: list[GeneratedRow]) -> list[GeneratedRow]:
    """Each gateway's events in its order, the gateways taking turns (as a broker mixes them)."""
    per_gateway: dict[str, list[GeneratedRow]] = {}
    for row in rows:
        per_gateway.setdefault(row.gateway, []).append(row)
    queues = list(per_gateway.values())
    mixed = []
    for index in range(max(len(q) for q in queues)):
        mixed.extend(q[index] for q in queues if index < len(q))
    return mixed


def _rows(ledger: Any, table: str, columns: str) -> list[tuple[Any, ...]]:
    return sorted(
        tuple(row)
        for row in ledger.db.query(f"SELECT {columns} FROM {table}")
        if table != "rollup_meta" or str(row[0]).startswith("events:")
    )
