"""A million-event ledger built in bulk, its rollups folded, and its `Ledger`-API queries timed.

`build` fills an empty ledger in bulk with `bench.ledger_gen` (COPY on PostgreSQL, one
executemany per chunk on SQLite; the retained seal states and gateway statuses beside, each
chain's verified head at its end, since the generator's chains are sound: one gateway's head
is left unset, and `time_pages` first walks that whole chain to show it, and how fast a walk
goes). Each chunk, once stored, is folded into the console's rollups by the listener's own
code (`Rollups.stored`, master_station/ledger/rollup.py), and `Rollups.tick` runs at the end,
so the rollup tables are the ones the listener would have left (a test compares them with a
listener-style fold, tests/integration/bench/test_bench_console_pages.py). The console's
pages themselves are timed over HTTP by bench/console_pages.py.

`time_pages` times the same questions asked of the ledger's general API, without the rollups
(what the pages would cost if they were computed from `events`; `sealgw master kpi` still is):

- districts: `load_inputs` + `compute_kpis`, all time and for the last day (the KPI queries);
- alarms: `Ledger.events(priority="alarm")`;
- seal: one seal's events through the `Ledger` API (no subject filter there: the events of its
  gateway, filtered to the seal, its subject or `data.seal`);
- chart: `hourly_counts` for the last day; chain: `verify(gateway)` (the chain status).
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg

from bench.ledger_gen import GeneratedRow, LedgerPlan, check_sample, generate
from master_station.kpi.report import compute_kpis, load_inputs
from master_station.ledger.models import Ledger
from master_station.ledger.rollup import rollups_for
from master_station.ledger.schema import INSERT_EVENT

__all__ = ["BuildResult", "build", "bulk_connection", "time_pages"]

CHUNK = 20_000
RECEIVED = "2026-11-22T00:00:00.000Z"
COLUMNS = "id, gateway, seq, payload, type, ts, priority, subject, hash, prev_hash, received_at"


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What `build` wrote, and how long generating and inserting took."""

    events: int
    gateways: int
    seconds: float
    last_day: date
    sample_gateway: str
    sample_seal: str
    bytes_per_event: int  # the events table with its indexes (PostgreSQL), the file (SQLite)
    fold_seconds: float = 0.0  # of `seconds`: the console's rollups folded (Rollups.stored)


def build(ledger: Ledger, conn: Any, backend: str, plan: LedgerPlan, events: int) -> BuildResult:
    """Fill `ledger` (whose own connection `conn`, sqlite3 or psycopg, writes in bulk), and
    fold each chunk into the console's rollups after it is stored, as the listener does."""
    start = time.perf_counter()
    rollups = rollups_for(ledger)
    heads: dict[str, tuple[int, str]] = {}
    newest = ""
    count = 0
    fold_s = 0.0
    sampled = False
    for chunk in _chunks(generate(plan, limit=events)):
        if not sampled:
            check_sample(chunk[:500])
            sampled = True
        _insert(conn, backend, chunk)
        folding = time.perf_counter()
        rollups.stored([row.payload for row in chunk])
        fold_s += time.perf_counter() - folding
        for row in chunk:
            heads[row.gateway] = (row.seq, row.hash)
        newest = max(newest, chunk[-1].ts)
        count += len(chunk)
    sample = sorted(heads)[0]
    _retained(conn, backend, plan, {gw: head for gw, head in heads.items() if gw != sample})
    folding = time.perf_counter()
    rollups.tick()  # the listener's next second: chain problems as alarms, today's snapshot
    fold_s += time.perf_counter() - folding
    seconds = time.perf_counter() - start
    size = _size(conn, backend)
    last_day = date.fromisoformat(newest[:10])
    return BuildResult(count, len(heads), seconds, last_day, sample, "SL-0003",
                       size // max(count, 1), fold_s)  # fmt: skip


def bulk_connection(backend: str, target: str) -> Any:
    """The connection `build` writes in bulk with: psycopg (autocommit) or sqlite3 (WAL)."""
    if backend == "postgres":
        return psycopg.connect(target, autocommit=True)
    conn = sqlite3.connect(target, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def time_pages(ledger: Ledger, built: BuildResult, rounds: int) -> dict[str, float]:
    """Median milliseconds of each page's ledger work, after one full walk of a chain."""
    gateway, seal = built.sample_gateway, built.sample_seal
    start = time.perf_counter()
    walked = ledger.verify(gateway)  # its head was left unset: the whole chain is walked
    walk_s = time.perf_counter() - start
    if not walked.ok or walked.verified_seq != walked.head_seq:
        raise RuntimeError(f"the generated chain of {gateway} does not verify: {walked.to_json()}")
    day = built.last_day
    since, until = f"{day}T00:00:00.000Z", f"{day}T23:59:59.999Z"
    pages: dict[str, Callable[[], object]] = {
        "districts_kpi_all_time": lambda: compute_kpis(load_inputs(ledger)),
        "districts_kpi_day": lambda: compute_kpis(load_inputs(ledger, day=day)),
        "alarm_list": lambda: ledger.events(priority="alarm"),
        "seal_timeline": lambda: _seal_timeline(ledger, gateway, seal),
        "hourly_chart_day": lambda: ledger.hourly_counts(since, until),
        "seal_states": ledger.seal_states,
        "chain_status": lambda: ledger.verify(gateway),
    }
    timed = {name: _median_ms(work, rounds) for name, work in pages.items()}
    return {"chain_walk_events_per_s": round(walked.events / walk_s), **timed}


def _size(conn: Any, backend: str) -> int:
    """Bytes the events take: the table, its TOAST and indexes; or the whole SQLite file."""
    if backend == "postgres":
        conn.execute("ANALYZE")
        return int(conn.execute("SELECT pg_total_relation_size('events')").fetchone()[0])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    return int(pages * conn.execute("PRAGMA page_size").fetchone()[0])


def _seal_timeline(ledger: Ledger, gateway: str, seal: str) -> list[Any]:
    return [
        e for e in ledger.events(gateway=gateway) if e.subject == seal or e.data.get("seal") == seal
    ]


def _median_ms(work: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 1)


def _chunks(rows: Iterator[GeneratedRow]) -> Iterator[list[GeneratedRow]]:
    chunk: list[GeneratedRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _insert(conn: Any, backend: str, chunk: list[GeneratedRow]) -> None:
    if backend == "postgres":
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(f"COPY events ({COLUMNS}) FROM STDIN") as copy,
        ):
            for row in chunk:
                copy.write_row(row.columns(RECEIVED))
        return
    conn.execute("BEGIN")
    conn.executemany(INSERT_EVENT, [row.columns(RECEIVED) for row in chunk])
    conn.execute("COMMIT")


def _retained(conn: Any, backend: str, plan: LedgerPlan, heads: dict[str, tuple[int, str]]) -> None:
    """Seal states, gateway statuses and verified heads, as the listener would have left them."""
    mark = "%s" if backend == "postgres" else "?"
    seals = []
    for gateway in heads:
        for seal in range(plan.seals):
            state = "tampered" if seal == 7 else "sealed"
            doc = (f'{{"lock_id":"5ea1{seal:012x}","online":true,"seal":"SL-{seal:04d}",'
                   f'"state":"{state}","tamper":{"true" if seal == 7 else "false"},'
                   '"wire":"intact"}')  # fmt: skip
            seals.append((gateway, f"SL-{seal:04d}", doc.encode(), RECEIVED))
    statuses = [(gw, "online", b'{"state":"online"}', RECEIVED) for gw in heads]
    chain = [(gw, seq, digest, RECEIVED) for gw, (seq, digest) in heads.items()]
    statements = [
        ("INSERT INTO seal_state (gateway, seal, payload, updated_at) VALUES (?, ?, ?, ?)", seals),
        ("INSERT INTO gateway_status (gateway, state, payload, updated_at) VALUES (?, ?, ?, ?)",
         statuses),
        ("INSERT INTO chain_head (gateway, verified_seq, verified_hash, verified_at)"
         " VALUES (?, ?, ?, ?)", chain),
    ]  # fmt: skip
    if backend == "postgres":
        with conn.transaction(), conn.cursor() as cur:
            for sql, rows in statements:
                cur.executemany(sql.replace("?", mark), rows)
        return
    conn.execute("BEGIN")
    for sql, rows in statements:
        conn.executemany(sql, rows)
    conn.execute("COMMIT")
