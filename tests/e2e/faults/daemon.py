"""Helpers of the fault tests: a gateway process, its log, and the simulator with its controls.

The black-holed port (`firmware_sim.network`) and the simulator's process and control channel
(`firmware_sim.procs`) are the ones `python -m bench faults` uses too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from firmware_sim.procs import Child, SimControl
from tests.fixtures.procs import REPO

GATEWAY = "gw-fault"


def write_config(
    tmp_path: Path, broker_url: str, extra: str = "", *, name: str = "gw.toml"
) -> Path:
    """A minimal gateway config with its state dir under `tmp_path`, plus `extra` TOML."""
    config = tmp_path / name
    config.write_text(
        f'[gateway]\nid = "{GATEWAY}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[uplink]\nurl = "{broker_url}"\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n'
        f"[health]\ninterval_s = 1\n"
        "[audit]\nrequire_identity = false\n"  # these faults are not about the identity key
        f"{extra}"
    )
    return config


def start_gateway(config: Path, **env: str) -> subprocess.Popen[bytes]:
    """`sealgw run` as a child process, logging at DEBUG to gateway.log next to the config."""
    with (config.parent / "gateway.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config), "--log-level", "DEBUG"],
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def stop_gateway(gateway: subprocess.Popen[bytes], timeout: float = 30) -> int | None:
    """SIGTERM and wait; a gateway still running after `timeout` is killed (None returned)."""
    if gateway.poll() is None:
        gateway.send_signal(signal.SIGTERM)
    try:
        return gateway.wait(timeout)
    except subprocess.TimeoutExpired:
        gateway.kill()
        gateway.wait()
        return None


def log_text(config: Path) -> str:
    """What the gateway wrote to its log so far."""
    path = config.parent / "gateway.log"
    return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def simulator(
    tmp_path: Path,
    broker_url: str,
    *,
    locks: int = 1,
    meters: bool = False,
    poll_s: float = 1.0,
    log_level: str = "WARNING",
) -> Iterator[tuple[Path, SimControl]]:
    """`sealgw sim` with a control channel on stdin; yields (gateway config, its controls)."""
    config, truth = tmp_path / "gw.toml", tmp_path / "truth.jsonl"
    args = [
        "sim", "--broker", broker_url, "--write-config", str(config), "--truth", str(truth),
        "--state-dir", str(tmp_path / "sim"), "--locks", str(locks), "--gateway-id", GATEWAY,
        "--meter-poll-s", str(poll_s), "--log-level", log_level,
    ]  # fmt: skip
    if not meters:
        args.append("--no-meters")
    child = Child("sim", args, tmp_path / "sim.log", control=True)
    try:
        control = SimControl(child)
        control.wait_line("sim ready", 60)
        assert control.quiet.wait(60), "the simulator never said it is quiet"
        yield config, control
    finally:
        child.stop(timeout=60)  # its own stop is tested in tests/e2e/test_sim_cli.py
        for stream in (child.process.stdin, child.process.stdout):
            if stream is not None:
                stream.close()


def sim_command(control: SimControl, line: str) -> None:
    """Send one control line to the simulator and insist on its `ok`."""
    control.command(line, timeout=10)
