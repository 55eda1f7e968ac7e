"""The console over real SQLite and PostgreSQL ledgers, served by uvicorn over HTTPS: districts,
alarm acknowledgement and close (the open-alarms KPI drops), district scoping, the live stream,
chain status on a seal's timeline, trends from the rollups, and the listener keeping them."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from master_station.console.app import create_app
from master_station.kpi.report import compute_kpis, load_inputs
from master_station.ledger.factory import open_ledger
from master_station.ledger.rollup import rollups_for
from master_station.listener import ListenerOptions, MasterListener
from tests.fixtures.console import ConsoleClient, add_users, district_day, fold, serve_console
from tests.fixtures.master import ChainBuilder, schema_dsn, scratch_database
from tests.fixtures.mosquitto import Broker


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
    """A ledger with two districts' day, four users, and the console serving it."""
    ledger = open_ledger(ledger_target)
    console_ledger = open_ledger(ledger_target)  # the console has its own connection
    add_users(ledger)
    chains = district_day(ledger)
    try:
        with serve_console(create_app(console_ledger, tls=True, poll_s=0.2), tmp_path) as served:
            yield {"ledger": ledger, "chains": chains, "base": served[0], "cert": served[1]}
    finally:
        console_ledger.close()
        ledger.close()


@pytest.fixture
def login(world: dict[str, Any]) -> Iterator[Any]:
    clients: list[ConsoleClient] = []

    def as_user(name: str) -> ConsoleClient:
        client = ConsoleClient(world["base"], world["cert"])
        clients.append(client)
        assert client.login(name).status_code == 303
        return client

    yield as_user
    for client in clients:
        client.close()


def test_districts_show_todays_kpis_and_the_seal_grid(login: Any) -> None:
    page = login("admin").get("/districts").text
    assert _attr(page, "district-card", "data-district") == ["d-1", "d-2"]
    cells = dict(
        re.findall(r'data-seal="(SL-A\d)" data-gateway="gw-a" data-condition="(\w+)"', page)
    )
    assert cells == {"SL-A1": "tampered", "SL-A2": "sealed", "SL-A3": "sealed"}
    assert _kpi(page, "kpi-seal-integrity", "d-1") == pytest.approx(2 / 3, abs=1e-3)
    assert _kpi(page, "kpi-meter-read-success", "d-1") == pytest.approx(19 / 20)
    assert _kpi(page, "kpi-open-alarms", "d-1") == 2  # the tamper and the theft
    assert 'data-target="0.96"' in page and 'data-target="0.9"' in page


def test_acknowledge_and_close_are_recorded_and_the_open_alarms_kpi_drops(
    login: Any, world: dict[str, Any]
) -> None:
    manager = login("mgr-1")
    assert manager.get("/api/summary").json()["open_alarms"] == 2
    tamper = next(e for e in world["chains"]["gw-a"].events if e.type == "seal.tamper")
    page = f"/alarms/{tamper.id}"
    assert manager.submit(page, f"{page}/acknowledge", {"note": "on my way"}).status_code == 303
    assert manager.submit(page, f"{page}/close", {"note": "box resealed, WO-77"}).status_code == 303
    detail = manager.get(page).text
    assert 'data-status="closed"' in detail
    assert re.findall(r'data-testid="audit-row" data-action="(\w+)" data-actor="([\w-]+)"', detail) == [
        ("acknowledged", "mgr-1"), ("closed", "mgr-1")]  # fmt: skip
    rows = world["ledger"].db.query(
        "SELECT actor, action, note, at FROM console_audit WHERE target = ? ORDER BY at",
        (f"alarm:{tamper.id}",),
    )
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("mgr-1", "acknowledged", "on my way"), ("mgr-1", "closed", "box resealed, WO-77")]  # fmt: skip
    assert all(str(r[3]).endswith("Z") for r in rows)
    assert manager.get("/api/summary").json()["open_alarms"] == 1
    assert _kpi(manager.get("/districts").text, "kpi-open-alarms", "d-1") == 1
    report = compute_kpis(load_inputs(world["ledger"]))
    assert tamper.seq not in [a.seq for a in report.open_alarms if a.gateway == "gw-a"]
    closed = manager.get("/alarms?status=closed").text
    assert tamper.id in _attr(closed, "alarm-row", "data-alarm-id")


def test_a_manager_sees_only_their_district(login: Any) -> None:
    manager = login("mgr-2")
    assert _attr(manager.get("/districts").text, "district-card", "data-district") == ["d-2"]
    districts = set(_attr(manager.get("/alarms").text, "alarm-row", "data-district"))
    assert districts == {"d-2"}
    assert manager.get("/api/summary").json()["open_alarms_by_district"] == {"d-2": 2}
    assert set(manager.get("/api/trends?days=7").json()["districts"]) == {"d-2"}
    assert manager.get("/seals/gw-a/SL-A2").status_code == 403
    gateways = re.findall(r"<option>(gw-[ab])</option>", manager.get("/work-orders").text)
    assert gateways == ["gw-b"]


def test_the_inbox_stream_delivers_a_new_alarm_live(login: Any, world: dict[str, Any]) -> None:
    manager = login("mgr-1")
    chain: ChainBuilder = world["chains"]["gw-a"]
    received: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        with manager.http.stream("GET", "/api/alarms/stream", timeout=20) as stream:
            for line in stream.iter_lines():
                ready.set()
                if line.startswith("data: "):
                    received.append(json.loads(line[6:]))
                    return

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    assert ready.wait(10), "the stream did not open"
    new = chain.add("seal.tamper", "SL-A3", {"source": "advert"})
    fold(world["ledger"], [new.payload])
    reader.join(15)
    assert received and received[0]["alarm_id"] == new.id and received[0]["district"] == "d-1"


def test_the_seal_timeline_shows_chain_status(login: Any, world: dict[str, Any]) -> None:
    chain: ChainBuilder = world["chains"]["gw-a"]
    chain.add("seal.unsealed", "SL-A2", {"operator": "op-2", "work_order": "WO-5",
                                          "ticket_id": "cd" * 16, "result": "ok"})  # fmt: skip
    missing = chain.add("seal.op_requested", "SL-A2", {"operator": "op-2"})
    after = chain.add("seal.sealed", "SL-A2", {"operator": "op-2", "work_order": "WO-5",
                                               "wire_loop": "intact", "result": "ok"})  # fmt: skip
    fold(world["ledger"], [e.payload for e in chain.events if e.seq != missing.seq])
    world["ledger"].record_problem("gw-a", "lock_forged", "test finding", seq=3, key="x")
    page = login("mgr-1").get("/seals/gw-a/SL-A2").text
    rows = dict(
        re.findall(
            r'data-testid="event-row" data-seq="(\d+)" data-type="[\w.]+" data-chain="(\w+)"', page
        )
    )
    assert rows[str(after.seq)] == "gap"  # seq before it never arrived
    assert rows["3"] == "problem"  # SL-A2 sealed at seq 3
    assert rows[str(missing.seq - 1)] == "verified"
    operators = re.findall(r'data-testid="operation-row" data-seq="(\d+)"', page)
    assert str(after.seq) in operators and "WO-5" in page and "op-2" in page


def test_the_evidence_folds_telemetry_and_keeps_the_seals_events_prominent(
    login: Any, world: dict[str, Any]
) -> None:
    events = world["chains"]["gw-a"].events
    tamper = next(e for e in events if e.type == "seal.tamper")  # SL-A1, amid two health rows
    page = login("mgr-1").get(f"/alarms/{tamper.id}").text
    rows = _event_rows(page, "evidence-around")
    assert [int(r["data-seq"]) for r in rows] == [e.seq for e in events]
    health = [r for r in rows if r["data-type"] == "gateway.health"]
    assert len(health) == 2
    for row in health:  # one line: seq, time, type, chain status; the per-meter body folded
        assert row["data-view"] == "summary" and "data-focus" not in row
        folded = re.search(
            r"<details data-testid=\"event-body\">(.*?)</details>", row["html"], re.S
        )
        assert folded is not None and "&#34;polls&#34;" in folded.group(1)
        line = row["html"].replace(folded.group(0), "")
        assert "polls" not in line and 'data-chain="verified"' in line
    mine = [int(r["data-seq"]) for r in rows if r.get("data-focus") == "true"]
    assert mine == [e.seq for e in events if e.subject == "SL-A1"]  # its sealing, the tamper
    shown = next(r for r in rows if int(r["data-seq"]) == tamper.seq)
    assert shown["data-view"] == "full" and "source=advert" in shown["html"]
    theft = next(r for r in rows if r["data-type"] == "theft.suspected")  # another seal's
    assert theft["data-view"] == "full" and "rule=cover_open_while_sealed" in theft["html"]


def test_trends_come_from_the_rollups(login: Any) -> None:
    body = login("admin").get("/api/trends?days=7").json()
    today = body["days"][-1]
    assert len(body["days"]) == 7 and today == time.strftime("%Y-%m-%d", time.gmtime())
    d1 = body["districts"]["d-1"]
    assert d1["alarms"][-1] == 2 and d1["meter_read_success"][-1] == pytest.approx(0.95)
    page = login("admin").get("/trends").text
    assert "/static/vendor/uplot/uPlot.iife.min.js" in page
    assert login("admin").get("/static/vendor/uplot/uPlot.iife.min.js").status_code == 200


def test_the_listener_keeps_the_rollups_and_the_inbox(mosquitto: Broker, tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "ledger.db")
    options = ListenerOptions(broker_url=mosquitto.url, tick_s=0.1, client_id="m-console")
    chain = ChainBuilder("gw-x")
    chain.add("gateway.started", data={"district": "d-9"})
    tamper = chain.add("seal.tamper", "SL-X1", {"source": "advert"})
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="gw-x", protocol=paho.MQTTv5)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        with MasterListener(options, ledger, observer=rollups_for(ledger)):
            for event in chain.events:
                client.publish(f"sealgw/v1/gw-x/events/{event.type}", event.payload, qos=1)
            full = {"type": "gateway.storage_full", "state": "full", "gateway": "gw-x",
                    "ts": "2026-11-22T08:00:00.000Z"}  # fmt: skip
            client.publish("sealgw/v1/gw-x/alarm/gateway.storage_full", json.dumps(full), qos=1)
            deadline = time.monotonic() + 15
            while len(_alarm_types(ledger)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        client.disconnect()
        client.loop_stop()
    try:
        assert _alarm_types(ledger) == {tamper.id: "seal.tamper",
                                        "outside:gw-x:gateway.storage_full:2026-11-22T08:00:00.000Z":
                                        "gateway.storage_full"}  # fmt: skip
        assert ledger.db.query("SELECT district FROM console_gateways WHERE gateway = 'gw-x'") == [
            ("d-9",)]  # fmt: skip
        assert rollups_for(ledger).reconcile() == []  # nothing missed
    finally:
        ledger.close()


def test_a_replay_rebuilds_missed_rollups_and_keeps_closes(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "ledger.db")
    try:
        chain = ChainBuilder("gw-r")
        chain.add("gateway.started", data={"district": "d-r"})
        alarm = chain.add("seal.tamper", "SL-R1", {})
        fold(ledger, [e.payload for e in chain.events])
        ledger.db.query("SELECT 1")
        with ledger.db.transaction() as tx:
            tx.execute(
                "UPDATE console_alarms SET status = 'closed' WHERE alarm_id = ?", (alarm.id,)
            )
        late = chain.add("seal.tamper", "SL-R2", {})
        ledger.add(late.payload)  # stored, but the fold never ran (a master killed between)
        assert rollups_for(ledger).reconcile() == ["gw-r"]
        statuses = dict(ledger.db.query("SELECT alarm_id, status FROM console_alarms"))
        assert statuses == {alarm.id: "closed", late.id: "open"}
        assert (
            ledger.db.query("SELECT events FROM kpi_daily WHERE gateway = 'gw-r' AND events > 0")[
                0
            ][0]
            == 3
        )
    finally:
        ledger.close()


def _attr(page: str, testid: str, name: str) -> list[str]:
    return re.findall(rf'data-testid="{testid}"[^>]*?{name}="([^"]*)"', page)


def _event_rows(page: str, testid: str) -> list[dict[str, str]]:
    """The rows of one event table: their attributes, and their HTML as `html`."""
    table = re.search(rf'<table[^>]*data-testid="{testid}".*?</table>', page, re.S)
    assert table is not None, f"{testid} is not on the page"
    rows = []
    for opening, html in re.findall(r'(<tr data-testid="event-row"[^>]*>)(.*?)</tr>',
                                    table.group(0), re.S):  # fmt: skip
        row = dict(re.findall(r'([\w-]+)="([^"]*)"', opening))
        row["html"] = html
        rows.append(row)
    return rows


def _kpi(page: str, testid: str, district: str) -> float:
    found = re.search(
        rf'data-testid="{testid}" data-district="{district}" data-value="([^"]*)"', page
    )
    assert found is not None and found.group(1), f"{testid} of {district} not on the page"
    return float(found.group(1))


def _alarm_types(ledger: Any) -> dict[str, str]:
    return {str(a): str(t) for a, t in ledger.db.query("SELECT alarm_id, type FROM console_alarms")}


@pytest.mark.parametrize("batches", [[[0, 1, 2], [3, 4], [5]], [[0, 2], [1], [3, 4, 5]]])
def test_meter_polls_fold_from_health_counters_in_any_batching(
    tmp_path: Path, batches: list[list[int]]
) -> None:
    """Counter differences across batches, a late older snapshot ignored, a restart honoured."""
    ledger = open_ledger(tmp_path / "ledger.db")
    try:
        chain = ChainBuilder("gw-m")
        chain.add("gateway.started", data={"district": "d-m"})
        for polls, ok in ((10, 9), (15, 14)):
            chain.add(
                "gateway.health", data={"meters": {"meters": {"m-1": {"polls": polls, "ok": ok}}}}
            )
        chain.add("gateway.started", data={"district": "d-m"})  # the counters restart here
        for polls, ok in ((3, 3), (7, 6)):
            chain.add(
                "gateway.health", data={"meters": {"meters": {"m-1": {"polls": polls, "ok": ok}}}}
            )
        rollups = rollups_for(ledger)
        for batch in batches:
            payloads = [chain.events[i].payload for i in batch]
            ledger.add_many(payloads)
            rollups.stored(payloads)
        polls, good = ledger.db.query(
            "SELECT SUM(meter_polls), SUM(meter_ok) FROM kpi_daily WHERE gateway = 'gw-m'"
        )[0]
        assert (polls, good) == (22, 20)  # 15 + 3 + 4 polls, 14 + 3 + 3 good
    finally:
        ledger.close()
