"""The daemon as a real process: crash safety, clean shutdown and systemd notification."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_sim.mosquitto import MosquittoBroker
from gateway.protocol.chain import verify_chain
from master_station.subscriber import EventSubscriber
from tests.fixtures.remote import signed_command, write_master_key

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "gw-test"
MASTER = Ed25519PrivateKey.generate()


@pytest.fixture
def broker(mosquitto: MosquittoBroker) -> MosquittoBroker:
    return mosquitto


def write_config(tmp_path: Path, broker: MosquittoBroker, *, rate: float = 400) -> Path:
    config = tmp_path / "gw.toml"
    key_file = write_master_key(tmp_path / "master.pub", MASTER)
    config.write_text(
        f'[gateway]\nid = "{GATEWAY}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[uplink]\nurl = "{broker.url}"\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n'
        "drain_rate_per_s = 0\n[health]\ninterval_s = 1\n"
        f"[synthetic]\nenabled = true\nrate_per_s = {rate}\n"
        "[audit]\nrequire_identity = false\n"  # tests that need checkpoints run `sealgw init`
        f'[authorization]\nmaster_key_file = "{key_file}"\n'  # cmd/resend is always signed
    )
    return config


def _sign(name: str, gateway: str, args: Mapping[str, Any], lifetime_s: int) -> bytes:
    return signed_command(MASTER, name, args, gateway=gateway, lifetime_s=lifetime_s)


def start_gateway(config: Path, **env: str) -> subprocess.Popen[bytes]:
    with (config.parent / "gateway.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config), "--log-level", "DEBUG"],
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def committed_head(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])


def heal_and_wait(subscriber: EventSubscriber, upto: int, timeout: float = 30) -> bool:
    """Wait for seqs 1..upto; ask cmd/resend for anything missed while reconnecting."""

    def complete() -> bool:
        return set(range(1, upto + 1)) <= set(subscriber.seqs(GATEWAY))

    if subscriber.wait_for(complete, timeout / 2):
        return True
    missing = [s for s in range(1, upto + 1) if s not in set(subscriber.seqs(GATEWAY))]
    subscriber.request_resend(GATEWAY, missing[0], missing[-1], signer=_sign)
    return subscriber.wait_for(complete, timeout / 2)


def test_sigkill_mid_stream_loses_nothing_committed(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = write_config(tmp_path, broker)
    db = tmp_path / "state" / "buffer.db"
    with EventSubscriber(broker.host, broker.port) as subscriber:
        gateway = start_gateway(config)
        assert subscriber.wait_for(lambda: len(subscriber.seqs(GATEWAY)) >= 300, 30)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        head_at_kill = committed_head(db)
        assert head_at_kill >= 300

        gateway = start_gateway(config)
        try:
            assert heal_and_wait(subscriber, head_at_kill + 50), "committed events were lost"
        finally:
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(20) == 0
        final_head = committed_head(db)
        assert heal_and_wait(subscriber, final_head)

    events = list(subscriber.events)
    report = verify_chain(events)
    assert report.ok, report.problems[:5]
    assert report.heads[GATEWAY] == final_head
    by_seq: dict[int, dict[str, object]] = {}
    for event in events:
        first = by_seq.setdefault(event["seq"], event)
        assert first == event, "a duplicate differs from the original"
    types = [e["type"] for e in sorted(by_seq.values(), key=lambda e: e["seq"])]
    assert types.count("gateway.started") == 2
    assert types[-1] == "gateway.stopped"


def test_sigterm_flushes_everything_and_checkpoints(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = write_config(tmp_path, broker, rate=50)
    db = tmp_path / "state" / "buffer.db"
    with EventSubscriber(broker.host, broker.port) as subscriber:
        gateway = start_gateway(config)
        assert subscriber.wait_for(lambda: len(subscriber.seqs(GATEWAY)) >= 20, 30)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(20) == 0
        head = committed_head(db)
        assert subscriber.wait_for(
            lambda: set(subscriber.seqs(GATEWAY)) >= set(range(1, head + 1)), 10
        )
        status = subscriber.retained(f"sealgw/v1/{GATEWAY}/status")
    assert status is not None and json.loads(status)["state"] == "offline"
    wal = db.with_name("buffer.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    with sqlite3.connect(db) as conn:
        unpublished = conn.execute("SELECT COUNT(*) FROM events WHERE published = 0").fetchone()[0]
    assert unpublished == 0


def test_notifies_systemd_ready_watchdog_and_stopping(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        sock.settimeout(20)
        gateway = start_gateway(
            write_config(tmp_path, broker, rate=1),
            NOTIFY_SOCKET=str(notify_path),
            WATCHDOG_USEC="200000",
        )
        try:
            seen = [sock.recv(256).decode() for _ in range(3)]
            assert seen[0].startswith("READY=1")
            assert seen[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        finally:
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(20) == 0
        messages = []
        while True:
            try:
                messages.append(sock.recv(256).decode())
            except TimeoutError:
                break
            if messages[-1] == "STOPPING=1":
                break
    assert "STOPPING=1" in messages


def test_status_command_reads_the_running_daemon(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = write_config(tmp_path, broker, rate=5)
    socket_path = tmp_path / "state" / "control.sock"
    gateway = start_gateway(config)
    try:
        with EventSubscriber(broker.host, broker.port) as subscriber:
            assert subscriber.wait_for(lambda: bool(subscriber.seqs(GATEWAY)), 30)
        assert socket_path.is_socket()
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "-c", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["gateway"] == GATEWAY
        assert status["broker_connected"] is True
        assert set(status["buffer_depth"]) == {"alarm", "audit", "state", "telemetry"}
        table = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert "buffer_depth.telemetry" in table.stdout
    finally:
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(20) == 0
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "status", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode != 0
    assert "no gateway running" in result.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_signed_checkpoints_let_audit_verify_catch_a_tampered_trail(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = write_config(tmp_path, broker, rate=100)
    assert run_cli("init", "-c", str(config)).returncode == 0
    with EventSubscriber(broker.host, broker.port) as subscriber:
        gateway = start_gateway(config)
        assert subscriber.wait_for(lambda: len(subscriber.seqs(GATEWAY)) >= 100, 30)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(20) == 0
        head = committed_head(tmp_path / "state" / "buffer.db")
        assert subscriber.wait_for(
            lambda: set(subscriber.seqs(GATEWAY)) >= set(range(1, head + 1)), 10
        )
    events = sorted({e["seq"]: e for e in subscriber.events}.values(), key=lambda e: e["seq"])
    assert events[-1]["type"] == "gateway.checkpoint"
    assert events[-1]["data"]["covers_seq"] == events[-2]["seq"]  # covers gateway.stopped
    received = tmp_path / "received.jsonl"
    received.write_text("".join(json.dumps(e) + "\n" for e in events))
    key = str(tmp_path / "state" / "identity.pub")

    clean = run_cli("audit", "verify", str(received), "--gateway-key", key, "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr

    events[10]["data"]["n"] = 999_999  # an edit somewhere in the middle
    del events[20]  # and a deletion
    received.write_text("".join(json.dumps(e) + "\n" for e in events))
    tampered = run_cli("audit", "verify", str(received), "--gateway-key", key)
    assert tampered.returncode == 1
    assert "11" in tampered.stdout and "21" in tampered.stdout, tampered.stdout
