"""Findings 1 and 2 of reliability round 2: a real full disk, and marking rows at the hard cap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.config.model import BufferSection
from gateway.errors import StorageFullError
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import Event, EventDraft, Priority
from gateway.store.buffer import EventBuffer
from tests.e2e.faults.conftest import REPO

MIB = 1024 * 1024


def draft(n: int, priority: Priority, note: int = 200) -> EventDraft:
    kind = "meter.reading" if priority is Priority.TELEMETRY else "seal.sealed"
    data = (
        {"n": n, "kwh": 1000.25 + n, "note": "x" * note} if note > 10 else {"n": n, "x": "y" * note}
    )
    subject = "M-0001" if note > 10 else "SL-1"
    return EventDraft(kind, subject, data, priority, datetime(2026, 1, 1, tzinfo=UTC))


async def deliver_all(buffer: EventBuffer, chunk: int) -> int:
    """Fetch and mark every pending row as the uplink does; return how many were marked."""
    marked = 0
    while pending := await buffer.fetch_pending({}, chunk):
        await buffer.mark_published([p.seq for p in pending])
        marked += len(pending)
    return marked


async def test_real_disk_full_evicts_prunes_and_raises_the_flag(
    tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.store")
    settings = BufferSection(
        max_bytes=64 * MIB, audit_reserve_bytes=16 * MIB, retain_published_s=3600
    )
    buffer = EventBuffer(tmpfs / "buffer.db", "gw-1", settings, ManualClock())
    await buffer.open()
    reports: list[bool] = []
    buffer.on_storage_full = reports.append
    n, refused_after_room = 0, 0
    for _ in range(80):  # 80 x 400 readings of ~350 bytes: far more than 8 MiB
        results = await asyncio.gather(
            *(buffer.submit(draft(n + i, Priority.TELEMETRY)) for i in range(400)),
            return_exceptions=True,
        )
        n += 400
        stored = [r for r in results if isinstance(r, Event)]
        if buffer.stats.evicted_telemetry:
            refused_after_room += len(results) - len(stored)
        await buffer.mark_published([e.seq for e in stored[:200]])  # delivered just now
        if buffer.stats.evicted_telemetry > 4000:
            break
    assert buffer.stats.pruned_published > 0, "published rows were not pruned to make room"
    assert buffer.stats.evicted_telemetry > 0, "no telemetry was evicted on a full disk"
    assert refused_after_room < 400
    assert not buffer.storage_full and reports == []

    with pytest.raises(StorageFullError):
        for round_ in range(200):
            await asyncio.gather(
                *(buffer.submit(draft(round_ * 200 + i, Priority.AUDIT)) for i in range(200))
            )
    assert buffer.storage_full and reports == [True]
    for _ in range(3):  # the flag stays up until alarm and audit events have room again
        with contextlib.suppress(StorageFullError):
            await buffer.append(draft(0, Priority.ALARM))
    assert buffer.storage_full and reports == [True]

    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(noisy) <= 6, [r.getMessage() for r in noisy]

    assert await deliver_all(buffer, 500) > 0  # marking works on the full disk
    assert not buffer.storage_full and reports == [True, False]
    head = buffer.head[0]
    assert (await buffer.append(draft(1, Priority.ALARM))).seq == head + 1
    await buffer.close()


FILL_AND_DRAIN = """
import asyncio, contextlib, json, sqlite3, sys
from datetime import UTC, datetime
from pathlib import Path
from gateway.config.model import BufferSection
from gateway.errors import StorageError
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import EventDraft, Priority
from gateway.store.buffer import EventBuffer
from tests.e2e.faults.conftest import REPO

MIB = 1024 * 1024
USED = "SELECT p.page_count - f.freelist_count FROM pragma_page_count p, pragma_freelist_count f"

def used(path):
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(USED).fetchone()[0]) * 4096

async def main():
    path = Path(sys.argv[1])
    settings = BufferSection(max_bytes=16 * MIB, audit_reserve_bytes=4 * MIB)
    buffer = EventBuffer(path, "gw-1", settings, ManualClock())
    await buffer.open()
    n = 0
    while True:  # audit in small commits (a quiet gateway) until 40 KiB short of the cap
        drafts = [EventDraft("seal.sealed", "SL-1", {"n": n + i, "x": "y" * 10}, Priority.AUDIT,
                             datetime(2026, 1, 1, tzinfo=UTC)) for i in range(5)]
        n += 5
        results = await asyncio.gather(*map(buffer.submit, drafts), return_exceptions=True)
        if any(isinstance(r, Exception) for r in results) or used(path) > 16 * MIB - 40960:
            break
    failures, marked = [], 0
    while len(failures) < 3 and (pending := await buffer.fetch_pending({}, 2048)):
        try:  # 2048: the uplink's ACK_BATCH
            await buffer.mark_published([p.seq for p in pending])
            marked += len(pending)
        except StorageError as exc:
            failures.append(str(exc))
    print(json.dumps({"stored": buffer.head[0], "marked": marked, "failures": failures,
                      "pending": sum(buffer.depth().values())}))
    await buffer.close()

asyncio.run(main())
"""


@pytest.mark.timeout(
    420
)  # fills a buffer to its hard cap in a child: ~35 s idle, minutes on a busy box
def test_marking_delivered_rows_at_the_hard_cap(tmp_path: Path) -> None:
    command = [sys.executable, "-c", FILL_AND_DRAIN, str(tmp_path / "buffer.db")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, check=True, timeout=400)
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert result["stored"] > 30_000
    assert result["failures"] == [], "delivered rows could not be marked at the cap"
    assert result["marked"] == result["stored"]
    assert result["pending"] == 0
