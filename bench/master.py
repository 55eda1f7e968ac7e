"""Master station bench: ledger ingest on PostgreSQL, and the console's queries at 1M events.

`python -m bench master [--json] [--quick]`, from the checkout, with PostgreSQL on
127.0.0.1:5432 (user postgres; `SEALGW_BENCH_PG_DSN` names another admin DSN). It creates a
scratch database and drops it at the end.

- ingest (bench/master_ingest.py): the same events, from 20 gateways' realistic chains
  (bench/ledger_gen.py), drained from a Mosquitto backlog by one listener and by two listeners
  on a shared subscription, until every event is stored, every chain verified and every event
  folded into the console's rollups; per
  encoding (`json`, the gateway's default, and `batch`). Beside them in each round: the same
  rows inserted with psycopg's executemany in the transaction sizes the one-listener run used
  (`raw_psycopg`; `raw_psycopg_per_row`: one execute per row, json sizes), and a bare paho
  client draining the json backlog (`raw_paho`).
- console: a ledger of 1,000,000 events built in bulk, on SQLite and on PostgreSQL, its last
  day today, folded into the console's rollups by the listener's code (bench/master_console.py);
  the median time of the same questions asked of the `Ledger` API without rollups
  (`console_ms_at_1m`), then of each console page over HTTP from `sealgw master serve`, for an
  admin and a district manager, each answer checked for its content (bench/console_pages.py,
  `console_pages_ms_at_1m`, with `pages_under_1s` per backend).

Each figure is the median of the rounds (every other round runs two listeners before one); the
CPU seconds the listener processes used per event are given too, since the wall-clock rates
depend on how busy the machine's cores are (`loadavg` at the start and the end), and so is the
two-to-one ratio of each round.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.console_pages import time_console
from bench.ledger_gen import LedgerPlan, generate
from bench.master_console import build, bulk_connection, time_pages
from bench.master_ingest import (
    RunResult,
    raw_paho_rate,
    raw_psycopg_rate,
    run_listeners,
    schema_dsn,
    scratch_database,
)
from master_station.ledger.factory import open_ledger

ENCODINGS = ("json", "batch")
INGEST_GATEWAYS = 20


def run(*, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Both parts; the result's last keys are the headline figures."""
    ingest_n = 3_000 if quick else 40_000
    rounds = 1 if quick else 3
    console_n = 20_000 if quick else 1_000_000
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sealgw-bench-") as tmp, scratch_database() as db:
        work = Path(tmp)
        ingest = _ingest(work, db, ingest_n, rounds, verbose)
        console = _console(work, db, console_n, 3 if quick else 5, verbose)
    return _result(ingest, console, ingest_n, rounds, load_start)


# -- ingest ------------------------------------------------------------------------------------


def _ingest(work: Path, db: str, events: int, rounds: int, verbose: bool) -> dict[str, Any]:
    plan = LedgerPlan(gateways=INGEST_GATEWAYS, districts=2, days=2)
    rows = list(generate(plan, limit=events))
    runs: dict[str, dict[str, list[Any]]] = {
        e: {"one": [], "two": [], "raw_psycopg": []} for e in ENCODINGS
    }
    raw_paho: list[float] = []
    per_row: list[float] = []
    for index in range(rounds):
        for encoding in ENCODINGS:
            if index % 2:  # every other round two first: a load that drifts favours neither
                two = run_listeners(work, db, rows, encoding, 2)
                one = run_listeners(work, db, rows, encoding, 1)
            else:
                one = run_listeners(work, db, rows, encoding, 1)
                two = run_listeners(work, db, rows, encoding, 2)
            raw = raw_psycopg_rate(db, rows, one.transaction_sizes)
            runs[encoding]["one"].append(one)
            runs[encoding]["two"].append(two)
            runs[encoding]["raw_psycopg"].append(raw)
            _say(verbose, f"round {index + 1} {encoding}: raw {raw:.0f}/s, one listener "
                 f"{one.verified_per_s:.0f}/s, two {two.verified_per_s:.0f}/s")  # fmt: skip
        raw_paho.append(raw_paho_rate(work, rows))
        sizes = runs["json"]["one"][-1].transaction_sizes
        per_row.append(raw_psycopg_rate(db, rows, sizes, per_row=True))
        _say(verbose, f"round {index + 1}: raw paho {raw_paho[-1]:.0f} msgs/s, raw psycopg "
             f"row by row {per_row[-1]:.0f}/s")  # fmt: skip
    return {"runs": runs, "raw_paho": raw_paho, "per_row": per_row, "events": len(rows)}


# -- console -----------------------------------------------------------------------------------


def _console(work: Path, db: str, events: int, rounds: int, verbose: bool) -> dict[str, Any]:
    """Per backend: the ledger built and folded, its queries timed, then its pages over HTTP."""
    plan = LedgerPlan.for_events(events).ending(datetime.now(UTC).date())  # the last day: today
    shape = {"gateways": plan.gateways, "districts": plan.districts, "days": plan.days,
             "meters_per_gateway": plan.meters, "seals_per_gateway": plan.seals}  # fmt: skip
    out: dict[str, Any] = {"plan": shape}
    served: dict[str, Any] = {}
    for backend in ("sqlite", "postgres"):
        target = str(work / "console.db") if backend == "sqlite" else schema_dsn(db)
        ledger = open_ledger(target)
        conn = bulk_connection(backend, target)
        try:
            built = build(ledger, conn, backend, plan, events)
            _say(verbose, f"{backend}: {built.events} events built in {built.seconds:.0f} s"
                 f" (rollups folded in {built.fold_seconds:.0f} s)")  # fmt: skip
            pages = time_pages(ledger, built, rounds)
            _say(verbose, f"{backend}: " + ", ".join(f"{k} {v}" for k, v in pages.items()))
            http = time_console(ledger, target, work, rounds)
            _say(verbose, f"{backend} pages: " + ", ".join(
                f"{user} {page} {ms}" for user in ("admin", "district_manager")
                for page, ms in http[user].items()))  # fmt: skip
        finally:
            conn.close()
            ledger.close()
        out[backend] = {"events": built.events, "build_s": round(built.seconds, 1),
                        "fold_s": round(built.fold_seconds, 1),
                        "bytes_per_event": built.bytes_per_event, **pages}  # fmt: skip
        served[backend] = {"events": built.events, **http}
    return {"queries": out, "pages": served}


# -- result ------------------------------------------------------------------------------------


def _result(
    ingest: dict[str, Any],
    console: dict[str, Any],
    events: int,
    rounds: int,
    load_start: tuple[float, float, float],
) -> dict[str, Any]:
    rates: dict[str, dict[str, float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    runs_out: dict[str, dict[str, list[float]]] = {}
    sizes: dict[str, float] = {}
    problems = 0
    for encoding, runs in ingest["runs"].items():
        one, two, raw = runs["one"], runs["two"], runs["raw_psycopg"]
        rates[encoding] = {
            "raw_psycopg": round(statistics.median(raw)),
            "one_listener": round(statistics.median(r.verified_per_s for r in one)),
            "two_listeners": round(statistics.median(r.verified_per_s for r in two)),
        }
        cpu[encoding] = {
            "one_listener": _cpu_us(one, events),
            "two_listeners": _cpu_us(two, events),
        }
        runs_out[encoding] = {
            "raw_psycopg": [round(r) for r in raw],
            "one_listener": [round(r.verified_per_s) for r in one],
            "one_listener_stored_only": [round(r.stored_per_s) for r in one],
            "two_listeners": [round(r.verified_per_s) for r in two],
            "two_listeners_stored_only": [round(r.stored_per_s) for r in two],
        }
        sizes[encoding] = round(statistics.mean(n for r in one for n in r.transaction_sizes), 1)
        problems += sum(r.problems for r in [*one, *two])
    raw_paho = round(statistics.median(ingest["raw_paho"]))
    return {
        "bench": "master",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "rounds": rounds,
        "ingest_events": events,
        "ingest_gateways": INGEST_GATEWAYS,
        "ingest_problems": problems,
        "mean_events_per_transaction": sizes,
        "ingest_runs": runs_out,
        "raw_paho_runs": [round(r) for r in ingest["raw_paho"]],
        "raw_psycopg_per_row_runs": [round(r) for r in ingest["per_row"]],
        "raw_psycopg_per_row_rows_per_s": round(statistics.median(ingest["per_row"])),
        "listener_cpu_us_per_event": cpu,
        "two_vs_one_listener_per_round": {
            encoding: [round(t.verified_per_s / o.verified_per_s, 3)
                       for o, t in zip(runs["one"], runs["two"], strict=True)]
            for encoding, runs in ingest["runs"].items()
        },
        "console_ms_at_1m": console["queries"],
        "console_pages_ms_at_1m": console["pages"],
        "raw_paho_msgs_per_s": raw_paho,
        "ledger_ingest_events_per_s": rates,
        "one_listener_vs_raw": {e: round(r["one_listener"] / r["raw_psycopg"], 3)
                                for e, r in rates.items()},
        "two_vs_one_listener": {e: round(r["two_listeners"] / r["one_listener"], 3)
                                for e, r in rates.items()},
    }  # fmt: skip


def _cpu_us(runs: list[RunResult], events: int) -> float:
    return round(statistics.median(r.cpu_s for r in runs) / events * 1e6, 1)


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr)
