"""Rollups the console reads, kept current by the listener: one small fold per stored batch.

The listener hands every batch of newly stored event payloads to `Rollups.stored` after the
ledger committed them (master_station/listener.py, `LedgerObserver`), and calls `tick` every
second. The fold keeps, in the ledger's own database (tables in schema.py, `CONSOLE_SCHEMA`):

- `kpi_daily`: per gateway and UTC day, counters (events, alarms, tampers, thefts, operations,
  meter polls and good polls from the `gateway.health` counter differences), and once a minute a
  snapshot of the current-state figures (seals, intact, locks online, gateway online);
- `line_loss_daily`: the latest `district.line_loss` of each district and meter-local day;
- `console_gateways` (district of the latest `gateway.started`), `console_seals` (each seal's
  state from its events, lock id, last sealing), `console_seal_events` (an index of the events
  about each seal, meter events under it included);
- `console_alarms`: one alarm per incident (alarm-priority events about one seal grouped as
  master_station/ledger/inbox.py says, each listed in `console_alarm_events`), every chain
  problem and every alarm published outside the chain (`gateway.storage_full`), with the
  console's acknowledge/close status.

A batch's fold is its own transaction after the ledger's. `reconcile` (at listener start, and
after a fold failed) compares each gateway's rolled-up event count with the ledger's and replays
a gateway whose rollups missed events; acknowledgements, closes and which alarm each event was
filed under are never lost by a replay.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway.protocol.events import format_ts
from master_station.ledger.inbox import AlarmEvent, file_event_alarm, insert_alarm, stamp_changes
from master_station.ledger.rows import as_bytes, json_object

if TYPE_CHECKING:
    from master_station.ledger.models import Ledger
    from master_station.ledger.sql import Db, Tx

__all__ = ["Rollups", "SealView", "alarm_seal", "rollups_for", "seal_condition", "seal_views"]

_log = logging.getLogger(__name__)

SNAPSHOT_S = 60.0
PROBLEM_BATCH = 500
REPLAY_BATCH = 2000
METER_OFFSET = timedelta(hours=8)  # line-loss days are meter-local (docs/theft.md)
OPERATION_COLUMNS = {"seal.sealed": "sealed", "seal.unsealed": "unsealed",
                     "seal.op_denied": "denied"}  # fmt: skip
DAILY_COLUMNS = ("events", "alarms", "tampers", "thefts", "sealed", "unsealed", "denied",
                 "meter_polls", "meter_ok")  # fmt: skip
TAMPER_WIRES = frozenset({"broken", "cut"})
UNDER_SEAL_SKIPPED = frozenset({"meter.reading"})  # telemetry: too many, not evidence


def rollups_for(ledger: Ledger) -> Rollups:
    """The rollups of a ledger opened with `open_ledger` (SqlLedger exposes its `db`)."""
    return Rollups(ledger.db)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class _Event:
    """The parts of one stored event the fold reads."""

    gateway: str
    seq: int
    kind: str
    subject: str
    ts: str
    data: Mapping[str, Any]

    @property
    def day(self) -> str:
        return self.ts[:10]


@dataclass(slots=True)
class _Fold:
    """What one batch adds up to before it is written."""

    daily: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    counted: dict[str, int] = field(default_factory=dict)
    alarms: dict[str, None] = field(default_factory=dict)  # changed, in order (stamp_changes)
    # meter_counters and console_gateways.started_seq of this batch's gateways, read once and
    # kept current here as the batch is folded (so a health snapshot costs no round trips)
    counters: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    changed_counters: set[tuple[str, str]] = field(default_factory=set)
    started: dict[str, int] = field(default_factory=dict)

    def bump(self, gateway: str, day: str, column: str, amount: int = 1) -> None:
        row = self.daily.setdefault((gateway, day), dict.fromkeys(DAILY_COLUMNS, 0))
        row[column] += amount


class Rollups:
    """The console's rollups over a ledger database (see the module doc)."""

    def __init__(self, db: Db, *, clock: Callable[[], str] | None = None) -> None:
        self.db = db
        self._clock = clock or _now  # `updated_at` of the alarms (RFC 3339 UTC)
        self.dirty = False
        self._last_snapshot = 0.0
        self._at_cursor = 0

    # -- the listener's calls ----------------------------------------------------------------

    def stored(self, payloads: Sequence[bytes]) -> None:
        """Fold newly stored events into the rollups (one transaction)."""
        events = sorted(
            (e for e in (_load(p) for p in payloads) if e is not None),
            key=lambda e: (str(e["gateway"]), int(e["seq"])),
        )
        if not events:
            return
        now = self._clock()
        with self.db.transaction() as tx:
            fold = _Fold()
            _read_counters(tx, fold, {str(e["gateway"]) for e in events
                                      if e.get("type") == "gateway.health"})  # fmt: skip
            for event in events:
                self._fold_one(tx, event, fold, now)
            self._write_fold(tx, fold)
            stamp_changes(tx, fold.alarms)  # last: the clock's lock is held to the commit

    def outside_alarm(self, gateway: str, kind: str, payload: bytes) -> None:
        """An alarm published outside the chain (`alarm/gateway.storage_full`)."""
        body = json_object(payload)
        now = self._clock()
        ts = str(body.get("ts") or now)
        detail = json.dumps(body, sort_keys=True)[:300]
        alarm_id = f"outside:{gateway}:{kind}:{ts}"
        with self.db.transaction() as tx:
            if insert_alarm(tx, (alarm_id, "outside", gateway, None, kind, gateway, "", ts,
                                 detail, None, now)):  # fmt: skip
                stamp_changes(tx, [alarm_id])

    def tick(self, *, now: float | None = None) -> None:
        """Chain problems become alarms; once a minute, today's current-state snapshot."""
        if self.dirty:
            self.reconcile()
        self._problems_to_alarms()
        moment = time.monotonic() if now is None else now
        if moment - self._last_snapshot >= SNAPSHOT_S:
            self._last_snapshot = moment
            self.snapshot()

    def reconcile(self) -> list[str]:
        """Replay every gateway whose rolled-up event count differs from the ledger's."""
        self.dirty = False
        held = {str(g): int(n) for g, n in self.db.query(
            "SELECT gateway, COUNT(*) FROM events GROUP BY gateway")}  # fmt: skip
        rolled = {
            str(k)[len("events:") :]: int(v)
            for k, v in self.db.query("SELECT name, value FROM rollup_meta")
            if str(k).startswith("events:")
        }
        behind = sorted(gw for gw, n in held.items() if rolled.get(gw, 0) != n)
        for gateway in behind:
            self.replay(gateway)
        return behind

    def replay(self, gateway: str) -> None:
        """Rebuild one gateway's rollups from its events (alarm statuses are kept)."""
        _log.info("rollups: replaying gateway %s", gateway)
        with self.db.transaction() as tx:
            for table in ("kpi_daily", "meter_counters", "console_seals", "console_seal_events",
                          "console_gateways"):  # fmt: skip
                tx.execute(f"DELETE FROM {table} WHERE gateway = ?", (gateway,))  # noqa: S608
            tx.execute("DELETE FROM rollup_meta WHERE name = ?", (f"events:{gateway}",))
        seq = 0
        while True:
            rows = self.db.query(
                "SELECT seq, payload FROM events WHERE gateway = ? AND seq > ? ORDER BY seq"
                " LIMIT ?",
                (gateway, seq, REPLAY_BATCH),
            )
            if not rows:
                break
            self.stored([as_bytes(r[1]) for r in rows])
            seq = int(rows[-1][0])
        self.snapshot()

    def snapshot(self) -> None:
        """Today's seals, intact seals, locks online and gateway online, per gateway."""
        day = _now()[:10]
        per_gateway: dict[str, list[int]] = {}
        online = _gateway_online(self.db)
        for view in seal_views(self.db):
            counts = per_gateway.setdefault(view.gateway, [0, 0, 0])
            counts[0] += 1
            counts[1] += int(view.intact)
            counts[2] += int(view.online)
        with self.db.transaction() as tx:
            for gateway in sorted(set(per_gateway) | set(online)):
                seals, intact, locks = per_gateway.get(gateway, [0, 0, 0])
                tx.execute(
                    "INSERT INTO kpi_daily (gateway, day, seals, seals_intact, locks_online,"
                    " gateway_online) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (gateway, day) DO"
                    " UPDATE SET seals = excluded.seals, seals_intact = excluded.seals_intact,"
                    " locks_online = excluded.locks_online,"
                    " gateway_online = excluded.gateway_online",
                    (gateway, day, seals, intact, locks, int(online.get(gateway, False))),
                )

    # -- folding -----------------------------------------------------------------------------

    def _fold_one(self, tx: Tx, obj: Mapping[str, Any], fold: _Fold, now: str) -> None:
        raw = obj.get("data")
        event = _Event(str(obj["gateway"]), int(obj["seq"]), str(obj["type"]),
                       str(obj.get("subject", "")), str(obj["ts"]),
                       raw if isinstance(raw, dict) else {})  # fmt: skip
        gateway, seq, kind, subject, ts, data = (event.gateway, event.seq, event.kind,
                                                 event.subject, event.ts, event.data)  # fmt: skip
        day = event.day
        fold.counted[gateway] = fold.counted.get(gateway, 0) + 1
        fold.bump(gateway, day, "events")
        if kind in OPERATION_COLUMNS:
            fold.bump(gateway, day, OPERATION_COLUMNS[kind])
        if kind == "gateway.started" and isinstance(data.get("district"), str):
            _upsert_district(tx, gateway, str(data["district"]), seq)
            if gateway in fold.started and fold.started[gateway] < seq:
                fold.started[gateway] = seq  # as the upsert just did
        elif kind == "gateway.health":
            self._fold_health(tx, event, fold)
        elif kind.startswith("district.line_loss"):
            _fold_line_loss(tx, gateway, seq, subject, data)
        seal = subject if kind.startswith("seal.") else _text(data.get("seal"))
        if kind.startswith("seal.") and subject:
            fold.alarms.update(dict.fromkeys(_fold_seal(tx, event, now)))
        if seal and kind not in UNDER_SEAL_SKIPPED:
            tx.execute(
                "INSERT INTO console_seal_events (gateway, seal, seq, type, ts) VALUES"
                " (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (gateway, seal, seq, kind, ts),
            )
        if obj.get("priority") == "alarm":
            cleared = _sealed_after(tx, gateway, seal, seq) if seal else None
            alarm = AlarmEvent(str(obj["id"]), gateway, seq, kind, subject, seal, ts,
                               _summary(data), cleared)  # fmt: skip
            filed = file_event_alarm(tx, alarm, now)
            if filed.changed:
                fold.alarms[filed.alarm_id] = None
            if filed.first_of(alarm):  # one count per incident
                fold.bump(gateway, day, "alarms")
                fold.bump(gateway, day, "tampers", int(kind == "seal.tamper"))
                fold.bump(gateway, day, "thefts", int(kind == "theft.suspected"))

    def _fold_health(self, tx: Tx, event: _Event, fold: _Fold) -> None:
        """Poll counter differences since the previous snapshot (restarted at gateway.started)."""
        del tx  # the counters were read for the whole batch (_read_counters)
        gateway, seq, day, data = event.gateway, event.seq, event.day, event.data
        started_seq = fold.started.get(gateway, 0)
        for meter, (polls, good) in _health_counters(data).items():
            row = fold.counters.get((gateway, meter))
            if row and row[0] >= seq:
                continue  # an older snapshot arriving late: the newer one already counted it
            before = (row[1], row[2]) if row else (0, 0)
            restarted = row is not None and row[0] < started_seq < seq
            if restarted or polls < before[0]:
                before = (0, 0)
            fold.bump(gateway, day, "meter_polls", polls - before[0])
            fold.bump(gateway, day, "meter_ok", good - before[1])
            fold.counters[(gateway, meter)] = (seq, polls, good)
            fold.changed_counters.add((gateway, meter))

    def _write_fold(self, tx: Tx, fold: _Fold) -> None:
        updates = ", ".join(f"{c} = kpi_daily.{c} + excluded.{c}" for c in DAILY_COLUMNS)
        columns = ", ".join(DAILY_COLUMNS)
        marks = ", ".join("?" for _ in DAILY_COLUMNS)
        sql = (
            f"INSERT INTO kpi_daily (gateway, day, {columns}) VALUES (?, ?, {marks})"  # noqa: S608
            f" ON CONFLICT (gateway, day) DO UPDATE SET {updates}"
        )
        for (gateway, day), counts in sorted(fold.daily.items()):
            tx.execute(sql, (gateway, day, *(counts[c] for c in DAILY_COLUMNS)))
        for gateway, meter in sorted(fold.changed_counters):
            seq, polls, good = fold.counters[(gateway, meter)]
            tx.execute(
                "INSERT INTO meter_counters (gateway, meter, seq, polls, ok) VALUES"
                " (?, ?, ?, ?, ?) ON CONFLICT (gateway, meter) DO UPDATE SET seq = excluded.seq,"
                " polls = excluded.polls, ok = excluded.ok",
                (gateway, meter, seq, polls, good),
            )
        for gateway, count in sorted(fold.counted.items()):
            tx.execute(
                "INSERT INTO rollup_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO"
                " UPDATE SET value = CAST(CAST(rollup_meta.value AS BIGINT) +"
                " CAST(excluded.value AS BIGINT) AS TEXT)",
                (f"events:{gateway}", str(count)),
            )

    def _problems_to_alarms(self) -> None:
        rows = self.db.query("SELECT value FROM rollup_meta WHERE name = 'problems'")
        cursor = str(rows[0][0]) if rows else ""
        found = self.db.query(
            "SELECT gateway, seq, kind, event_id, detail, received_at FROM problems"
            " WHERE received_at >= ? ORDER BY received_at LIMIT ?",
            (cursor, PROBLEM_BATCH),
        )
        if not found or (str(found[-1][5]) == cursor and len(found) == self._at_cursor):
            return  # nothing since the last tick (the rows at the cursor are already alarms)
        now = self._clock()
        with self.db.transaction() as tx:
            added = []
            for gateway, seq, kind, event_id, detail, received in found:
                key = f"problem:{gateway}:{kind}:{'' if seq is None else seq}:{event_id or ''}"
                if insert_alarm(tx, (key, "problem", str(gateway), seq, f"chain.{kind}",
                                     str(gateway), "", str(received), str(detail)[:300], None,
                                     now)):  # fmt: skip
                    added.append(key)
            newest = str(found[-1][5])
            self._at_cursor = sum(1 for row in found if str(row[5]) == newest)
            if newest != cursor:
                tx.execute(
                    "INSERT INTO rollup_meta (name, value) VALUES ('problems', ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (newest,),
                )
            stamp_changes(tx, added)


# -- seal views ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealView:
    """One seal as the console shows it: retained state first, else its events."""

    gateway: str
    seal: str
    lock_id: str
    state: str
    wire: str
    tamper: bool
    online: bool
    ticket_id: str = ""

    @property
    def intact(self) -> bool:
        """Sealed, wire loop intact, no tamper flag (the seal integrity KPI)."""
        return self.state == "sealed" and self.wire == "intact" and not self.tamper

    @property
    def condition(self) -> str:
        """sealed, unsealed (under a ticket), tampered, offline or unknown (the grid's colour)."""
        return seal_condition(self.state, self.wire, self.tamper, self.online)


def seal_condition(state: str, wire: str, tamper: bool, online: bool) -> str:
    """Tampered first (tamper flag or broken wire), then offline, then the lock's state."""
    if tamper or state == "tampered" or (state == "sealed" and wire in TAMPER_WIRES):
        return "tampered"
    if not online:
        return "offline"
    return state if state in ("sealed", "unsealed") else "unknown"


def seal_views(db: Db, gateways: Iterable[str] | None = None) -> list[SealView]:
    """Every seal known (of `gateways`: read by primary key prefix), by gateway and seal."""
    wanted = None if gateways is None else sorted(set(gateways))
    if wanted is not None and not wanted:
        return []
    where = "" if wanted is None else f" WHERE gateway IN ({', '.join('?' for _ in wanted)})"
    params = wanted or []
    online = _gateway_online(db, where, params)
    views: dict[tuple[str, str], SealView] = {}
    for gw, seal, lock, state, wire, tamper, up, ticket in db.query(
        "SELECT gateway, seal, lock_id, state, wire, tamper, online, ticket_id"  # noqa: S608
        f" FROM console_seals{where}",
        params,
    ):
        views[(str(gw), str(seal))] = SealView(
            str(gw), str(seal), str(lock), str(state), str(wire), bool(tamper), bool(up),
            str(ticket),
        )  # fmt: skip
    for gw, seal, payload in db.query(
        f"SELECT gateway, seal, payload FROM seal_state{where}",  # noqa: S608
        params,
    ):
        body = json_object(payload)
        known = views.get((str(gw), str(seal)))
        views[(str(gw), str(seal))] = SealView(
            str(gw), str(seal), _text(body.get("lock_id")) or (known.lock_id if known else ""),
            _text(body.get("state")) or "unknown", _text(body.get("wire")) or "unknown",
            body.get("tamper") is True, body.get("online") is True,
            known.ticket_id if known else "",
        )  # fmt: skip
    result = []
    for (gw, _seal), view in sorted(views.items()):
        gateway_up = online.get(gw, True)
        result.append(view if gateway_up else dataclasses.replace(view, online=False))
    return result


def alarm_seal(kind: str, subject: str, data: Mapping[str, Any]) -> str:
    """The seal an alarm concerns: the subject of a seal.* alarm, else `data.seal`."""
    return subject if kind.startswith("seal.") else _text(data.get("seal"))


# -- helpers ---------------------------------------------------------------------------------


def _load(payload: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    ok = isinstance(obj, dict) and isinstance(obj.get("seq"), int) and "gateway" in obj
    return obj if ok and "type" in obj and "ts" in obj else None


def _fold_seal(tx: Tx, event: _Event, now: str) -> list[str]:
    """Fold one seal.* event into `console_seals`; the alarms a sealing cleared."""
    cleared: list[str] = []
    gateway, seq, kind, seal, data = event.gateway, event.seq, event.kind, event.subject, event.data
    tx.execute(
        "INSERT INTO console_seals (gateway, seal) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (gateway, seal),
    )
    lock = _text(data.get("lock_id"))
    if lock:
        tx.execute("UPDATE console_seals SET lock_id = ? WHERE gateway = ? AND seal = ?",
                   (lock, gateway, seal))  # fmt: skip
    if kind in ("seal.sealed", "seal.unsealed"):
        wire = _text(data.get("wire_loop")) or _text(data.get("wire")) or "unknown"
        tx.execute(
            "UPDATE console_seals SET state = ?, wire = ?, tamper = ?, state_seq = ?,"
            " ticket_id = ? WHERE gateway = ? AND seal = ? AND state_seq < ?",
            (kind[5:], wire, 0, seq, _text(data.get("ticket_id")), gateway, seal, seq),
        )
    if kind == "seal.sealed":
        tx.execute("UPDATE console_seals SET sealed_seq = ? WHERE gateway = ? AND seal = ?"
                   " AND sealed_seq < ?", (seq, gateway, seal, seq))  # fmt: skip
        cleared = [str(a) for (a,) in tx.query(
            "SELECT alarm_id FROM console_alarms WHERE gateway = ? AND seal = ? AND seq < ?"
            " AND cleared_seq IS NULL AND source = 'event'", (gateway, seal, seq))]  # fmt: skip
        for alarm_id in cleared:
            tx.execute("UPDATE console_alarms SET cleared_seq = ?, updated_at = ?"
                       " WHERE alarm_id = ?", (seq, now, alarm_id))  # fmt: skip
    elif kind == "seal.tamper":
        tx.execute("UPDATE console_seals SET tamper = 1, state_seq = ? WHERE gateway = ? AND"
                   " seal = ? AND state_seq < ?", (seq, gateway, seal, seq))  # fmt: skip
    elif kind in ("seal.online", "seal.offline"):
        tx.execute(
            "UPDATE console_seals SET online = ?, online_seq = ? WHERE gateway = ? AND seal = ?"
            " AND online_seq < ?",
            (int(kind == "seal.online"), seq, gateway, seal, seq),
        )
    return cleared


def _sealed_after(tx: Tx, gateway: str, seal: str, seq: int) -> int | None:
    rows = tx.query("SELECT sealed_seq FROM console_seals WHERE gateway = ? AND seal = ?",
                    (gateway, seal))  # fmt: skip
    return int(rows[0][0]) if rows and int(rows[0][0]) > seq else None


def _read_counters(tx: Tx, fold: _Fold, gateways: set[str]) -> None:
    """The meter counters and restart marks of the gateways whose health a batch folds."""
    names = sorted(gateways)
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        rows = tx.query(
            f"SELECT gateway, meter, seq, polls, ok FROM meter_counters WHERE gateway IN ({marks})",  # noqa: S608 - placeholders only
            chunk,
        )
        for gateway, meter, seq, polls, good in rows:
            fold.counters[(str(gateway), str(meter))] = (int(seq), int(polls), int(good))
        rows = tx.query(
            f"SELECT gateway, started_seq FROM console_gateways WHERE gateway IN ({marks})",  # noqa: S608 - placeholders only
            chunk,
        )
        fold.started.update({str(gateway): int(seq) for gateway, seq in rows})
        for gateway in chunk:
            fold.started.setdefault(gateway, 0)


def _upsert_district(tx: Tx, gateway: str, district: str, seq: int) -> None:
    tx.execute(
        "INSERT INTO console_gateways (gateway, district, started_seq) VALUES (?, ?, ?)"
        " ON CONFLICT (gateway) DO UPDATE SET district = excluded.district,"
        " started_seq = excluded.started_seq"
        " WHERE console_gateways.started_seq < excluded.started_seq",
        (gateway, district or "unknown", seq),
    )


def _fold_line_loss(tx: Tx, gateway: str, seq: int, subject: str, data: Mapping[str, Any]) -> None:
    try:
        start = datetime.fromisoformat(str(data["interval_start"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return
    rate = data.get("rate")
    tx.execute(
        "INSERT INTO line_loss_daily (district, day, gateway, seq, rate, status, qualified,"
        " complete) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (district, day) DO UPDATE SET"
        " gateway = excluded.gateway, seq = excluded.seq, rate = excluded.rate,"
        " status = excluded.status, qualified = excluded.qualified,"
        " complete = excluded.complete WHERE line_loss_daily.gateway <> excluded.gateway"
        " OR line_loss_daily.seq < excluded.seq",
        (
            _text(data.get("district")) or subject, (start + METER_OFFSET).date().isoformat(),
            gateway, seq, float(rate) if isinstance(rate, int | float) else None,
            _text(data.get("status")) or "unknown", int(data.get("qualified") is True),
            int(data.get("complete") is True),
        ),
    )  # fmt: skip


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


def _gateway_online(db: Db, where: str = "", params: Sequence[str] = ()) -> dict[str, bool]:
    return {str(g): str(s) != "offline" for g, s in db.query(
        f"SELECT gateway, state FROM gateway_status{where}", params)}  # fmt: skip  # noqa: S608


def _summary(data: Mapping[str, Any]) -> str:
    keep = {k: v for k, v in data.items() if k not in ("entry", "evidence", "values")}
    return json.dumps(keep, sort_keys=True, default=str)[:300]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _now() -> str:
    return format_ts(datetime.now(UTC))
