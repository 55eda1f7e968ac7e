"""A day at a glance: a self-contained HTML page with the KPI table and an inline SVG chart.

Stacked bars give events per hour by type (UTC); red triangles above the bars mark each alarm.
No scripts, no external files: the page opens from an e-mail attachment or a USB stick.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from html import escape

from master_station.kpi.report import KpiReport, KpiRow, day_bounds
from master_station.ledger.models import Ledger

__all__ = ["AlarmMark", "DayChart", "load_day_chart", "render_html"]

WIDTH, HEIGHT = 960, 360
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 36, 40
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#bab0ac")
ALARM_COLOUR = "#e15759"
MAX_SERIES = len(PALETTE) - 1  # the rest are summed as "other"


@dataclass(frozen=True, slots=True)
class AlarmMark:
    """One alarm on the chart."""

    ts: str
    gateway: str
    type: str
    subject: str


@dataclass(frozen=True, slots=True)
class DayChart:
    """Events per (hour, type) on one UTC day, plus the alarms of that day."""

    day: date
    counts: Mapping[tuple[int, str], int]
    alarms: Sequence[AlarmMark] = ()


def load_day_chart(ledger: Ledger, day: date) -> DayChart:
    """Hourly counts and alarm marks of `day`, from the ledger."""
    since, until = day_bounds(day)
    counts: dict[tuple[int, str], int] = defaultdict(int)
    for _gateway, hour, type_, count in ledger.hourly_counts(since, until):
        counts[(hour, type_)] += count
    alarms = [
        AlarmMark(e.ts, e.gateway, e.type, e.subject)
        for e in ledger.events(priority="alarm", since=since, until=until)
    ]
    return DayChart(day, dict(counts), sorted(alarms, key=lambda a: a.ts))


def render_html(report: KpiReport, chart: DayChart) -> str:
    """The whole page."""
    title = f"sealgw master station: {chart.day.isoformat()} (UTC)"
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style>",
        "</head><body>",
        f"<h1>{escape(title)}</h1>",
        render_svg(chart),
        _kpi_table(report),
        report.line_loss.html(),
        "</body></html>",
    ])  # fmt: skip


def render_svg(chart: DayChart) -> str:
    """The chart alone: axes, stacked hourly bars, a legend and alarm markers."""
    series = _series(chart.counts)
    totals = [sum(series[t][h] for t in series) for h in range(24)]
    peak = max([*totals, 1])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}"'
        f' viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="events per hour">',
        *_axes(peak),
        *_bars(series, peak),
        *_alarm_marks(chart.alarms),
        *_legend(list(series)),
        "</svg>",
    ]
    return "\n".join(parts)


def _series(counts: Mapping[tuple[int, str], int]) -> dict[str, list[int]]:
    totals: dict[str, int] = defaultdict(int)
    for (_hour, type_), count in counts.items():
        totals[type_] += count
    ranked = sorted(totals, key=lambda t: (-totals[t], t))
    keep = ranked if len(ranked) <= MAX_SERIES + 1 else ranked[:MAX_SERIES]
    series = {t: [0] * 24 for t in keep}
    for (hour, type_), count in counts.items():
        name = type_ if type_ in series else "other"
        series.setdefault(name, [0] * 24)[hour] += count
    return series


def _x(hour: float) -> float:
    return LEFT + hour * (WIDTH - LEFT - RIGHT) / 24


def _y(value: float, peak: int) -> float:
    return HEIGHT - BOTTOM - value * (HEIGHT - TOP - BOTTOM) / peak


def _axes(peak: int) -> list[str]:
    base = HEIGHT - BOTTOM
    parts = [
        f'<line class="axis" x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}"'
        ' stroke="#333"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="#333"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end" font-size="11">{peak}</text>',
        f'<text x="{LEFT - 6}" y="{base}" text-anchor="end" font-size="11">0</text>',
    ]
    for hour in range(0, 25, 3):
        parts.append(
            f'<text x="{_x(hour):.1f}" y="{base + 16}" text-anchor="middle" font-size="11">'
            f"{hour:02d}:00</text>"
        )
    return parts


def _bars(series: Mapping[str, Sequence[int]], peak: int) -> list[str]:
    width = (WIDTH - LEFT - RIGHT) / 24 * 0.8
    parts = []
    for hour in range(24):
        stacked = 0
        for index, (type_, counts) in enumerate(series.items()):
            if not counts[hour]:
                continue
            top, bottom = _y(stacked + counts[hour], peak), _y(stacked, peak)
            stacked += counts[hour]
            parts.append(
                f'<rect class="bar" x="{_x(hour) + width * 0.1:.1f}" y="{top:.1f}"'
                f' width="{width:.1f}" height="{bottom - top:.1f}"'
                f' fill="{PALETTE[index % len(PALETTE)]}">'
                f"<title>{escape(type_)} {hour:02d}:00: {counts[hour]}</title></rect>"
            )
    return parts


def _alarm_marks(alarms: Sequence[AlarmMark]) -> list[str]:
    parts = []
    for alarm in alarms:
        x = _x(_hour_of(alarm.ts))
        label = f"{alarm.ts} {alarm.type} {alarm.subject} ({alarm.gateway})"
        parts.append(
            f'<path class="alarm" d="M{x:.1f},{TOP - 4} l-5,-10 h10 z" fill="{ALARM_COLOUR}">'
            f"<title>{escape(label)}</title></path>"
        )
    return parts


def _legend(types: Sequence[str]) -> list[str]:
    parts = []
    y = 14  # one row across the top: at most len(PALETTE) series
    for index, type_ in enumerate(types):
        x = LEFT + 10 + index * 110
        parts.append(
            f'<rect class="legend" x="{x}" y="{y - 9}" width="10" height="10"'
            f' fill="{PALETTE[index % len(PALETTE)]}"/>'
            f'<text x="{x + 14}" y="{y}" font-size="10">{escape(type_)}</text>'
        )
    return parts


def _hour_of(ts: str) -> float:
    """Fractional hour of an RFC 3339 UTC ts (2026-11-22T10:45:14.123Z → 10.754)."""
    try:
        hours, minutes, seconds = ts[11:13], ts[14:16], ts[17:23]
        return int(hours) + int(minutes) / 60 + float(seconds) / 3600
    except ValueError:
        return 0.0


def _kpi_table(report: KpiReport) -> str:
    head = ("scope", "name", "district", "seals", "seal integrity", "locks online",
            "meter reads", "gateways online", "open alarms")  # fmt: skip
    rows = [*report.gateways, *report.districts, report.total]
    lines = ["<h2>KPIs</h2>", "<table>", _tr("th", head)]
    lines += [_tr("td", _cells(row)) for row in rows]
    lines.append("</table>")
    return "\n".join(lines)


def _cells(row: KpiRow) -> tuple[str, ...]:
    return (
        row.scope, row.name, row.district, str(row.seals), _pct(row.seal_integrity_rate),
        _pct(row.lock_online_rate), _pct(row.meter_read_success_rate),
        _pct(row.gateway_online_rate), str(row.open_alarms),
    )  # fmt: skip


def _tr(tag: str, cells: Sequence[str]) -> str:
    return "<tr>" + "".join(f"<{tag}>{escape(c)}</{tag}>" for c in cells) + "</tr>"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"
