"""Footprint bench: the daemon's memory idle and loaded, cold start to MQTT birth, RSS growth.

Every figure is taken from a real `python -m gateway run` process against a private Mosquitto:
- rss_mb_idle: a minimal config (no devices), after start-up settled;
- rss_mb_loaded: 200 [[ble.locks]] (with key files) and 64 Modbus TCP meters polled against a
  simulator running in a separate process (its memory is not counted);
- cold_start_to_birth_s: process start until a subscriber sees the retained online status,
  median of several starts (the first start also creates the buffer);
- rss_growth_pct_10min: RSS at the end of the window versus its start, under the loaded config
  plus a synthetic source of 200 events/s; `--quick` shortens the window (rss_growth_window_s
  says what was measured). RSS is VmRSS from /proc/PID/status.
`locks_active` says whether the lock service really ran (it needs the daemon to wire it in and
a reachable adapter); when false, the 200 locks were only configured and validated.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.footprint_sim import meters_toml
from firmware_sim.children import die_with_parent
from firmware_sim.mosquitto import MosquittoBroker

REPO = Path(__file__).resolve().parent.parent
GATEWAY = "gw-footprint"
LOCKS = 200
METERS = 64
POLL_S = 5.0
LOAD_RATE = 200.0
COLD_STARTS = 5
GOALS = {"rss_mb_loaded": 60.0, "cold_start_to_birth_s": 1.5, "rss_growth_pct_10min": 5.0}


def run(*, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Measure everything and return the result object (headline figures last)."""
    window_s = 30.0 if quick else 600.0
    with tempfile.TemporaryDirectory(prefix="sealgw-footprint-") as tmp:
        work = Path(tmp)
        with MosquittoBroker(work / "broker") as broker, _DeviceSim(work / "sim") as sim:
            bench = _Bench(work, broker, sim, verbose)
            return bench.measure(window_s)


class _Bench:
    def __init__(self, work: Path, broker: MosquittoBroker, sim: _DeviceSim, verbose: bool) -> None:
        self.work = work
        self.broker = broker
        self.sim = sim
        self.verbose = verbose

    def measure(self, window_s: float) -> dict[str, Any]:
        minimal = self._config("idle", devices=False, synthetic=False)
        loaded = self._config("loaded", devices=True, synthetic=False)
        under_load = self._config("load", devices=True, synthetic=True)
        starts = [self._cold_start(minimal) for _ in range(COLD_STARTS)]
        self._say(f"cold starts to birth: {[round(s, 3) for s in starts]}")
        idle = self._steady_rss(minimal, settle_s=5.0)
        self._say(f"idle: {idle['rss_mb']} MB")
        busy = self._steady_rss(loaded, settle_s=3 * POLL_S)
        self._say(f"loaded: {busy['rss_mb']} MB, status {busy['status']}")
        growth = self._growth(under_load, window_s)
        self._say(f"growth: {growth}")
        return self._result(starts, idle, busy, growth)

    # -- measurements ----------------------------------------------------------------------

    def _cold_start(self, config: Path) -> float:
        with _BirthWatcher(self.broker) as watcher:
            began = time.monotonic()
            process = _start(config)
            try:
                birth = watcher.wait_birth(after=began, timeout=30.0)
            finally:
                _stop(process)
        return birth - began

    def _steady_rss(self, config: Path, settle_s: float) -> dict[str, Any]:
        with _BirthWatcher(self.broker) as watcher:
            began = time.monotonic()
            process = _start(config)
            try:
                watcher.wait_birth(after=began, timeout=30.0)
                _wait(settle_s)
                samples = [_sample_rss(process.pid, pause=0.5) for _ in range(5)]
                status = _status(config)
            finally:
                _stop(process)
        return {"rss_mb": round(statistics.median(samples), 1), "status": status}

    def _growth(self, config: Path, window_s: float) -> dict[str, Any]:
        with _BirthWatcher(self.broker) as watcher:
            began = time.monotonic()
            process = _start(config)
            try:
                watcher.wait_birth(after=began, timeout=30.0)
                _wait(min(60.0, window_s / 3))  # warm-up: caches and buffers fill once
                start = statistics.median(_sample_rss(process.pid, 0.5) for _ in range(3))
                trace = self._trace(process.pid, window_s)
                end = statistics.median(_sample_rss(process.pid, 0.5) for _ in range(3))
            finally:
                _stop(process)
        committed = _committed(config.parent / "state" / "buffer.db")
        return {
            "start": start,
            "end": end,
            "trace": trace,
            "window_s": window_s,
            "committed": committed,
        }

    def _trace(self, pid: int, window_s: float) -> list[float]:
        trace: list[float] = []
        step = window_s / 10
        for _ in range(10):
            _wait(step)
            trace.append(round(_sample_rss(pid, 0.0), 1))
        return trace

    # -- configs ---------------------------------------------------------------------------

    def _config(self, name: str, *, devices: bool, synthetic: bool) -> Path:
        folder = self.work / name
        folder.mkdir()
        parts = [
            f'[gateway]\nid = "{GATEWAY}"\nstate_dir = "{folder / "state"}"\n',
            f'[uplink]\nurl = "{self.broker.url}"\nreconnect_min_s = 0.1\nreconnect_max_s = 1\n',
            '[log]\nlevel = "WARNING"\n',
            "[audit]\nrequire_identity = false\n",  # a bench gateway: no `sealgw init`
        ]
        if synthetic:
            parts.append(f"[synthetic]\nenabled = true\nrate_per_s = {LOAD_RATE}\n")
        if devices:
            master = folder / "ms.pub"
            master.write_text(self.sim.info["master_key"])
            parts.append(f'[authorization]\nmaster_key_file = "{master}"\n')
            parts.append(self.sim.info["ble_toml"])
            parts.append(meters_toml(self.sim.info["port"], METERS, POLL_S))
        path = folder / "gw.toml"
        path.write_text("\n".join(parts))
        return path

    # -- result ----------------------------------------------------------------------------

    def _result(
        self,
        starts: list[float],
        idle: dict[str, Any],
        busy: dict[str, Any],
        growth: dict[str, Any],
    ) -> dict[str, Any]:
        status = busy["status"] or {}
        locks = status.get("locks")
        meters = status.get("meters")
        growth_pct = (growth["end"] - growth["start"]) / growth["start"] * 100
        return {
            "bench": "footprint",
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "locks_configured": LOCKS,
            "locks_active": isinstance(locks, dict) and bool(locks.get("locks")),
            "meters_configured": METERS,
            "meters_polled": _meters_polled(meters),
            "meter_poll_s": POLL_S,
            "load_events_per_s": LOAD_RATE,
            "load_events_committed": growth["committed"],
            "cold_start_runs_s": [round(s, 3) for s in starts],
            "rss_growth_trace_mb": growth["trace"],
            "rss_mb_growth_start": round(growth["start"], 1),
            "rss_mb_growth_end": round(growth["end"], 1),
            "rss_growth_window_s": growth["window_s"],
            "goals": GOALS,
            "rss_mb_idle": idle["rss_mb"],
            "rss_mb_loaded": busy["rss_mb"],
            "cold_start_to_birth_s": round(statistics.median(starts), 3),
            "rss_growth_pct_10min": round(growth_pct, 2),
        }

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr)


class _BirthWatcher:
    """Subscribes to the gateway's status and notes when an online status arrives."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self._births: list[float] = []
        self._cond = threading.Condition()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.subscribe(f"sealgw/v1/{GATEWAY}/status", qos=1)
        self._client.loop_start()

    def __enter__(self) -> _BirthWatcher:
        if not self._subscribed.wait(10):
            raise RuntimeError("status subscription not acknowledged")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_birth(self, *, after: float, timeout: float) -> float:
        """The arrival time of the first online status after `after`."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: any(t >= after for t in self._births), timeout=timeout
            )
            if not found:
                raise RuntimeError("no birth (online status) seen")
            return min(t for t in self._births if t >= after)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        arrived = time.monotonic()
        try:
            online = json.loads(msg.payload).get("state") == "online"
        except ValueError:
            return
        if online and not msg.retain:
            with self._cond:
                self._births.append(arrived)
                self._cond.notify_all()


class _DeviceSim:
    """bench.footprint_sim in its own process: the meters and the locks."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.info: dict[str, Any] = {}
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> _DeviceSim:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        args = [str(METERS), str(LOCKS), str(self.state_dir)]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.footprint_sim", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_env(),
            preexec_fn=die_with_parent(),  # noqa: PLW1509 (lock-free; see children.py)
        )
        assert self._process.stdout is not None
        try:
            self.info = json.loads(self._process.stdout.readline())
        except BaseException:  # SIGTERM while starting, or a broken simulator: stop it
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._process is None:
            return
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _start(config: Path) -> subprocess.Popen[bytes]:
    with (config.parent / "gateway.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 (lock-free; see children.py)
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _sample_rss(pid: int, pause: float) -> float:
    """VmRSS of `pid` in MiB (after `pause` seconds)."""
    _wait(pause)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _wait(seconds: float) -> None:
    """Let the daemon run for `seconds` (a bench measures over time; nothing to poll for)."""
    if seconds > 0:
        threading.Event().wait(seconds)


def _status(config: Path) -> dict[str, Any] | None:
    """The daemon's status over its control socket, or None if it does not answer."""
    path = config.parent / "state" / "control.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b'{"cmd": "status"}\n')
            line = sock.makefile("rb").readline()
    except OSError:
        return None
    answer = json.loads(line)
    status = answer.get("status") if isinstance(answer, dict) else None
    return status if isinstance(status, dict) else None


def _meters_polled(meters: Any) -> int | None:
    if not isinstance(meters, dict):
        return None
    if "configured" in meters:  # the gateway.health summary
        return int(meters.get("configured", 0)) - int(meters.get("never_read", 0))
    per_meter = meters.get("meters", {})  # the meter service's own snapshot
    return sum(1 for m in per_meter.values() if m.get("polls", 0) > 0)


def _committed(db: Path) -> int:
    """Events the load run committed (the buffer's head seq)."""
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
