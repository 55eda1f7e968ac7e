"""What the console's pages read, scoped to the user's districts; every query is indexed.

The rollups (master_station/ledger/rollup.py) hold everything that would otherwise need a scan
of `events`: per-day counters, seal states, the events about each seal, and the alarm inbox.
`events` itself is only read by its primary key or by (gateway, seq) ranges.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from master_station.ledger.rollup import SealView, seal_views
from master_station.ledger.rows import as_bytes

if TYPE_CHECKING:
    from master_station.console.accounts import User
    from master_station.ledger.sql import Db

__all__ = [
    "TARGETS",
    "Alarm",
    "DistrictSummary",
    "EventRow",
    "Forbidden",
    "alarm",
    "alarms",
    "district_of",
    "district_summaries",
    "districts_of",
    "evidence",
    "gateways_of",
    "open_alarm_count",
    "open_alarm_counts",
    "seal_timeline",
    "ticket_answer",
    "tickets",
    "trends",
]

TARGETS = {"seal_integrity": 1.0, "gateway_online": 0.96, "meter_read_success": 0.90}
UNKNOWN_DISTRICT = "unknown"
AROUND = 8
ALARM_COLUMNS = (
    "a.alarm_id, a.source, a.gateway, a.seq, a.type, a.subject, a.seal, a.ts, a.detail,"
    " a.status, a.cleared_seq, a.updated_at, COALESCE(g.district, 'unknown'), a.events,"
    " a.change_seq"
)
ALARM_FROM = "console_alarms a LEFT JOIN console_gateways g ON g.gateway = a.gateway"
SUMMARISED_TYPES = frozenset({"gateway.health"})  # periodic snapshots, like telemetry
HIDDEN_FIELDS = frozenset({"entry", "evidence", "values", "audit_tag"})  # raw, shown elsewhere
MAX_VALUE = 120  # characters of one field on a row
MAX_BODY = 4000  # characters of a folded body
OPERATION_TYPES = ("seal.sealed", "seal.unsealed", "seal.time_set", "seal.op_requested",
                   "seal.op_allowed", "seal.op_denied", "seal.op_failed",
                   "seal.op_unconfirmed", "seal.op_rejected")  # fmt: skip


class Forbidden(Exception):  # noqa: N818 - the HTTP word
    """The user may not see or do this (the reason code says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Alarm:
    """One row of the inbox."""

    alarm_id: str
    source: str
    gateway: str
    seq: int | None
    type: str
    subject: str
    seal: str
    ts: str
    detail: str
    status: str
    cleared_seq: int | None
    updated_at: str
    district: str
    events: int = 1  # the events of this incident (inbox.py: advert and log of one tamper)
    change_seq: int = 0  # its latest change, in commit order (inbox.py, the live feed's cursor)

    @property
    def is_open(self) -> bool:
        """Counts in the open-alarms KPI: not closed, not cleared by a later sealing."""
        return self.status != "closed" and self.cleared_seq is None

    def to_json(self) -> dict[str, Any]:
        return {
            "alarm_id": self.alarm_id, "gateway": self.gateway, "seq": self.seq,
            "type": self.type, "subject": self.subject, "seal": self.seal, "ts": self.ts,
            "status": self.status, "cleared": self.cleared_seq is not None,
            "district": self.district, "open": self.is_open, "events": self.events,
            "change": self.change_seq,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class EventRow:
    """An event as a timeline shows it, with its chain status."""

    gateway: str
    seq: int
    id: str
    type: str
    ts: str
    priority: str
    subject: str
    data: Mapping[str, Any]
    chain: str  # verified | gap | problem

    def field(self, name: str) -> str:
        value = self.data.get(name)
        return "" if value is None else str(value)

    @property
    def telemetry(self) -> bool:
        """Readings and health snapshots: one line in the evidence, the body folded."""
        return self.priority == "telemetry" or self.type in SUMMARISED_TYPES

    def concerns(self, seal: str) -> bool:
        """About this seal: its subject, or `data.seal` (meter events, thefts under it)."""
        return bool(seal) and (self.subject == seal or self.data.get("seal") == seal)

    def fields(self) -> list[tuple[str, str]]:
        """(name, value) to show on the row: nested values as JSON, each cut to MAX_VALUE."""
        return [(k, _brief(v)) for k, v in self.data.items() if k not in HIDDEN_FIELDS]

    def body(self) -> str:
        """The whole data, indented JSON (cut to MAX_BODY), for a folded row."""
        text = json.dumps(self.data, indent=1, sort_keys=True, default=str, ensure_ascii=False)
        return text if len(text) <= MAX_BODY else text[: MAX_BODY - 1] + "…"


@dataclass(slots=True)
class DistrictSummary:
    """Today's figures of one district against their targets, and its seal grid."""

    district: str
    gateways: int = 0
    gateways_online: int = 0
    seals: list[SealView] = field(default_factory=list)
    meter_polls: int = 0
    meter_ok: int = 0
    open_alarms: int = 0
    line_loss: dict[str, Any] | None = None

    @property
    def seal_integrity(self) -> float | None:
        return _rate(sum(1 for s in self.seals if s.intact), len(self.seals))

    @property
    def lock_online(self) -> float | None:
        return _rate(sum(1 for s in self.seals if s.online), len(self.seals))

    @property
    def gateway_online(self) -> float | None:
        return _rate(self.gateways_online, self.gateways)

    @property
    def meter_read_success(self) -> float | None:
        return _rate(self.meter_ok, self.meter_polls)


# -- districts -----------------------------------------------------------------------------------


def districts_of(db: Db) -> dict[str, str]:
    """gateway → district (of its latest gateway.started); every gateway known is listed (the
    whole fleet: for an unscoped user; `gateways_of` reads only a manager's)."""
    found = {str(g): UNKNOWN_DISTRICT for (g,) in db.query(
        "SELECT gateway FROM gateway_status UNION SELECT gateway FROM seal_state"
        " UNION SELECT gateway FROM chain_head")}  # fmt: skip
    found.update({str(g): str(d) for g, d in db.query(
        "SELECT gateway, district FROM console_gateways")})  # fmt: skip
    return found


def gateways_of(db: Db, user: User) -> dict[str, str]:
    """gateway → district of every gateway the user sees: a manager's districts' gateways
    (indexed by district), or every gateway known for an unscoped user."""
    if not user.scoped:
        return {g: d for g, d in districts_of(db).items() if user.sees(_known(d))}
    rows = db.query(
        "SELECT gateway, district FROM console_gateways"  # noqa: S608
        f" WHERE district IN ({_marks(user.districts)})",
        user.districts,
    )
    return {str(g): str(d) for g, d in rows}


def district_of(db: Db, gateway: str) -> str | None:
    """The district of one gateway (`unknown` before its gateway.started); None if unknown."""
    rows = db.query("SELECT district FROM console_gateways WHERE gateway = ?", (gateway,))
    if rows:
        return str(rows[0][0])
    for table in ("gateway_status", "chain_head", "seal_state"):
        if db.query(f"SELECT 1 FROM {table} WHERE gateway = ? LIMIT 1", (gateway,)):  # noqa: S608
            return UNKNOWN_DISTRICT
    return None


def district_summaries(db: Db, user: User, today: date) -> list[DistrictSummary]:
    """Per district the user sees: today's KPIs and the seal grid."""
    districts = gateways_of(db, user)
    summaries: dict[str, DistrictSummary] = {}
    for district in districts.values():
        summaries.setdefault(district, DistrictSummary(district)).gateways += 1
    if not districts:
        return []
    scope = sorted(districts) if user.scoped else None
    where = "" if scope is None else f" WHERE gateway IN ({_marks(scope)})"
    online = {str(g): str(s) != "offline" for g, s in db.query(
        f"SELECT gateway, state FROM gateway_status{where}", scope or ())}  # fmt: skip  # noqa: S608
    for gateway, district in districts.items():
        summaries[district].gateways_online += int(online.get(gateway, False))
    for view in seal_views(db, districts):
        summaries[districts[view.gateway]].seals.append(view)
    day = " AND day = ?" if where else " WHERE day = ?"
    for gateway, polls, good in db.query(
        f"SELECT gateway, meter_polls, meter_ok FROM kpi_daily{where}{day}",  # noqa: S608
        [*(scope or ()), today.isoformat()],
    ):
        if str(gateway) in districts:
            summary = summaries[districts[str(gateway)]]
            summary.meter_polls += int(polls)
            summary.meter_ok += int(good)
    for district, count in open_alarm_counts(db, user).items():
        if district in summaries:
            summaries[district].open_alarms = count
    for district, summary in summaries.items():
        summary.line_loss = _latest_line_loss(db, district)
    return [summaries[d] for d in sorted(summaries)]


def _latest_line_loss(db: Db, district: str) -> dict[str, Any] | None:
    rows = db.query(
        "SELECT day, rate, status, qualified, complete FROM line_loss_daily WHERE district = ?"
        " ORDER BY day DESC LIMIT 1",
        (district,),
    )
    if not rows:
        return None
    day, rate, status, qualified, complete = rows[0]
    return {"day": str(day), "rate": None if rate is None else float(rate), "status": str(status),
            "qualified": bool(qualified), "complete": bool(complete)}  # fmt: skip


def trends(db: Db, user: User, *, days: int, today: date) -> dict[str, Any]:
    """Daily series per district from the rollups, over the last `days` days (for the chart)."""
    since = (today - timedelta(days=days - 1)).isoformat()
    scope = _scope(db, user)
    if scope is not None and not scope:
        return {"days": [], "districts": {}, "targets": TARGETS}
    where = f" AND k.gateway IN ({_marks(scope)})" if scope else ""
    rows = db.query(
        "SELECT COALESCE(g.district, 'unknown'), k.day, SUM(k.events), SUM(k.alarms),"  # noqa: S608
        " SUM(k.meter_polls), SUM(k.meter_ok), SUM(k.seals), SUM(k.seals_intact),"
        " SUM(k.locks_online), SUM(k.sealed), SUM(k.unsealed), SUM(k.denied)"
        " FROM kpi_daily k LEFT JOIN console_gateways g ON g.gateway = k.gateway"
        f" WHERE k.day >= ?{where} GROUP BY COALESCE(g.district, 'unknown'), k.day",
        [since, *(scope or ())],
    )
    names = [(today - timedelta(days=days - 1 - i)).isoformat() for i in range(days)]
    series: dict[str, dict[str, list[float | None]]] = {}
    for row in rows:
        district, day = str(row[0]), str(row[1])
        if not user.sees(_known(district)) or day not in names:
            continue
        slot = series.setdefault(district, _empty_series(len(names)))
        i = names.index(day)
        events, alarm_count, polls, good, seals, intact, locks, sealed, unsealed, denied = (
            None if v is None else int(v) for v in row[2:]
        )
        slot["events"][i] = events
        slot["alarms"][i] = alarm_count
        slot["meter_read_success"][i] = _rate(good or 0, polls or 0)
        slot["seal_integrity"][i] = _rate(intact or 0, seals or 0)
        slot["lock_online"][i] = _rate(locks or 0, seals or 0)
        slot["operations"][i] = (sealed or 0) + (unsealed or 0) + (denied or 0)
    for district, slot in series.items():
        for day, rate in db.query(
            "SELECT day, rate FROM line_loss_daily WHERE district = ? AND day >= ?",
            (district, since),
        ):
            if str(day) in names and rate is not None:
                slot["line_loss"][names.index(str(day))] = float(rate)
    return {"days": names, "districts": dict(sorted(series.items())), "targets": TARGETS}


def _empty_series(length: int) -> dict[str, list[float | None]]:
    keys = ("events", "alarms", "meter_read_success", "seal_integrity", "lock_online",
            "operations", "line_loss")  # fmt: skip
    return {key: [None] * length for key in keys}


# -- alarms ----------------------------------------------------------------------------------------


def alarms(db: Db, user: User, *, status: str = "open", limit: int = 200) -> list[Alarm]:
    """The inbox: `open` (not closed: open and acknowledged) or `closed`, newest first.

    A manager's is read by their gateways (index gateway, status, ts), not filtered out of
    every district's."""
    where = "a.status IN ('open', 'acknowledged')" if status == "open" else "a.status = 'closed'"
    scope = _scope(db, user)
    if scope is not None and not scope:
        return []
    if scope:
        where += f" AND a.gateway IN ({_marks(scope)})"
    sql = f"SELECT {ALARM_COLUMNS} FROM {ALARM_FROM} WHERE {where} ORDER BY a.ts DESC LIMIT ?"  # noqa: S608
    return [_alarm(row) for row in db.query(sql, [*(scope or ()), limit])]


def open_alarm_counts(db: Db, user: User) -> dict[str, int]:
    """district → alarms counted in the open-alarms KPI (not closed, not cleared by a later
    sealing), of the districts the user sees: one indexed count, no alarm is loaded."""
    scope = _scope(db, user)
    if scope is not None and not scope:
        return {}
    where = f" AND a.gateway IN ({_marks(scope)})" if scope else ""
    rows = db.query(
        "SELECT COALESCE(g.district, 'unknown'), COUNT(*) FROM console_alarms a"  # noqa: S608
        " LEFT JOIN console_gateways g ON g.gateway = a.gateway WHERE a.status IN ('open',"
        f" 'acknowledged') AND a.cleared_seq IS NULL{where} GROUP BY COALESCE(g.district,"
        " 'unknown')",
        scope or (),
    )
    return {str(d): int(n) for d, n in rows if user.sees(_known(str(d)))}


def alarms_since(db: Db, after: int, limit: int = 200) -> list[Alarm]:
    """Alarms created or changed after change number `after` (the live feed), in commit order
    (master_station/ledger/inbox.py, the change clock); each at its latest change."""
    rows = db.query(
        f"SELECT {ALARM_COLUMNS} FROM {ALARM_FROM} WHERE a.change_seq > ?"  # noqa: S608
        " ORDER BY a.change_seq LIMIT ?",
        (after, limit),
    )
    return [_alarm(row) for row in rows]


def newest_alarm_change(db: Db) -> int:
    """The change number of the newest alarm change committed (0 before any)."""
    rows = db.query("SELECT MAX(change_seq) FROM console_alarms")
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def open_alarm_count(db: Db, user: User) -> int:
    return sum(open_alarm_counts(db, user).values())


def alarm(db: Db, user: User, alarm_id: str) -> Alarm | None:
    """One alarm; Forbidden when it belongs to a district the user does not see."""
    rows = db.query(
        f"SELECT {ALARM_COLUMNS} FROM {ALARM_FROM} WHERE a.alarm_id = ?",  # noqa: S608
        (alarm_id,),
    )
    if not rows:
        return None
    found = _alarm(rows[0])
    if not user.sees(_known(found.district)):
        raise Forbidden("out_of_scope")
    return found


def evidence(db: Db, found: Alarm) -> dict[str, Any]:
    """The events of the alarm's incident, the events around its first, its seal's recent
    operations, lock log entries, meter events under that seal, and the console's audit trail
    of the alarm."""
    around: list[EventRow] = []
    if found.seq is not None:
        around = _events_between(db, found.gateway, found.seq - AROUND, found.seq + AROUND)
    seal_rows = _seal_events(db, found.gateway, found.seal, 50) if found.seal else []
    return {
        "incident": _incident_events(db, found),
        "around": around,
        "operations": [e for e in seal_rows if e.type in OPERATION_TYPES][:20],
        "meter_events": [e for e in seal_rows if e.type.startswith(("meter.", "theft."))][:20],
        "lock_entries": _lock_entries(db, found.gateway, found.seal) if found.seal else [],
        "audit": audit_trail(db, f"alarm:{found.alarm_id}"),
    }


def audit_trail(db: Db, target: str) -> list[dict[str, str]]:
    rows = db.query(
        "SELECT at, actor, action, note FROM console_audit WHERE target = ? ORDER BY at",
        (target,),
    )
    return [
        {"at": str(a), "actor": str(u), "action": str(n), "note": str(t)} for a, u, n, t in rows
    ]


# -- seals -------------------------------------------------------------------------------------


def seal_timeline(
    db: Db, user: User, gateway: str, seal: str, *, limit: int = 200
) -> dict[str, Any]:
    """A seal's events (newest first) with chain status, its operations and its state now."""
    district = district_of(db, gateway)
    if district is None:
        return {}
    if not user.sees(_known(district)):
        raise Forbidden("out_of_scope")
    views = [v for v in seal_views(db, [gateway]) if v.seal == seal]
    events = _seal_events(db, gateway, seal, limit)
    if not views and not events:
        return {}
    return {
        "gateway": gateway,
        "seal": seal,
        "district": district,
        "state": views[0] if views else None,
        "events": events,
        "operations": [e for e in events if e.type in OPERATION_TYPES],
        "lock_entries": _lock_entries(db, gateway, seal),
        "alarms": _seal_alarms(db, gateway, seal),
    }


def _seal_alarms(db: Db, gateway: str, seal: str) -> list[Alarm]:
    sql = (
        f"SELECT {ALARM_COLUMNS} FROM {ALARM_FROM} WHERE a.gateway = ? AND a.seal = ?"  # noqa: S608
        " ORDER BY a.seq DESC LIMIT 50"
    )
    return [_alarm(r) for r in db.query(sql, (gateway, seal))]


def _seal_events(db: Db, gateway: str, seal: str, limit: int) -> list[EventRow]:
    rows = db.query(
        "SELECT e.gateway, e.seq, e.id, e.type, e.ts, e.priority, e.subject, e.payload"
        " FROM console_seal_events s JOIN events e ON e.gateway = s.gateway AND e.seq = s.seq"
        " WHERE s.gateway = ? AND s.seal = ? ORDER BY s.seq DESC LIMIT ?",
        (gateway, seal, limit),
    )
    return _with_chain(db, gateway, rows)


def _incident_events(db: Db, found: Alarm) -> list[EventRow]:
    """The events filed under an alarm (master_station/ledger/inbox.py), oldest first."""
    rows = db.query(
        "SELECT e.gateway, e.seq, e.id, e.type, e.ts, e.priority, e.subject, e.payload"
        " FROM console_alarm_events m JOIN events e ON e.gateway = m.gateway AND e.seq = m.seq"
        " WHERE m.alarm_id = ? ORDER BY m.seq LIMIT 50",
        (found.alarm_id,),
    )
    return _with_chain(db, found.gateway, rows)


def _events_between(db: Db, gateway: str, low: int, high: int) -> list[EventRow]:
    rows = db.query(
        "SELECT gateway, seq, id, type, ts, priority, subject, payload FROM events"
        " WHERE gateway = ? AND seq BETWEEN ? AND ? ORDER BY seq",
        (gateway, low, high),
    )
    return _with_chain(db, gateway, rows)


def _with_chain(db: Db, gateway: str, rows: Sequence[Sequence[Any]]) -> list[EventRow]:
    """Chain status: problem (a finding at that seq), verified (at or below the verified head),
    gap (above it: an earlier seq is missing, or not yet checked)."""
    if not rows:
        return []
    head = db.query("SELECT verified_seq FROM chain_head WHERE gateway = ?", (gateway,))
    verified = int(head[0][0]) if head else 0
    seqs = [int(r[1]) for r in rows]
    flagged = {int(s) for (s,) in db.query(
        "SELECT seq FROM problems WHERE gateway = ? AND seq BETWEEN ? AND ?",
        (gateway, min(seqs), max(seqs)))}  # fmt: skip
    result = []
    for gw, seq, event_id, kind, ts, priority, subject, payload in rows:
        data = _data(payload)
        chain = "problem" if int(seq) in flagged else "verified" if int(seq) <= verified else "gap"
        result.append(EventRow(str(gw), int(seq), str(event_id), str(kind), str(ts),
                               str(priority), str(subject), data, chain))  # fmt: skip
    return result


def _lock_entries(db: Db, gateway: str, seal: str) -> list[dict[str, Any]]:
    rows = db.query(
        "SELECT lock_id FROM console_seals WHERE gateway = ? AND seal = ?", (gateway, seal)
    )
    lock = str(rows[0][0]) if rows and rows[0][0] else ""
    if not lock:
        states = db.query(
            "SELECT payload FROM seal_state WHERE gateway = ? AND seal = ?", (gateway, seal)
        )
        lock = str(_data_root(states[0][0]).get("lock_id", "")) if states else ""
    if not lock:
        return []
    entries = db.query(
        "SELECT log_index, gateway, seq, event_id, entry FROM lock_entries WHERE lock_id = ?"
        " ORDER BY log_index DESC LIMIT 50",
        (lock,),
    )
    return [
        {"lock_id": lock, "index": int(i), "gateway": str(g), "seq": int(s), "event_id": str(e),
         "entry": as_bytes(b).hex()}
        for i, g, s, e, b in entries
    ]  # fmt: skip


# -- tickets ------------------------------------------------------------------------------------


def tickets(db: Db, user: User, *, limit: int = 100) -> list[dict[str, Any]]:
    """Tickets issued from the console, newest first, in the user's districts."""
    scope = _scope(db, user)
    if scope is not None and not scope:
        return []
    where = f" WHERE gateway IN ({_marks(scope)})" if scope else ""
    rows = db.query(
        "SELECT ticket_id, gateway, work_order, flow, operator, role, seals, ops, not_before,"  # noqa: S608
        " not_after, max_uses, issued_by, issued_at, status, reply, updated_at"
        f" FROM console_tickets{where} ORDER BY issued_at DESC LIMIT ?",
        [*(scope or ()), limit],
    )
    names = ("ticket_id", "gateway", "work_order", "flow", "operator", "role", "seals", "ops",
             "not_before", "not_after", "max_uses", "issued_by", "issued_at", "status", "reply",
             "updated_at")  # fmt: skip
    found = []
    for row in rows:
        item = dict(zip(names, row, strict=True))
        item["seals"] = ", ".join(json.loads(str(item["seals"])))
        item["reason"], item["detail"] = ticket_answer(str(item["status"]), str(item["reply"]))
        found.append(item)
    return found


def ticket_answer(status: str, reply: str) -> tuple[str, str]:
    """The gateway's answer to a ticket (or its revocation) as (reason code, detail): its error
    code when it refused (`wrong_recipient`, `ticket_expired`, ...), `stored` or `held` when it
    took it, else why no answer came (`no_answer`, `not_sent`); '' while none is kept yet."""
    body = _data_root(reply.encode()) if reply else {}
    if not body:
        return "", ""
    if body.get("ok") is True:
        result = body.get("result") if isinstance(body.get("result"), dict) else {}
        stored = result.get("stored", True) is not False
        return ("stored" if stored else "held"), str(result.get("detail") or "")[:300]
    if body.get("ok") is False:
        return str(body.get("error") or "refused")[:64], str(body.get("detail") or "")[:300]
    return status, str(body.get("error") or "")[:300]


# -- helpers -----------------------------------------------------------------------------------


def visible_gateways(db: Db, user: User) -> list[str]:
    return sorted(gateways_of(db, user))


def _scope(db: Db, user: User) -> list[str] | None:
    """The gateways a scoped user's reads are limited to (None: every gateway)."""
    return sorted(gateways_of(db, user)) if user.scoped else None


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


def _known(district: str | None) -> str | None:
    return None if district in (None, UNKNOWN_DISTRICT) else district


def _alarm(row: Sequence[Any]) -> Alarm:
    return Alarm(
        str(row[0]), str(row[1]), str(row[2]), None if row[3] is None else int(row[3]),
        str(row[4]), str(row[5]), str(row[6]), str(row[7]), str(row[8]), str(row[9]),
        None if row[10] is None else int(row[10]), str(row[11]), str(row[12]), int(row[13]),
        int(row[14]),
    )  # fmt: skip


def _data(payload: Any) -> Mapping[str, Any]:
    data = _data_root(payload).get("data")
    return data if isinstance(data, dict) else {}


def _data_root(payload: Any) -> dict[str, Any]:
    try:
        obj = json.loads(as_bytes(payload))
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _brief(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str,
                                                           ensure_ascii=False)  # fmt: skip
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def unique(items: Iterable[str]) -> list[str]:
    return sorted(set(items))
