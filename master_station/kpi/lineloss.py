"""District line-loss KPIs: the daily loss rate per district and the qualified share (线损合格率).

From the `district.line_loss` events gateways publish (docs/theft.md). A district-day is
*qualified* when its interval was complete and its rate was inside the gateway's band (the
event's `qualified`). The qualified share is qualified district-days over complete ones;
incomplete days and metering faults are counted apart, never as qualified or as good.
Days are meter-local (UTC+8), the day the interval starts on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from typing import Any

from master_station.ledger.models import StoredEvent

__all__ = ["LINE_LOSS_TYPE", "LineLossDay", "LineLossKpi", "line_loss_kpi"]

LINE_LOSS_TYPE = "district.line_loss"
_METER_OFFSET = timedelta(hours=8)


@dataclass(frozen=True, slots=True)
class LineLossDay:
    """One district's figure for one interval."""

    district: str
    day: str
    gateway: str
    rate: float | None
    status: str
    qualified: bool
    complete: bool

    def to_json(self) -> dict[str, Any]:
        return {"district": self.district, "day": self.day, "gateway": self.gateway,
                "rate": self.rate, "status": self.status, "qualified": self.qualified,
                "complete": self.complete}  # fmt: skip


@dataclass(frozen=True, slots=True)
class LineLossKpi:
    """Every district-day, and the qualified share per day and over the window."""

    days: tuple[LineLossDay, ...] = ()

    @property
    def qualified_share(self) -> float | None:
        """Qualified district-days over complete district-days."""
        return _share(self.days)

    def share_by_day(self) -> dict[str, float | None]:
        """The qualified share of each day, across districts."""
        return {day: _share([d for d in self.days if d.day == day]) for day in self._day_names()}

    def to_json(self) -> dict[str, Any]:
        return {
            "days": [day.to_json() for day in self.days],
            "qualified_share": self.qualified_share,
            "qualified_share_by_day": self.share_by_day(),
        }

    def text_lines(self) -> list[str]:
        """Plain-text lines for `master kpi`."""
        if not self.days:
            return []
        lines = ["line loss (district, day, rate, status):"]
        lines += [f"  {d.district:<12} {d.day}  {_pct(d.rate):>7}  {d.status}" for d in self.days]
        lines.append(f"line loss qualified share: {_pct(self.qualified_share)}")
        return lines

    def html(self) -> str:
        """The line-loss table of the HTML page."""
        if not self.days:
            return ""
        rows = ["<h2>District line loss</h2>", "<table>",
                _tr("th", ("district", "day", "rate", "status", "qualified"))]  # fmt: skip
        rows += [
            _tr("td", (d.district, d.day, _pct(d.rate), d.status, "yes" if d.qualified else "no"))
            for d in self.days
        ]
        rows += ["</table>", f"<p>Qualified share: {escape(_pct(self.qualified_share))}</p>"]
        return "\n".join(rows)

    def _day_names(self) -> list[str]:
        return sorted({d.day for d in self.days})


def line_loss_kpi(events: Iterable[StoredEvent]) -> LineLossKpi:
    """The KPI from `district.line_loss` events (others are ignored); the latest per day wins."""
    latest: dict[tuple[str, str], LineLossDay] = {}
    for event in events:
        if event.type != LINE_LOSS_TYPE:
            continue
        day = _from(event)
        if day is not None:
            latest[(day.district, day.day)] = day
    return LineLossKpi(tuple(latest[key] for key in sorted(latest)))


def _from(event: StoredEvent) -> LineLossDay | None:
    data = event.data
    try:
        start = datetime.fromisoformat(str(data["interval_start"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    rate = data.get("rate")
    return LineLossDay(
        district=str(data.get("district", event.subject)),
        day=(start + _METER_OFFSET).date().isoformat(),
        gateway=event.gateway,
        rate=float(rate) if isinstance(rate, int | float) else None,
        status=str(data.get("status", "unknown")),
        qualified=data.get("qualified") is True,
        complete=data.get("complete") is True,
    )


def _share(days: Sequence[LineLossDay]) -> float | None:
    complete = [d for d in days if d.complete]
    return sum(d.qualified for d in complete) / len(complete) if complete else None


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _tr(tag: str, cells: Sequence[str]) -> str:
    return "<tr>" + "".join(f"<{tag}>{escape(c)}</{tag}>" for c in cells) + "</tr>"
