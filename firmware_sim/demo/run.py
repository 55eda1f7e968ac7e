"""`sealgw demo`: a district on one machine, a scripted day, and a summary checked against a ledger.

Processes: a private Mosquitto (unless `--broker`), `sealgw master listen` (ledger in the work
directory), `sealgw sim` (20 locks, 11 meters on Modbus TCP, Modbus RTU and DL/T 645), and
`sealgw run` (the gateway, reaching its broker through a relay the demo can cut). An
independent subscriber in this process records what was published. The day is in
demo_script.py; this module runs it, always cleans up, and builds the summary:

- from the ledger: events per type, meter readings per protocol, thefts, seq gaps, the chain
  verified twice (the ledger's own check and `verify_chain` over its payloads);
- `ledger_equals_published`: the ledger's event ids equal the subscriber's (repeats merged);
- the KPIs of `master_station.kpi.report`, taken just before the gateway's clean stop.

The exit code is 0 only when every step passed, no seq is missing, the chain verifies and the
ledger equals what was published.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from firmware_sim.demo.day import GATEWAY_ID, Day, Timeline, buffer_head
from firmware_sim.demo.script import STEPS, StepResult, play
from firmware_sim.procs import PYTHON, child_env
from gateway.protocol.chain import verify_chain
from master_station.ledger.factory import open_ledger

__all__ = ["DemoOptions", "run_demo", "summarize"]

MIN_DURATION_S = 30.0
HEADLINE = (
    "events_published", "seal_integrity_rate", "lock_online_rate", "meter_read_success_rate",
    "meter_readings_by_protocol", "theft_suspected", "line_loss_intervals", "line_loss_alarms",
    "line_loss_bypassed_meter", "line_loss_named_meters", "ledger_seq_gaps",
    "ledger_chain_verified", "ledger_equals_published", "steps_passed", "steps_failed",
    "duration_s",
)  # fmt: skip


@dataclass(slots=True)
class DemoOptions:
    broker_url: str | None = None
    duration_s: float = 60.0
    json_output: bool = False
    encoding: str = "json"  # the gateway's uplink.encoding: json or batch
    radio: str = "tcp"
    patience: float = 1.0
    work_dir: Path | None = None  # kept after the run (logs); a temporary folder otherwise
    handheld: str = "ble"  # ble: handhelds over GATT on the radio; tcp: the local socket
    serve: bool = False  # keep the master console up on the ledger after the day, until Ctrl-C
    serve_port: int = 8080


def run_demo(options: DemoOptions) -> int:
    """Run the scripted day; print the timeline and a table, or one JSON object with --json."""
    duration = max(options.duration_s, MIN_DURATION_S)
    out = sys.stderr if options.json_output else sys.stdout
    timeline = Timeline(out, total=len(STEPS))
    with contextlib.ExitStack() as stack:
        if options.work_dir is not None:
            options.work_dir.mkdir(parents=True, exist_ok=True)
            tmp = str(options.work_dir)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sealgw-demo-"))
        day = Day(
            Path(tmp),
            duration,
            timeline,
            external_broker=options.broker_url,
            radio=options.radio,
            patience=options.patience,
            encoding=options.encoding,
            handheld=options.handheld,
        )
        timeline.say(f"sealgw demo: a {duration:.0f} s day in {day.work}")
        try:
            results = play(day)
        except KeyboardInterrupt:
            results = [StepResult("interrupted", False, 0.0, "interrupted")]
        finally:
            _shut_down(day)
        summary = summarize(day, results)
        if not all(r.ok for r in results):
            _show_logs(day, sys.stderr)
        if options.json_output:
            print(json.dumps(summary, sort_keys=False), flush=True)
        else:
            print(format_summary(summary), flush=True)
        if options.serve:
            serve_console(day, options.serve_port)
    return 0 if passed(summary) else 1


def passed(summary: dict[str, Any]) -> bool:
    """Every step passed, no seq gap, the chain verified, the ledger equals what was published."""
    return (
        summary["steps_failed"] == 0
        and summary["ledger_seq_gaps"] == 0
        and summary["ledger_chain_verified"] is True
        and summary["ledger_equals_published"] is True
    )


def summarize(day: Day, results: list[StepResult]) -> dict[str, Any]:
    """The summary object of a finished (or failed) day."""
    events = _ledger_events(day.ledger)
    published = {e["id"] for e in day.events()} if day.subscriber else set()
    heads = [e["seq"] for e in events]
    missing = _missing(set(heads), max([*heads, _safe_head(day)], default=0))
    readings = Counter(
        day.meters.get(e["data"].get("meter", ""), {}).get("protocol", "unknown")
        for e in events
        if e["type"] == "meter.reading"
    )
    return {
        "events_published": len({e["id"] for e in events}),
        "uplink_encoding": day.encoding,
        "events_per_type": dict(sorted(Counter(e["type"] for e in events).items())),
        "seal_integrity_rate": day.kpi.get("seal_integrity_rate"),
        "lock_online_rate": day.kpi.get("lock_online_rate"),
        "meter_read_success_rate": day.kpi.get("meter_read_success_rate"),
        "meter_read_success_source": day.kpi.get("meter_read_success_source"),
        "meter_readings_by_protocol": {
            name: readings.get(name, 0) for name in ("modbus-rtu", "modbus-tcp", "dlt645")
        },
        "theft_suspected": sum(1 for e in events if e["type"] == "theft.suspected"),
        **_line_loss(day, events),
        "ledger_seq_gaps": len(missing),
        "ledger_chain_verified": bool(events) and _chain_verified(day.ledger, events),
        "ledger_equals_published": bool(events) and published == {e["id"] for e in events},
        "subscriber_received": len(day.events()) if day.subscriber else 0,
        "steps": [
            {"step": r.name, "ok": r.ok, "s": round(r.seconds, 1), "error": r.error}
            for r in results
        ],
        "steps_passed": sum(1 for r in results if r.ok),
        "steps_failed": len(STEPS) - sum(1 for r in results if r.ok),
        "duration_s": round(day.timeline.elapsed(), 1),
    }


def _line_loss(day: Day, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Line-loss intervals and alarms in the ledger; the meters its thefts named."""
    named = {
        e["data"]["meter"]
        for e in events
        if e["type"] == "theft.suspected" and e["data"].get("rule") == "line_loss_jump"
    }
    return {
        "line_loss_intervals": sum(1 for e in events if e["type"] == "district.line_loss"),
        "line_loss_alarms": sum(1 for e in events if e["type"] == "district.line_loss_alarm"),
        "line_loss_bypassed_meter": day.bypassed or None,
        "line_loss_named_meters": sorted(named),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The final table for a person."""
    rows = [(key, _show(summary[key])) for key in HEADLINE]
    rows.insert(1, ("events_per_type", ""))
    width = max(len(key) for key in [*HEADLINE, *summary["events_per_type"]]) + 2
    lines = ["", "summary", "-------"]
    for key, value in rows:
        lines.append(f"{key:<{width}}  {value}")
        if key == "events_per_type":
            lines += [f"  {t:<{width - 2}}  {n}" for t, n in summary["events_per_type"].items()]
    lines.append("PASS" if passed(summary) else "FAIL")
    return "\n".join(lines)


def serve_console(day: Day, port: int) -> None:
    """`sealgw master serve` on the day's ledger, with a one-time admin password; until Ctrl-C."""
    password = secrets.token_urlsafe(12)
    env = {**child_env(), "SEALGW_CONSOLE_PASSWORD": password}
    done = subprocess.run(
        [*PYTHON, "master", "user", "add", "--ledger", str(day.ledger), "--username", "admin",
         "--role", "admin"],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        print(f"console: could not create the admin: {done.stderr.strip()}", file=sys.stderr)
        return
    child = day.procs.start("console", [
        "master", "serve", "--ledger", str(day.ledger), "--master-dir", str(day.master_dir),
        "--host", "127.0.0.1", "--port", str(port),
    ])  # fmt: skip
    log = day.work / "console.log"
    try:
        day.wait("the console listening", lambda: "console at" in _text(log), 30)
        url = next(line for line in _text(log).splitlines() if "console at" in line)
        print(f"\n{url.split('console at ', 1)[1].split(' ')[0]}  user admin, one-time password"
              f" {password}\n(Ctrl-C stops it)", flush=True)  # fmt: skip
        child.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        day.procs.close()


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# -- helpers ----------------------------------------------------------------------------------


def _shut_down(day: Day) -> None:
    """Stop whatever still runs: children (process groups), subscriber, relay, broker."""
    day.procs.close()
    if day.subscriber is not None:
        with contextlib.suppress(Exception):
            day.subscriber.stop()
    if day.relay is not None:
        day.relay.close()
    if day.broker is not None:
        day.broker.stop()


def _ledger_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    conn = sqlite3.connect(path, timeout=5)
    try:
        rows = conn.execute(
            "SELECT payload FROM events WHERE gateway = ? ORDER BY seq", (GATEWAY_ID,)
        ).fetchall()
    except sqlite3.OperationalError:
        rows = []
    finally:
        conn.close()
    return [json.loads(bytes(row[0])) for row in rows]


def _chain_verified(path: Path, events: list[dict[str, Any]]) -> bool:
    ledger = open_ledger(path)
    try:
        report = ledger.verify(GATEWAY_ID)
    finally:
        ledger.close()
    return report.ok and verify_chain(events).ok


def _missing(seqs: set[int], head: int) -> list[tuple[int, int]]:
    """Missing seq ranges in 1..head."""
    ranges: list[tuple[int, int]] = []
    for seq in range(1, head + 1):
        if seq in seqs:
            continue
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


def _safe_head(day: Day) -> int:
    try:
        return buffer_head(day)
    except sqlite3.Error:
        return 0


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


def _show_logs(day: Day, out: TextIO) -> None:
    """The end of each process log, to say why a step failed."""
    for log in sorted(day.work.glob("*.log")):
        tail = log.read_text(errors="replace").strip().splitlines()[-8:]
        if tail:
            print(f"--- {log.name} (last lines)", *tail, sep="\n", file=out)
