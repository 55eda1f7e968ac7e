"""The alarm inbox's writes (`console_alarms`): one alarm per incident, and the change clock.

**Incidents.** One forced shell is told twice: by the lock's advert (`seal.tamper`,
`source: advert`, timed by the gateway) and by the lock's own log entry, fetched when the
gateway connects (`seal.tamper`, `source: log`, timed by the lock's clock). A district manager
handles one incident, so an alarm-priority event about a seal joins the alarm of the same
gateway, seal and type when that alarm is

- still open: not closed in the console, and not cleared by a later `seal.sealed` of the seal;
- and first raised within `INCIDENT_WINDOW` of the event's time (either side: the log entry's
  time is the lock's, often before the advert was seen).

Otherwise the event opens an alarm of its own, whose id is the event's id. Every event of an
alarm is listed in `console_alarm_events` (the evidence page shows them all) and counted in
`console_alarms.events`. Alarms that concern no seal (chain problems, `gateway.storage_full`,
radio down) are never grouped. An event's alarm, once filed, is never re-decided: a replay of
the rollups finds it in `console_alarm_events`.

**The change clock.** Every transaction that creates or changes alarms ends with
`stamp_changes`: it takes the next numbers from the one-row `console_alarm_clock` and writes
one into each changed alarm's `change_seq`. The live feed reads `change_seq > cursor`, so the
numbers must follow commit order, which a timestamp taken before the commit does not, and
neither does a plain sequence on PostgreSQL (a number drawn by a transaction that commits
later). The clock's row lock does: a transaction that stamped holds it until it commits, so
the next stamp waits, and a reader that sees number n already sees every number below it.
SQLite has one writer at a time. Stamping last keeps the lock's hold to the commit itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from master_station.ledger.sql import Tx

__all__ = ["INCIDENT_WINDOW", "AlarmEvent", "Filed", "file_event_alarm", "insert_alarm",
           "same_incident", "stamp_changes"]  # fmt: skip

INCIDENT_WINDOW = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """An alarm-priority event as the inbox files it."""

    event_id: str
    gateway: str
    seq: int
    kind: str
    subject: str
    seal: str
    ts: str
    detail: str
    cleared_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Filed:
    """Where an event went: its alarm, and whether that alarm changed now."""

    alarm_id: str
    changed: bool

    def first_of(self, event: AlarmEvent) -> bool:
        """True when the event opened its alarm (an incident, counted once in the KPIs)."""
        return self.alarm_id == event.event_id


def same_incident(first_ts: str, ts: str) -> bool:
    """True when `ts` is within INCIDENT_WINDOW of an alarm first raised at `first_ts`."""
    try:
        first, then = _parse(first_ts), _parse(ts)
    except ValueError:
        return False
    return abs(then - first) <= INCIDENT_WINDOW


def file_event_alarm(tx: Tx, event: AlarmEvent, now: str) -> Filed:
    """File one alarm-priority event: into the open alarm of its incident, or a new alarm."""
    held = tx.query("SELECT alarm_id FROM console_alarm_events WHERE gateway = ? AND seq = ?",
                    (event.gateway, event.seq))  # fmt: skip
    if held:
        return Filed(str(held[0][0]), False)  # filed before (a replay)
    target = _open_incident(tx, event)
    if target is not None:
        tx.execute("UPDATE console_alarms SET events = events + 1, updated_at = ?"
                   " WHERE alarm_id = ?", (now, target))  # fmt: skip
        _member(tx, event, target)
        return Filed(target, True)
    inserted = insert_alarm(tx, (event.event_id, "event", event.gateway, event.seq, event.kind,
                                 event.subject, event.seal, event.ts, event.detail,
                                 event.cleared_seq, now))  # fmt: skip
    _member(tx, event, event.event_id)
    return Filed(event.event_id, inserted)


def insert_alarm(tx: Tx, row: tuple[Any, ...]) -> bool:
    """A new alarm (alarm_id, source, gateway, seq, type, subject, seal, ts, detail,
    cleared_seq, updated_at), open; False when it is already there."""
    return (
        tx.execute(
            "INSERT INTO console_alarms (alarm_id, source, gateway, seq, type, subject, seal, ts,"
            " detail, status, cleared_seq, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " 'open', ?, ?) ON CONFLICT (alarm_id) DO NOTHING",
            row,
        )
        == 1
    )


def stamp_changes(tx: Tx, alarm_ids: Iterable[str]) -> None:
    """Give each alarm changed in this transaction the next change number (call it last)."""
    ids = list(dict.fromkeys(alarm_ids))
    if not ids:
        return
    rows = tx.query(
        "INSERT INTO console_alarm_clock (id, change_seq) VALUES (1, ?) ON CONFLICT (id) DO"
        " UPDATE SET change_seq = console_alarm_clock.change_seq + excluded.change_seq"
        " RETURNING change_seq",
        (len(ids),),
    )
    first = int(rows[0][0]) - len(ids) + 1
    for number, alarm_id in enumerate(ids, start=first):
        tx.execute("UPDATE console_alarms SET change_seq = ? WHERE alarm_id = ?",
                   (number, alarm_id))  # fmt: skip


def _open_incident(tx: Tx, event: AlarmEvent) -> str | None:
    """The open alarm of the same gateway, seal and type this event belongs to, if any."""
    if not event.seal:
        return None
    rows = tx.query(
        "SELECT alarm_id, ts FROM console_alarms WHERE gateway = ? AND seal = ? AND type = ?"
        " AND source = 'event' AND status <> 'closed' AND cleared_seq IS NULL"
        " ORDER BY seq DESC LIMIT 1",
        (event.gateway, event.seal, event.kind),
    )
    if not rows or not same_incident(str(rows[0][1]), event.ts):
        return None
    return str(rows[0][0])


def _member(tx: Tx, event: AlarmEvent, alarm_id: str) -> None:
    tx.execute(
        "INSERT INTO console_alarm_events (gateway, seq, alarm_id, event_id) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (event.gateway, event.seq, alarm_id, event.event_id),
    )


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))
