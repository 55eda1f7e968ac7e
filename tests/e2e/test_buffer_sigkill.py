"""The durable event buffer, against real SQLite files: chain, group commit, delivery, capacity,
corruption recovery, migrations and crash durability."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.config.model import BufferSection
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import GENESIS_HASH, Event, EventDraft, Priority, event_hash
from gateway.store.buffer import EventBuffer

REPO = Path(__file__).resolve().parents[2]
SMALL = BufferSection(max_bytes=256 * 1024, audit_reserve_bytes=64 * 1024)
DEFAULT = BufferSection()

Factory = Callable[..., EventBuffer]


def draft(n: int = 0, priority: Priority = Priority.TELEMETRY, kind: str = "") -> EventDraft:
    """A draft with a recognisable number in its data."""
    kind = (
        kind
        or {
            Priority.ALARM: "seal.tamper",
            Priority.AUDIT: "seal.sealed",
            Priority.STATE: "meter.state",
            Priority.TELEMETRY: "meter.reading",
        }[priority]
    )
    data = {"n": n, "kwh": 1000.25 + n, "note": "x" * 200}
    return EventDraft(kind, "M-0001", data, priority, datetime(2026, 1, 1, tzinfo=UTC))


def rows(path: Path) -> list[tuple[int, int, int, bytes]]:
    """(seq, priority, published, payload) of every stored row, by seq."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        query = "SELECT seq, priority, published, payload FROM events ORDER BY seq"
        return conn.execute(query).fetchall()


def user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def assert_chain(path: Path, *, complete: bool = True) -> list[Event]:
    """Every row parses and hashes to its hash; neighbours link; with `complete`, seq is 1..n."""
    events: list[Event] = []
    for seq, _priority, _published, payload in rows(path):
        event = Event.from_payload(payload)
        assert event.seq == seq
        assert event_hash(json.loads(payload)) == event.hash
        if not events:
            assert not complete or (seq, event.prev_hash) == (1, GENESIS_HASH)
        elif events[-1].seq == seq - 1:
            assert event.prev_hash == events[-1].hash
        else:
            assert not complete, f"gap before seq {seq}"
        events.append(event)
    return events


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Factory]:
    """Build buffers on tmp_path/buffer.db; all are closed at teardown."""
    made: list[EventBuffer] = []

    def factory(settings: BufferSection = DEFAULT, **kwargs: object) -> EventBuffer:
        clock = kwargs.pop("clock", None) or ManualClock()
        buffer = EventBuffer(tmp_path / "buffer.db", "gw-1", settings, clock, **kwargs)  # type: ignore[arg-type]
        made.append(buffer)
        return buffer

    yield factory
    for buffer in made:
        await buffer.close()


async def opened(make: Factory, settings: BufferSection = DEFAULT) -> EventBuffer:
    buffer = make(settings)
    await buffer.open()
    return buffer


# -- chain and group commit ----------------------------------------------------------------


# -- delivery ------------------------------------------------------------------------------


# -- capacity ------------------------------------------------------------------------------


# -- corruption, schema, migrations --------------------------------------------------------


# -- crash durability ----------------------------------------------------------------------

CHILD = """
import asyncio, sys
from datetime import UTC, datetime
from pathlib import Path
from gateway.store.buffer import EventBuffer
from gateway.protocol.clock import SystemClock
from gateway.config.model import BufferSection
from gateway.protocol.events import EventDraft, Priority

def report(future):
    sys.stdout.write(f"{future.result().seq}\\n")
    sys.stdout.flush()

async def main():
    buffer = EventBuffer(Path(sys.argv[1]), "gw-crash", BufferSection(), SystemClock())
    await buffer.open()
    n = 0
    while True:
        for _ in range(25):
            draft = EventDraft("meter.reading", "M-1", {"n": n}, Priority(n % 4),
                               datetime.now(UTC))
            buffer.submit(draft).add_done_callback(report)
            n += 1
        await asyncio.sleep(0.002)

asyncio.run(main())
"""


def test_sigkill_loses_no_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acknowledged: list[int] = []
    while len(acknowledged) < 1500:
        line = child.stdout.readline()
        assert line, "child exited early"
        acknowledged.append(int(line))
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate(timeout=10)
    acknowledged += [int(line) for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    assert child.returncode == -signal.SIGKILL

    async def reopen() -> tuple[int, str]:
        buffer = EventBuffer(path, "gw-crash", BufferSection(), ManualClock())
        await buffer.open()
        head = buffer.head
        await buffer.close()
        return head

    head = asyncio.run(reopen())
    events = assert_chain(path)
    assert len(events) == head[0] >= max(acknowledged)
    assert set(acknowledged) <= {e.seq for e in events}
    assert events[-1].hash == head[1]
