"""One VM boot for the whole session: every test in tests/bluez reads the same `GuestRun`."""

from __future__ import annotations

import os

import pytest

from tests.bluez.harness import GuestRun, run_scenario


@pytest.fixture(scope="session")
def bluez_run(request: pytest.FixtureRequest) -> GuestRun:
    """The `locks` run: every scenario module in tests/bluez/guest_*.py, in one VM boot.

    Its timing line (wall and QEMU CPU seconds, each scenario's seconds) goes to the terminal.
    """
    if os.geteuid() != 0:
        pytest.fail("the BlueZ test bed needs root (debootstrap, chroot, /dev/vhci in the VM)")
    run = run_scenario("locks")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nBlueZ bed: {run.timing()}")
    return run
