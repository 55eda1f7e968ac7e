"""The production radio path for real: the gateway on bleak's BlueZ backend, in a VM.

Each test boots the BlueZ test bed once (tests/bluez/harness.py; docs/ble-transport.md) and
asserts on what reached the broker and the master's ledger inside it. A failure prints the guest
console and the tails of bluetoothd's, btmon's and the scenario's logs.
"""

from __future__ import annotations

import os

import pytest

from tests.bluez.harness import run_scenario

pytestmark = [pytest.mark.bluez, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module", autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the BlueZ test bed needs root (debootstrap, chroot, /dev/vhci in the VM)")


def test_the_scripted_district_day_runs_with_the_gateway_on_bluez() -> None:
    run = run_scenario("demo", duration_s=60)
    assert run.rc == 0, run.report()
    summary = run.summary
    failed = [step for step in summary.get("steps", []) if not step["ok"]]
    assert summary.get("steps_failed") == 0 and not failed, (failed, run.report())
    types = summary["events_per_type"]
    assert summary["lock_online_rate"] == 1.0, run.report()  # every lock's adverts verified
    assert types.get("seal.tamper", 0) >= 1  # noticed from the advert, without connecting
    assert types.get("seal.unsealed", 0) >= 1 and types.get("seal.sealed", 0) >= 1
    assert summary["ledger_seq_gaps"] == 0
    assert summary["ledger_chain_verified"] is True
    assert summary["ledger_equals_published"] is True
