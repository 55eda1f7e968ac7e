"""A realistic ledger, made fast: districts of gateways with meters and seals, chained events.

Each gateway, each day (deterministic, seeded):
- `gateway.started` on its first day (with its district), `meter.reading` of every meter every
  15 minutes (a DL/T 645 meter's 8 values), `gateway.health` every 5 minutes with per-meter
  poll counters, a `gateway.checkpoint` every hour covering the event before it;
- three work orders (op_requested, op_allowed, seal.unsealed, seal.sealed, with flow, ticket
  and lock log index), a lock going offline and back, a meter event, one
  `district.line_loss` a day, and now and then an alarm (`seal.tamper`, `theft.suspected`).

Payloads are built as the gateway builds them (gateway.protocol.events.seal_event: canonical
JSON, hash, prev_hash), except that `data` is written with the C json encoder: every number
the generator makes is an int or a float with a fraction and no exponent, where Python's text
is JCS's. `check_sample` compares a sample with the reference encoder, and a ledger walk of
the generated chains finds them sound.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gateway.protocol.canonical import canonical_json, encode_basestring
from gateway.protocol.events import EVENT_VERSION, GENESIS_HASH, derived_event_id, format_ts

__all__ = ["GeneratedRow", "LedgerPlan", "check_sample", "generate"]

START = datetime(2026, 11, 16, tzinfo=UTC)
FLOWS = ("new_install", "meter_replace", "fault_repair", "rotation")
VALUES = (("energy_import", "kWh"), ("energy_export", "kWh"), ("voltage_a", "V"),
          ("current_a", "A"), ("power_total", "kW"), ("power_factor", None),
          ("frequency", "Hz"), ("demand_max", "kW"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class LedgerPlan:
    """How big the generated ledger is; `events_per_gateway_day` is about 96 * meters + 330.

    `start`: the first day (UTC midnight); `ending` moves it so the last day is a given one."""

    gateways: int = 100
    districts: int = 10
    meters: int = 20
    seals: int = 20
    days: int = 5
    start: datetime = START

    @classmethod
    def for_events(cls, events: int, *, gateways: int = 100, meters: int = 20) -> LedgerPlan:
        """A plan of about `events` events (whole days, the last one cut)."""
        per_day = gateways * (96 * meters + 330)
        return cls(gateways=gateways, districts=max(1, gateways // 10), meters=meters,
                   seals=meters, days=max(1, -(-events // per_day)))  # fmt: skip

    def ending(self, last: date) -> LedgerPlan:
        """The same plan, its last day `last` (pages that show today and the last N days)."""
        first = datetime(last.year, last.month, last.day, tzinfo=UTC)
        return dataclasses.replace(self, start=first - timedelta(days=self.days - 1))


@dataclass(frozen=True, slots=True)
class GeneratedRow:
    """One event as the ledger's `events` table holds it, plus what the tables beside need."""

    id: str
    gateway: str
    seq: int
    payload: bytes
    type: str
    ts: str
    priority: str
    subject: str
    hash: str
    prev_hash: str

    def columns(self, received_at: str) -> tuple[Any, ...]:
        """The `events` columns in INSERT_EVENT order."""
        return (self.id, self.gateway, self.seq, self.payload, self.type, self.ts,
                self.priority, self.subject, self.hash, self.prev_hash, received_at)  # fmt: skip


def generate(plan: LedgerPlan, *, limit: int | None = None) -> Iterator[GeneratedRow]:
    """Every gateway's chain, gateway after gateway, at most `limit` events in all."""
    produced = 0
    per_gateway = None if limit is None else -(-limit // plan.gateways)
    for index in range(plan.gateways):
        for row in _Gateway(plan, index).events(per_gateway):
            if limit is not None and produced >= limit:
                return
            produced += 1
            yield row


def check_sample(rows: list[GeneratedRow]) -> None:
    """Raise AssertionError unless each row's data is the reference encoder's text."""
    for row in rows:
        obj = json.loads(row.payload)
        body = {k: v for k, v in obj.items() if k != "hash"}
        digest = hashlib.sha256(canonical_json(body).encode()).hexdigest()
        if digest != row.hash or obj["hash"] != row.hash:
            raise AssertionError(f"{row.gateway} seq {row.seq}: not canonical")


class _Gateway:
    """One gateway's days of events."""

    def __init__(self, plan: LedgerPlan, index: int) -> None:
        self.plan = plan
        self.name = f"gw-{index:04d}"
        self.district = f"d-{index % plan.districts:03d}"
        self.rng = random.Random(index)
        self.seq = 0
        self.prev = GENESIS_HASH
        self.polls = [0] * plan.meters
        self.good = [0] * plan.meters
        self.energy = [self.rng.uniform(1_000, 40_000) for _ in range(plan.meters)]
        self.log_index = [self.rng.randrange(1, 500) for _ in range(plan.seals)]
        self.tickets = 0

    def events(self, limit: int | None) -> Iterator[GeneratedRow]:
        for day in range(self.plan.days):
            for row in self._day(self.plan.start + timedelta(days=day), first=day == 0):
                if limit is not None and self.seq > limit:
                    return
                yield row

    def _day(self, day: datetime, *, first: bool) -> Iterator[GeneratedRow]:
        rng = self.rng
        operations = {rng.randrange(288) for _ in range(3)}
        offline = rng.randrange(288)
        oddities = {rng.randrange(288): rng.choice(("tamper", "theft", "meter_event"))}
        if first:
            yield self._event(day, "gateway.started", self.name, "audit",
                              {"version": "1.0.0", "district": self.district})  # fmt: skip
        for slot in range(288):
            at = day + timedelta(minutes=5 * slot)
            if slot % 3 == 0:
                for meter in range(self.plan.meters):
                    yield self._reading(at + timedelta(milliseconds=150 * meter), meter)
            if slot in operations:
                yield from self._operation(at + timedelta(seconds=20))
            if slot == offline:
                seal = f"SL-{rng.randrange(self.plan.seals):04d}"
                yield self._event(at + timedelta(seconds=40), "seal.offline", seal, "state", {})
                yield self._event(at + timedelta(minutes=3), "seal.online", seal, "state", {})
            if slot in oddities:
                yield self._oddity(at + timedelta(seconds=50), oddities[slot])
            yield self._health(at + timedelta(minutes=4, seconds=59), slot)
            if slot % 12 == 11:
                yield self._checkpoint(at + timedelta(minutes=4, seconds=59, milliseconds=500))
        yield self._line_loss(day)

    # -- events ----------------------------------------------------------------------------

    def _reading(self, at: datetime, meter: int) -> GeneratedRow:
        rng = self.rng
        load = rng.uniform(0.2, 6.0)
        self.energy[meter] += load / 4
        self.polls[meter] += 1
        self.good[meter] += 1 if rng.random() > 0.01 else 0
        figures = (self.energy[meter], self.energy[meter] * 0.01, rng.uniform(221, 239),
                   load * 1000 / 230, load, rng.uniform(0.9, 0.99), rng.uniform(49.95, 50.05),
                   load * 1.2)  # fmt: skip
        values = {name: ({"unit": unit, "value": _num(v)} if unit else {"value": _num(v)})
                  for (name, unit), v in zip(VALUES, figures, strict=True)}  # fmt: skip
        data = {"meter": f"M-{meter:04d}", "protocol": "dlt645", "seal": f"SL-{meter:04d}",
                "values": values}  # fmt: skip
        return self._event(at, "meter.reading", f"M-{meter:04d}", "telemetry", data)

    def _health(self, at: datetime, slot: int) -> GeneratedRow:
        count = self.plan.meters
        ok = sum(1 for p, g in zip(self.polls, self.good, strict=True) if p == g)
        meters = {f"M-{m:04d}": {"ok": self.good[m], "polls": self.polls[m]} for m in range(count)}
        data = {
            "broker_connected": True, "cpu_pct": _num(self.rng.uniform(1, 9)),
            "buffer_depth": {"alarm": 0, "audit": 0, "state": 0, "telemetry": 0},
            "locks": {"connected": 0, "locks": self.plan.seals, "offline": 0,
                      "seen": self.plan.seals},
            "meters": {"configured": count, "failing": count - ok, "meters": meters,
                       "never_read": 0, "ok": ok},
            "storage_full": False, "uptime_s": 300 * (slot + 1),
        }  # fmt: skip
        return self._event(at, "gateway.health", self.name, "state", data)

    def _checkpoint(self, at: datetime) -> GeneratedRow:
        sig = base64.urlsafe_b64encode(self.rng.randbytes(64)).rstrip(b"=").decode()
        data = {"covers_hash": self.prev, "covers_seq": self.seq, "key_id": "sha256:bench",
                "sig": sig}  # fmt: skip
        return self._event(at, "gateway.checkpoint", self.name, "audit", data)

    def _operation(self, at: datetime) -> Iterator[GeneratedRow]:
        seal = self.rng.randrange(self.plan.seals)
        self.tickets += 1
        base = {
            "flow": self.rng.choice(FLOWS),
            "op": "unseal",
            "operator": "op-0042",
            "ticket_id": f"{self.name}-t{self.tickets}",
            "work_order": f"WO-{self.tickets}",
        }
        name = f"SL-{seal:04d}"
        yield self._event(at, "seal.op_requested", name, "audit", base)
        yield self._event(at + timedelta(seconds=1), "seal.op_allowed", name, "audit", base)
        for offset, kind, state in ((5, "seal.unsealed", "unsealed"), (1200, "seal.sealed",
                                                                     "sealed")):  # fmt: skip
            self.log_index[seal] += 1
            data = {**base, "lock_id": f"5ea1{seal:012x}", "log_index": self.log_index[seal],
                    "op": "seal" if state == "sealed" else "unseal", "result": "ok",
                    "source": "answer", "state": state, "wire": "intact"}  # fmt: skip
            yield self._event(at + timedelta(seconds=offset), kind, name, "audit", data)

    def _oddity(self, at: datetime, kind: str) -> GeneratedRow:
        seal = self.rng.randrange(self.plan.seals)
        if kind == "tamper":
            data = {"cause": "shell_open", "counter": self.rng.randrange(1, 999)}
            return self._event(at, "seal.tamper", f"SL-{seal:04d}", "alarm", data)
        if kind == "theft":
            data = {"evidence": {"event": "cover_opened"}, "meter": f"M-{seal:04d}",
                    "rule": "cover_opened_while_sealed", "seal": f"SL-{seal:04d}"}  # fmt: skip
            return self._event(at, "theft.suspected", f"M-{seal:04d}", "alarm", data)
        data = {"event": "power_down", "meter": f"M-{seal:04d}"}
        return self._event(at, "meter.event", f"M-{seal:04d}", "audit", data)

    def _line_loss(self, day: datetime) -> GeneratedRow:
        supplied = _num(self.rng.uniform(900, 1500))
        rate = _num(self.rng.uniform(0.02, 0.09))
        data = {
            "baseline_rate": 0.05,
            "complete": True,
            "district": self.district,
            "interval_end": format_ts(day + timedelta(days=1)),
            "interval_start": format_ts(day),
            "loss_kwh": _num(supplied * rate),
            "missing": [],
            "qualified": rate < 0.08,
            "rate": rate,
            "sold_kwh": _num(supplied * (1 - rate)),
            "status": "ok" if rate < 0.08 else "out_of_band",
            "supplied_kwh": supplied,
        }
        at = day + timedelta(days=1) - timedelta(milliseconds=1)
        return self._event(at, "district.line_loss", self.district, "state", data)

    def _event(
        self, at: datetime, type_: str, subject: str, priority: str, data: dict[str, Any]
    ) -> GeneratedRow:
        """Chain one event as seal_event does; `data` goes through the C encoder."""
        self.seq += 1
        ts = format_ts(at)
        event_id = derived_event_id(at, f"{self.name}:{self.seq}")
        text = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        head = f'{{"data":{text},"gateway":{encode_basestring(self.name)}'
        tail = (f',"id":"{event_id}","prev_hash":"{self.prev}","priority":"{priority}"'
                f',"seq":{self.seq},"subject":{encode_basestring(subject)},"ts":"{ts}"'
                f',"type":"{type_}","v":{EVENT_VERSION}}}')  # fmt: skip
        digest = hashlib.sha256((head + tail).encode()).hexdigest()
        payload = f'{head},"hash":"{digest}"{tail}'.encode()
        row = GeneratedRow(event_id, self.name, self.seq, payload, type_, ts, priority,
                           subject, digest, self.prev)  # fmt: skip
        self.prev = digest
        return row


def _num(value: float) -> int | float:
    """Three decimals; an int when whole (JCS writes 5.0 as 5, Python as 5.0)."""
    rounded = round(value, 3)
    return int(rounded) if rounded == int(rounded) else rounded
