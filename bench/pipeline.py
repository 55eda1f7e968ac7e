"""Pipeline bench: durable ingest, backlog drain through the uplink, and raw paho as baseline.

All three run against one private Mosquitto, with the same payloads:
- raw: plain paho-mqtt in this process publishing N payloads at QoS 1 with the same in-flight
  window;
- drain: a committed backlog of the same N events published by the gateway's Uplink,
  acknowledged and marked (`sealgw probe drain`, a child process: gateway/probe/drain.py);
- ingest: concurrent producers awaiting EventBuffer.append (group commit, fsync per batch;
  `sealgw probe ingest`).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.probes import run_probe
from bench.uplink_common import raw_paho_rate, sealed_payloads, write_drafts
from firmware_sim.mosquitto import MosquittoBroker
from gateway.protocol.events import EventDraft, EventType, Priority

GATEWAY = "gw-bench"
MAX_INFLIGHT = 100


def run(*, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Run the three measurements and return the result object (headline figures last)."""
    drain_n = 10_000 if quick else 100_000
    ingest_n = 20_000 if quick else 100_000
    rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="sealgw-bench-") as tmp:
        work = Path(tmp)
        with MosquittoBroker(work / "broker", receive_maximum=MAX_INFLIGHT) as broker:
            result = _measure(broker, work, drain_n, ingest_n, rounds, verbose)
    return result


def _measure(
    broker: MosquittoBroker, work: Path, drain_n: int, ingest_n: int, rounds: int, verbose: bool
) -> dict[str, Any]:
    raw_rates, drain_rates, ingest_rates, p99s = [], [], [], []
    for index in range(rounds):
        drafts = [_draft(n) for n in range(drain_n)]
        raw_rates.append(_raw_paho_rate(broker, sealed_payloads(drafts, GATEWAY)))
        drain_rates.append(_drain_rate(broker, work / f"drain-{index}", drafts))
        rate, p99 = _ingest(work / f"ingest-{index}", ingest_n)
        ingest_rates.append(rate)
        p99s.append(p99)
        _say(
            verbose,
            f"round {index + 1}: raw {raw_rates[-1]:.0f}/s drain {drain_rates[-1]:.0f}/s "
            f"ingest {rate:.0f}/s p99 {p99:.1f} ms",
        )
    raw, drain = statistics.median(raw_rates), statistics.median(drain_rates)
    return {
        "bench": "pipeline",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "backlog_events": drain_n,
        "ingest_events": ingest_n,
        "max_inflight": MAX_INFLIGHT,
        "synchronous": "full",
        "raw_paho_runs": [round(r) for r in raw_rates],
        "drain_runs": [round(r) for r in drain_rates],
        "ingest_runs": [round(r) for r in ingest_rates],
        "raw_paho_msgs_per_s": round(raw),
        "drain_events_per_s": round(drain),
        "drain_ratio": round(drain / raw, 3),
        "ingest_events_per_s": round(statistics.median(ingest_rates)),
        "ingest_p99_commit_ms": round(statistics.median(p99s), 2),
    }


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr)


def _draft(n: int) -> EventDraft:
    data = {"energy_kwh": 1000.0 + n / 100, "voltage_v": 229.7, "current_a": 4.25, "n": n}
    now = datetime.now(UTC)
    return EventDraft(EventType.METER_READING, f"M-{n % 64:03d}", data, Priority.TELEMETRY, now)


def _raw_paho_rate(broker: MosquittoBroker, payloads: list[bytes]) -> float:
    """Plain paho: every payload at QoS 1 with the same in-flight window, until every PUBACK."""
    topic = f"sealgw/v1/{GATEWAY}-raw/events/meter.reading"
    return raw_paho_rate(
        broker, payloads, client_id="raw-bench", topic=topic, max_inflight=MAX_INFLIGHT
    )


def _drain_rate(broker: MosquittoBroker, work: Path, drafts: list[EventDraft]) -> float:
    """The gateway's uplink drains the committed backlog: published, acknowledged and marked."""
    backlog = write_drafts(work.with_suffix(".jsonl"), drafts)
    drained = run_probe(
        "drain", "--broker", broker.url, "--drafts", backlog, "--max-inflight", MAX_INFLIGHT,
        "--gateway-id", GATEWAY, "--client-id", f"{GATEWAY}-{work.name}", "--work-dir", work,
    )  # fmt: skip
    return float(drained["events_per_s"])


def _ingest(work: Path, count: int, producers: int = 256) -> tuple[float, float]:
    """Concurrent producers each await their commit; returns (events/s, p99 latency ms)."""
    ingested = run_probe("ingest", "--events", count, "--producers", producers, "--work-dir", work)
    return float(ingested["events_per_s"]), float(ingested["p99_commit_ms"])
