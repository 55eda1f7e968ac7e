"""The production radio path for real: the gateway daemon on bleak's BlueZ backend, in a VM.

One VM boot (tests/bluez/harness.py; docs/ble-transport.md) runs every lock scenario of
guest_scenarios.py against `sealgw run` with `ble.adapter = "bluez:hci0"`, and each test below
asserts one scenario's outcome on what reached the broker inside the VM. A failure prints the
guest console and the tails of bluetoothd's, btmon's, the simulator's and the gateway's logs.
"""

from __future__ import annotations

import os

import pytest

from tests.bluez.harness import GuestRun, run_scenario

pytestmark = [pytest.mark.bluez, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def bluez_run() -> GuestRun:
    if os.geteuid() != 0:
        pytest.fail("the BlueZ test bed needs root (debootstrap, chroot, /dev/vhci in the VM)")
    return run_scenario("locks")


def _scenario(run: GuestRun, name: str) -> None:
    result = run.summary.get(name)
    assert result is not None, f"scenario {name} did not run\n{run.report()}"
    assert result["ok"], f"{name}: {result.get('error')}\n{run.report()}"


def test_adverts_are_verified_from_an_active_scan_on_bluez(bluez_run: GuestRun) -> None:
    _scenario(bluez_run, "adverts")


def test_a_tamper_is_noticed_from_the_advert_without_connecting(bluez_run: GuestRun) -> None:
    _scenario(bluez_run, "tamper_without_connecting")


def test_lock_logs_are_reconciled_over_bluez_connections_exactly_once(bluez_run: GuestRun) -> None:
    _scenario(bluez_run, "reconcile_over_bluez")


def test_a_gateway_sigkilled_on_bluez_reconciles_what_happened_meanwhile(
    bluez_run: GuestRun,
) -> None:
    _scenario(bluez_run, "sigkill_and_reconcile")


def test_the_guest_ran_every_scenario_and_exited_cleanly(bluez_run: GuestRun) -> None:
    assert bluez_run.rc == 0, bluez_run.report()


HANDHELD_SCENARIOS = (
    "bluetoothd_with_deploy_settings",
    "handheld_link_security",
    "handheld_pairs_over_ble",
    "handheld_unseals_over_ble",
    "handheld_after_bluetoothd_restart",
)
"""guest_handheld.py: a handheld over BLE, after the lock scenarios in the same boot."""


@pytest.mark.parametrize("name", HANDHELD_SCENARIOS)
def test_a_handheld_pairs_and_unseals_over_ble_on_bluez(bluez_run: GuestRun, name: str) -> None:
    _scenario(bluez_run, name)
