"""Issue 13 item 8: SIGTERM early in start-up, with Modbus meters polling, exits in under 5 s.

A stop within about a second of the start used to hang now and then: a meter poll cancelled
while its line's connect completed swallowed the cancellation (Python 3.11's asyncio.wait_for
returns the result when the awaited task is already done), so the `meters` component never
finished stopping. Here a real `sealgw run` polls the simulator's meters (Modbus TCP, Modbus RTU
on a socat pty, DL/T 645), plus a Modbus TCP bus whose port swallows SYNs and an RTU bus on a
pty that never answers, and is SIGTERMed again and again at moments early in its start-up.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.mosquitto import MosquittoBroker
from firmware_sim.network import black_hole
from tests.e2e.faults.daemon import log_text, simulator, start_gateway

STOP_BOUND_S = 5.0
STARTS = 12

DEAD_BUSES = """
[[meters.buses]]
name = "dead-tcp"
transport = "modbus-tcp://127.0.0.1:{port}"
timeout_s = 0.5

[[meters.buses]]
name = "dead-rtu"
transport = "rtu://{pty}?baud=9600"
timeout_s = 0.5

[[meters.meters]]
id = "M-DEAD-TCP"
bus = "dead-tcp"
profile = "dds-single-phase"
unit = 1
poll_s = 0.2

[[meters.meters]]
id = "M-DEAD-RTU"
bus = "dead-rtu"
profile = "dds-single-phase"
unit = 1
poll_s = 0.2
"""


@pytest.fixture
def silent_pty(tmp_path: Path) -> Iterator[Path]:
    """One end of a socat pty pair whose other end nobody reads or writes."""
    ends = (tmp_path / "silent-far", tmp_path / "silent-gw")
    socat = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={ends[0]}", f"pty,raw,echo=0,link={ends[1]}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not all(end.exists() for end in ends):
            assert socat.poll() is None, f"socat exited with {socat.returncode}"
            assert time.monotonic() < deadline, "socat made no ptys within 10 s"
            time.sleep(0.02)
        yield ends[1]
    finally:
        socat.terminate()
        socat.wait(10)


def _wait_for_line(config: Path, start: int, needle: str, deadline: float) -> bool:
    """Whether `needle` appears in the log after offset `start` before `deadline`."""
    while time.monotonic() < deadline:
        if needle in log_text(config)[start:]:
            return True
        time.sleep(0.005)
    return False


# the moment of the SIGTERM: right at "running", once a Modbus line connected (the first poll
# began), and a few fractions of a second into the polling
MOMENTS = ("running", "connected", "running+0.15", "running+0.4")


def test_sigterm_early_in_start_up_with_meters_exits_promptly(
    tmp_path: Path, mosquitto: MosquittoBroker, silent_pty: Path
) -> None:
    with (
        simulator(tmp_path, mosquitto.url, meters=True, poll_s=0.2) as (config, _),
        black_hole() as dead_port,
    ):
        with config.open("a") as toml:
            toml.write(DEAD_BUSES.format(port=dead_port, pty=silent_pty))
        slow: list[str] = []
        for run in range(STARTS):
            moment = MOMENTS[run % len(MOMENTS)]
            needle, _, delay = moment.partition("+")
            start = len(log_text(config))
            gateway = start_gateway(config)
            try:
                assert _wait_for_line(config, start, needle, time.monotonic() + 60), (
                    f"run {run}: {needle!r} never logged:\n{log_text(config)[start:][-3000:]}"
                )
                time.sleep(float(delay or 0))  # the moment under test, not a wait for a state
                gateway.terminate()
                try:
                    code = gateway.wait(STOP_BOUND_S)
                except subprocess.TimeoutExpired:
                    slow.append(f"run {run} ({moment})")
                    continue
                assert code == 0, f"run {run} ({moment}): exit code {code}"
                assert "stopped" in log_text(config)[start:], f"run {run}: no 'stopped' line"
                assert "abandoned" not in log_text(config)[start:], (
                    f"run {run} ({moment}): a component did not finish stopping:\n"
                    f"{log_text(config)[start:][-3000:]}"
                )
            finally:
                if gateway.poll() is None:
                    gateway.kill()
                    gateway.wait()
    assert not slow, f"still running {STOP_BOUND_S} s after SIGTERM: {', '.join(slow)}"
