"""KPIs per gateway, per district and in total, computed from ledger contents (pure functions).

Definitions (docs/master.md, "KPIs"):
- seal integrity rate: seals whose latest state is sealed, wire loop intact and no tamper flag,
  over all seals known;
- lock online rate: seals not offline over all seals known (a seal of a gateway whose retained
  status is offline counts as offline: its lock state is then unknown);
- meter read success rate: successful polls over polls in the window, from the per-meter
  counters the gateway publishes in `gateway.health` (differences between snapshots; counters
  restart at `gateway.started`);
- open alarms: alarm-priority events not followed by a clearing event (a later `seal.sealed`
  of the seal the alarm concerns); alarms about no seal stay open;
- operations per business flow: seal.sealed, seal.unsealed and seal.op_denied in the window,
  by the flow of the ticket (`data.flow`, else the ledger's ticket record, else "unknown");
- district line loss: the daily rate per district and the qualified share, from
  district.line_loss events in the window (master_station/kpi/lineloss.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from master_station.kpi.lineloss import LINE_LOSS_TYPE, LineLossKpi, line_loss_kpi
from master_station.ledger.inbox import same_incident
from master_station.ledger.models import Ledger, RetainedState, StoredEvent

__all__ = [
    "KPI_TYPES",
    "KpiInputs",
    "KpiReport",
    "KpiRow",
    "OpenAlarm",
    "compute_kpis",
    "day_bounds",
    "format_table",
    "load_inputs",
]

OPERATIONS = {"seal.sealed": "sealed", "seal.unsealed": "unsealed", "seal.op_denied": "denied"}
SEAL_STATE_TYPES = ("seal.sealed", "seal.unsealed", "seal.tamper")
SEAL_ONLINE_TYPES = ("seal.offline", "seal.online")
KPI_TYPES = (
    "gateway.started",
    "gateway.health",
    *OPERATIONS,
    "seal.tamper",
    *SEAL_ONLINE_TYPES,
    LINE_LOSS_TYPE,
)
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class KpiInputs:
    """What the KPIs are computed from; `events` are KPI_TYPES and alarms up to `until`."""

    events: Sequence[StoredEvent]
    seal_states: Sequence[RetainedState] = ()
    statuses: Sequence[RetainedState] = ()
    ticket_flows: Mapping[str, str] = field(default_factory=dict)
    closed_alarms: frozenset[str] = frozenset()  # event ids closed in the console
    since: str | None = None
    until: str | None = None


@dataclass(frozen=True, slots=True)
class OpenAlarm:
    """An alarm no clearing event has followed."""

    gateway: str
    seq: int
    type: str
    subject: str
    ts: str

    def to_json(self) -> dict[str, Any]:
        return {"gateway": self.gateway, "seq": self.seq, "type": self.type,
                "subject": self.subject, "ts": self.ts}  # fmt: skip


@dataclass(frozen=True, slots=True)
class KpiRow:
    """The figures of one gateway, one district, or everything (`scope` says which)."""

    scope: str
    name: str
    district: str
    gateways: int = 0
    gateways_online: int = 0
    seals: int = 0
    seals_intact: int = 0
    locks_online: int = 0
    meter_polls: int = 0
    meter_polls_ok: int = 0
    open_alarms: int = 0
    operations: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @property
    def seal_integrity_rate(self) -> float | None:
        return _rate(self.seals_intact, self.seals)

    @property
    def lock_online_rate(self) -> float | None:
        return _rate(self.locks_online, self.seals)

    @property
    def meter_read_success_rate(self) -> float | None:
        return _rate(self.meter_polls_ok, self.meter_polls)

    @property
    def gateway_online_rate(self) -> float | None:
        return _rate(self.gateways_online, self.gateways)

    def to_json(self) -> dict[str, Any]:
        """Counts and rates, JSON-ready."""
        return {
            "scope": self.scope,
            "name": self.name,
            "district": self.district,
            "gateways": self.gateways,
            "gateways_online": self.gateways_online,
            "gateway_online_rate": self.gateway_online_rate,
            "seals": self.seals,
            "seals_intact": self.seals_intact,
            "seal_integrity_rate": self.seal_integrity_rate,
            "locks_online": self.locks_online,
            "lock_online_rate": self.lock_online_rate,
            "meter_polls": self.meter_polls,
            "meter_polls_ok": self.meter_polls_ok,
            "meter_read_success_rate": self.meter_read_success_rate,
            "open_alarms": self.open_alarms,
            "operations": {flow: dict(ops) for flow, ops in sorted(self.operations.items())},
        }


@dataclass(frozen=True, slots=True)
class KpiReport:
    """Rows per gateway and per district, a total, and the open alarms behind the counts."""

    since: str | None
    until: str | None
    gateways: tuple[KpiRow, ...]
    districts: tuple[KpiRow, ...]
    total: KpiRow
    open_alarms: tuple[OpenAlarm, ...] = ()
    line_loss: LineLossKpi = field(default_factory=LineLossKpi)

    def to_json(self) -> dict[str, Any]:
        """The whole report, JSON-ready."""
        return {
            "since": self.since,
            "until": self.until,
            "total": self.total.to_json(),
            "districts": [row.to_json() for row in self.districts],
            "gateways": [row.to_json() for row in self.gateways],
            "open_alarms": [alarm.to_json() for alarm in self.open_alarms],
            "line_loss": self.line_loss.to_json(),
        }


def day_bounds(day: date) -> tuple[str, str]:
    """[since, until) of a UTC day, in the events' ts format."""
    following = day + timedelta(days=1)
    return f"{day.isoformat()}T00:00:00.000Z", f"{following.isoformat()}T00:00:00.000Z"


def load_inputs(ledger: Ledger, *, day: date | None = None) -> KpiInputs:
    """Query the ledger for what `compute_kpis` needs; the window is one UTC day or all time."""
    since, until = day_bounds(day) if day else (None, None)
    chosen = ledger.events(types=KPI_TYPES, until=until)
    alarms = ledger.events(priority="alarm", until=until)
    merged = {e.id: e for e in [*chosen, *alarms]}
    events = sorted(merged.values(), key=lambda e: (e.gateway, e.seq))
    return KpiInputs(
        events=events,
        seal_states=ledger.seal_states(),
        statuses=ledger.statuses(),
        ticket_flows=ledger.ticket_flows(),
        closed_alarms=frozenset(ledger.closed_alarms()),
        since=since,
        until=until,
    )


def compute_kpis(inputs: KpiInputs) -> KpiReport:
    """Every KPI from known inputs; no I/O."""
    by_gateway = _group(inputs.events)
    online = {s.gateway: s.payload.get("state") != "offline" for s in inputs.statuses}
    facts = _Facts(
        inputs=inputs,
        by_gateway=by_gateway,
        districts=_districts(inputs.events),
        online=online,
        seals=_seal_views(inputs.seal_states, by_gateway, online),
        alarms=[
            a
            for gw in sorted(by_gateway)
            for a in _open_alarms(by_gateway[gw], inputs.closed_alarms)
        ],
    )
    names = sorted(set(by_gateway) | set(online) | {s[0] for s in facts.seals})
    rows = tuple(_gateway_row(gw, facts) for gw in names)
    district_rows = tuple(
        _merge("district", d, d, [r for r in rows if r.district == d])
        for d in sorted({r.district for r in rows})
    )
    return KpiReport(
        since=inputs.since,
        until=inputs.until,
        gateways=rows,
        districts=district_rows,
        total=_merge("total", "all", "*", list(rows)),
        open_alarms=tuple(facts.alarms),
        line_loss=line_loss_kpi(e for e in inputs.events if _in_window(e.ts, inputs)),
    )


def format_table(report: KpiReport) -> str:
    """A plain-text table: one line per gateway, per district and the total; then flows."""
    header = ("scope", "name", "district", "seals", "integrity", "locks online", "meter reads",
              "gw online", "open alarms", "ops")  # fmt: skip
    lines = [header]
    for row in (*report.gateways, *report.districts, report.total):
        ops = sum(n for flow in row.operations.values() for n in flow.values())
        lines.append((
            row.scope, row.name, row.district, str(row.seals),
            _pct(row.seal_integrity_rate), _pct(row.lock_online_rate),
            _pct(row.meter_read_success_rate), _pct(row.gateway_online_rate),
            str(row.open_alarms), str(ops),
        ))  # fmt: skip
    text = _columns(lines)
    flows = _flow_lines(report.total)
    window = f"window: {report.since or 'start'} .. {report.until or 'now'}"
    loss = report.line_loss.text_lines()
    return "\n".join([window, "", text, "", *flows, *(["", *loss] if loss else [])])


# -- per gateway ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Facts:
    """What every gateway row is drawn from."""

    inputs: KpiInputs
    by_gateway: Mapping[str, Sequence[StoredEvent]]
    districts: Mapping[str, str]
    online: Mapping[str, bool]  # retained status not offline; absent: never heard
    seals: Sequence[tuple[str, str, bool, bool]]  # (gateway, seal, sealed_intact, online)
    alarms: Sequence[OpenAlarm]


def _gateway_row(gateway: str, facts: _Facts) -> KpiRow:
    mine = [s for s in facts.seals if s[0] == gateway]
    events = facts.by_gateway.get(gateway, [])
    polls, good = _meter_polls(events, facts.inputs.since)
    return KpiRow(
        scope="gateway",
        name=gateway,
        district=facts.districts.get(gateway, UNKNOWN),
        gateways=1,
        gateways_online=int(facts.online.get(gateway, False)),
        seals=len(mine),
        seals_intact=sum(1 for s in mine if s[2]),
        locks_online=sum(1 for s in mine if s[3]),
        meter_polls=polls,
        meter_polls_ok=good,
        open_alarms=sum(1 for a in facts.alarms if a.gateway == gateway),
        operations=_operations(events, facts.inputs),
    )


def _group(events: Iterable[StoredEvent]) -> dict[str, list[StoredEvent]]:
    grouped: dict[str, list[StoredEvent]] = defaultdict(list)
    for event in sorted(events, key=lambda e: (e.gateway, e.seq)):
        grouped[event.gateway].append(event)
    return dict(grouped)


def _districts(events: Iterable[StoredEvent]) -> dict[str, str]:
    """The district of each gateway's latest gateway.started."""
    found: dict[str, str] = {}
    for event in events:
        district = event.data.get("district")
        if event.type == "gateway.started" and isinstance(district, str) and district:
            found[event.gateway] = district
    return found


def _seal_views(
    states: Sequence[RetainedState],
    by_gateway: Mapping[str, Sequence[StoredEvent]],
    online: Mapping[str, bool],
) -> list[tuple[str, str, bool, bool]]:
    """(gateway, seal, sealed_intact, online): retained state first, else the seal's events."""
    views = {(s.gateway, s.key): _from_state(s.payload) for s in states}
    for gateway, events in by_gateway.items():
        for seal, view in _from_events(events).items():
            views.setdefault((gateway, seal), view)
    return [
        (gw, seal, intact, is_online and online.get(gw, True))
        for (gw, seal), (intact, is_online) in sorted(views.items())
    ]


def _from_state(payload: Mapping[str, Any]) -> tuple[bool, bool]:
    intact = (
        payload.get("state") == "sealed"
        and payload.get("wire") == "intact"
        and payload.get("tamper") is not True
    )
    return intact, payload.get("online") is True


def _from_events(events: Iterable[StoredEvent]) -> dict[str, tuple[bool, bool]]:
    intact: dict[str, bool] = {}
    online: dict[str, bool] = {}
    for event in events:
        if event.type in SEAL_STATE_TYPES:
            wire = event.data.get("wire_loop", event.data.get("wire"))
            intact[event.subject] = event.type == "seal.sealed" and wire == "intact"
        elif event.type in SEAL_ONLINE_TYPES:
            online[event.subject] = event.type == "seal.online"
    return {seal: (intact.get(seal, False), online.get(seal, True)) for seal in intact}


def _meter_polls(events: Iterable[StoredEvent], since: str | None) -> tuple[int, int]:
    """Polls and good polls in the window, from differences of the health counters."""
    last: dict[str, tuple[int, int]] = {}
    polls = good = 0
    for event in events:
        if event.type == "gateway.started":
            last = {}
        if event.type != "gateway.health":
            continue
        for meter, (p, ok) in _health_counters(event.data).items():
            before = last.get(meter, (0, 0))
            step = (p - before[0], ok - before[1]) if p >= before[0] else (p, ok)
            last[meter] = (p, ok)
            if since is None or event.ts >= since:
                polls, good = polls + step[0], good + step[1]
    return polls, good


def _health_counters(data: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    meters = data.get("meters")
    per_meter = meters.get("meters") if isinstance(meters, dict) else None
    if not isinstance(per_meter, dict):
        return {}
    counters = {}
    for meter, figures in per_meter.items():
        if isinstance(figures, dict):
            polls, good = figures.get("polls"), figures.get("ok")
            if isinstance(polls, int) and isinstance(good, int):
                counters[str(meter)] = (polls, good)
    return counters


def _open_alarms(
    events: Sequence[StoredEvent], closed: frozenset[str] = frozenset()
) -> list[OpenAlarm]:
    """Alarms of one gateway (seq order) not closed in the console nor cleared by a later
    seal.sealed of their seal; one per incident, as the console files them (events of one
    seal and type while its alarm is open, within master_station/ledger/inbox.py's window)."""
    open_by_seal: dict[str | None, list[OpenAlarm]] = defaultdict(list)
    for event in events:
        if event.priority == "alarm" and event.id not in closed:
            alarm = OpenAlarm(event.gateway, event.seq, event.type, event.subject, event.ts)
            seal = _alarm_seal(event)
            same = [a for a in open_by_seal[seal] if a.type == alarm.type]
            if seal is not None and same and same_incident(same[-1].ts, alarm.ts):
                continue  # the same incident told again (the advert, then the lock's log)
            open_by_seal[seal].append(alarm)
        elif event.type == "seal.sealed":
            open_by_seal.pop(event.subject, None)
    return sorted((a for group in open_by_seal.values() for a in group), key=lambda a: a.seq)


def _alarm_seal(event: StoredEvent) -> str | None:
    if event.type.startswith("seal."):
        return event.subject
    seal = event.data.get("seal")
    return seal if isinstance(seal, str) and seal else None


def _operations(events: Iterable[StoredEvent], inputs: KpiInputs) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(OPERATIONS.values(), 0))
    for event in events:
        name = OPERATIONS.get(event.type)
        if name is None or not _in_window(event.ts, inputs):
            continue
        counts[_flow(event.data, inputs.ticket_flows)][name] += 1
    return dict(counts)


def _flow(data: Mapping[str, Any], flows: Mapping[str, str]) -> str:
    flow = data.get("flow")
    if isinstance(flow, str) and flow:
        return flow
    return flows.get(str(data.get("ticket_id")), UNKNOWN)


def _in_window(ts: str, inputs: KpiInputs) -> bool:
    return (inputs.since is None or ts >= inputs.since) and (
        inputs.until is None or ts < inputs.until
    )


# -- aggregation and text --------------------------------------------------------------------


def _merge(scope: str, name: str, district: str, rows: Sequence[KpiRow]) -> KpiRow:
    operations: dict[str, dict[str, int]] = {}
    for row in rows:
        for flow, ops in row.operations.items():
            slot = operations.setdefault(flow, dict.fromkeys(OPERATIONS.values(), 0))
            for op, count in ops.items():
                slot[op] = slot.get(op, 0) + count
    return KpiRow(
        scope=scope,
        name=name,
        district=district,
        gateways=sum(r.gateways for r in rows),
        gateways_online=sum(r.gateways_online for r in rows),
        seals=sum(r.seals for r in rows),
        seals_intact=sum(r.seals_intact for r in rows),
        locks_online=sum(r.locks_online for r in rows),
        meter_polls=sum(r.meter_polls for r in rows),
        meter_polls_ok=sum(r.meter_polls_ok for r in rows),
        open_alarms=sum(r.open_alarms for r in rows),
        operations=operations,
    )


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _columns(lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rendered = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                for line in lines]  # fmt: skip
    rendered.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(rendered)


def _flow_lines(total: KpiRow) -> list[str]:
    if not total.operations:
        return ["operations per flow: none"]
    lines = [("flow", *OPERATIONS.values())]
    for flow, ops in sorted(total.operations.items()):
        lines.append((flow, *(str(ops.get(name, 0)) for name in OPERATIONS.values())))
    return ["operations per flow:", _columns(lines)]
