"""Commands bench: a flood of 10,000 commands over MQTT against a real daemon, and its memory.

A `python -m gateway run` process (master key configured, so the signed handlers are live)
against a private Mosquitto receives `FLOOD` commands at QoS 1 as fast as one paho client
publishes them, MQTT 5 with a response topic each:
- 40 % `cmd/time_check` signed by the master key (each with its own nonce): run and answered;
- 20 % signed by another key: refused `bad_signature`;
- 20 % an unknown command: `unknown_command`;
- 10 % not JSON: `bad_json`;
- 10 % with a wildcard response topic: `bad_response_topic`, answered on reply/{name}.
Commands beyond the cap on running ones are answered `busy` (docs/mqtt.md).

`commands_flood` holds the daemon's VmRSS before the flood (settled), the peak during it, and
after it (once the daemon's CPU time stopped moving, settled), with the replies counted by
outcome: commands beyond the replies waiting for the broker are dropped unanswered, by design
(docs/mqtt.md). The goal is RSS after within 10 % of before.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.footprint import GATEWAY, _BirthWatcher, _sample_rss, _start, _stop, _wait
from firmware_sim.mosquitto import MosquittoBroker
from master_station.authority import MasterAuthority

FLOOD = 10_000
SETTLE_S = 5.0
IDLE_S = 3.0  # the daemon used (almost) no CPU for this long: the flood is over
REPLIES = "bench/replies"
GOAL_AFTER_PCT = 10.0
ROOT = f"sealgw/v1/{GATEWAY}"


def run(*, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Flood a daemon with commands; return RSS before, during and after (headline last)."""
    flood = 2_000 if quick else FLOOD
    with tempfile.TemporaryDirectory(prefix="sealgw-commands-") as tmp:
        work = Path(tmp)
        with MosquittoBroker(work / "broker") as broker:
            return _Bench(work, broker, verbose).measure(flood)


class _Bench:
    def __init__(self, work: Path, broker: MosquittoBroker, verbose: bool) -> None:
        self.work = work
        self.broker = broker
        self.verbose = verbose
        self.authority = MasterAuthority.open_or_create(work / "master")
        self.stranger = MasterAuthority(work / "stranger", Ed25519PrivateKey.generate())

    def measure(self, flood: int) -> dict[str, Any]:
        config = self._config()
        payloads = [self._command(n) for n in range(flood)]
        with _BirthWatcher(self.broker) as watcher, _Replies(self.broker) as replies:
            began = time.monotonic()
            process = _start(config)
            try:
                watcher.wait_birth(after=began, timeout=30.0)
                _wait(SETTLE_S)
                before = statistics.median(_sample_rss(process.pid, 0.5) for _ in range(3))
                self._say(f"before: {before:.1f} MB; flooding {flood} commands")
                peak = _PeakRss(process.pid)
                with peak:
                    started = time.monotonic()
                    _publish_all(self.broker, payloads)
                    published_s = time.monotonic() - started
                    _wait_idle(process.pid, IDLE_S, timeout=300.0)
                    answered_s = replies.last_at - started
                self._say(f"peak: {peak.mb:.1f} MB; {replies.count} replies in {answered_s:.1f} s")
                _wait(SETTLE_S)
                after = statistics.median(_sample_rss(process.pid, 0.5) for _ in range(3))
                self._say(f"after: {after:.1f} MB")
            finally:
                _stop(process)
        return self._result(flood, before, peak.mb, after, replies, published_s, answered_s)

    def _config(self) -> Path:
        folder = self.work / "gateway"
        folder.mkdir()
        master = folder / "ms.pub"
        master.write_text(self.authority.public_key_bytes.hex())
        path = folder / "gw.toml"
        path.write_text(
            f'[gateway]\nid = "{GATEWAY}"\nstate_dir = "{folder / "state"}"\n'
            f'[uplink]\nurl = "{self.broker.url}"\n'
            '[log]\nlevel = "WARNING"\n'
            "[audit]\nrequire_identity = false\n"
            f'[authorization]\nmaster_key_file = "{master}"\n'
        )
        return path

    def _command(self, n: int) -> tuple[str, bytes, str]:
        """(topic, payload, response topic) of the n-th command of the mix."""
        kind = n % 10
        reply_to = f"{REPLIES}/{n}"
        if kind < 4:
            return f"{ROOT}/cmd/time_check", self._signed(self.authority, n), reply_to
        if kind < 6:
            return f"{ROOT}/cmd/time_check", self._signed(self.stranger, n), reply_to
        if kind < 8:
            return f"{ROOT}/cmd/no_such_command", json.dumps({"id": n}).encode(), reply_to
        if kind < 9:
            return f"{ROOT}/cmd/time_check", b"{not json", reply_to
        return f"{ROOT}/cmd/time_check", json.dumps({"id": n}).encode(), f"{REPLIES}/+/x"

    @staticmethod
    def _signed(authority: MasterAuthority, n: int) -> bytes:
        return authority.sign_command("time_check", GATEWAY, {"n": n})

    def _result(
        self,
        flood: int,
        before: float,
        peak: float,
        after: float,
        replies: _Replies,
        published_s: float,
        answered_s: float,
    ) -> dict[str, Any]:
        after_pct = (after - before) / before * 100
        return {
            "bench": "commands",
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "commands_flood": {
                "commands": flood,
                "published_s": round(published_s, 2),
                "answered_s": round(answered_s, 2),
                "replies": replies.count,
                "unanswered": flood - replies.count,
                "replies_by_outcome": dict(sorted(replies.outcomes.items())),
                "rss_mb_before": round(before, 1),
                "rss_mb_peak": round(peak, 1),
                "rss_mb_after": round(after, 1),
                "rss_after_vs_before_pct": round(after_pct, 1),
                "goal_after_pct": GOAL_AFTER_PCT,
            },
        }

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr)


class _Replies:
    """Subscribes to every reply topic and counts replies by outcome."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.count = 0
        self.outcomes: Counter[str] = Counter()
        self.last_at = time.monotonic()
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.connect(broker.host, broker.port)
        self._client.subscribe([(f"{REPLIES}/#", 1), (f"{ROOT}/reply/#", 1)])
        self._client.loop_start()

    def __enter__(self) -> _Replies:
        if not self._subscribed.wait(10):
            raise RuntimeError("reply subscription not acknowledged")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            outcome = "unreadable"
        else:
            outcome = "ok" if reply.get("ok") else str(reply.get("error"))
        with self._cond:
            self.count += 1
            self.outcomes[outcome] += 1
            self.last_at = time.monotonic()
            self._cond.notify_all()


class _PeakRss:
    """Samples a process's VmRSS every 50 ms in a thread; `mb` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _PeakRss:
        self.mb = _sample_rss(self.pid, 0.0)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.mb = max(self.mb, _sample_rss(self.pid, 0.0))


def _cpu_ticks(pid: int) -> int:
    """utime + stime of `pid`, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _wait_idle(pid: int, idle_s: float, *, timeout: float) -> None:
    """Return once `pid` used under 5 % of a CPU for `idle_s` in a row."""
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    quiet_since, last = time.monotonic(), _cpu_ticks(pid)
    while time.monotonic() < deadline:
        _wait(0.5)
        ticks = _cpu_ticks(pid)
        if (ticks - last) * tick_s > 0.5 * 0.05:
            quiet_since = time.monotonic()
        last = ticks
        if time.monotonic() - quiet_since >= idle_s:
            return
    raise RuntimeError(f"the daemon was still busy {timeout} s after the flood")


def _publish_all(broker: MosquittoBroker, payloads: list[tuple[str, bytes, str]]) -> None:
    """Publish every command at QoS 1, MQTT 5 with its response topic; wait for the PUBACKs."""
    done = threading.Event()
    room = threading.BoundedSemaphore(1000)  # paho's message ids wrap at 65,535
    acked = 0

    def on_publish(*_args: Any) -> None:
        nonlocal acked
        acked += 1
        room.release()
        if acked == len(payloads):
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for n, (topic, payload, reply_to) in enumerate(payloads):
            room.acquire()
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply_to
            props.CorrelationData = n.to_bytes(4, "big")
            client.publish(topic, payload, qos=1, properties=props)
        if not done.wait(120):
            raise RuntimeError(f"only {acked} of {len(payloads)} commands acknowledged")
    finally:
        client.disconnect()
        client.loop_stop()
