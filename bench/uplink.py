"""Uplink bench: what a district costs on the wire, and how fast a backlog drains, per encoding.

The district: 200 three-phase meters (the DTSU666 profile's 24 values, tidied as the meter
service tidies them) read every 15 minutes, gateway.health every minute, a signed checkpoint
every 10 minutes and one seal operation (4 audit events) an hour. Events are committed into a
real EventBuffer with timestamps of the past day, as a backlog after an outage would be.

- wire: the Uplink, with the default `[uplink]` settings (drain rate included), drains the
  buffer through a TCP relay to a private Mosquitto; the relay keeps every byte the gateway
  sent, and the bench sums the MQTT PUBLISH packets that carry events (fixed header, topic or
  topic alias, properties, packet id and payload). Readings only for `bytes_per_reading_wire`;
  the whole district hour, times 24, for `bytes_per_day_district`.
- drain: a backlog of readings drained by the Uplink (drain rate unbounded) straight to the
  broker, published, acknowledged and marked, timed from the start of the Uplink to the last
  mark; beside plain paho publishing the same JSON payloads at QoS 1, one message per reading,
  timed from the first publish to the last PUBACK. `batch` runs with the default
  `uplink.batch_workers` (1 encoder worker process), `batch_in_process` with none, side by
  side. Rates depend on what else the machine runs; `drain_cpu_us_per_reading` (the probe's
  process, all threads, during the timed part, plus its encoder workers; or this process for
  paho) and `broker_cpu_us_per_reading` (Mosquitto) hardly do.

The gateway side runs in a child process, `sealgw probe drain --drafts FILE` (gateway/probe/
drain.py): the bench writes the district's drafts, the probe commits and drains them.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import struct
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.probes import probe
from bench.uplink_common import CpuMeter, raw_paho_rate, sealed_payloads, write_drafts
from firmware_sim.mosquitto import MosquittoBroker
from gateway.protocol.canonical import JSONValue
from gateway.protocol.events import EventDraft, EventType, Priority

GATEWAY = "gw-bench"
METERS = 200
READS_PER_HOUR = 4
MAX_INFLIGHT = 100
ENCODINGS = ("json", "batch")
# the drains: name -> (encoding, batch encoder workers; None: the [uplink] default)
DRAINS: dict[str, tuple[str, int | None]] = {
    "json": ("json", None),
    "batch": ("batch", None),
    "batch_in_process": ("batch", 0),
}
PROFILE = Path(__file__).resolve().parent.parent / "config" / "profiles" / "dtsu666.toml"


def run(*, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Run the wire and drain measurements; the result's last keys are the headline figures."""
    drain_n = 2_000 if quick else 20_000
    rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="sealgw-bench-") as tmp:
        work = Path(tmp)
        with MosquittoBroker(work / "broker", receive_maximum=MAX_INFLIGHT) as broker:
            return asyncio.run(_measure(broker, work, drain_n, rounds, verbose))


async def _measure(
    broker: MosquittoBroker, work: Path, drain_n: int, rounds: int, verbose: bool
) -> dict[str, Any]:
    district = District()
    wire: dict[str, dict[str, Any]] = {}
    for encoding in ENCODINGS:
        readings = await _wire(broker, work / f"wire-r-{encoding}", encoding, district.readings(1))
        hour = await _wire(broker, work / f"wire-d-{encoding}", encoding, district.hour(encoding))
        wire[encoding] = {"readings": readings, "district_hour": hour}
        _say(verbose, f"{encoding}: {readings['bytes'] / readings['readings']:.0f} B/reading")
    drains: dict[str, list[_Drained]] = {"raw_paho": [], **{e: [] for e in DRAINS}}
    for index in range(rounds):
        drafts = district.readings(math.ceil(drain_n / (METERS * READS_PER_HOUR)))[:drain_n]
        for name, (encoding, workers) in DRAINS.items():
            drains[name].append(
                await _drain_rate(broker, work / f"drain-{name}-{index}", encoding, drafts, workers)
            )
            if encoding == "json":
                payloads = sealed_payloads(drafts, GATEWAY)
                drains["raw_paho"].append(await _raw_paho(broker, payloads))
        _say(
            verbose,
            f"round {index + 1}: "
            + ", ".join(f"{k} {v[-1].rate:.0f}/s" for k, v in drains.items()),
        )
    return _result(wire, drains, drain_n, rounds)


def _result(
    wire: dict[str, dict[str, Any]], drains: dict[str, list[_Drained]], drain_n: int, rounds: int
) -> dict[str, Any]:
    per_reading = {
        e: round(w["readings"]["bytes"] / w["readings"]["readings"], 1) for e, w in wire.items()
    }
    per_day = {e: w["district_hour"]["bytes"] * 24 for e, w in wire.items()}
    drain = {k: round(statistics.median(d.rate for d in v)) for k, v in drains.items()}
    cpu = {k: round(statistics.median(d.cpu_us for d in v), 1) for k, v in drains.items()}
    broker = {k: round(statistics.median(d.broker_us for d in v), 1) for k, v in drains.items()}
    return {
        "bench": "uplink",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "district": {"meters": METERS, "values_per_reading": 24, "reads_per_hour": READS_PER_HOUR,
                     "health_per_hour": 60, "checkpoints_per_hour": 6, "seal_events_per_hour": 4},
        "rounds": rounds,
        "backlog_readings": drain_n,
        "max_inflight": MAX_INFLIGHT,
        "wire_messages": {e: {k: w[k]["messages"] for k in w} for e, w in wire.items()},
        "wire_events_per_hour": {e: w["district_hour"]["events"] for e, w in wire.items()},
        "drain_runs": {k: [round(d.rate) for d in v] for k, v in drains.items()},
        "drain_cpu_us_per_reading": cpu,
        "broker_cpu_us_per_reading": broker,
        "drain_ratio_batch_in_process_vs_json": round(drain["batch_in_process"] / drain["json"], 2),
        "bytes_per_reading_wire": per_reading,
        "bytes_per_day_district": per_day,
        "wire_ratio": round(per_reading["json"] / per_reading["batch"], 1),
        "drain_readings_per_s": drain,
        "drain_ratio_batch_vs_json": round(drain["batch"] / drain["json"], 2),
        "drain_ratio_batch_vs_raw_paho": round(drain["batch"] / drain["raw_paho"], 2),
    }  # fmt: skip


# -- the district -----------------------------------------------------------------------------


class District:
    """Events of a district of METERS meters, deterministic (seeded)."""

    def __init__(self, start: datetime | None = None) -> None:
        # Two days back: a drain backlog spans 25 hours, and every event of it must lie in the
        # past, as after an outage. A reading stamped in the future counts as fresh, so the
        # last run of the backlog would wait out the linger and the drain would time the wait.
        self.start = start or datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
        self.rng = random.Random(7)
        spec = tomllib.loads(PROFILE.read_text(encoding="utf-8"))
        self.registers = [(r["name"], r.get("kind"), r.get("unit"), r.get("scale", 1.0))
                          for r in spec["registers"]]  # fmt: skip
        self.loads = [self.rng.uniform(0.5, 15.0) for _ in range(METERS)]
        self.energy = [self.rng.uniform(1_000, 40_000) for _ in range(METERS)]

    def readings(self, hours: int) -> list[EventDraft]:
        """Only meter.reading events: `hours` of polls of every meter."""
        return [
            draft for draft in self._timeline(hours, compact=False) if draft.type == "meter.reading"
        ]

    def hour(self, encoding: str) -> list[EventDraft]:
        """One hour of the district: readings, health, checkpoints and a seal operation."""
        return list(self._timeline(1, compact=encoding == "batch"))

    def _timeline(self, hours: int, *, compact: bool) -> Iterator[EventDraft]:
        health = _Health(compact)
        for second in range(hours * 3600):
            at = self.start + timedelta(seconds=second)
            if second % (3600 // READS_PER_HOUR) == 0:
                for meter in range(METERS):
                    health.polled(meter)
                    yield self._reading(meter, at + timedelta(milliseconds=90 * meter))
            if second % 60 == 59:
                yield _draft(
                    EventType.GATEWAY_HEALTH, GATEWAY, health.data(second), Priority.STATE, at
                )
            if second % 600 == 599:
                yield _draft(
                    EventType.GATEWAY_CHECKPOINT,
                    GATEWAY,
                    self._checkpoint(second),
                    Priority.AUDIT,
                    at,
                )
            if second % 3600 == 1800:
                yield from self._seal_operation(at)

    def _reading(self, meter: int, at: datetime) -> EventDraft:
        values: dict[str, JSONValue] = {}
        load = self.loads[meter] * self.rng.uniform(0.7, 1.3)
        self.energy[meter] += load * 0.23 / READS_PER_HOUR
        for name, kind, unit, scale in self.registers:
            number = _tidy(self._raw(kind, name, load, meter), scale)
            values[name] = {"value": number, "unit": unit} if unit else {"value": number}
        data: dict[str, JSONValue] = {"meter": f"M-{meter:04d}", "protocol": "modbus",
                                      "seal": f"SL-{meter:04d}", "values": values}  # fmt: skip
        return _draft(EventType.METER_READING, f"M-{meter:04d}", data, Priority.TELEMETRY, at)

    def _raw(self, kind: str | None, name: str, load: float, meter: int) -> float:
        rng = self.rng
        if kind == "voltage":
            return (400.0 if name.count("_l") == 2 else 230.0) + rng.uniform(-6, 6)
        if kind == "current":
            return load / 3 * rng.uniform(0.8, 1.2)
        if kind == "power":
            share = 1.0 if name.endswith("total") else 1 / 3
            return load * 230 * share * (0.3 if name.startswith("reactive") else 0.95)
        if kind == "power_factor":
            return rng.uniform(0.9, 0.99)
        if kind == "frequency":
            return 50 + rng.uniform(-0.05, 0.05)
        return self.energy[meter] if name == "energy_import" else self.energy[meter] * 0.01

    def _checkpoint(self, second: int) -> dict[str, JSONValue]:
        return {"covers_seq": 1000 + second, "covers_hash": self.rng.randbytes(32).hex(),
                "sig": self.rng.randbytes(64).hex(), "key_id": "3f2a9c0d11e4b7a8"}  # fmt: skip

    def _seal_operation(self, at: datetime) -> Iterator[EventDraft]:
        base: dict[str, JSONValue] = {
            "op": "unseal",
            "operator": "OP-0042",
            "ticket_id": "TK-1",
            "work_order": "WO-7781",
        }
        for index, kind in enumerate((EventType.SEAL_OP_REQUESTED, EventType.SEAL_OP_ALLOWED)):
            yield _draft(kind, "SL-0007", base, Priority.AUDIT, at + timedelta(seconds=index))
        outcome = {**base, "result": "ok", "state": "unsealed", "log_index": 118,
                   "lock_id": 7, "source": "answer"}  # fmt: skip
        yield _draft(
            EventType.SEAL_UNSEALED, "SL-0007", outcome, Priority.AUDIT, at + timedelta(seconds=5)
        )
        sealed = {
            **outcome,
            "op": "seal",
            "state": "sealed",
            "log_index": 119,
            "wire_loop": "intact",
        }
        yield _draft(
            EventType.SEAL_SEALED, "SL-0007", sealed, Priority.AUDIT, at + timedelta(minutes=20)
        )


class _Health:
    """gateway.health data like HealthMonitor's, full or compact (changed counters only)."""

    def __init__(self, compact: bool) -> None:
        self.compact = compact
        self.counters = {f"M-{m:04d}": [0, 0] for m in range(METERS)}
        self.changed: set[str] = set()

    def polled(self, meter: int) -> None:
        counter = self.counters[f"M-{meter:04d}"]
        counter[0] += 1
        counter[1] += 1
        self.changed.add(f"M-{meter:04d}")

    def data(self, second: int) -> dict[str, JSONValue]:
        chosen = self.changed if self.compact else set(self.counters)
        per_meter: dict[str, JSONValue] = {
            m: {"polls": self.counters[m][0], "ok": self.counters[m][1]} for m in sorted(chosen)
        }
        self.changed = set()
        meters: dict[str, JSONValue] = {
            "configured": METERS, "ok": METERS, "failing": 0, "never_read": 0,
            "read_success_rate": 1.0, "meters": per_meter,
        }  # fmt: skip
        if self.compact:
            meters["meters_changed_only"] = True
        return {
            "uptime_s": float(second), "broker_connected": True, "storage_full": False,
            "buffer_depth": {"alarm": 0, "audit": 0, "state": 0, "telemetry": 0},
            "drain_rate_per_s": 3.4,
            "locks": {"locks": 20, "seen": 20, "connected": 0, "offline": 0},
            "meters": meters, "disk_free_mb": 11873.4, "cpu_temp_c": 48.3, "cpu_pct": 2.1,
            "rss_mb": 61.2, "tasks": 41, "operations_refused": 0,
        }  # fmt: skip


def _tidy(raw: float, scale: float) -> float:
    """As the meter service: the register holds an f32 of raw/scale; 7 significant digits."""
    register = struct.unpack(">f", struct.pack(">f", round(raw / scale)))[0]
    return float(f"{register * scale:.7g}")


def _draft(
    kind: EventType, subject: str, data: dict[str, JSONValue], priority: Priority, at: datetime
) -> EventDraft:
    return EventDraft(str(kind), subject, data, priority, at)


# -- wire -------------------------------------------------------------------------------------


class _Relay:
    """A TCP relay to the broker that keeps every byte the client sent."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.upstream = bytearray()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> _Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"mqtt://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.broker.host, self.broker.port)
        for task in (
            self._pipe(reader, up_writer, self.upstream),
            self._pipe(up_reader, writer, None),
        ):
            self._tasks.add(asyncio.create_task(task))

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep: bytearray | None
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if keep is not None:
                    keep += chunk
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def event_publishes(stream: bytes) -> tuple[int, int]:
    """(bytes, count) of the PUBLISH packets carrying events: events/..., batch, or an alias."""
    total = count = index = 0
    while index < len(stream):
        first, cursor, length, shift = stream[index], index + 1, 0, 0
        while True:
            byte = stream[cursor]
            cursor += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        end = cursor + length
        if first >> 4 == 3:  # PUBLISH
            topic_len = int.from_bytes(stream[cursor : cursor + 2], "big")
            topic = bytes(stream[cursor + 2 : cursor + 2 + topic_len])
            if topic_len == 0 or b"/events/" in topic or topic.endswith(b"/batch"):
                total += end - index
                count += 1
        index = end
    return total, count


async def _wire(
    broker: MosquittoBroker, work: Path, encoding: str, drafts: list[EventDraft]
) -> dict[str, int]:
    async with _Relay(broker) as relay:
        await _drain(relay.url, work, encoding, drafts, paced=True)
        await asyncio.sleep(0.2)  # let the relay pass the last bytes on
        sent, messages = event_publishes(bytes(relay.upstream))
    readings = sum(1 for d in drafts if d.type == "meter.reading")
    return {"bytes": sent, "messages": messages, "events": len(drafts), "readings": readings}


# -- drain ------------------------------------------------------------------------------------


async def _drain(
    url: str,
    work: Path,
    encoding: str,
    drafts: list[EventDraft],
    *,
    paced: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """The gateway's uplink drains `drafts`, committed as a backlog: the probe's JSON.

    `paced`: at the default `[uplink]` drain rate; else unbounded. `workers`: batch encoder
    worker processes (None: the `[uplink]` default).
    """
    pacing = ("--paced",) if paced else ()
    if workers is not None:
        pacing += ("--batch-workers", str(workers))
    return await probe(
        "drain", "--broker", url, "--drafts", write_drafts(work.with_suffix(".jsonl"), drafts),
        "--encoding", encoding, "--max-inflight", MAX_INFLIGHT, "--gateway-id", GATEWAY,
        "--client-id", f"{GATEWAY}-{work.name}", "--work-dir", work, *pacing,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Drained:
    """One drain: readings per second, and CPU microseconds per reading (the drainer's, the
    broker's)."""

    rate: float
    cpu_us: float
    broker_us: float


async def _drain_rate(
    broker: MosquittoBroker,
    work: Path,
    encoding: str,
    drafts: list[EventDraft],
    workers: int | None = None,
) -> _Drained:
    with CpuMeter(broker) as meter:
        drained = await _drain(broker.url, work, encoding, drafts, workers=workers)
    count = int(drained["events"])
    return _Drained(
        float(drained["events_per_s"]),
        float(drained["cpu_s"]) / count * 1e6,
        meter.spent.broker_s / count * 1e6,
    )


async def _raw_paho(broker: MosquittoBroker, payloads: list[bytes]) -> _Drained:
    """Plain paho: every payload at QoS 1 with the same in-flight window, until every PUBACK."""
    topic = f"sealgw/v1/{GATEWAY}-raw/events/meter.reading"
    with CpuMeter(broker) as meter:
        rate = await asyncio.to_thread(
            raw_paho_rate,
            broker,
            payloads,
            client_id="raw-uplink-bench",
            topic=topic,
            max_inflight=MAX_INFLIGHT,
        )
    count = len(payloads)
    return _Drained(rate, meter.spent.process_s / count * 1e6, meter.spent.broker_s / count * 1e6)


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr)
