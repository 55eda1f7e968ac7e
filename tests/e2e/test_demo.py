"""`sealgw demo --json` as a process: its own broker, then an outside broker with a relay cut.

The demo runs Mosquitto (private), the master station, the simulator and the gateway as
processes, plays its scripted day (work orders, a denied attempt, tamper, theft, district line
loss with a bypass theft, an outage, a SIGKILL restart) and compares the master's ledger with what its independent subscriber received.
With `--broker`, this test is the outside subscriber: it stays connected through the outage
(a cut relay between gateway and broker) and must see every event the ledger holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tests.fixtures.mosquitto import Broker, SubscriberFactory

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "gw-demo-01"
DURATION_S = "32"
KEYS = (
    "events_published", "events_per_type", "seal_integrity_rate", "lock_online_rate",
    "meter_read_success_rate", "meter_readings_by_protocol", "theft_suspected",
    "line_loss_intervals", "line_loss_alarms", "line_loss_bypassed_meter", "line_loss_named_meters",
    "ledger_seq_gaps", "ledger_chain_verified", "ledger_equals_published", "steps_passed",
    "steps_failed", "duration_s",
)  # fmt: skip
DAY_TYPES = {
    "seal.tamper", "seal.op_denied", "seal.unsealed", "seal.sealed", "theft.suspected",
    "district.line_loss", "district.line_loss_alarm",
}  # fmt: skip


def run_demo(*extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--json", "--duration", DURATION_S, *extra],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got:\n{done.stdout}\n{done.stderr[-3000:]}"
    summary: dict[str, Any] = json.loads(lines[0])
    assert done.returncode == 0, f"{summary.get('steps')}\n{done.stderr[-3000:]}"
    return summary


def assert_day_passed(summary: dict[str, Any]) -> None:
    assert set(KEYS) <= set(summary), set(KEYS) - set(summary)
    assert summary["steps_failed"] == 0 and summary["steps_passed"] == len(summary["steps"])
    assert summary["ledger_seq_gaps"] == 0
    assert summary["ledger_chain_verified"] is True
    assert summary["ledger_equals_published"] is True
    assert summary["theft_suspected"] >= 2  # a cover opened under a seal; the line-loss jump
    # the bypass theft: the line-loss alarm names the bypassed meter, and no other
    assert summary["line_loss_bypassed_meter"] == "DIST-C3"
    assert summary["line_loss_named_meters"] == ["DIST-C3"]
    assert summary["line_loss_intervals"] >= 4 and summary["line_loss_alarms"] >= 1
    assert set(summary["events_per_type"]) >= DAY_TYPES, summary["events_per_type"]
    assert summary["events_per_type"]["gateway.started"] == 2, "one start, one after SIGKILL"
    assert summary["events_published"] == sum(summary["events_per_type"].values())
    by_protocol = summary["meter_readings_by_protocol"]
    assert set(by_protocol) == {"modbus-rtu", "modbus-tcp", "dlt645"}
    assert all(count > 0 for count in by_protocol.values()), by_protocol
    assert 0 < summary["seal_integrity_rate"] < 1, "two seals were tampered with"


def test_demo_with_its_private_broker_ends_with_ledger_equal_to_published() -> None:
    summary = run_demo()
    assert_day_passed(summary)
    assert summary["lock_online_rate"] == 1.0


async def test_outside_subscriber_keeps_its_session_through_the_relay_cut(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    outside = subscriber_factory(mosquitto, [f"sealgw/v1/{GATEWAY}/events/#"])
    await outside.start()
    summary = run_demo("--broker", mosquitto.url)
    assert_day_passed(summary)
    assert outside.subscriptions == 1, "the outside subscriber never had to reconnect"
    events = {}
    for message in outside.messages:
        event = json.loads(message.payload)
        events[event["id"]] = event
    seqs = sorted(e["seq"] for e in events.values())
    assert seqs == list(range(1, summary["events_published"] + 1)), "every ledger seq, once"
    assert dict(Counter(e["type"] for e in events.values())) == summary["events_per_type"]


def test_demo_with_the_batch_encoding_ends_with_ledger_equal_to_published() -> None:
    """The same day with `uplink.encoding = "batch"`: the master rebuilds every event."""
    summary = run_demo("--encoding", "batch")
    assert summary["uplink_encoding"] == "batch"
    assert_day_passed(summary)
