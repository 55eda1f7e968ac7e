"""`python -m bench master --json` measures ingest, console queries and the console's pages over
HTTP, headline figures last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.console_pages import PAGES as HTTP_PAGES

REPO = Path(__file__).resolve().parents[3]
PAGES = ("districts_kpi_all_time", "districts_kpi_day", "alarm_list", "seal_timeline",
         "hourly_chart_day", "seal_states", "chain_status")  # fmt: skip


def test_master_bench_reports_ingest_beside_raw_baselines_and_page_times() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "master", "--json", "--quick"],
        cwd=REPO,  # bench is not installed: it runs from the checkout
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    result = json.loads(done.stdout)
    assert list(result)[-3:] == [
        "ledger_ingest_events_per_s",
        "one_listener_vs_raw",
        "two_vs_one_listener",
    ]
    assert result["ingest_problems"] == 0  # every run stored each event once, chains sound
    for encoding in ("json", "batch"):
        rates = result["ledger_ingest_events_per_s"][encoding]
        assert min(rates.values()) > 0
        assert set(rates) == {"raw_psycopg", "one_listener", "two_listeners"}
        assert result["listener_cpu_us_per_event"][encoding]["one_listener"] > 0
    assert result["raw_paho_msgs_per_s"] > 0 and result["raw_psycopg_per_row_rows_per_s"] > 0
    for backend in ("sqlite", "postgres"):
        console = result["console_ms_at_1m"][backend]
        assert console["events"] == 20_000 and console["bytes_per_event"] > 0
        assert console["chain_walk_events_per_s"] > 0  # the generated chain walked and verified
        assert all(console[page] >= 0 for page in PAGES)
        assert console["fold_s"] > 0  # the rollups were folded as the listener folds them
        served = result["console_pages_ms_at_1m"][backend]
        assert served["events"] == 20_000
        for user in ("admin", "district_manager"):  # every page answered 200 with its content
            assert list(served[user]) == list(HTTP_PAGES)
            assert all(ms > 0 for ms in served[user].values())
        assert isinstance(served["pages_under_1s"], bool)
