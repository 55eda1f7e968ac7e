"""`sealgw demo`: a private broker, a gateway process and a subscriber, on one machine.

This is the store-and-forward stage of the demo: the gateway runs with its synthetic
telemetry source, survives a broker outage and a restart, and the subscriber checks that the
chain it received is complete. Locks, meters and the master station join it as they land.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from firmware_sim.mosquitto import MosquittoBroker
from gateway.chain import verify_chain
from master_station.subscriber import EventSubscriber

GATEWAY_ID = "gw-demo-01"


@dataclass(slots=True)
class DemoOptions:
    broker_url: str | None = None
    duration_s: float = 60.0
    json_output: bool = False


@dataclass(slots=True)
class Timeline:
    """Prints what happens, for a person watching (silent with --json)."""

    quiet: bool
    started: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)


def run_demo(options: DemoOptions) -> int:
    """Run the scripted demo; return the exit code (0 when the chain arrived whole)."""
    timeline = Timeline(quiet=options.json_output)
    with tempfile.TemporaryDirectory(prefix="sealgw-demo-") as tmp:
        work = Path(tmp)
        broker = None if options.broker_url else MosquittoBroker(work / "broker")
        if broker is not None:
            broker.start()
            timeline.say(f"private Mosquitto listening on {broker.url}")
        url = options.broker_url or (broker.url if broker else "")
        try:
            summary = _play(url, broker, work, options.duration_s, timeline)
        finally:
            if broker is not None:
                broker.stop()
    if options.json_output:
        print(json.dumps(summary))
    else:
        timeline.say(f"summary: {json.dumps(summary, indent=2)}")
    return 0 if summary["ledger_chain_verified"] and summary["ledger_seq_gaps"] == 0 else 1


def _play(
    url: str, broker: MosquittoBroker | None, work: Path, duration: float, timeline: Timeline
) -> dict[str, Any]:
    parsed = urlparse(url)
    config = _write_config(work, url)
    with EventSubscriber(parsed.hostname or "127.0.0.1", parsed.port or 1883) as subscriber:
        gateway = _start_gateway(config, work, timeline)
        steps = _script(broker, config, work, timeline)
        step_every = duration / (len(steps) + 1)
        for index, step in enumerate(steps, start=1):
            _wait_showing(subscriber, index * step_every, timeline)
            gateway = step(gateway)
        _wait_showing(subscriber, duration, timeline)
        _heal_gaps(subscriber, timeline)
        _stop_gateway(gateway, timeline)
        subscriber.wait_for(lambda: _complete(subscriber), timeout=15)
        return _summary(subscriber)


def _script(
    broker: MosquittoBroker | None, config: Path, work: Path, timeline: Timeline
) -> list[Callable[[subprocess.Popen[bytes]], subprocess.Popen[bytes]]]:
    def outage(gateway: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        if broker is None:
            timeline.say("external broker: outage step skipped")
            return gateway
        timeline.say("broker outage: stopping Mosquitto for 4 s (the gateway buffers)")
        broker.stop()
        time.sleep(4)
        broker.start()
        timeline.say("broker back: the backlog drains")
        return gateway

    def restart(gateway: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        timeline.say("gateway restart: SIGKILL, then start again from its buffer")
        gateway.kill()
        gateway.wait(10)
        return _start_gateway(config, work, timeline)

    return [outage, restart]


def _write_config(work: Path, url: str) -> Path:
    config = work / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "{GATEWAY_ID}"\nstate_dir = "{work / "state"}"\n'
        f'[uplink]\nurl = "{url}"\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
        "drain_rate_per_s = 2000\n[health]\ninterval_s = 5\n"
        "[synthetic]\nenabled = true\nrate_per_s = 20\n"
    )
    return config


def _start_gateway(config: Path, work: Path, timeline: Timeline) -> subprocess.Popen[bytes]:
    log = (work / "gateway.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        stdout=log,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    timeline.say(f"gateway {GATEWAY_ID} started (pid {process.pid})")
    return process


def _stop_gateway(gateway: subprocess.Popen[bytes], timeline: Timeline) -> None:
    gateway.send_signal(signal.SIGTERM)
    code = gateway.wait(20)
    timeline.say(f"gateway stopped cleanly with SIGTERM (exit {code})")


def _wait_showing(subscriber: EventSubscriber, until: float, timeline: Timeline) -> None:
    deadline = timeline.started + until
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(5.0, remaining))
        seqs = subscriber.seqs(GATEWAY_ID)
        timeline.say(f"received {len(seqs)} events, highest seq {max(seqs, default=0)}")


def _heal_gaps(subscriber: EventSubscriber, timeline: Timeline) -> None:
    """Events published while the subscriber was reconnecting are asked for again."""
    missing = subscriber.missing(GATEWAY_ID)
    if not missing:
        return
    timeline.say(f"{len(missing)} events missed while reconnecting: cmd/resend from {missing[0]}")
    subscriber.request_resend(GATEWAY_ID, missing[0], missing[-1])
    subscriber.wait_for(lambda: not subscriber.missing(GATEWAY_ID), timeout=15)


def _complete(subscriber: EventSubscriber) -> bool:
    seqs = set(subscriber.seqs(GATEWAY_ID))
    return bool(seqs) and seqs == set(range(1, max(seqs) + 1)) and _has_stop(subscriber)


def _has_stop(subscriber: EventSubscriber) -> bool:
    return any(e["type"] == "gateway.stopped" for e in list(subscriber.events))


def _summary(subscriber: EventSubscriber) -> dict[str, Any]:
    events = list(subscriber.events)
    report = verify_chain(events)
    unique = {(e["gateway"], e["seq"]): e for e in events}
    return {
        "events_published": len(unique),
        "duplicates_received": report.duplicates,
        "events_per_type": dict(Counter(e["type"] for e in unique.values())),
        "ledger_seq_gaps": len(report.gaps()),
        "ledger_chain_verified": report.ok,
    }
