"""Issue 13 item 9: a corrupt state file is moved aside and raised as an alarm, not crash-looped.

Each file is garbled before a real `sealgw run` against the simulator's config. Safe ones
(locks.db, handhelds.json, tickets.db, credential.key) are moved aside, reported as a
gateway.state_corrupt alarm, and the gateway runs on. The identity key is not safe to
replace: the gateway exits with status 3 (RestartPreventExitStatus) and says what to do.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.mosquitto import MosquittoBroker
from master_station.subscriber import EventSubscriber
from tests.e2e.faults.daemon import GATEWAY, log_text, simulator, start_gateway, stop_gateway
from tests.fixtures.procs import REPO, poll_until

GARBAGE = b"\x00garbage, not what the gateway wrote\xff" * 40
HANDHELD = '\n[handheld]\nenabled = true\nlisten = "unix:{sock}"\n'


@pytest.fixture
def sim_config(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Path]:
    with simulator(tmp_path, mosquitto.url) as (config, _process):
        sock = tmp_path / "hh.sock"
        config.write_text(config.read_text() + HANDHELD.format(sock=sock))
        state = tmp_path / "sim" / "gateway"
        init = subprocess.run(
            [sys.executable, "-m", "gateway", "init", "--state-dir", str(state), "--id", GATEWAY],
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            check=False,
        )
        assert init.returncode == 0, init.stderr.decode()
        first = start_gateway(config)  # a first run writes every file the gateway keeps
        poll_until(
            lambda: (state / "tickets.db").exists() and "own address" in log_text(config),
            60,
            "a first run",
        )
        assert stop_gateway(first) == 0
        yield config


def _state(config: Path) -> Path:
    return config.parent / "sim" / "gateway"


def _alarms(subscriber: EventSubscriber) -> list[dict[str, object]]:
    return [e for e in list(subscriber.events) if e["type"] == "gateway.state_corrupt"]


@pytest.mark.parametrize(
    ("name", "truncate"),
    [
        ("locks.db", False),
        ("handhelds.json", False),
        ("tickets.db", False),
        ("credential.key", True),
    ],
)
def test_corrupt_file_is_moved_aside_and_reported(
    sim_config: Path, mosquitto: MosquittoBroker, name: str, truncate: bool
) -> None:
    target = _state(sim_config) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\x01" * 7 if truncate else GARBAGE)
    target.chmod(0o600)
    with EventSubscriber(mosquitto.host, mosquitto.port) as subscriber:
        gateway = start_gateway(sim_config)
        try:
            assert subscriber.wait_for(
                lambda: any(a["data"]["file"] == name for a in _alarms(subscriber)), 60
            ), (sim_config.parent / "gateway.log").read_text()[-3000:]
            assert gateway.poll() is None, "the gateway did not carry on after the move"
        finally:
            code = stop_gateway(gateway)
    assert code == 0
    [alarm] = [a for a in _alarms(subscriber) if a["data"]["file"] == name]
    assert alarm["priority"] == "alarm"
    moved = target.with_name(str(alarm["data"]["moved_to"]))
    assert moved.read_bytes().startswith(b"\x01" if truncate else GARBAGE[:20])
    assert not target.exists() or target.read_bytes() != moved.read_bytes()
    if name == "credential.key":  # the tickets sealed to the lost key go too, and say so
        assert any(a["data"]["file"] == "tickets.db" for a in _alarms(subscriber))


def test_corrupt_identity_key_exits_with_status_3_and_says_why(sim_config: Path) -> None:
    identity = _state(sim_config) / "identity.key"
    identity.write_bytes(identity.read_bytes()[:40])
    before = len(log_text(sim_config))  # the fixture's first run wrote to the same log
    gateway = start_gateway(sim_config)
    code = gateway.wait(60)
    log = log_text(sim_config)[before:]
    assert code == 3, log[-2000:]
    assert "identity key" in log and "corrupt" in log and "sealgw init --force" in log
    assert "Traceback" not in log
