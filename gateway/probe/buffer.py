"""`sealgw probe ingest` and `sealgw probe buffer`: the durable buffer on this box's disk.

- ingest: `producers` concurrent producers each await their own durable commit
  (EventBuffer.append; group commit, fsync per batch): events/s and the p99 commit latency;
- buffer: the buffer's own cycle: a burst of submits until durable, a paced load with its
  submit-to-durable latency, the open of the filled file (with its integrity check), and a
  drain as an uplink does it (fetch_pending, mark_published).

Both work in a scratch directory; the events are `meter.reading` drafts of four values
(`synthetic_draft`), the size of a small meter's reading.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.probe.timing import percentile
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import SystemClock
from gateway.protocol.events import Event, EventDraft, EventType, Priority
from gateway.store.buffer import EventBuffer
from gateway.store.config import MIB, BufferSection

__all__ = [
    "BufferCycle",
    "fill_buffer",
    "open_probe_buffer",
    "probe_buffer",
    "probe_ingest",
    "synthetic_draft",
]

GATEWAY = "gw-probe"
METERS = 64


def synthetic_draft(n: int, *, alarm_every: int = 0) -> EventDraft:
    """The n-th synthetic `meter.reading` (every `alarm_every`-th at ALARM priority)."""
    data: dict[str, JSONValue] = {
        "energy_kwh": 1000.0 + n / 100,
        "voltage_v": 229.7,
        "current_a": 4.25,
        "n": n,
    }
    alarm = alarm_every and n % alarm_every == 0
    priority = Priority.ALARM if alarm else Priority.TELEMETRY
    return EventDraft(
        EventType.METER_READING, f"M-{n % METERS:03d}", data, priority, SystemClock().now()
    )


def open_probe_buffer(
    path: Path, gateway_id: str = GATEWAY, synchronous: Literal["full", "normal"] = "full"
) -> EventBuffer:
    """A buffer large enough for any probe's backlog (2 GiB, 16 MiB audit reserve)."""
    settings = BufferSection(
        max_bytes=2048 * MIB, audit_reserve_bytes=16 * MIB, synchronous=synchronous
    )
    return EventBuffer(path, gateway_id, settings, SystemClock())


async def fill_buffer(buffer: EventBuffer, drafts: Sequence[EventDraft]) -> list[Event]:
    """Submit every draft at once and wait until all are committed, in order."""
    return list(await asyncio.gather(*(buffer.submit(draft) for draft in drafts)))


async def probe_ingest(
    work: Path,
    count: int,
    producers: int = 256,
    synchronous: Literal["full", "normal"] = "full",
) -> dict[str, JSONValue]:
    """`producers` concurrent producers each await their commit: events/s and p99 latency."""
    buffer = open_probe_buffer(work / "ingest.db", synchronous=synchronous)
    await buffer.open()
    latencies: list[float] = []
    per_producer = count // producers

    async def producer(index: int) -> None:
        for n in range(per_producer):
            began = time.perf_counter()
            await buffer.append(synthetic_draft(index * per_producer + n))
            latencies.append(time.perf_counter() - began)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(producer(i) for i in range(producers)))
        elapsed = time.perf_counter() - start
    finally:
        await buffer.close()
    return {
        "events": len(latencies),
        "producers": producers,
        "synchronous": synchronous,
        "events_per_s": round(len(latencies) / elapsed),
        "p99_commit_ms": round(percentile(latencies, 99) * 1000, 2),
    }


@dataclass(frozen=True, slots=True)
class BufferCycle:
    """Sizes of `sealgw probe buffer`: burst events, paced rate and seconds, drain window."""

    events: int = 100_000
    rate: int = 20_000
    paced_s: float = 3.0
    window: int = 500
    synchronous: Literal["full", "normal"] = "full"


async def probe_buffer(work: Path, cycle: BufferCycle) -> dict[str, JSONValue]:
    """Burst, paced load, reopen and drain of one buffer file; the figures of each."""
    path = work / "buffer.db"
    buffer = open_probe_buffer(path, synchronous=cycle.synchronous)
    await buffer.open()
    try:
        burst = await _burst(buffer, cycle.events)
        paced = await _paced(buffer, cycle.rate, cycle.paced_s)
    finally:
        await buffer.close()
    size_mib = path.stat().st_size / MIB
    started = time.perf_counter()
    buffer = open_probe_buffer(path, synchronous=cycle.synchronous)
    await buffer.open()
    opened_s = time.perf_counter() - started
    try:
        drain = await _drain(buffer, cycle.window)
    finally:
        await buffer.close()
    return {
        **burst,
        **paced,
        "file_mib": round(size_mib, 1),
        "open_s": round(opened_s, 3),
        **drain,
        "drain_batches": buffer.stats.batches,
        "drain_commit_p99_ms_at_most": buffer.stats.commit_latency.quantile(0.99),
    }


async def _burst(buffer: EventBuffer, count: int) -> dict[str, JSONValue]:
    """Submit pre-built drafts as fast as the loop allows (yielding every 1000) until durable."""
    drafts = [synthetic_draft(i, alarm_every=1000) for i in range(count)]
    start = time.perf_counter()
    futures: list[asyncio.Future[Event]] = []
    for i in range(count):
        futures.append(buffer.submit(drafts[i]))
        if i % 1000 == 999:
            await asyncio.sleep(0)
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    return {"burst_events": count, "burst_events_per_s": round(count / elapsed)}


async def _paced(buffer: EventBuffer, rate: int, seconds: float) -> dict[str, JSONValue]:
    """Submit pre-built drafts at `rate`/s in 2 ms ticks, recording submit-to-durable latency.

    Futures are not kept and the drafts are frozen out of the cyclic GC, as a daemon that
    does not hold 60k objects would see it.
    """
    total = int(rate * seconds)
    drafts = [synthetic_draft(i, alarm_every=1000) for i in range(total)]
    batches_before, committed_before = buffer.stats.batches, buffer.stats.committed
    gc.freeze()
    latencies: list[float] = []
    done = asyncio.Event()

    def record(_future: asyncio.Future[Event], t0: float) -> None:
        latencies.append(time.perf_counter() - t0)
        if len(latencies) == total:
            done.set()

    start = time.perf_counter()
    sent = 0
    try:
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * rate))
            while sent < due:
                t0 = time.perf_counter()
                buffer.submit(drafts[sent]).add_done_callback(functools.partial(record, t0=t0))
                sent += 1
            await asyncio.sleep(0.002)
        await done.wait()
    finally:
        gc.unfreeze()
    elapsed = time.perf_counter() - start
    batches = buffer.stats.batches - batches_before
    committed = buffer.stats.committed - committed_before
    return {
        "paced_rate_per_s": rate,
        "paced_events_per_s": round(sent / elapsed),
        "paced_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "paced_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "paced_max_ms": round(max(latencies) * 1000, 1),
        "paced_mean_batch": round(committed / max(batches, 1)),
    }


async def _drain(buffer: EventBuffer, window: int) -> dict[str, JSONValue]:
    """fetch_pending + mark_published until nothing is pending, as an uplink would."""
    total = sum(buffer.depth().values())
    start = time.perf_counter()
    after: dict[Priority, int] = {}
    done = 0
    while rows := await buffer.fetch_pending(after, window):
        for row in rows:
            after[row.priority] = row.seq
        await buffer.mark_published([row.seq for row in rows])
        done += len(rows)
    elapsed = time.perf_counter() - start
    return {"drained": done, "pending_before": total, "drain_events_per_s": round(done / elapsed)}
