"""Pipeline bench: durable ingest, backlog drain through the uplink, and raw paho as baseline.

All three run in one process against one private Mosquitto, with the same payloads:
- raw: plain paho-mqtt publishing N payloads at QoS 1 with the same in-flight window;
- ingest: concurrent producers awaiting EventBuffer.append (group commit, fsync per batch);
- drain: a committed backlog of N events published by the Uplink, acknowledged and marked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.uplink_common import raw_paho_rate, timed_drain
from firmware_sim.mosquitto import MosquittoBroker
from gateway.config.model import BufferSection, UplinkSection
from gateway.protocol.clock import SystemClock
from gateway.protocol.events import EventDraft, Priority
from gateway.store.buffer import EventBuffer
from gateway.uplink.commands import CommandDispatcher
from gateway.uplink.uplink import Uplink

GATEWAY = "gw-bench"
MAX_INFLIGHT = 100
MIB = 1024 * 1024


def run(*, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Run the three measurements and return the result object (headline figures last)."""
    drain_n = 10_000 if quick else 100_000
    ingest_n = 20_000 if quick else 100_000
    rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="sealgw-bench-") as tmp:
        work = Path(tmp)
        with MosquittoBroker(work / "broker", receive_maximum=MAX_INFLIGHT) as broker:
            result = asyncio.run(_measure(broker, work, drain_n, ingest_n, rounds, verbose))
    return result


async def _measure(
    broker: MosquittoBroker, work: Path, drain_n: int, ingest_n: int, rounds: int, verbose: bool
) -> dict[str, Any]:
    raw_rates, drain_rates, ingest_rates, p99s = [], [], [], []
    for index in range(rounds):
        db = work / f"drain-{index}.db"
        payloads = await _fill_backlog(db, drain_n)
        raw_rates.append(await asyncio.to_thread(_raw_paho_rate, broker, payloads))
        drain_rates.append(await _drain_rate(broker, db, drain_n))
        rate, p99 = await _ingest(work / f"ingest-{index}.db", ingest_n)
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
    return EventDraft(
        "meter.reading", f"M-{n % 64:03d}", data, Priority.TELEMETRY, SystemClock().now()
    )


def _buffer(path: Path) -> EventBuffer:
    settings = BufferSection(max_bytes=2048 * MIB, audit_reserve_bytes=16 * MIB)
    return EventBuffer(path, GATEWAY, settings, SystemClock())


async def _fill_backlog(path: Path, count: int) -> list[bytes]:
    buffer = _buffer(path)
    await buffer.open()
    events = await asyncio.gather(*(buffer.submit(_draft(n)) for n in range(count)))
    await buffer.close()
    return [event.payload for event in events]


def _raw_paho_rate(broker: MosquittoBroker, payloads: list[bytes]) -> float:
    """Plain paho: every payload at QoS 1 with the same in-flight window, until every PUBACK."""
    topic = f"sealgw/v1/{GATEWAY}-raw/events/meter.reading"
    return raw_paho_rate(
        broker, payloads, client_id="raw-bench", topic=topic, max_inflight=MAX_INFLIGHT
    )


async def _drain_rate(broker: MosquittoBroker, path: Path, count: int) -> float:
    """The uplink drains a committed backlog: published, acknowledged and marked."""
    buffer = _buffer(path)
    await buffer.open()
    settings = UplinkSection(url=broker.url, drain_rate_per_s=0, max_inflight=MAX_INFLIGHT)
    uplink = Uplink(
        settings,
        gateway_id=GATEWAY,
        client_id=f"{GATEWAY}-{path.stem}",
        source=buffer,
        dispatcher=CommandDispatcher(),
        clock=SystemClock(),
        version="bench",
    )
    elapsed = await timed_drain(uplink, buffer)
    await buffer.close()
    return count / elapsed


async def _ingest(path: Path, count: int, producers: int = 256) -> tuple[float, float]:
    """Concurrent producers each await their commit; returns (events/s, p99 latency ms)."""
    buffer = _buffer(path)
    await buffer.open()
    latencies: list[float] = []
    per_producer = count // producers

    async def producer(index: int) -> None:
        for n in range(per_producer):
            began = time.perf_counter()
            await buffer.append(_draft(index * per_producer + n))
            latencies.append(time.perf_counter() - began)

    start = time.perf_counter()
    await asyncio.gather(*(producer(i) for i in range(producers)))
    elapsed = time.perf_counter() - start
    await buffer.close()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    return len(latencies) / elapsed, p99


logging.getLogger("gateway").setLevel(logging.WARNING)
