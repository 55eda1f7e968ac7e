"""Stopping `python -m bench footprint`, `sealgw demo` or `sealgw sim` leaves no process behind.

Each program runs as a real subprocess with a unique environment marker that its children (broker,
master, simulator, gateway, socat) inherit. Once its children are up, the test signals it and
then scans /proc: nothing carrying the marker may survive. SIGTERM exercises the cleanup path;
SIGKILL, where no cleanup can run, exercises PR_SET_PDEATHSIG (firmware_sim/children.py).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.procs import REPO, kill_marked, marked_env, marked_pids, new_mark, poll_until

STARTUP_S = 30.0
GONE_S = 15.0


@pytest.fixture
def mark() -> Iterator[str]:
    value = new_mark()
    yield value
    kill_marked(value)  # a failed test must not leak its processes into the next ones


def _start(args: list[str], mark: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=marked_env(mark),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _children_up(mark: str, parent: int, *needles: str) -> bool:
    others = [cmd for pid, cmd in marked_pids(mark).items() if pid != parent]
    return all(any(needle in cmd for cmd in others) for needle in needles)


def _wait_up(proc: subprocess.Popen[bytes], condition: Callable[[], bool], what: str) -> None:
    """poll_until; if it fails, kill and reap the program so no un-waited Popen outlives the test
    (its ResourceWarning would otherwise fail whichever later test collects it)."""
    try:
        poll_until(condition, STARTUP_S, what)
    except AssertionError:
        proc.kill()
        proc.wait(GONE_S)
        raise


def _signal_and_check(proc: subprocess.Popen[bytes], mark: str, signum: int, log: Path) -> int:
    """Send `signum`; return the exit code once nothing marked is left (AssertionError if not)."""
    before = marked_pids(mark)
    proc.send_signal(signum)
    code = proc.wait(GONE_S + 10)
    try:
        poll_until(lambda: not marked_pids(mark), GONE_S, "every marked process gone")
    except AssertionError:
        survivors = marked_pids(mark)
        raise AssertionError(
            f"survivors after {signal.Signals(signum).name} (exit {code}): {survivors}; "
            f"running before: {before}; log: {log.read_text(errors='replace')[-1500:]}"
        ) from None
    assert len(before) >= 2  # the program and at least one child were really running
    return code


def test_bench_footprint_sigterm_leaves_no_process(mark: str, tmp_path: Path) -> None:
    log = tmp_path / "bench.log"
    proc = _start(["-m", "bench", "footprint", "--json"], mark, log)
    _wait_up(
        proc,
        lambda: _children_up(mark, proc.pid, "mosquitto", "bench.footprint_sim", "gateway run"),
        "broker, device simulator and gateway started",
    )
    assert _signal_and_check(proc, mark, signal.SIGTERM, log) == 128 + signal.SIGTERM


def _demo(mark: str, log: Path) -> subprocess.Popen[bytes]:
    proc = _start(["-m", "gateway", "demo", "--duration", "30", "--json"], mark, log)
    _wait_up(
        proc,
        lambda: _children_up(mark, proc.pid, "mosquitto", "master listen", " sim ", " run -c"),
        "broker, master, simulator and gateway started",
    )
    return proc


def test_demo_sigterm_leaves_no_process(mark: str, tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    assert _signal_and_check(_demo(mark, log), mark, signal.SIGTERM, log) == 128 + signal.SIGTERM


def test_demo_sigkill_takes_its_children_along(mark: str, tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    assert _signal_and_check(_demo(mark, log), mark, signal.SIGKILL, log) == -signal.SIGKILL


def _sim(mark: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "sim.log"
    args = ["-m", "gateway", "sim", "--locks", "2", "--state-dir", str(tmp_path / "sim")]
    proc = _start([*args, "--write-config", str(tmp_path / "gw.toml")], mark, log)
    poll_until(lambda: "sim ready:" in log.read_text(), STARTUP_S, "sim ready")
    assert _children_up(mark, proc.pid, "socat")  # the RTU and DL/T 645 pty pairs
    return proc, log


def test_sim_sigterm_leaves_no_process(mark: str, tmp_path: Path) -> None:
    proc, log = _sim(mark, tmp_path)
    assert _signal_and_check(proc, mark, signal.SIGTERM, log) == 0  # SIGTERM is its normal stop


def test_sim_sigkill_takes_socat_along(mark: str, tmp_path: Path) -> None:
    proc, log = _sim(mark, tmp_path)
    assert _signal_and_check(proc, mark, signal.SIGKILL, log) == -signal.SIGKILL
