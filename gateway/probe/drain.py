"""`sealgw probe drain`: how fast this box's uplink empties a committed backlog to a broker.

The probe commits a backlog into a scratch buffer (not timed), opens it again as the daemon
would after an outage, then runs the real `Uplink` against the broker the caller names until
every event is published, acknowledged and marked: `events_per_s`. The clock starts when the
uplink starts, so the connect is part of the figure. The backlog is either synthetic
(`--events N` meter readings) or the caller's own (`--drafts FILE`, JSON lines of event
drafts: gateway/protocol/draft_lines.py), for instance a district's mix of events.

The probe publishes under its own gateway id (`gw-probe` unless told otherwise): point it at
a test broker, not at a production one whose master station would take the events as real.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.errors import ProbeError
from gateway.probe.buffer import fill_buffer, open_probe_buffer
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import SystemClock
from gateway.protocol.events import EventDraft
from gateway.store.buffer import EventBuffer
from gateway.uplink.commands import CommandDispatcher
from gateway.uplink.config import UplinkSection
from gateway.uplink.uplink import Uplink

__all__ = ["DrainSettings", "probe_drain"]

STOP_TIMEOUT_S = 5.0
CONNECT_DEADLINE_S = 30.0
POLL_S = 0.005


@dataclass(frozen=True, slots=True)
class DrainSettings:
    """The broker, and how the uplink publishes: encoding, in-flight window, ids."""

    broker: str
    encoding: Literal["json", "batch"] = "json"
    max_inflight: int = 100
    gateway_id: str = "gw-probe"
    client_id: str = ""
    paced: bool = False  # at the default [uplink] drain rate, as a daemon drains; else unbounded
    batch_workers: int | None = None  # batch encoder workers; None: the [uplink] default


async def probe_drain(
    work: Path, drafts: Sequence[EventDraft], settings: DrainSettings
) -> dict[str, JSONValue]:
    """Commit `drafts` as a backlog, then time the uplink draining it to the broker."""
    path = work / "drain.db"
    buffer = open_probe_buffer(path, settings.gateway_id)
    await buffer.open()
    try:
        events = await fill_buffer(buffer, drafts)
    finally:
        await buffer.close()
    buffer = open_probe_buffer(path, settings.gateway_id)
    await buffer.open()
    uplink = _uplink(buffer, settings)
    cpu_start = time.process_time(), _children_cpu_s()
    try:
        elapsed = await _timed_drain(uplink, buffer)
        cpu_s = time.process_time() - cpu_start[0]
        workers_cpu_s = _children_cpu_s() - cpu_start[1]  # the uplink has stopped them
    finally:
        await buffer.close()
    return {
        "events": len(events),
        "encoding": settings.encoding,
        "max_inflight": settings.max_inflight,
        "drain_s": round(elapsed, 3),
        "events_per_s": round(len(events) / elapsed, 1),
        "cpu_s": round(cpu_s + workers_cpu_s, 4),  # this process and its encoder workers
        "encoder_workers": uplink.settings.batch_workers if settings.encoding == "batch" else 0,
        "encoder_workers_cpu_s": round(workers_cpu_s, 4),  # their start-up included
    }


def _uplink(buffer: EventBuffer, settings: DrainSettings) -> Uplink:
    section = UplinkSection(
        url=settings.broker,
        # unthrottled: the probe measures the pipe, not the daemon's cap (unless asked)
        drain_rate_per_s=UplinkSection().drain_rate_per_s if settings.paced else 0,
        max_inflight=settings.max_inflight,
        encoding=settings.encoding,
        batch_workers=(
            UplinkSection().batch_workers
            if settings.batch_workers is None
            else settings.batch_workers
        ),
    )
    return Uplink(
        section,
        gateway_id=settings.gateway_id,
        client_id=settings.client_id or f"{settings.gateway_id}-probe",
        source=buffer,
        dispatcher=CommandDispatcher(),
        clock=SystemClock(),
        version="probe",
    )


def _children_cpu_s() -> float:
    """CPU seconds of this process's ended children (the encoder workers, once stopped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _timed_drain(uplink: Uplink, buffer: EventBuffer) -> float:
    """Run `uplink` until `buffer` holds nothing unpublished; the seconds that took."""
    start = time.perf_counter()
    task = asyncio.create_task(uplink.run(), name="sealgw-probe-uplink")
    try:
        while sum(buffer.depth().values()) > 0:
            if task.done():
                task.result()
                raise ProbeError("the uplink stopped during the drain")
            if not uplink.stats.connections and time.perf_counter() - start > CONNECT_DEADLINE_S:
                url = uplink.settings.url
                raise ProbeError(f"no connection to {url} within {CONNECT_DEADLINE_S:g} s")
            await asyncio.sleep(POLL_S)
        elapsed = time.perf_counter() - start
        await uplink.stop(timeout=STOP_TIMEOUT_S)
        await asyncio.wait((task,), timeout=STOP_TIMEOUT_S)  # run() ends: its workers stopped
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return elapsed
