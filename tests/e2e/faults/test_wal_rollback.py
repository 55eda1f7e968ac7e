"""Finding 3 of reliability round 2: a garbled WAL frame rolls committed, delivered events back."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from gateway.config.model import BufferSection
from gateway.protocol.chain import verify_chain
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import Event, EventDraft, Priority, event_hash
from gateway.store.buffer import EventBuffer
from tests.e2e.faults.conftest import run_writer

WAL_HEADER, FRAME_HEADER, PAGE = 32, 24, 4096


def garble_frame(wal: Path, fraction: float) -> int:
    """Overwrite the page of the frame `fraction` of the way into the WAL; return its index."""
    frames = (wal.stat().st_size - WAL_HEADER) // (FRAME_HEADER + PAGE)
    index = int(frames * fraction)
    with wal.open("r+b") as handle:
        handle.seek(WAL_HEADER + index * (FRAME_HEADER + PAGE) + FRAME_HEADER + 100)
        handle.write(os.urandom(512))
    return index


async def reopen_and_append(path: Path) -> tuple[list[Event], Event]:
    """Open the buffer as the restarted gateway does, commit one event; every row, the event."""
    buffer = EventBuffer(path, "gw-fault", BufferSection(), ManualClock())
    await buffer.open()
    draft = EventDraft(
        "seal.sealed", "SL-0002", {"after": True}, Priority.AUDIT, buffer.clock.now()
    )
    event = await buffer.append(draft)
    await buffer.close()
    return [Event.from_payload(p) for p in _payloads(path)], event


def _payloads(path: Path) -> list[bytes]:
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [bytes(r[0]) for r in conn.execute("SELECT payload FROM events ORDER BY seq")]


def test_garbled_wal_frame_never_reuses_a_seq(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    delivered = run_writer(path, batches=12, size=20, close=False)
    head = max(json.loads(p)["seq"] for p in delivered)
    assert head == 240
    garble_frame(Path(f"{path}-wal"), 0.5)

    rows, event = asyncio.run(reopen_and_append(path))
    by_seq = {json.loads(p)["seq"]: p for p in delivered}
    survivors = [e for e in rows if e.seq <= head]
    assert len(survivors) < head, "the garbled frame did not roll anything back"
    assert all(e.payload == by_seq[e.seq] for e in survivors), "a delivered seq was reused"
    assert event.seq > head
    epochs = [e for e in rows if e.type == "gateway.chain_epoch"]
    assert len(epochs) == 1 and epochs[0].priority is Priority.ALARM
    data = epochs[0].data
    assert data["reason"] == "rollback"
    assert (data["lost_first_seq"], data["lost_last_seq"]) == (len(survivors) + 1, head)
    assert (data["prev_seq"], data["prev_hash"]) == (head, json.loads(by_seq[head])["hash"])
    assert epochs[0].seq == head + 1 < event.seq

    # what the master holds: everything delivered before the crash, then the new events
    received = [json.loads(p) for p in delivered] + [
        json.loads(e.payload) for e in rows if e.seq > head
    ]
    assert all(event_hash(obj) == obj["hash"] for obj in received)
    report = verify_chain(received)
    assert report.ok, report.problems
