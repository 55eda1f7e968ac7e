"""`sealgw sim` as a process: ready line, a gateway config that validates, truth lines, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from gateway.config import loader as config_loader
from gateway.locks.config import BleSection, read_key_file

LOCKS = 4
STARTUP_S = 30.0


def _check_config(path: Path) -> BleSection:
    config = config_loader.load_config(path)
    assert config.gateway.id == "gw-sim-test"
    assert config.uplink.url == "mqtt://127.0.0.1:18830"
    assert {m.seal for m in config.meters.meters} >= {"SL-0001", "SL-0004"}
    return config.ble


async def test_sim_runs_writes_a_valid_config_and_stops_on_sigterm(tmp_path: Path) -> None:
    config_path, truth = tmp_path / "gw.toml", tmp_path / "truth.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "sim",
        "--broker", "mqtt://127.0.0.1:18830",
        "--write-config", str(config_path),
        "--truth", str(truth),
        "--state-dir", str(tmp_path / "sim"),
        "--activity-seconds", "2",
        "--locks", str(LOCKS),
        "--gateway-id", "gw-sim-test",
        "--seed", "7",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        ready = (await asyncio.wait_for(proc.stdout.readline(), STARTUP_S)).decode()
        assert ready.startswith(f"sim ready: config={config_path} adapter=bumble:tcp-client:")

        ble = _check_config(config_path)
        assert ready.split("adapter=")[1].split()[0] == ble.adapter
        assert [lock.seal_id for lock in ble.locks] == [f"SL-{n:04d}" for n in range(1, 5)]
        assert all(len(read_key_file(lock.adv_key_file)) == 32 for lock in ble.locks)
        assert all(lock.log_key_file.stat().st_mode & 0o077 == 0 for lock in ble.locks)

        quiet = (await asyncio.wait_for(proc.stdout.readline(), STARTUP_S)).decode()
        assert quiet.startswith("sim quiet:")
        records = [json.loads(line) for line in truth.read_text().splitlines()]
        lock_log = [r for r in records if r["kind"] == "lock_log"]
        assert sum(r["type"] == "boot" and r["index"] == 1 for r in lock_log) == LOCKS
        assert any(r["index"] > 1 for r in lock_log)
        assert {r["seal"] for r in lock_log} <= {lock.seal_id for lock in ble.locks}
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0


async def test_sim_takes_fault_commands_on_stdin(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "sim",
        "--broker", "mqtt://127.0.0.1:18830",
        "--write-config", str(tmp_path / "gw.toml"),
        "--truth", str(truth),
        "--state-dir", str(tmp_path / "sim"),
        "--activity-seconds", "0",
        "--locks", "2",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), STARTUP_S)).startswith(b"sim ready")
        assert (await asyncio.wait_for(proc.stdout.readline(), STARTUP_S)).startswith(b"sim quiet")
        commands = [b"lock SL-0002 tamper", b"meter M-645-1 cover_open", b"meter M-NOPE cover_open"]
        proc.stdin.write(b"\n".join(commands) + b"\n")
        await proc.stdin.drain()
        answers = [
            (await asyncio.wait_for(proc.stdout.readline(), STARTUP_S)).decode().strip()
            for _ in commands
        ]
        assert answers[0] == "ok lock SL-0002 tamper"
        assert answers[1] == "ok meter M-645-1 cover_open"
        assert answers[2].startswith("error meter M-NOPE cover_open")
        records = [json.loads(line) for line in truth.read_text().splitlines()]
        assert {"kind": "meter_event", "meter": "M-645-1", "event": "cover_opened"}.items() <= next(
            r for r in records if r["kind"] == "meter_event"
        ).items()
        assert any(r["kind"] == "lock_log" and r["seal"] == "SL-0002" and r["type"].startswith("tamper")
                   for r in records)  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0
