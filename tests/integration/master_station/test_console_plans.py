"""No console page reads in proportion to the ledger's events, on real SQLite and PostgreSQL.

Every statement each page runs (served over HTTPS, as an admin and as a district manager, and
the live feed's reads) is recorded over a ledger of a few thousand events in three districts,
then explained by the database itself: SQLite's `EXPLAIN QUERY PLAN`, PostgreSQL's `EXPLAIN
(FORMAT JSON)` after ANALYZE with sequential scans priced out (so a plan that still scans has
no index to use). A table that grows with the events, the days or the alarms is read only
through an index, with every parameterised condition on it an index condition; or walked in an
index's order under a LIMIT. Tables that grow with the fleet (gateways, seals, users) may be
scanned: docs/master.md ("What each page reads") lists where, and why that is bounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from master_station.console import queries
from master_station.console.app import create_app
from master_station.ledger.factory import open_ledger
from tests.fixtures.console import ConsoleClient, add_users, district_day, fold, serve_console
from tests.fixtures.master import ChainBuilder, schema_dsn, scratch_database

# Tables whose rows grow with the events (or with the days and alarms they bring).
GROWING = frozenset({
    "events", "problems", "lock_entries", "tickets", "console_seal_events", "console_alarms",
    "console_alarm_events", "console_audit", "console_tickets", "kpi_daily", "line_loss_daily",
})  # fmt: skip
_READS_ALL = frozenset({"Sort", "Hash", "Aggregate", "SetOp", "Materialize", "WindowAgg"})
_PARAM = re.compile(r"(?:\b(\w+)\.)?\b(\w+)\s*(?:=|<>|>=|<=|>|<|\bBETWEEN\b|\bIN\b)\s*\(?\s*\?",
                    re.I)  # fmt: skip
_FROM = re.compile(r"\b(?:FROM|JOIN)\s+(\w+)(?:\s+(?:AS\s+)?(?!ON\b|WHERE\b|JOIN\b|LEFT\b|"
                   r"GROUP\b|ORDER\b|UNION\b|LIMIT\b)(\w+))?", re.I)  # fmt: skip


class _Recording:
    """A ledger backend that remembers every statement and its parameters."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.location, self.shared = db.location, db.shared
        self.seen: list[tuple[str, tuple[Any, ...]]] = []

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.seen.append((sql, tuple(params)))
        return self._db.query(sql, params)

    @contextmanager
    def _recorded(self) -> Iterator[Any]:
        with self._db.transaction() as tx:
            yield _RecordingTx(tx, self.seen)

    def transaction(self) -> AbstractContextManager[Any]:
        return self._recorded()

    def create_schema(self, statements: Sequence[str]) -> None:
        self._db.create_schema(statements)

    def close(self) -> None:
        self._db.close()


class _RecordingTx:
    def __init__(self, tx: Any, seen: list[tuple[str, tuple[Any, ...]]]) -> None:
        self._tx, self._seen = tx, seen

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._seen.append((sql, tuple(params)))
        return int(self._tx.execute(sql, params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._seen.append((sql, tuple(params)))
        return list(self._tx.query(sql, params))


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with scratch_database() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return schema_dsn(request.getfixturevalue("pg_database"))


def test_every_page_reads_the_growing_tables_through_an_index(
    ledger_target: str, tmp_path: Path
) -> None:
    ledger = open_ledger(ledger_target)
    add_users(ledger)
    chain = district_day(ledger)["gw-a"]
    tamper = next(e for e in chain.events if e.type == "seal.tamper")
    _a_busy_fleet(ledger, chain)
    if "postgresql" in ledger_target:
        with ledger.db.transaction() as tx:
            tx.execute("ANALYZE")
    console_ledger = open_ledger(ledger_target)
    recording = _Recording(console_ledger.db)
    console_ledger.db = recording  # type: ignore[attr-defined]
    pages = ["/districts", "/alarms", "/alarms?status=closed", f"/alarms/{tamper.id}",
             "/seals/gw-a/SL-A1", "/work-orders", "/trends", "/api/trends?days=30",
             "/api/summary"]  # fmt: skip
    try:
        with serve_console(create_app(console_ledger, tls=True), tmp_path) as (base, cert):
            for user in ("admin", "mgr-1"):
                client = ConsoleClient(base, cert)
                try:
                    assert client.login(user).status_code == 303
                    for page in pages:
                        assert client.get(page).status_code == 200, page
                finally:
                    client.close()
        queries.alarms_since(recording, 0)  # the live feed's two reads
        queries.newest_alarm_change(recording)
        statements = {sql: params for sql, params in recording.seen if _reads(sql)}
        explain = _postgres_plan if "postgresql" in ledger_target else _sqlite_plan
        found = {sql: explain(ledger, sql, params) for sql, params in statements.items()}
    finally:
        console_ledger.close()
        ledger.close()
    read = {t for sql in statements for t in _tables(sql).values()}
    assert {"events", "problems", "console_alarms", "console_alarm_events", "console_seal_events",
            "lock_entries", "console_audit", "console_tickets", "kpi_daily"} <= read  # fmt: skip
    unbounded = {sql: bad for sql, bad in found.items() if bad}
    assert unbounded == {}, json.dumps(unbounded, indent=1)


def _a_busy_fleet(ledger: Any, chain: Any) -> None:
    """Thousands of events: health, readings, operations and tampers on 40 seals of gw-a; a
    third district; a fourth of forty gateways with 25 alarms each; most alarms closed;
    tickets; a chain problem."""
    first_new = len(chain.events)
    for n in range(600):
        seal = f"SL-A{4 + n % 40}"
        chain.add(
            "gateway.health", data={"meters": {"meters": {"m-A": {"polls": 30 + n, "ok": 29 + n}}}}
        )
        chain.add("meter.reading", "m-A", {"meter": "m-A", "energy_wh": 1000 + n})
        chain.add("seal.sealed", seal, {"wire_loop": "intact", "lock_id": f"{4 + n % 40:016x}"})
        if n % 10 == 0:
            chain.add("seal.tamper", seal, {"source": "advert"})
    payloads = [e.payload for e in chain.events[first_new:]]
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    other = ChainBuilder("gw-c", today)
    other.add("gateway.started", data={"district": "d-3"})
    for n in range(300):
        other.add("seal.tamper" if n % 5 == 0 else "seal.sealed", f"SL-C{n % 20}",
                  {"wire_loop": "intact"})  # fmt: skip
    fleet = [e.payload for e in other.events]
    for g in range(40):  # a fleet: forty gateways of district d-4 with alarms of their own
        gateway = ChainBuilder(f"gw-d{g:02d}", today)
        gateway.add("gateway.started", data={"district": "d-4"})
        for n in range(25):
            gateway.add("seal.tamper", f"SL-D{n:02d}", {"source": "advert"})
        fleet.extend(e.payload for e in gateway.events)
    for batch in (payloads, fleet):
        for start in range(0, len(batch), 500):
            fold(ledger, batch[start : start + 500])
    ledger.record_problem("gw-a", "conflict", "a test finding", seq=5, key="x")
    with ledger.db.transaction() as tx:
        tx.execute(
            "UPDATE console_alarms SET status = 'closed' WHERE seq < 20 OR gateway IN"
            " ('gw-a', 'gw-c') AND seq < 1500"
        )  # most alarms of the past are closed
        for n in range(50):
            tx.execute(
                "INSERT INTO console_tickets (ticket_id, gateway, work_order, flow, operator,"
                " role, seals, ops, not_before, not_after, max_uses, issued_by, issued_at,"
                " status, reply, updated_at) VALUES (?, ?, 'WO-1', 'meter_replace', 'op-1',"
                " 'meter_installer', '[\"SL-A1\"]', 'unseal,seal', 0, 1, 1, 'admin', ?,"
                " 'accepted', '{}', ?)",
                (f"{n:032x}", "gw-c" if n % 2 else "gw-a", f"2026-11-{1 + n % 28:02d}",
                 f"2026-11-{1 + n % 28:02d}"),
            )  # fmt: skip


def _reads(sql: str) -> bool:
    return sql.lstrip().upper().startswith(("SELECT", "WITH"))


def _tables(sql: str) -> dict[str, str]:
    """alias or name -> table, for every table the statement reads."""
    names: dict[str, str] = {}
    for table, alias in _FROM.findall(sql):
        names[table] = table
        if alias:
            names[alias] = table
    return names


def _params(sql: str) -> dict[str, set[str]]:
    """table -> the columns the statement compares with a bound parameter (LIMIT aside)."""
    names = _tables(sql)
    only = next(iter(names.values())) if len(set(names.values())) == 1 else None
    found: dict[str, set[str]] = {}
    for alias, column in _PARAM.findall(sql.split(" WHERE ", 1)[-1] if " WHERE " in sql else ""):
        table = names.get(alias) if alias else only
        if table is not None and column.upper() != "LIMIT":
            found.setdefault(table, set()).add(column.lower())
    return found


def _sqlite_plan(ledger: Any, sql: str, params: tuple[Any, ...]) -> list[str]:
    """The plan's lines that read a growing table other than through an index condition
    covering every parameterised condition on it (an index walk in order under a LIMIT, with
    no sort after it, is bounded by the LIMIT)."""
    plan = [str(row[3]) for row in ledger.db.query(f"EXPLAIN QUERY PLAN {sql}", params)]
    names, wanted = _tables(sql), _params(sql)
    sorted_after = any(line.startswith("USE TEMP B-TREE FOR ORDER BY") for line in plan)
    limited = " LIMIT " in f" {sql.upper()} " and not sorted_after
    bad = []
    for line in plan:
        found = re.match(r"(SCAN|SEARCH) (\w+)(.*)", line)
        table = names.get(found.group(2), found.group(2)) if found else None
        if found is None or table not in GROWING:
            continue
        used = {c.lower() for c in re.findall(r"(\w+)\s*[=<>]", found.group(3))}
        missing = wanted.get(table, set()) - used
        if found.group(1) == "SCAN" and not ("INDEX" in line and limited):
            bad.append(line)
        elif missing:
            bad.append(f"{line}: not an index condition: {sorted(missing)}")
    return bad


def _postgres_plan(ledger: Any, sql: str, params: tuple[Any, ...]) -> list[str]:
    """The same, from PostgreSQL's plan with sequential scans priced out."""
    with ledger.db.transaction() as tx:
        tx.execute("SET LOCAL enable_seqscan = off")
        rows = tx.query(f"EXPLAIN (FORMAT JSON) {sql}", params)
    document = rows[0][0]
    plan = (json.loads(document) if isinstance(document, str) else document)[0]["Plan"]
    return _postgres_scans(plan, _params(sql), limited=False)


def _postgres_scans(
    node: dict[str, Any], wanted: dict[str, set[str]], *, limited: bool
) -> list[str]:
    """Scans of growing tables without an index condition covering every parameterised
    condition on them, unless a LIMIT above stops the walk (and no node between reads all its
    input first: a sort, a hash, an aggregate)."""
    if node["Node Type"] in _READS_ALL:
        limited = False
    limited = limited or node["Node Type"] == "Limit"
    bad = []
    table = node.get("Relation Name")
    if table in GROWING:
        kind = node["Node Type"]
        conditions = " ".join(str(node.get(k, "")) for k in ("Index Cond", "Recheck Cond"))
        missing = {c for c in wanted.get(table, set()) if not re.search(rf"\b{c}\b", conditions)}
        if kind == "Seq Scan" or not (conditions.strip() or limited):
            bad.append(f"{kind} on {table}")
        elif missing:
            shown = {k: node[k] for k in ("Index Cond", "Recheck Cond", "Filter") if k in node}
            bad.append(f"{kind} on {table}: not an index condition: {sorted(missing)} {shown}")
    for child in node.get("Plans", []):
        bad.extend(_postgres_scans(child, wanted, limited=limited))
    return bad
