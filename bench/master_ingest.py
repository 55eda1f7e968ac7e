"""Ledger ingest on PostgreSQL: listeners draining a broker backlog, beside raw baselines.

A run, for one encoding (`json`: one MQTT message per event, the gateway's default; `batch`:
the batch form, runs of up to 256 events per message) and one or two listeners:

1. a fresh Mosquitto and a fresh schema; each listener (`bench.master_worker`, its own
   process, on a `$share/...` subscription when there are two) subscribes with a persistent
   session and disconnects;
2. the same events (`bench.ledger_gen`: 20 gateways' chains) are published at QoS 1, so the
   broker holds them for the listeners' sessions;
3. on `go` the listeners connect and drain; the clock stops when every event is stored, every
   chain is verified to its end (`chain_head`) and every event is folded into the console's
   rollups (`kpi_daily`), which the bench polls.

Baselines on the same machine and in the same run: `raw_psycopg` inserts the same rows (as
`events` rows) with psycopg's executemany, one transaction per size the one-listener run
used (`raw_psycopg_per_row`: the same with one execute, and round trip, per row, as the
ledger did before it inserted in bulk); `raw_paho` is a bare paho client receiving and
acknowledging the same json backlog, the MQTT client's own ceiling.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.ledger_gen import GeneratedRow
from firmware_sim.children import die_with_parent
from firmware_sim.mosquitto import MosquittoBroker
from gateway.protocol.batch_encode import encode_batch
from master_station.ledger.factory import open_ledger
from master_station.ledger.schema import INSERT_EVENT

__all__ = [
    "ADMIN_DSN",
    "RunResult",
    "raw_paho_rate",
    "raw_psycopg_rate",
    "run_listeners",
    "schema_dsn",
    "scratch_database",
]  # fmt: skip

ADMIN_DSN = os.environ.get("SEALGW_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
ROOT = "sealgw/v1"
BATCH_EVENTS = 256
REPO = Path(__file__).resolve().parent.parent
RECEIVED = "2026-11-22T00:00:00.000Z"


@dataclass(frozen=True, slots=True)
class RunResult:
    """One listeners run: rates, and what the listeners reported."""

    stored_per_s: float
    verified_per_s: float
    transaction_sizes: list[int]
    stats: list[dict[str, int]]
    problems: int
    cpu_s: float  # the listener processes' CPU seconds, summed


def run_listeners(
    work: Path, database: str, rows: Sequence[GeneratedRow], encoding: str, listeners: int
) -> RunResult:
    """Drain the published backlog with `listeners` processes; see the module doc."""
    dsn = schema_dsn(database)
    open_ledger(dsn).close()  # the schema, before the clock
    tag = uuid.uuid4().hex[:6]
    share = f"bench-{tag}" if listeners > 1 else None
    with MosquittoBroker(work / f"broker-{tag}") as broker:
        workers = [_start_worker(dsn, broker.url, f"m-{tag}-{i}", share) for i in range(listeners)]
        try:
            for proc in workers:
                _expect_line(proc, "subscribed")
            _publish(broker, rows, encoding)
            start = time.monotonic()
            for proc in workers:
                _send(proc, "go")
            stored_at, verified_at = _wait_done(dsn, len(rows), start)
            reports = []
            for proc in workers:
                _send(proc, "stop")
                reports.append(json.loads(_read_line(proc)))
        finally:
            for proc in workers:
                _end(proc)
    return RunResult(
        stored_per_s=len(rows) / (stored_at - start),
        verified_per_s=len(rows) / (verified_at - start),
        transaction_sizes=[n for r in reports for n in r["transaction_sizes"]],
        stats=[r["stats"] for r in reports],
        problems=_count(dsn, "SELECT COUNT(*) FROM problems"),
        cpu_s=sum(float(r["cpu_s"]) for r in reports),
    )


def raw_psycopg_rate(
    database: str, rows: Sequence[GeneratedRow], sizes: Sequence[int], *, per_row: bool = False
) -> float:
    """Rows per second: the same rows, psycopg executemany (or, `per_row`, one execute and
    round trip per row), one transaction per size."""
    dsn = schema_dsn(database)
    open_ledger(dsn).close()
    columns = [row.columns(RECEIVED) for row in rows]
    statement = INSERT_EVENT.replace("?", "%s")
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        offset = 0
        for size in _cover(sizes, len(columns)):
            with conn.transaction(), conn.cursor() as cur:
                if per_row:
                    for row in columns[offset : offset + size]:
                        cur.execute(statement, row)
                else:
                    cur.executemany(statement, columns[offset : offset + size])
            offset += size
        elapsed = time.perf_counter() - start
    return len(rows) / elapsed


def raw_paho_rate(work: Path, rows: Sequence[GeneratedRow]) -> float:
    """Messages per second a bare paho client receives and acknowledges from a backlog."""
    with MosquittoBroker(work / f"broker-raw-{uuid.uuid4().hex[:6]}") as broker:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        done, subscribed, received = threading.Event(), threading.Event(), [0]

        def on_message(client: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
            client.ack(message.mid, message.qos)
            received[0] += 1
            if received[0] == len(rows):
                done.set()

        def session() -> paho.Client:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw-paho",
                                 protocol=paho.MQTTv5, manual_ack=True)  # fmt: skip
            client.on_message = on_message
            client.on_subscribe = lambda *_args: subscribed.set()
            client.connect(broker.host, broker.port, clean_start=False, properties=props)
            return client

        client = session()
        client.subscribe(f"{ROOT}/+/events/#", qos=1)
        client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("raw paho: no SUBACK")
        client.disconnect()
        client.loop_stop()
        _publish(broker, rows, "json")
        start = time.perf_counter()
        client = session()
        client.loop_start()
        finished = done.wait(600)
        elapsed = time.perf_counter() - start
        client.disconnect()
        client.loop_stop()
    if not finished:
        raise RuntimeError(f"raw paho received {received[0]} of {len(rows)}")
    return len(rows) / elapsed


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new database on the local server, dropped afterwards; yields its DSN."""
    name = f"sealgw_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def schema_dsn(database_dsn: str) -> str:
    """A DSN on `database_dsn` whose search_path is a new schema."""
    schema = f"s_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{database_dsn}?options={quote(f'-csearch_path={schema}')}"


# -- helpers -----------------------------------------------------------------------------------


def _publish(broker: MosquittoBroker, rows: Sequence[GeneratedRow], encoding: str) -> None:
    """Every event at QoS 1, one per message or in batch runs; return once all are acked."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-gateways",
                         protocol=paho.MQTTv5)  # fmt: skip
    client.max_inflight_messages_set(100)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        pending = []
        for topic, payload in _messages(rows, encoding):
            pending.append(client.publish(topic, payload, qos=1))
            if len(pending) >= 1000:
                for info in pending:
                    info.wait_for_publish(60)
                pending = []
        for info in pending:
            info.wait_for_publish(60)
    finally:
        client.disconnect()
        client.loop_stop()


def _messages(rows: Sequence[GeneratedRow], encoding: str) -> Iterator[tuple[str, bytes]]:
    if encoding == "json":
        for row in rows:
            yield f"{ROOT}/{row.gateway}/events/{row.type}", row.payload
        return
    run: list[GeneratedRow] = []
    for row in rows:
        if run and (len(run) == BATCH_EVENTS or row.gateway != run[-1].gateway
                    or row.priority != run[-1].priority):  # fmt: skip
            yield f"{ROOT}/{run[0].gateway}/batch", encode_batch([r.payload for r in run])
            run = []
        run.append(row)
    if run:
        yield f"{ROOT}/{run[0].gateway}/batch", encode_batch([r.payload for r in run])


def _wait_done(dsn: str, total: int, start: float) -> tuple[float, float]:
    """(when every event was stored, when every chain was verified and folded), monotonic.

    Only `chain_head` and `kpi_daily` are polled (a row per gateway, and per day): counting
    `events` every few milliseconds would load the database under test. When the last event
    was stored is read afterwards from the newest `received_at` (its transaction's clock).
    """
    wall_start = time.time()
    deadline = start + 900
    verified = "SELECT COALESCE(SUM(verified_seq), 0) FROM chain_head"
    folded = "SELECT COALESCE(SUM(events), 0) FROM kpi_daily"
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if _scalar(conn, verified) >= total and _scalar(conn, folded) >= total:
                verified_at = time.monotonic()
                newest = conn.execute("SELECT MAX(received_at) FROM events").fetchone()
                stored_wall = datetime.fromisoformat(str(newest[0]).replace("Z", "+00:00"))
                stored_at = start + (stored_wall.timestamp() - wall_start)
                return min(stored_at, verified_at), verified_at
            time.sleep(0.02)
    raise RuntimeError(f"listeners did not store and verify {total} events in time")


def _scalar(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return _scalar(conn, sql)


def _cover(sizes: Sequence[int], total: int) -> Iterator[int]:
    """The recorded sizes, repeated or cut so they add up to `total`."""
    left = total
    while left > 0:
        for size in sizes or [total]:
            take = min(size, left)
            yield take
            left -= take
            if left == 0:
                return


def _start_worker(
    dsn: str, broker: str, client_id: str, share: str | None
) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "bench.master_worker", "--dsn", dsn, "--broker", broker,
            "--client-id", client_id] + (["--share-group", share] if share else [])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        preexec_fn=die_with_parent(signal.SIGKILL),  # noqa: PLW1509 (lock-free, children.py)
    )


def _send(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(word + "\n")
    proc.stdin.flush()


def _read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"listener worker exited ({proc.wait(5)})")
    return line.strip()


def _expect_line(proc: subprocess.Popen[str], word: str) -> None:
    line = _read_line(proc)
    if line != word:
        raise RuntimeError(f"listener worker said {line!r}, expected {word!r}")


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
