"""The live alarm feed follows commit order, on real SQLite and PostgreSQL ledgers: an alarm whose
fold read the clock before a later acknowledgement, but committed after it, still reaches the
open stream; a stream resumed with `Last-Event-ID` (or `?after=`) is sent every change it
missed, in order; and on PostgreSQL a change stamped by a transaction that commits later holds
back the next one, so a reader never sees a number before the ones below it."""

from __future__ import annotations

import json
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.protocol.events import format_ts
from master_station.console.accounts import Role, User
from master_station.console.actions import Actions
from master_station.console.app import create_app
from master_station.console.queries import alarms_since, newest_alarm_change
from master_station.ledger.factory import open_ledger
from master_station.ledger.inbox import AlarmEvent, file_event_alarm, stamp_changes
from master_station.ledger.rollup import Rollups
from tests.fixtures.console import ConsoleClient, add_users, district_day, fold, serve_console
from tests.fixtures.master import ChainBuilder, schema_dsn, scratch_database

ADMIN = User("admin", Role.ADMIN)
DEADLINE_S = 15.0


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with scratch_database() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return schema_dsn(request.getfixturevalue("pg_database"))


@pytest.fixture
def world(ledger_target: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The listener's ledger with two districts' day, and the console over its own connection
    (polling every 0.1 s), with mgr-1 of d-1 signed in; the streams opened are hung up before
    the console stops."""
    ledger = open_ledger(ledger_target)
    console_ledger = open_ledger(ledger_target)
    add_users(ledger)
    chains = district_day(ledger)
    try:
        app = create_app(console_ledger, tls=True, poll_s=0.1)
        with serve_console(app, tmp_path) as (base, cert):
            manager = ConsoleClient(base, cert)
            try:
                assert manager.login("mgr-1").status_code == 303
                streams: list[_Stream] = []
                yield {"ledger": ledger, "chain": chains["gw-a"], "manager": manager,
                       "streams": streams}  # fmt: skip
            finally:
                for stream in streams:
                    stream.close()
                manager.close()
    finally:
        console_ledger.close()
        ledger.close()


class _Stream:
    """One server-sent event stream read on a thread: each event as {"id", "data"}."""

    def __init__(self, client: ConsoleClient, path: str, headers: dict[str, str] | None = None):
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ready = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._read, args=(client, path, headers or {}),
                                        daemon=True)  # fmt: skip
        self._thread.start()
        assert self.ready.wait(DEADLINE_S), "the stream did not open"

    def _read(self, client: ConsoleClient, path: str, headers: dict[str, str]) -> None:
        event: dict[str, Any] = {}
        try:
            with client.http.stream("GET", path, headers=headers, timeout=60) as stream:
                self._response = stream
                for line in stream.iter_lines():
                    self.ready.set()
                    if line.startswith("id: "):
                        event["id"] = int(line[4:])
                    elif line.startswith("data: "):
                        event["data"] = json.loads(line[6:])
                    elif not line and "data" in event:
                        self.events.put(event)
                        event = {}
        except (httpx.HTTPError, OSError):  # hung up by close() at the test's end
            return

    def close(self) -> None:
        """Hang up (before the server stops, so no connection is left to it): shut the socket
        down under the reading thread, which wakes it at once."""
        stream = self._response.extensions.get("network_stream") if self._response else None
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive(), "the stream did not hang up"

    def until(self, wanted: Callable[[dict[str, Any]], bool], what: str) -> list[dict[str, Any]]:
        """Every event up to and including the first `wanted` one."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(event)
            if wanted(event):
                return seen
        raise AssertionError(f"the stream never sent {what}; it sent {seen}")


def test_an_alarm_committed_after_a_later_change_still_reaches_the_stream(
    world: dict[str, Any],
) -> None:
    ledger, chain, manager = world["ledger"], world["chain"], world["manager"]
    theft = next(e for e in chain.events if e.type == "theft.suspected")
    live = _Stream(manager, "/api/alarms/stream")
    world["streams"].append(live)
    took, go = threading.Event(), threading.Event()

    def slow_clock() -> str:  # the fold reads the clock, then loses the processor for a while
        moment = format_ts(datetime.now(UTC))
        took.set()
        assert go.wait(DEADLINE_S)
        return moment

    tamper = chain.add("seal.tamper", "SL-A3", {"source": "advert"})
    ledger.add(tamper.payload)
    listener = threading.Thread(target=Rollups(ledger.db, clock=slow_clock).stored,
                                args=([tamper.payload],))  # fmt: skip
    listener.start()
    try:
        assert took.wait(DEADLINE_S)
        page = f"/alarms/{theft.id}"  # meanwhile, the manager acknowledges the theft
        assert manager.submit(page, f"{page}/acknowledge", {"note": "seen"}).status_code == 303
        acked = live.until(lambda e: e["data"]["alarm_id"] == theft.id, "the acknowledgement")
    finally:
        go.set()
        listener.join(DEADLINE_S)
    late = live.until(lambda e: e["data"]["alarm_id"] == tamper.id, "the tamper")
    stamped = ledger.db.query("SELECT updated_at FROM console_alarms WHERE alarm_id IN (?, ?)"
                              " ORDER BY change_seq", (theft.id, tamper.id))  # fmt: skip
    assert stamped[1][0] < stamped[0][0]  # the tamper's time is earlier, its commit later
    assert late[-1]["id"] > acked[-1]["id"]


def test_a_resumed_stream_is_sent_every_change_it_missed_in_order(
    world: dict[str, Any],
) -> None:
    ledger, chain, manager = world["ledger"], world["chain"], world["manager"]
    theft = next(e for e in chain.events if e.type == "theft.suspected")
    inbox = manager.get("/alarms").text
    drawn_at = int(_attr(inbox, "alarm-table", "data-drawn-at"))
    assert drawn_at == newest_alarm_change(ledger.db) > 0

    page = f"/alarms/{theft.id}"  # two changes while no stream is open
    assert manager.submit(page, f"{page}/close", {"note": "cover refitted"}).status_code == 303
    tamper = chain.add("seal.tamper", "SL-A3", {"source": "advert"})
    fold(ledger, [tamper.payload])

    for headers, path in (({"Last-Event-ID": str(drawn_at)}, "/api/alarms/stream?after=1"),
                          ({}, f"/api/alarms/stream?after={drawn_at}")):  # fmt: skip
        resumed = _Stream(manager, path, headers)
        world["streams"].append(resumed)
        sent = resumed.until(lambda e: e["data"]["alarm_id"] == tamper.id, "the tamper")
        assert [(e["data"]["alarm_id"], e["data"]["status"]) for e in sent] == [
            (theft.id, "closed"), (tamper.id, "open")]  # fmt: skip
        assert [e["id"] for e in sent] == [drawn_at + 1, drawn_at + 2]


def test_postgres_a_later_stamp_waits_for_the_earlier_commit(pg_database: str) -> None:
    dsn = schema_dsn(pg_database)
    listener, console, reader = open_ledger(dsn), open_ledger(dsn), open_ledger(dsn)
    try:
        chain = district_day(listener)["gw-a"]
        theft = next(e for e in chain.events if e.type == "theft.suspected")
        cursor = newest_alarm_change(reader.db)
        stamped, go = threading.Event(), threading.Event()
        tamper = ChainBuilder("gw-a").add("seal.tamper", "SL-A3", {})

        def fold_holding_the_clock() -> None:
            with listener.db.transaction() as tx:
                alarm = AlarmEvent(tamper.id, "gw-a", 999, tamper.type, "SL-A3", "SL-A3",
                                   tamper.ts, "{}")  # fmt: skip
                file_event_alarm(tx, alarm, tamper.ts)
                stamp_changes(tx, [tamper.id])
                stamped.set()
                assert go.wait(DEADLINE_S)  # committed only after the acknowledgement waited

        first = threading.Thread(target=fold_holding_the_clock)
        first.start()
        assert stamped.wait(DEADLINE_S)
        second = threading.Thread(target=Actions(console).acknowledge,
                                  args=(ADMIN, theft.id, "seen"))  # fmt: skip
        second.start()
        try:
            _wait_for_a_lock_wait(reader)
            assert alarms_since(reader.db, cursor) == []  # neither is committed
        finally:
            go.set()
            first.join(DEADLINE_S)
            second.join(DEADLINE_S)
        seen = alarms_since(reader.db, cursor)
        assert [(a.alarm_id, a.change_seq) for a in seen] == [
            (tamper.id, cursor + 1), (theft.id, cursor + 2)]  # fmt: skip
    finally:
        for ledger in (listener, console, reader):
            ledger.close()


def _wait_for_a_lock_wait(reader: Any) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        waiting = reader.db.query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
        if int(waiting[0][0]) >= 1:
            return
        time.sleep(0.02)
    raise AssertionError("the acknowledgement never waited for the clock's row lock")


def _attr(page: str, testid: str, name: str) -> str:
    found = re.search(rf'data-testid="{testid}"[^>]*?{name}="([^"]*)"', page)
    assert found is not None, f"{testid} {name} is not on the page"
    return found.group(1)
