"""The whole lock path as processes: `sealgw sim` + `sealgw run` + a broker, with SIGKILLs.

Over three SIGKILLs of the gateway under simulator load, every lock log entry the simulator
wrote to its truth file reaches the broker as exactly one event (one id, one seq), the chain
verifies and seq is gapless.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.mosquitto import MosquittoBroker
from gateway.protocol.chain import verify_chain
from master_station.subscriber import EventSubscriber

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "gw-e2e"
LOCKS = 6
ACTIVITY_S = 14


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def sim(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[tuple[Path, Path]]:
    config, truth = tmp_path / "gw.toml", tmp_path / "truth.jsonl"
    with (tmp_path / "sim.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "sim", "--broker", mosquitto.url,
             "--write-config", str(config), "--truth", str(truth),
             "--state-dir", str(tmp_path / "sim"), "--activity-seconds", str(ACTIVITY_S),
             "--locks", str(LOCKS), "--no-meters", "--gateway-id", GATEWAY, "--seed", "3"],
            stdout=subprocess.PIPE, stderr=log, env=_env(),
        )  # fmt: skip
    assert process.stdout is not None
    ready = process.stdout.readline().decode()
    assert ready.startswith("sim ready"), ready
    try:
        yield config, truth
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        process.stdout.close()


def start_gateway(config: Path) -> subprocess.Popen[bytes]:
    with (config.parent / "gateway.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL, stderr=log, env=_env(),
        )  # fmt: skip


def truth_entries(truth: Path) -> set[tuple[str, int]]:
    entries = set()
    for line in truth.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "lock_log":
            entries.add((record["seal"], int(record["index"])))
    return entries


def lock_events(subscriber: EventSubscriber) -> dict[tuple[str, int], set[tuple[str, int]]]:
    """(seal, log_index) -> the distinct (event id, seq) pairs that carried it."""
    found: dict[tuple[str, int], set[tuple[str, int]]] = defaultdict(set)
    for event in list(subscriber.events):
        index = event["data"].get("log_index")
        if event["type"].startswith("seal.") and index is not None:
            found[(event["subject"], int(index))].add((event["id"], event["seq"]))
    return found


def test_every_lock_log_entry_arrives_exactly_once_over_three_sigkills(
    sim: tuple[Path, Path], mosquitto: MosquittoBroker
) -> None:
    config, truth = sim
    with EventSubscriber(mosquitto.host, mosquitto.port) as subscriber:
        gateway = start_gateway(config)
        for _ in range(3):
            time.sleep(ACTIVITY_S / 4)
            gateway.send_signal(signal.SIGKILL)
            gateway.wait(10)
            gateway = start_gateway(config)
        time.sleep(ACTIVITY_S / 4)  # the simulator goes quiet after ACTIVITY_S
        try:
            expected = truth_entries(truth)
            assert len(expected) > 3 * LOCKS, "the simulator produced too little activity"
            arrived = subscriber.wait_for(
                lambda: expected <= set(lock_events(subscriber)), timeout=90
            )
            missing = sorted(expected - set(lock_events(subscriber)))
            assert arrived, f"lock log entries never arrived as events: {missing[:10]}"
        finally:
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(30) == 0
        seqs = subscriber.seqs(GATEWAY)
        subscriber.wait_for(
            lambda: set(range(1, max(seqs) + 1)) <= set(subscriber.seqs(GATEWAY)), 10
        )

    carried = lock_events(subscriber)
    doubled = {entry: ids for entry, ids in carried.items() if len(ids) > 1}
    assert not doubled, f"entries committed as more than one event: {list(doubled.items())[:5]}"
    assert set(carried) == truth_entries(truth)
    report = verify_chain(list(subscriber.events))
    assert report.ok, report.problems[:5]
    assert report.heads[GATEWAY] == len({e["seq"] for e in subscriber.events})
