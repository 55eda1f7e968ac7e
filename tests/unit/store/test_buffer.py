"""The durable event buffer, against real SQLite files: chain, group commit, delivery, capacity,
corruption recovery, migrations and crash durability."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.config.model import BufferSection
from gateway.errors import StorageError, StorageFullError
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import GENESIS_HASH, Event, EventDraft, Priority
from gateway.store.buffer import EventBuffer
from gateway.store.buffer_file import load_migrations
from gateway.store.buffer_sql import seq_ranges
from tests.fixtures.buffers import assert_chain, user_version

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


async def test_concurrent_submits_are_gapless_and_chained(make: Factory, tmp_path: Path) -> None:
    buffer = await opened(make)

    async def producer(base: int) -> list[Event]:
        futures = [buffer.submit(draft(base + i, Priority(i % 4))) for i in range(300)]
        await asyncio.sleep(0)
        return list(await asyncio.gather(*futures))

    results = await asyncio.gather(*(producer(k * 1000) for k in range(10)))
    seqs = sorted(event.seq for batch in results for event in batch)
    assert seqs == list(range(1, 3001))
    assert buffer.stats.committed == 3000
    assert 0 < buffer.stats.batches < 3000 / 10
    assert buffer.head[0] == 3000
    await buffer.close()
    events = assert_chain(tmp_path / "buffer.db")
    assert events[-1].hash == buffer.head[1]
    assert {event.payload for batch in results for event in batch} == {e.payload for e in events}


async def test_head_is_restored_and_the_chain_continues(make: Factory, tmp_path: Path) -> None:
    first = await opened(make)
    assert first.head == (0, GENESIS_HASH)
    for i in range(5):
        await first.append(draft(i))
    head = first.head
    await first.close()
    second = await opened(make)
    assert second.head == head
    event = await second.append(draft(99, Priority.AUDIT))
    assert (event.seq, event.prev_hash) == (6, head[1])
    assert second.depth()[Priority.TELEMETRY] == 5
    await second.close()
    assert len(assert_chain(tmp_path / "buffer.db")) == 6


async def test_on_commit_gets_each_durable_batch(make: Factory) -> None:
    buffer = await opened(make)
    seen: list[int] = []
    buffer.on_commit = lambda events: seen.extend(e.seq for e in events)
    await asyncio.gather(*(buffer.submit(draft(i)) for i in range(50)))
    assert seen == list(range(1, 51))


async def test_duplicate_id_is_refused_without_a_gap(make: Factory, tmp_path: Path) -> None:
    buffer = await opened(make)
    original = draft(1)
    futures = [buffer.submit(original), buffer.submit(original), buffer.submit(draft(2))]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(results[1], StorageError)
    assert not isinstance(results[1], StorageFullError)
    assert [r.seq for r in results if isinstance(r, Event)] == [1, 2]
    await buffer.close()
    assert len(assert_chain(tmp_path / "buffer.db")) == 2


async def test_close_commits_the_queue_and_is_idempotent(make: Factory, tmp_path: Path) -> None:
    buffer = await opened(make)
    futures = [buffer.submit(draft(i)) for i in range(200)]
    await buffer.close()
    await buffer.close()
    assert all(f.done() and f.result().seq == i + 1 for i, f in enumerate(futures))
    with pytest.raises(StorageError):
        buffer.submit(draft(1))
    assert len(assert_chain(tmp_path / "buffer.db")) == 200
    assert not Path(f"{tmp_path / 'buffer.db'}-wal").exists() or (
        Path(f"{tmp_path / 'buffer.db'}-wal").stat().st_size == 0
    )


async def test_file_and_directory_permissions(tmp_path: Path) -> None:
    nested = EventBuffer(tmp_path / "state" / "buffer.db", "gw-1", BufferSection(), ManualClock())
    await nested.open()
    await nested.close()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "buffer.db").stat().st_mode & 0o777 == 0o600


# -- delivery ------------------------------------------------------------------------------


async def test_fetch_pending_orders_by_priority_then_seq(make: Factory) -> None:
    buffer = await opened(make)
    order = [Priority.TELEMETRY, Priority.ALARM, Priority.STATE, Priority.AUDIT] * 3
    for i, priority in enumerate(order):
        await buffer.append(draft(i, priority))
    pending = await buffer.fetch_pending({}, 100)
    assert [(p.priority, p.seq) for p in pending] == sorted(
        (priority, seq) for seq, priority in enumerate(order, start=1)
    )
    assert pending[0].type == "seal.tamper"
    assert Event.from_payload(pending[0].payload).seq == pending[0].seq
    assert [p.seq for p in await buffer.fetch_pending({}, 4)] == [2, 6, 10, 4]
    after = {Priority.ALARM: 10, Priority.AUDIT: 8, Priority.TELEMETRY: 5}
    rest = await buffer.fetch_pending(after, 100)
    assert [p.seq for p in rest] == [12, 3, 7, 11, 9]
    assert buffer.depth() == dict.fromkeys(Priority, 3)


async def test_mark_published_and_requeue(make: Factory) -> None:
    buffer = await opened(make)
    for i in range(10):
        await buffer.append(draft(i))
    await buffer.mark_published([1, 2, 3, 4, 5, 99])
    assert buffer.depth()[Priority.TELEMETRY] == 5
    assert [p.seq for p in await buffer.fetch_pending({}, 100)] == [6, 7, 8, 9, 10]
    assert await buffer.requeue(2, 4) == (3, 2)
    assert buffer.depth()[Priority.TELEMETRY] == 8
    assert [p.seq for p in await buffer.fetch_pending({}, 100)] == [2, 3, 4, 6, 7, 8, 9, 10]
    assert await buffer.requeue(1) == (2, 1)
    assert await buffer.requeue(50) == (0, None)


async def test_marks_go_by_ranges_and_count_each_row_once(make: Factory) -> None:
    buffer = await opened(make)
    for i in range(12):
        await buffer.append(draft(i, Priority.ALARM if i in (3, 4) else Priority.TELEMETRY))
    await buffer.mark_published([9, 1, 2, 3, 2, 12, 5, 10])  # any order, repeats, gaps
    await buffer.mark_published([1, 2, 11])  # 1 and 2 already marked
    assert buffer.depth() == {Priority.ALARM: 1, Priority.AUDIT: 0, Priority.STATE: 0,
                              Priority.TELEMETRY: 3}  # fmt: skip
    assert [p.seq for p in await buffer.fetch_pending({}, 100)] == [4, 6, 7, 8]  # alarm first
    assert seq_ranges([9, 1, 2, 3, 2, 12, 5, 10]) == [(1, 3), (5, 5), (9, 10), (12, 12)]
    assert seq_ranges([]) == []


async def test_retention_prunes_only_old_published_rows(make: Factory) -> None:
    clock = ManualClock()
    settings = BufferSection(retain_published_s=3600)
    buffer = make(settings, clock=clock)
    await buffer.open()
    for i in range(1200):
        buffer.submit(draft(i))
    await buffer.append(draft(1200))
    await buffer.mark_published(list(range(1, 1101)))
    clock.advance(1800)
    await buffer.mark_published([1101, 1102])
    assert await buffer.prune() == 0
    clock.advance(1801)  # also wakes the background pruner, which may take a share
    assert 0 < await buffer.prune() <= 1100
    await buffer.prune()
    assert buffer.stats.pruned_published == 1100
    assert await buffer.requeue(1, 1102) == (2, 1101)
    assert buffer.depth()[Priority.TELEMETRY] == 101
    await buffer.close()
    assert [e.seq for e in assert_chain(buffer.path, complete=False)] == list(range(1101, 1202))


# -- capacity ------------------------------------------------------------------------------


async def test_telemetry_is_evicted_oldest_first_audit_never(make: Factory, tmp_path: Path) -> None:
    buffer = await opened(make, SMALL)
    audits = [await buffer.append(draft(i, Priority.AUDIT)) for i in range(20)]
    for start in range(0, 2000, 100):
        await asyncio.gather(*(buffer.submit(draft(start + i)) for i in range(100)))
    assert buffer.stats.evicted_telemetry > 0
    assert not buffer.storage_full
    await buffer.close()
    events = assert_chain(tmp_path / "buffer.db", complete=False)
    stored = {e.seq for e in events}
    assert {a.seq for a in audits} <= stored
    notices = [e for e in events if e.type == "gateway.telemetry_evicted"]
    assert notices and all(n.priority is Priority.STATE for n in notices)
    assert sum(n.data["count"] for n in notices) == buffer.stats.evicted_telemetry
    kept = sorted(e.seq for e in events if e.type == "meter.reading")
    assert max(n.data["last_seq"] for n in notices) < kept[0]
    assert set(range(kept[0], buffer.head[0] + 1)) - set(kept) <= {n.seq for n in notices}
    assert (tmp_path / "buffer.db").stat().st_size <= SMALL.max_bytes
    assert buffer.depth()[Priority.TELEMETRY] == len(kept)


async def test_audit_full_raises_and_clears_after_delivery(make: Factory, tmp_path: Path) -> None:
    buffer = await opened(make, SMALL)
    reports: list[bool] = []
    buffer.on_storage_full = reports.append
    stored: list[Event] = []
    with pytest.raises(StorageFullError):
        for i in range(5000):
            stored.append(await buffer.append(draft(i, Priority.AUDIT)))
    assert buffer.storage_full and reports == [True]
    assert len(stored) > 100
    with pytest.raises(StorageFullError):
        await buffer.append(draft(0, Priority.TELEMETRY))
    assert buffer.stats.rejected_bulk == 1
    assert buffer.stats.rejected_important == 1
    pending = await buffer.fetch_pending({}, 10_000)
    await buffer.mark_published([p.seq for p in pending])
    assert not buffer.storage_full and reports == [True, False]
    event = await buffer.append(draft(1, Priority.ALARM))
    assert event.seq == len(stored) + 1
    await buffer.close()
    assert assert_chain(tmp_path / "buffer.db", complete=False)[-1].seq == event.seq


async def test_audit_may_use_the_reserve_telemetry_may_not(make: Factory) -> None:
    buffer = await opened(make, SMALL)
    telemetry = [await buffer.append(draft(i)) for i in range(600)]
    assert buffer.stats.evicted_telemetry > 0
    audits = [await buffer.append(draft(i, Priority.AUDIT)) for i in range(100)]
    assert len(audits) == 100 and not buffer.storage_full
    assert telemetry[-1].seq < audits[0].seq


# -- corruption, schema, migrations --------------------------------------------------------


async def test_garbage_file_is_moved_aside_and_an_alarm_recorded(
    make: Factory, tmp_path: Path
) -> None:
    path = tmp_path / "buffer.db"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    buffer = await opened(make)
    assert buffer.recovered_from == tmp_path / "buffer.db.corrupt-20260101T000000Z"
    assert buffer.recovered_from.read_bytes() == garbage
    pending = await buffer.fetch_pending({}, 10)
    alarm = Event.from_payload(pending[0].payload)
    assert (alarm.seq, alarm.type, alarm.priority) == (
        1,
        "gateway.buffer_recovered",
        Priority.ALARM,
    )
    assert alarm.data["moved_to"] == str(buffer.recovered_from)
    assert "not a database" in alarm.data["reason"]
    assert (await buffer.append(draft(1))).seq == 2


async def test_overwritten_page_is_detected_and_moved_aside(make: Factory, tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    first = await opened(make)
    await asyncio.gather(*(first.submit(draft(i)) for i in range(2000)))
    await first.close()
    with path.open("r+b") as file:
        file.seek(40 * 4096)
        file.write(os.urandom(4096))
    second = await opened(make)
    assert second.recovered_from is not None
    assert second.recovered_from.stat().st_size > 2000 * 200
    # seq continues above the durable mark: a chain_epoch alarm, then buffer_recovered
    assert second.head[0] == 2002 and second.depth()[Priority.ALARM] == 2
    epoch, recovered = (Event.from_payload(p.payload) for p in await second.fetch_pending({}, 2))
    assert (epoch.type, epoch.seq, epoch.prev_hash) == ("gateway.chain_epoch", 2001, GENESIS_HASH)
    assert epoch.data["reason"] == "corrupt" and epoch.data["prev_seq"] == 2000
    assert recovered.type == "gateway.buffer_recovered"
    reason = recovered.data["reason"]
    assert "integrity_check" in reason or "malformed" in reason


async def test_empty_file_gets_the_current_schema(make: Factory, tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    path.touch()
    buffer = await opened(make)
    assert buffer.recovered_from is None
    await buffer.close()
    assert user_version(path) == max(load_migrations()) == 1


async def test_extra_migration_runs_on_an_old_file(make: Factory, tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    first = await opened(make)
    await first.append(draft(1))
    await first.close()
    migrations = {**load_migrations(), 2: "ALTER TABLE events ADD COLUMN note TEXT;"}
    second = make(migrations=migrations)
    await second.open()
    assert (await second.append(draft(2))).seq == 2
    await second.close()
    assert user_version(path) == 2
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert "note" in [row[1] for row in conn.execute("PRAGMA table_info(events)")]
    assert len(assert_chain(path)) == 2


async def test_failed_migration_changes_nothing(make: Factory, tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    first = await opened(make)
    await first.append(draft(1))
    await first.close()
    bad = {**load_migrations(), 2: "ALTER TABLE events ADD COLUMN x;\nCREATE TABLE meta (k);"}
    with pytest.raises(StorageError, match="v2"):
        await make(migrations=bad).open()
    assert user_version(path) == 1
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert "x" not in [row[1] for row in conn.execute("PRAGMA table_info(events)")]
    assert len(assert_chain(path)) == 1


async def test_newer_or_foreign_database_is_refused_not_replaced(
    make: Factory, tmp_path: Path
) -> None:
    path = tmp_path / "buffer.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE events (x)")
        conn.execute("INSERT INTO events VALUES ('keep me')")
        conn.commit()
    with pytest.raises(StorageError):
        await make().open()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT x FROM events").fetchall() == [("keep me",)]
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="newer"):
        await make().open()
    assert user_version(path) == 99
    assert list(tmp_path.glob("*.corrupt-*")) == []


# -- crash durability ----------------------------------------------------------------------
