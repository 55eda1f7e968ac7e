"""Faults bench: power cuts and broker flaps under load, checked against the simulator's truth.

One private Mosquitto, one `sealgw sim` (locks with random activity, meters) and `sealgw run`
processes with 200 synthetic events/s on top:
- power-cut series: the gateway is SIGKILLed at a random moment, `kills` times, while meter
  covers are opened and closed in the simulator (some of it while the gateway is down);
- broker-flap series: the broker is stopped and started again `flaps` times under the load;
- then the master side heals (signed cmd/resend for missing seqs) and the capture is compared
  with the truth file: lock log entries and DL/T 645 cover openings lost or duplicated under
  a new id, seq gaps, chain breaks;
- stop time: SIGTERM with the broker's port black-holed (SYNs unanswered), worst of `trials`:
  the first during start-up (as soon as the connect hangs), the others once everything runs.
  A gateway still alive STOP_CAP_S after SIGTERM is killed and counted as STOP_CAP_S.

The headline figures, last in the object, should all be 0, and the worst stop under 5 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.locks.world import MASTER_DIR
from firmware_sim.mosquitto import MosquittoBroker
from firmware_sim.network import black_hole, syn_sent_to
from firmware_sim.procs import Child, SimControl
from gateway.protocol.chain import verify_chain
from master_station.authority import MasterAuthority
from master_station.subscriber import EventSubscriber

GATEWAY = "gw-bench-faults"
RATE_PER_S = 200
COVER_METERS = ("M-645-1", "M-645-2", "M-645-3", "M-645-4", "M-645-5")
HEAL_TIMEOUT_S = 60.0
STOP_CAP_S = 15.0


@dataclass(slots=True)
class Sizes:
    """How much of each series to run."""

    kills: int
    flaps: int
    trials: int
    locks: int
    up_s: tuple[float, float]


def run(*, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Run both series and the stop measurement; return the result (headline figures last)."""
    sizes = Sizes(3, 2, 1, 3, (1.0, 2.5)) if quick else Sizes(20, 5, 3, 4, (1.0, 3.5))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sealgw-faults-") as tmp:
        work = Path(tmp)
        with MosquittoBroker(work / "broker") as broker, _Bench(work, broker, sizes, verbose) as b:
            result = b.measure()
    result["wall_s"] = round(time.monotonic() - started, 1)
    return _ordered(result)


class _Sim:
    """`sealgw sim` with its control channel: faults in, `ok` answers and the quiet line out."""

    def __init__(self, work: Path, broker: MosquittoBroker, sizes: Sizes, activity_s: float):
        self.config = work / "gw.toml"
        self.truth = work / "truth.jsonl"
        self.state = work / "sim"
        args = [
            "sim", "--broker", broker.url, "--write-config", str(self.config),
            "--truth", str(self.truth), "--state-dir", str(self.state),
            "--locks", str(sizes.locks), "--activity-seconds", str(activity_s),
            "--gateway-id", GATEWAY, "--meter-poll-s", "1", "--seed", "13",
        ]  # fmt: skip
        self.child = Child("sim", args, work / "sim.log", control=True)
        self.control = SimControl(self.child)
        self.control.wait_line("sim ready", 60)

    def wait_quiet(self, timeout: float) -> None:
        self.control.quiet.wait(timeout)

    def command(self, line: str) -> None:
        self.control.command(line, timeout=10)

    def stop(self) -> None:
        self.child.stop(timeout=20)
        for stream in (self.child.process.stdin, self.child.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@dataclass(slots=True)
class _Tally:
    """What the series did, for the report."""

    kills: int = 0
    down_covers: int = 0
    covers: int = 0
    flaps: int = 0
    stop_s: list[float] = field(default_factory=list)
    blackhole_stop_s: list[float] = field(default_factory=list)
    blackhole_exit_codes: list[int | None] = field(default_factory=list)


class _Bench:
    def __init__(self, work: Path, broker: MosquittoBroker, sizes: Sizes, verbose: bool):
        self.work = work
        self.broker = broker
        self.sizes = sizes
        self.verbose = verbose
        self.rng = random.Random(42)  # a simulation, not cryptography
        self.tally = _Tally()
        activity_s = sizes.kills * (sum(sizes.up_s) / 2 + 1.5) + sizes.flaps * 3
        self.sim = _Sim(work, broker, sizes, activity_s)
        self.config = self.sim.config
        _tune_config(self.config)
        self.subscriber = EventSubscriber(broker.host, broker.port).start()
        self.gateway: Child | None = None

    def __enter__(self) -> _Bench:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.gateway is not None and self.gateway.alive():
            self.gateway.kill()
        with contextlib.suppress(Exception):
            self.subscriber.stop()
        self.sim.stop()

    def measure(self) -> dict[str, Any]:
        self._start()
        self._wait_meters_polled()
        self._power_cuts()
        self._broker_flaps()
        self.sim.wait_quiet(timeout=120)
        healed = self._heal()
        report = self._compare(healed)
        self.tally.stop_s.append(self._stop(self.gateway))
        self.gateway = None
        self._blackholed_stops()
        return report

    # -- series --------------------------------------------------------------------------

    def _power_cuts(self) -> None:
        for index in range(self.sizes.kills):
            deadline = time.monotonic() + self.rng.uniform(*self.sizes.up_s)
            while time.monotonic() < deadline:
                self._maybe_cover()
                time.sleep(0.2)
            assert self.gateway is not None
            self.gateway.process.send_signal(signal.SIGKILL)
            self.gateway.process.wait(10)
            self.tally.kills += 1
            if self.rng.random() < 0.5:  # a cover opened and closed while the gateway is down
                meter = self.rng.choice(COVER_METERS)
                self._cover(meter)
                self.tally.down_covers += 1
            self._start()
            self._say(f"power cut {index + 1}/{self.sizes.kills}")

    def _broker_flaps(self) -> None:
        for index in range(self.sizes.flaps):
            time.sleep(self.rng.uniform(0.5, 1.5))
            self.broker.stop()
            time.sleep(self.rng.uniform(0.3, 1.5))
            self._maybe_cover()
            self.broker.start()
            self.tally.flaps += 1
            self._say(f"broker flap {index + 1}/{self.sizes.flaps}")
        time.sleep(1.0)

    def _blackholed_stops(self) -> None:
        config = self.work / "blackhole.toml"
        state = self.work / "blackhole-state"
        with black_hole() as port:
            text = self.config.read_text()
            text = text.replace(self.broker.url, f"mqtt://127.0.0.1:{port}")
            config.write_text(text.replace(str(self.sim.state / "gateway"), str(state)))
            for trial in range(self.sizes.trials):
                # the first stop comes during start-up, the others once everything runs
                settle_s = 0.0 if trial == 0 else self.rng.uniform(1.5, 3.0)
                seconds, code = _blackholed_stop(config, port, settle_s)
                self.tally.blackhole_stop_s.append(seconds)
                self.tally.blackhole_exit_codes.append(code)
        self._say(f"black-holed stops: {self.tally.blackhole_stop_s}")

    # -- helpers ---------------------------------------------------------------------------

    def _start(self) -> None:
        self.gateway = _start_gateway(self.config)

    def _wait_meters_polled(self) -> None:
        """Covers are counted from the first poll: wait until every DL/T 645 meter was read."""

        def polled() -> bool:
            seen = {
                e["subject"] for e in list(self.subscriber.events) if e["type"] == "meter.reading"
            }
            return set(COVER_METERS) <= seen

        if not self.subscriber.wait_for(polled, 60):
            raise RuntimeError("the DL/T 645 meters were never read")

    def _maybe_cover(self) -> None:
        if self.rng.random() < 0.15:
            self._cover(self.rng.choice(COVER_METERS))

    def _cover(self, meter: str) -> None:
        self.sim.command(f"meter {meter} cover_open")
        self.sim.command(f"meter {meter} cover_close")
        self.tally.covers += 1

    def _stop(self, gateway: Child | None) -> float:
        assert gateway is not None
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        try:
            gateway.process.wait(60)
        except subprocess.TimeoutExpired:
            gateway.kill()
        return round(time.monotonic() - started, 3)

    def _heal(self) -> bool:
        """Ask for every seq missing below the committed head until none is, or time runs out."""
        authority = MasterAuthority.open_or_create(self.sim.state / MASTER_DIR)
        db = self.sim.state / "gateway" / "buffer.db"
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while time.monotonic() < deadline:
            head = _committed_head(db)
            missing = sorted(set(range(1, head + 1)) - set(self.subscriber.seqs(GATEWAY)))
            if not missing and self._lock_truth_arrived():
                return True
            if missing:
                self.subscriber.request_resend(
                    GATEWAY, missing[0], missing[-1], signer=authority.sign_command
                )
            time.sleep(2.0)
        return False

    def _lock_truth_arrived(self) -> bool:
        return not (_truth(self.sim.truth)[0] - set(_lock_events(list(self.subscriber.events))))

    def _compare(self, healed: bool) -> dict[str, Any]:
        events = list(self.subscriber.events)
        lock_truth, cover_truth = _truth(self.sim.truth)
        by_entry = _lock_events(events)
        covers = _cover_counts(events)
        chain = verify_chain(events)
        ids_per_seq: dict[int, set[str]] = defaultdict(set)
        for event in events:
            ids_per_seq[int(event["seq"])].add(str(event["id"]))
        head = max(ids_per_seq, default=0)
        lock_lost = len(lock_truth - set(by_entry))
        lock_dup = sum(len(ids) - 1 for ids in by_entry.values())
        cover_lost = sum(max(0, n - covers[k]) for k, n in cover_truth.items())
        cover_dup = sum(max(0, covers[k] - cover_truth[k]) for k in covers)
        seq_dup = sum(len(ids) - 1 for ids in ids_per_seq.values())
        return {
            "bench": "faults",
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "synthetic_rate_per_s": RATE_PER_S,
            "locks": self.sizes.locks,
            "kills": self.tally.kills,
            "broker_flaps": self.tally.flaps,
            "covers_opened": self.tally.covers,
            "covers_opened_while_down": self.tally.down_covers,
            "events_received": len(events),
            "distinct_seqs": len(ids_per_seq),
            "head_seq": head,
            "lock_log_entries": len(lock_truth),
            "healed": healed,
            "lost_lock_entries": lock_lost,
            "lost_meter_events": cover_lost,
            "duplicated_lock_entries": lock_dup,
            "duplicated_meter_events": cover_dup,
            "chain_problems": [str(p) for p in chain.problems[:5]],
            "stop_s": self.tally.stop_s,
            "blackhole_stop_s": self.tally.blackhole_stop_s,  # filled in after this report
            "blackhole_exit_codes": self.tally.blackhole_exit_codes,
            "lost": lock_lost + cover_lost,
            "duplicated_with_new_id": lock_dup + cover_dup + seq_dup,
            "seq_gaps": len(set(range(1, head + 1)) - set(ids_per_seq)),
            "chain_breaks": len(chain.problems),
        }

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)


# -- analysis --------------------------------------------------------------------------------


def _truth(path: Path) -> tuple[set[tuple[str, int]], Counter[tuple[str, str]]]:
    """Lock log entries (seal, index) and cover openings per (meter, event) the simulator made."""
    entries: set[tuple[str, int]] = set()
    covers: Counter[tuple[str, str]] = Counter()
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "lock_log":
            entries.add((record["seal"], int(record["index"])))
        elif _is_cover(record):
            covers[(record["meter"], record["event"])] += 1
    return entries, covers


def _is_cover(record: dict[str, Any]) -> bool:
    kind, event = record.get("kind"), record.get("event")
    return kind == "meter_event" and event == "cover_opened" and record["meter"] in COVER_METERS


def _lock_events(events: list[dict[str, Any]]) -> dict[tuple[str, int], set[str]]:
    """(seal, log_index) -> the distinct event ids that carried it."""
    found: dict[tuple[str, int], set[str]] = defaultdict(set)
    for event in events:
        index = event["data"].get("log_index") if isinstance(event.get("data"), dict) else None
        if event["type"].startswith("seal.") and index is not None:
            found[(event["subject"], int(index))].add(str(event["id"]))
    return found


def _cover_counts(events: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """Cover openings the gateway reported per (meter, event): the sum of `count`, once per id."""
    unique = {e["id"]: e for e in events if e["type"] == "meter.event"}
    counts: Counter[tuple[str, str]] = Counter()
    for event in unique.values():
        data = event["data"]
        if data.get("event") == "cover_opened":
            counts[(data["meter"], "cover_opened")] += int(data.get("count", 1))
    return counts


def _committed_head(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])


# -- processes ---------------------------------------------------------------------------------


def _tune_config(config: Path) -> None:
    """Quick reconnects, and the synthetic load, on top of the simulator's config."""
    text = config.read_text().replace(
        "[uplink]\n", "[uplink]\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n", 1
    )
    config.write_text(text + f"\n[synthetic]\nenabled = true\nrate_per_s = {RATE_PER_S}\n")


def _start_gateway(config: Path) -> Child:
    return Child("gateway", ["run", "-c", str(config)], config.parent / f"{config.stem}.log")


def _blackholed_stop(config: Path, port: int, settle_s: float) -> tuple[float, int | None]:
    """Start a gateway, wait until its broker connect hangs (and `settle_s` more), SIGTERM it.

    Returns (seconds to exit, exit code); a gateway still alive after STOP_CAP_S is killed and
    reported as (STOP_CAP_S, None).
    """
    fillers = syn_sent_to(port)  # the black hole's own queue fillers
    child = _start_gateway(config)
    gateway = child.process
    if not _poll(lambda: syn_sent_to(port) > fillers or gateway.poll() is not None, 30):
        raise RuntimeError("the gateway never tried the black-holed broker")
    time.sleep(settle_s)
    if gateway.poll() is not None:
        raise RuntimeError(f"the gateway exited with {gateway.returncode} before SIGTERM")
    started = time.monotonic()
    gateway.send_signal(signal.SIGTERM)
    try:
        code: int | None = gateway.wait(STOP_CAP_S)
    except subprocess.TimeoutExpired:
        child.kill()
        return STOP_CAP_S, None
    return round(time.monotonic() - started, 3), code


def _poll(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


_HEADLINE = ("lost", "duplicated_with_new_id", "seq_gaps", "chain_breaks", "worst_stop_s")


def _ordered(result: dict[str, Any]) -> dict[str, Any]:
    """Headline figures last: the four counts (all should be 0), then the worst stop time."""
    stops = result.get("stop_s", []) + result.get("blackhole_stop_s", [])
    result["worst_stop_s"] = max(stops, default=None)
    head = {k: v for k, v in result.items() if k not in _HEADLINE}
    return {**head, **{k: result[k] for k in _HEADLINE}}
