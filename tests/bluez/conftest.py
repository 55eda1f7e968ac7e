"""One VM boot for the whole session: every test in tests/bluez reads the same `GuestRun`."""

from __future__ import annotations

import os

import pytest

from tests.bluez.harness import GuestRun, run_scenario

_RUNS: list[GuestRun] = []


@pytest.fixture(scope="session")
def bluez_run() -> GuestRun:
    """The `locks` run: every scenario module in tests/bluez/guest_*.py, in one VM boot."""
    if os.geteuid() != 0:
        pytest.fail("the BlueZ test bed needs root (debootstrap, chroot, /dev/vhci in the VM)")
    run = run_scenario("locks")
    _RUNS.append(run)
    return run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The run's timing line (wall and QEMU CPU seconds, each scenario's seconds)."""
    for run in _RUNS:
        terminalreporter.write_line(f"BlueZ bed: {run.timing()}")
