"""One alarm per incident, on real SQLite and PostgreSQL ledgers: a forced shell told twice (the
lock's advert, then its own log entry) is one alarm in the inbox whose evidence shows both
events, closing it leaves nothing of it open (console and `sealgw master kpi`), and the rule's
edges (another type, past the window, after a close) open alarms of their own, kept by a
replay of the rollups."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from master_station.console import queries
from master_station.console.accounts import Role, User
from master_station.console.app import create_app
from master_station.kpi.report import compute_kpis, load_inputs
from master_station.ledger.factory import open_ledger
from master_station.ledger.inbox import INCIDENT_WINDOW
from master_station.ledger.rollup import rollups_for
from tests.fixtures.console import ConsoleClient, add_users, district_day, fold, serve_console
from tests.fixtures.master import ChainBuilder, schema_dsn, scratch_database

ADMIN = User("admin", Role.ADMIN)
LOG_TAMPER = {"source": "log", "event": "tamper_shell_open", "log_index": 7, "state": "sealed",
              "wire": "intact", "lock_id": f"{1:016x}"}  # fmt: skip


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with scratch_database() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return schema_dsn(request.getfixturevalue("pg_database"))


@pytest.fixture
def ledger(ledger_target: str) -> Iterator[Any]:
    opened = open_ledger(ledger_target)
    try:
        yield opened
    finally:
        opened.close()


def test_a_forced_shell_told_twice_is_one_alarm_with_both_events(
    ledger: Any, ledger_target: str, tmp_path: Path
) -> None:
    add_users(ledger)
    chain = district_day(ledger)["gw-a"]
    advert = next(e for e in chain.events if e.type == "seal.tamper")  # SL-A1, source advert
    chain.add("seal.op_requested", "SL-A1", {"operator": "op-1"})
    told_again = chain.add("seal.tamper", "SL-A1", LOG_TAMPER)
    fold(ledger, [e.payload for e in chain.events[-2:]])
    console_ledger = open_ledger(ledger_target)
    try:
        with serve_console(create_app(console_ledger, tls=True), tmp_path) as (base, cert):
            manager = ConsoleClient(base, cert)
            try:
                assert manager.login("mgr-1").status_code == 303
                assert manager.get("/api/summary").json()["open_alarms"] == 2  # tamper, theft
                inbox = manager.get("/alarms").text
                tampers = re.findall(r'data-alarm-id="([^"]+)" data-type="seal.tamper"[^>]*'
                                     r'data-seal="SL-A1" data-events="(\d+)"', inbox)  # fmt: skip
                assert tampers == [(advert.id, "2")]
                page = f"/alarms/{advert.id}"
                evidence = manager.get(page).text
                assert _seqs(evidence, "evidence-incident") == [advert.seq, told_again.seq]
                assert manager.get(f"/alarms/{told_again.id}").status_code == 404
                closed = manager.submit(page, f"{page}/close", {"note": "resealed, WO-9"})
                assert closed.status_code == 303
                assert manager.get("/api/summary").json()["open_alarms"] == 1  # the theft
            finally:
                manager.close()
    finally:
        console_ledger.close()
    report = compute_kpis(load_inputs(ledger))
    assert [a.type for a in report.open_alarms if a.gateway == "gw-a"] == ["theft.suspected"]


def test_the_cli_report_counts_an_open_incident_once(ledger: Any) -> None:
    chain = district_day(ledger)["gw-a"]
    chain.add("seal.tamper", "SL-A1", LOG_TAMPER)
    fold(ledger, [chain.events[-1].payload])
    report = compute_kpis(load_inputs(ledger))
    opened = [(a.type, a.subject) for a in report.open_alarms if a.gateway == "gw-a"]
    assert opened == [("seal.tamper", "SL-A1"), ("theft.suspected", "m-A")]
    assert queries.open_alarm_count(ledger.db, ADMIN) == len(report.open_alarms)


def test_another_type_a_later_incident_and_one_after_a_close_are_alarms_of_their_own(
    ledger: Any,
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    chain = ChainBuilder("gw-i", start)
    chain.add("gateway.started", data={"district": "d-i"})
    chain.add("seal.sealed", "SL-I1", {"wire_loop": "intact", "lock_id": "00000000000000aa"})
    first = chain.add("seal.tamper", "SL-I1", {"source": "advert"})
    chain.add("seal.tamper", "SL-I1", LOG_TAMPER)  # the same incident
    theft = chain.add("theft.suspected", "m-I", {"seal": "SL-I1", "meter": "m-I"})
    later = chain.add("seal.tamper", "SL-I1", {"source": "log", "log_index": 9},
                      at=start + INCIDENT_WINDOW + timedelta(minutes=5))  # fmt: skip
    fold(ledger, [e.payload for e in chain.events])
    assert _alarms(ledger) == {first.id: 2, theft.id: 1, later.id: 1}

    with ledger.db.transaction() as tx:  # closed in the console
        tx.execute("UPDATE console_alarms SET status = 'closed' WHERE alarm_id = ?", (later.id,))
    after_close = chain.add("seal.tamper", "SL-I1", {"source": "advert"})
    fold(ledger, [after_close.payload])
    assert _alarms(ledger) == {first.id: 2, theft.id: 1, later.id: 1, after_close.id: 1}

    rollups = rollups_for(ledger)  # a replay files every event where it was filed before
    rollups.replay("gw-i")
    assert _alarms(ledger) == {first.id: 2, theft.id: 1, later.id: 1, after_close.id: 1}
    counted = ledger.db.query("SELECT SUM(alarms), SUM(tampers) FROM kpi_daily WHERE gateway = ?",
                              ("gw-i",))  # fmt: skip
    assert tuple(int(v) for v in counted[0]) == (4, 3)  # incidents, not events


def _alarms(ledger: Any) -> dict[str, int]:
    """alarm id -> events filed under it, of every alarm in the inbox."""
    rows = ledger.db.query("SELECT alarm_id, events FROM console_alarms WHERE source = 'event'")
    filed = ledger.db.query("SELECT alarm_id, COUNT(*) FROM console_alarm_events GROUP BY alarm_id")
    assert {str(a): int(n) for a, n in filed} == {str(a): int(n) for a, n in rows}
    return {str(a): int(n) for a, n in rows}


def _seqs(page: str, testid: str) -> list[int]:
    table = re.search(rf'data-testid="{testid}".*?</table>', page, re.S)
    assert table is not None, f"{testid} is not on the page"
    return [int(s) for s in re.findall(r'data-testid="event-row" data-seq="(\d+)"', table.group(0))]
