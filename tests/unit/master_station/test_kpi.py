"""KPIs from hand-built events with known answers; the table, JSON, HTML chart and CLI."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from gateway.protocol.events import Event
from master_station.cli import main as master_main
from master_station.kpi.chart import load_day_chart, render_html
from master_station.kpi.report import KpiInputs, compute_kpis, format_table, load_inputs
from master_station.ledger.factory import open_ledger
from master_station.ledger.models import RetainedState, StoredEvent, TicketRecord
from tests.fixtures.master import T0, ChainBuilder

T1 = "11" * 16
T2 = "22" * 16


def stored(events: list[Event]) -> list[StoredEvent]:
    return [
        StoredEvent(e.gateway, e.seq, e.id, e.type, e.ts, e.priority.wire_name, e.subject, e.data)
        for e in events
    ]


def health(*meters: tuple[str, int, int]) -> dict[str, object]:
    return {"meters": {"meters": {m: {"polls": p, "ok": ok} for m, p, ok in meters}}}


def district_one() -> ChainBuilder:
    gw = ChainBuilder("gw-1")
    gw.add("gateway.started", data={"version": "0.1.0", "district": "d-1"})
    gw.add("gateway.health", data=health(("M-1", 10, 9)))
    gw.add("seal.tamper", "SL-2", {"cause": "wire_cut"})
    gw.add("seal.unsealed", "SL-1", {"op": "unseal", "ticket_id": T1, "state": "unsealed"})
    gw.add("seal.sealed", "SL-1", {"op": "seal", "ticket_id": T1, "wire": "intact"})
    gw.add("seal.op_denied", "SL-3", {"op": "unseal", "ticket_id": T2, "reason": "ticket_revoked"})
    gw.add("theft.suspected", "M-1", {"meter": "M-1", "seal": "SL-1", "rule": "cover_open"})
    gw.add("gateway.health", data=health(("M-1", 20, 18), ("M-2", 10, 10)))
    return gw


def district_two() -> ChainBuilder:
    gw = ChainBuilder("gw-2")
    gw.add("gateway.started", data={"version": "0.1.0", "district": "d-2"})
    gw.add("seal.tamper", "SL-9", {"cause": "shell_open"})
    gw.add("seal.unsealed", "SL-9", {"op": "unseal", "flow": "audit", "state": "unsealed"})
    gw.add("seal.sealed", "SL-9", {"op": "seal", "flow": "audit", "wire": "intact"})
    return gw


def seal_state(seal: str, state: str, wire: str, *, tamper: bool, online: bool) -> RetainedState:
    payload = {"seal": seal, "state": state, "wire": wire, "tamper": tamper, "online": online}
    return RetainedState("gw-1", seal, payload, "2026-11-22T09:00:00.000Z")


def known_inputs() -> KpiInputs:
    return KpiInputs(
        events=stored(district_one().events + district_two().events),
        seal_states=[
            seal_state("SL-1", "sealed", "intact", tamper=False, online=True),
            seal_state("SL-2", "tampered", "broken", tamper=True, online=True),
            seal_state("SL-3", "sealed", "broken", tamper=False, online=False),
        ],
        statuses=[
            RetainedState("gw-1", "", {"state": "online"}, ""),
            RetainedState("gw-2", "", {"state": "offline"}, ""),
        ],
        ticket_flows={T1: "meter_replace"},
    )


def test_kpis_per_gateway_from_known_inputs() -> None:
    report = compute_kpis(known_inputs())
    gw1, gw2 = report.gateways
    assert (gw1.name, gw1.district, gw2.district) == ("gw-1", "d-1", "d-2")
    assert (gw1.seals, gw1.seals_intact, gw1.seal_integrity_rate) == (3, 1, 0.3333)
    assert (gw1.locks_online, gw1.lock_online_rate) == (2, 0.6667)
    assert (gw1.meter_polls, gw1.meter_polls_ok, gw1.meter_read_success_rate) == (30, 28, 0.9333)
    assert gw1.open_alarms == 2  # SL-2's tamper, and the theft alarm raised after SL-1 was sealed
    assert gw1.operations == {
        "meter_replace": {"sealed": 1, "unsealed": 1, "denied": 0},
        "unknown": {"sealed": 0, "unsealed": 0, "denied": 1},
    }
    # gw-2: SL-9 is known from events only; its tamper was cleared by sealing it again; the
    # gateway is offline, so its lock cannot be counted online
    assert (gw2.seals, gw2.seals_intact, gw2.locks_online, gw2.open_alarms) == (1, 1, 0, 0)
    assert gw2.meter_read_success_rate is None
    assert gw2.operations == {"audit": {"sealed": 1, "unsealed": 1, "denied": 0}}


def test_kpis_per_district_and_in_total() -> None:
    report = compute_kpis(known_inputs())
    assert [(r.name, r.seals, r.open_alarms) for r in report.districts] == [
        ("d-1", 3, 2),
        ("d-2", 1, 0),
    ]
    total = report.total
    assert (total.seals, total.seals_intact, total.seal_integrity_rate) == (4, 2, 0.5)
    assert (total.gateways, total.gateways_online, total.gateway_online_rate) == (2, 1, 0.5)
    assert [(a.gateway, a.type, a.subject) for a in report.open_alarms] == [
        ("gw-1", "seal.tamper", "SL-2"),
        ("gw-1", "theft.suspected", "M-1"),
    ]
    assert json.loads(json.dumps(report.to_json()))["total"]["seal_integrity_rate"] == 0.5


def test_meter_reads_in_a_day_use_the_counters_across_a_restart() -> None:
    day = T0 + timedelta(days=1)
    gw = ChainBuilder("gw-3")
    gw.add("gateway.started", data={"district": "d-3"}, at=T0)
    gw.add("gateway.health", data=health(("M-1", 100, 90)), at=T0 + timedelta(hours=10))
    gw.add("gateway.health", data=health(("M-1", 110, 95)), at=day + timedelta(hours=1))
    gw.add("gateway.started", data={"district": "d-3"}, at=day + timedelta(hours=2))
    gw.add("gateway.health", data=health(("M-1", 8, 8)), at=day + timedelta(hours=3))
    inputs = KpiInputs(events=stored(gw.events), since="2026-11-23T00:00:00.000Z",
                       until="2026-11-24T00:00:00.000Z")  # fmt: skip
    row = compute_kpis(inputs).gateways[0]
    assert (row.meter_polls, row.meter_polls_ok) == (18, 13)  # (110-100) + 8, (95-90) + 8


def test_table_lists_every_scope_and_the_flows() -> None:
    text = format_table(compute_kpis(known_inputs()))
    lines = text.splitlines()
    assert any(line.startswith("gateway   gw-1") and "33.3%" in line for line in lines)
    assert any(line.startswith("total") and "50.0%" in line for line in lines)
    assert "operations per flow:" in text and "meter_replace" in text


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(path)
    for event in district_one().events + district_two().events:
        ledger.add(event.payload)
    ledger.record_ticket(TicketRecord(T1, "gw-1", "meter_replace", "WO-1", "op-1", "installer",
                                      0, 1, 0))  # fmt: skip
    ledger.put_status("gw-1", b'{"state":"online"}')
    ledger.close()
    return path


def test_html_day_chart_is_self_contained_svg(ledger_file: Path) -> None:
    ledger = open_ledger(ledger_file)
    report = compute_kpis(load_inputs(ledger, day=date(2026, 11, 22)))
    chart = load_day_chart(ledger, date(2026, 11, 22))
    ledger.close()
    html = render_html(report, chart)
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg"') == 1
    assert html.count('class="alarm"') == 3  # two tampers and the theft alarm
    bars = html.count('class="bar"')
    assert bars == len({t for (_h, t) in chart.counts})  # every event falls in 08:00
    assert sum(chart.counts.values()) == 12
    assert "seal.tamper" in html and "<td>50.0%</td>" in html  # gw-1: SL-1 of SL-1, SL-2


def test_cli_kpi_prints_json_and_writes_html(
    ledger_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = tmp_path / "day.html"
    code = master_main(["kpi", "--ledger", str(ledger_file), "--json", "--html", str(html)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["total"]["open_alarms"] == 2
    assert out["gateways"][0]["operations"]["meter_replace"] == {
        "sealed": 1,
        "unsealed": 1,
        "denied": 0,
    }
    assert "<svg" in html.read_text()
    assert master_main(["kpi", "--ledger", str(ledger_file), "--day", "22-11-2026"]) == 2


def test_cli_verify_reports_each_chain(
    ledger_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert master_main(["verify", "--ledger", str(ledger_file)]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [(r["gateway"], r["head_seq"], r["ok"]) for r in reports] == [
        ("gw-1", 8, True),
        ("gw-2", 4, True),
    ]


def test_day_bounds_follow_the_event_ts_format() -> None:
    from master_station.kpi.report import day_bounds

    since, until = day_bounds(date(2026, 11, 22))
    assert (since, until) == ("2026-11-22T00:00:00.000Z", "2026-11-23T00:00:00.000Z")
    assert since <= T0.strftime("%Y-%m-%dT%H:%M:%S.000Z") < until
    assert isinstance(datetime.fromisoformat(since.replace("Z", "+00:00")), datetime)
