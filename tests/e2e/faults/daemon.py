"""Helpers of the fault tests: a gateway process, its log, and a black-holed TCP port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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
def black_hole() -> Iterator[int]:
    """A loopback port whose SYNs go unanswered: a listener that never accepts, backlog full.

    Linux drops a SYN when the listener's accept queue is full, so a connect() there hangs
    until its own timeout, as it does towards a firewalled broker.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):  # fill the accept queue; later SYNs are dropped
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def syn_sent_to(port: int) -> int:
    """How many sockets on this host wait in SYN_SENT for 127.0.0.1:`port`.

    The black hole's own queue fillers count too: compare with the count before the gateway.
    """
    wanted = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[2] == wanted and row.split()[3] == "02")


@contextlib.contextmanager
def simulator(
    tmp_path: Path,
    broker_url: str,
    *,
    locks: int = 1,
    meters: bool = False,
    poll_s: float = 1.0,
    log_level: str = "WARNING",
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """`sealgw sim` with a control channel on stdin; yields (gateway config, process)."""
    config, truth = tmp_path / "gw.toml", tmp_path / "truth.jsonl"
    argv = [
        sys.executable, "-m", "gateway", "sim", "--broker", broker_url,
        "--write-config", str(config), "--truth", str(truth), "--state-dir", str(tmp_path / "sim"),
        "--locks", str(locks), "--gateway-id", GATEWAY, "--meter-poll-s", str(poll_s),
        "--log-level", log_level,
    ]  # fmt: skip
    if not meters:
        argv.append("--no-meters")
    with (tmp_path / "sim.log").open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
        )
    assert process.stdout is not None
    try:
        ready = process.stdout.readline().decode()
        assert ready.startswith("sim ready"), ready
        assert process.stdout.readline().startswith(b"sim quiet")
        yield config, process
    finally:
        process.terminate()  # its own stop is tested in tests/e2e/test_sim_cli.py
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def sim_command(process: subprocess.Popen[bytes], line: str) -> None:
    """Send one control line to the simulator and insist on its `ok`."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(line.encode() + b"\n")
    process.stdin.flush()
    answer = process.stdout.readline().decode().strip()
    assert answer == f"ok {line}", answer
