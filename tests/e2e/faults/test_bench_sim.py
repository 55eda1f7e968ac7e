"""Issue 13 item 11: the bench's simulator and a restarted gateway.

- The DL/T 645 serial line on the simulator's socat pty reopens after a gateway SIGKILL, so
  M-645-3 and M-645-5 are read again (they were dead after every restart).
- pymodbus writes no hex dump of every frame, even with the gateway at DEBUG.
- `sealgw sim --state-dir` with a relative path writes a config that validates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from firmware_sim.mosquitto import MosquittoBroker
from master_station.subscriber import EventSubscriber
from tests.e2e.faults.daemon import log_text, simulator, start_gateway, stop_gateway
from tests.fixtures.procs import REPO

SERIAL_METERS = ("M-645-3", "M-645-5")


def _read_since_start(subscriber: EventSubscriber, meter: str, starts: int) -> bool:
    """A reading of `meter` after the `starts`-th gateway.started (the first poll reports)."""
    events: list[dict[str, Any]] = list(subscriber.events)
    started = sorted(e["seq"] for e in events if e["type"] == "gateway.started")
    if len(started) < starts:
        return False
    return any(
        e["type"] == "meter.reading" and e["subject"] == meter and e["seq"] > started[starts - 1]
        for e in events
    )


def test_serial_dlt645_meters_are_read_again_after_a_gateway_sigkill(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    with (
        simulator(tmp_path, mosquitto.url, meters=True, poll_s=0.5) as (config, _sim),
        EventSubscriber(mosquitto.host, mosquitto.port) as subscriber,
    ):
        gateway = start_gateway(config)
        try:
            for meter in SERIAL_METERS:
                assert subscriber.wait_for(lambda m=meter: _read_since_start(subscriber, m, 1), 60)
            gateway.send_signal(signal.SIGKILL)
            gateway.wait(10)
            gateway = start_gateway(config)
            for meter in SERIAL_METERS:
                assert subscriber.wait_for(
                    lambda m=meter: _read_since_start(subscriber, m, 2), 60
                ), f"{meter} is dead after the restart: {log_text(config)[-1500:]}"
        finally:
            code = stop_gateway(gateway)
        assert code == 0
    log = log_text(config)
    assert "pymodbus" in log or "modbus" in log  # the Modbus meters were polled at DEBUG
    assert "send: 0x" not in log and "recv: 0x" not in log


def test_sim_with_a_relative_state_dir_writes_a_valid_config(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--broker", mosquitto.url,
         "--write-config", "gw.toml", "--state-dir", "relative/sim", "--locks", "1"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert sim.stdout is not None
    try:
        assert sim.stdout.readline().startswith(b"sim ready")
        check = subprocess.run(
            [sys.executable, "-m", "gateway", "config", "check", str(tmp_path / "gw.toml")],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(20) == 0
        sim.stdout.close()
    assert check.returncode == 0, check.stdout + check.stderr
