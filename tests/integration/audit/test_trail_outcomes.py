"""`sealgw audit verify` outcomes on trails a real gateway daemon wrote, through the real CLI.

0 verified, 3 unsigned (a tail past the last signed checkpoint, a trail without checkpoints, a
forged-from-scratch trail even with the key given), 1 broken; and a production gateway without
its identity key refuses to start with exit 78 (docs/audit.md).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.mosquitto import MosquittoBroker
from gateway.protocol.events import GENESIS_HASH, event_hash
from master_station.subscriber import EventSubscriber

REPO = Path(__file__).resolve().parents[3]
GATEWAY = "gw-trail"
EXIT_VERIFIED, EXIT_BROKEN, EXIT_UNSIGNED, EXIT_NO_IDENTITY = 0, 1, 3, 78


@dataclass(frozen=True)
class Trails:
    """Events as received from real daemon runs, and the identity key of the signed gateway."""

    signed: list[dict[str, Any]]  # `sealgw init`, run, SIGTERM: ends with a checkpoint
    crashed: list[dict[str, Any]]  # the same, then run again and SIGKILLed: an unsigned tail
    unsigned: list[dict[str, Any]]  # require_identity = false, no identity: no checkpoint
    key: Path


def write_config(folder: Path, broker_url: str, *, require_identity: bool | None) -> Path:
    config = folder / "gw.toml"
    text = (
        f'[gateway]\nid = "{GATEWAY}"\nstate_dir = "{folder / "state"}"\n'
        f'[uplink]\nurl = "{broker_url}"\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n'
        "drain_rate_per_s = 0\n[health]\ninterval_s = 1\n"
        "[synthetic]\nenabled = true\nrate_per_s = 50\n"
    )
    if require_identity is not None:
        text += f"[audit]\nrequire_identity = {str(require_identity).lower()}\n"
    config.write_text(text)
    return config


def sealgw(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def run_daemon(
    folder: Path, broker: MosquittoBroker, *, signed: bool, stop: signal.Signals
) -> list[dict[str, Any]]:
    """Run `sealgw run` until 30 more events are out, stop it with `stop`, return all received."""
    config = folder / "gw.toml"
    if not config.exists():
        folder.mkdir()
        config = write_config(folder, broker.url, require_identity=None if signed else False)
        if signed:
            assert sealgw("init", "-c", str(config)).returncode == 0
    db = folder / "state" / "buffer.db"
    before = committed_head(db) if db.exists() else 0
    with EventSubscriber(broker.host, broker.port) as subscriber:
        with (folder / "gateway.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(config)],
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        try:
            assert subscriber.wait_for(lambda: len(subscriber.seqs(GATEWAY)) >= 30, 30)
            proc.send_signal(stop)
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
        head = committed_head(db)
        wanted = set(range(before + 1, head + 1))
        if stop is signal.SIGKILL:  # what was committed but not yet published stays behind
            wanted = set(subscriber.seqs(GATEWAY))
        assert subscriber.wait_for(lambda: set(subscriber.seqs(GATEWAY)) >= wanted, 10)
        return [e for e in subscriber.events if e["seq"] > before]


def committed_head(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])


def in_order(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted({e["seq"]: e for e in events}.values(), key=lambda e: e["seq"])


@pytest.fixture(scope="module")
def trails(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trails]:
    """Daemon runs (module scope: each costs a daemon start): signed and stopped, then the same
    gateway again until SIGKILL (no final checkpoint), and one without identity."""
    folder = tmp_path_factory.mktemp("trails")
    broker = MosquittoBroker(folder / "broker")
    broker.start()
    try:
        signed = run_daemon(folder / "signed", broker, signed=True, stop=signal.SIGTERM)
        crashed = run_daemon(folder / "signed", broker, signed=True, stop=signal.SIGKILL)
        unsigned = run_daemon(folder / "unsigned", broker, signed=False, stop=signal.SIGTERM)
        yield Trails(
            in_order(signed),
            in_order(signed + crashed),
            in_order(unsigned),
            folder / "signed" / "state" / "identity.pub",
        )
    finally:
        broker.stop()


def verify(path: Path, events: list[dict[str, Any]], *keys: Path) -> tuple[int, dict[str, Any]]:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    args = [a for key in keys for a in ("--gateway-key", str(key))]
    done = sealgw("audit", "verify", str(path), *args, "--json")
    assert done.returncode != 2, done.stderr
    return done.returncode, json.loads(done.stdout)


def rechain(events: list[dict[str, Any]]) -> None:
    """A forger without the key: recompute every hash and link from seq 1."""
    for index, obj in enumerate(events):
        obj["seq"] = index + 1
        obj["prev_hash"] = events[index - 1]["hash"] if index else GENESIS_HASH
        obj["hash"] = event_hash(obj)


def test_a_signed_trail_verifies(trails: Trails, tmp_path: Path) -> None:
    code, report = verify(tmp_path / "t.jsonl", trails.signed, trails.key)
    assert code == EXIT_VERIFIED, report
    assert report["outcome"] == "verified" and report["ok"] is True
    assert report["gateways"][GATEWAY]["unsigned_events"] == 0


def test_a_tail_past_the_last_checkpoint_is_unsigned(trails: Trails, tmp_path: Path) -> None:
    first_stop = trails.signed[-1]["seq"]  # the checkpoint made at SIGTERM
    code, report = verify(tmp_path / "t.jsonl", trails.crashed, trails.key)
    assert code == EXIT_UNSIGNED, report
    gw = report["gateways"][GATEWAY]
    assert report["outcome"] == "unsigned" and report["ok"] is False and not report["problems"]
    assert gw["signed_through_seq"] == first_stop - 1
    assert gw["unsigned_from_seq"] == first_stop + 1
    assert gw["unsigned_events"] == trails.crashed[-1]["seq"] - first_stop


def test_without_the_key_a_signed_trail_is_only_unsigned(trails: Trails, tmp_path: Path) -> None:
    code, report = verify(tmp_path / "t.jsonl", trails.signed)
    assert code == EXIT_UNSIGNED, report
    assert report["gateways"][GATEWAY]["unsigned_from_seq"] == 1


def test_a_gateway_without_identity_leaves_an_unsigned_trail(
    trails: Trails, tmp_path: Path
) -> None:
    assert not [e for e in trails.unsigned if e["type"] == "gateway.checkpoint"]
    code, report = verify(tmp_path / "t.jsonl", trails.unsigned, trails.key)
    assert code == EXIT_UNSIGNED, report
    assert report["gateways"][GATEWAY]["unsigned_events"] == len(trails.unsigned)


def test_a_trail_forged_from_scratch_is_not_verified_even_with_the_key(
    trails: Trails, tmp_path: Path
) -> None:
    forged = [dict(e) for e in trails.signed if e["type"] != "gateway.checkpoint"]
    for obj in forged:
        obj["data"] = {**obj["data"], "forged": True}
    rechain(forged)
    code, report = verify(tmp_path / "t.jsonl", forged, trails.key)
    assert code == EXIT_UNSIGNED, report
    assert report["outcome"] == "unsigned"
    assert report["gateways"][GATEWAY]["checkpoints_verified"] == 0


def test_an_edited_signed_trail_is_broken(trails: Trails, tmp_path: Path) -> None:
    events = [dict(e) for e in trails.signed]
    events[5] = {**events[5], "data": {**events[5]["data"], "n": 999_999}}
    code, report = verify(tmp_path / "t.jsonl", events, trails.key)
    assert code == EXIT_BROKEN, report
    assert report["outcome"] == "broken"
    assert [(p["kind"], p["seq"]) for p in report["problems"]] == [("edited", 6)]
    text = sealgw("audit", "verify", str(tmp_path / "t.jsonl"), "--gateway-key", str(trails.key))
    assert text.returncode == EXIT_BROKEN
    assert "BROKEN: 1 problem found" in text.stdout


def test_rechaining_a_signed_trail_breaks_its_checkpoints(trails: Trails, tmp_path: Path) -> None:
    events = [dict(e) for e in trails.signed]
    events[3] = {**events[3], "data": {**events[3]["data"], "n": -1}}
    rechain(events)
    code, report = verify(tmp_path / "t.jsonl", events, trails.key)
    assert code == EXIT_BROKEN, report
    assert {p["kind"] for p in report["problems"]} == {"bad_checkpoint"}


def test_help_documents_every_exit_status() -> None:
    done = sealgw("audit", "verify", "--help")
    assert done.returncode == 0
    for line in ("0  verified", "1  broken", "2  usage or I/O error", "3  unsigned"):
        assert line in done.stdout, done.stdout


def test_a_production_gateway_without_identity_refuses_to_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, "mqtt://127.0.0.1:9", require_identity=None)
    done = sealgw("run", "-c", str(config), timeout=30)
    assert done.returncode == EXIT_NO_IDENTITY, done.stderr
    assert "identity.key" in done.stderr and "sealgw init" in done.stderr
    assert "require_identity = false" in done.stderr
    assert not (tmp_path / "state" / "buffer.db").exists()  # refused before opening anything
