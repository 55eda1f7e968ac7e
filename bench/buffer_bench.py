"""Benchmark of gateway.store.buffer: ingest throughput, commit latency, drain rate, open time.

Run: .venv/bin/python -m bench.buffer_bench [--events 100000] [--rate 20000] [--sync full]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.config.model import MIB, BufferSection
from gateway.protocol.clock import SystemClock
from gateway.protocol.events import Event, EventDraft, Priority
from gateway.store.buffer import EventBuffer


def draft(i: int) -> EventDraft:
    priority = Priority.ALARM if i % 1000 == 0 else Priority.TELEMETRY
    data = {"kwh": 1234.5 + i, "v": 230.1, "status": "ok", "n": i}
    return EventDraft("meter.reading", "M-0001", data, priority, datetime.now(UTC))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def burst(buf: EventBuffer, count: int) -> None:
    """Submit pre-built drafts as fast as the loop allows (yielding every 1000) until durable."""
    drafts = [draft(i) for i in range(count)]
    start = time.perf_counter()
    futures: list[asyncio.Future[Event]] = []
    for i in range(count):
        futures.append(buf.submit(drafts[i]))
        if i % 1000 == 999:
            await asyncio.sleep(0)
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    print(f"burst: {count} events in {elapsed:.2f}s = {count / elapsed:,.0f} events/s")


async def paced(buf: EventBuffer, rate: int, seconds: float) -> None:
    """Submit pre-built drafts at `rate`/s in 2 ms ticks, recording submit-to-durable latency.

    Futures are not kept and the drafts are frozen out of the cyclic GC, as a daemon that
    does not hold 60k objects would see it.
    """
    drafts = [draft(i) for i in range(int(rate * seconds * 1.1))]
    gc.freeze()
    latencies: list[float] = []
    done = asyncio.Event()
    total = int(rate * seconds)

    def record(_future: asyncio.Future[Event], t0: float) -> None:
        latencies.append(time.perf_counter() - t0)
        if len(latencies) == total:
            done.set()

    start = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate))
        while sent < due:
            t0 = time.perf_counter()
            buf.submit(drafts[sent]).add_done_callback(functools.partial(record, t0=t0))
            sent += 1
        await asyncio.sleep(0.002)
    await done.wait()
    elapsed = time.perf_counter() - start
    gc.unfreeze()
    print(
        f"paced {rate}/s: {sent} events in {elapsed:.2f}s ({sent / elapsed:,.0f}/s),"
        f" latency p50 {pct(latencies, 0.5):.1f} ms p99 {pct(latencies, 0.99):.1f} ms"
        f" max {max(latencies) * 1000:.1f} ms,"
        f" mean batch {buf.stats.committed / buf.stats.batches:.0f}"
    )


async def drain(buf: EventBuffer, window: int) -> None:
    """fetch_pending + mark_published until nothing is pending, as an uplink would."""
    total = sum(buf.depth().values())
    start = time.perf_counter()
    after: dict[Priority, int] = {}
    done = 0
    while True:
        rows = await buf.fetch_pending(after, window)
        if not rows:
            break
        for row in rows:
            after[row.priority] = row.seq
        await buf.mark_published([row.seq for row in rows])
        done += len(rows)
    elapsed = time.perf_counter() - start
    print(f"drain: {done}/{total} events in {elapsed:.2f}s = {done / elapsed:,.0f} events/s")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=20_000)
    parser.add_argument("--sync", choices=["full", "normal"], default="full")
    args = parser.parse_args()
    settings = BufferSection(max_bytes=512 * MIB, synchronous=args.sync)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "buffer.db"
        buf = EventBuffer(path, "gw-bench", settings, SystemClock())
        await buf.open()
        await burst(buf, args.events)
        await paced(buf, args.rate, 3.0)
        await buf.close()
        size = path.stat().st_size / MIB
        start = time.perf_counter()
        buf = EventBuffer(path, "gw-bench", settings, SystemClock())
        await buf.open()
        print(f"open with integrity_check: {size:.1f} MiB in {time.perf_counter() - start:.2f}s")
        await drain(buf, 500)
        await buf.close()
        hist = buf.stats.commit_latency
        print(f"drain stats: {buf.stats.batches} batches, p99 <= {hist.quantile(0.99)} ms")


if __name__ == "__main__":
    asyncio.run(main())
