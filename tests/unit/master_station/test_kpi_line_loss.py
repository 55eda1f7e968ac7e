"""Line-loss KPIs from hand-built district.line_loss events: rates, qualified share, outputs."""

from __future__ import annotations

from datetime import date

from gateway.protocol.events import Event
from master_station.kpi.chart import DayChart, render_html
from master_station.kpi.lineloss import line_loss_kpi
from master_station.kpi.report import KPI_TYPES, KpiInputs, compute_kpis, format_table
from master_station.ledger.models import StoredEvent
from tests.fixtures.master import ChainBuilder


def stored(events: list[Event]) -> list[StoredEvent]:
    return [
        StoredEvent(e.gateway, e.seq, e.id, e.type, e.ts, e.priority.wire_name, e.subject, e.data)
        for e in events
    ]


def day(district: str, start: str, rate: float | None, status: str) -> dict[str, object]:
    return {
        "district": district,
        "interval_start": start,
        "interval_end": "x",
        "rate": rate,
        "status": status,
        "complete": status != "incomplete",
        "qualified": status == "ok",
    }


def events() -> list[StoredEvent]:
    gw = ChainBuilder("gw-1")
    gw.add("gateway.started", data={"version": "0.1.0", "district": "d-1"})
    gw.add("district.line_loss", "D-1", day("D-1", "2026-03-01T16:00:00Z", 0.041, "ok"))
    gw.add("district.line_loss", "D-2", day("D-2", "2026-03-01T16:00:00Z", 0.152, "out_of_band"))
    gw.add("district.line_loss", "D-3", day("D-3", "2026-03-01T16:00:00Z", None, "incomplete"))
    gw.add("district.line_loss", "D-1", day("D-1", "2026-03-02T16:00:00Z", 0.039, "ok"))
    gw.add("district.line_loss", "D-2", day("D-2", "2026-03-02T16:00:00Z", -0.02, "metering_fault"))
    return stored(gw.events)


def test_daily_rate_per_district_and_qualified_share() -> None:
    kpi = line_loss_kpi(events())
    assert [(d.district, d.day, d.rate) for d in kpi.days] == [
        ("D-1", "2026-03-02", 0.041),  # meter-local day: 16:00 UTC is midnight UTC+8
        ("D-1", "2026-03-03", 0.039),
        ("D-2", "2026-03-02", 0.152),
        ("D-2", "2026-03-03", -0.02),
        ("D-3", "2026-03-02", None),
    ]
    assert kpi.qualified_share == 2 / 4  # the incomplete day is left out, the fault is not good
    assert kpi.share_by_day() == {"2026-03-02": 0.5, "2026-03-03": 0.5}


def test_report_carries_line_loss_in_text_json_and_html() -> None:
    assert "district.line_loss" in KPI_TYPES
    report = compute_kpis(KpiInputs(events=events()))
    data = report.to_json()["line_loss"]
    assert data["qualified_share"] == 0.5 and len(data["days"]) == 5
    text = format_table(report)
    assert "line loss qualified share: 50.0%" in text
    assert "D-2          2026-03-03    -2.0%  metering_fault" in text
    html = render_html(report, DayChart(date(2026, 3, 2), {}, []))
    assert "<h2>District line loss</h2>" in html and "<td>15.2%</td>" in html
    assert "Qualified share: 50.0%" in html
