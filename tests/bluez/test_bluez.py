"""The production radio path for real: the gateway daemon on bleak's BlueZ backend, in a VM.

One VM boot (tests/bluez/harness.py, conftest.py; docs/ble-transport.md) runs every scenario
of guest_scenarios.py against `sealgw run` with `ble.adapter = "bluez:hci0"`. Each test below
asserts one scenario's outcome on what reached the broker inside the VM, or what crossed the
gateway's HCI (btmon's file, read here: tests/bluez/trace.py). A failure prints the guest
console, the scenarios' summary and the tails of the scenario, simulator, gateway,
bluetoothd and btmon logs.
"""

from __future__ import annotations

import pytest

from tests.bluez.harness import GuestRun
from tests.bluez.trace import Link, operation_trips, peak_links

pytestmark = [pytest.mark.bluez, pytest.mark.timeout(1500)]

MAX_ROUND_TRIPS_PER_OP = 2


def test_adverts_are_verified_from_an_active_scan_on_bluez(bluez_run: GuestRun) -> None:
    bluez_run.passed("adverts")


def test_a_tamper_is_noticed_from_the_advert_without_connecting(bluez_run: GuestRun) -> None:
    bluez_run.passed("tamper_without_connecting")


def test_lock_logs_are_reconciled_over_bluez_connections_exactly_once(bluez_run: GuestRun) -> None:
    bluez_run.passed("reconcile_over_bluez")


def test_twenty_locks_are_swept_through_the_scheduler_within_a_budget_of_five(
    bluez_run: GuestRun,
) -> None:
    result = bluez_run.passed("sweep_20_locks_budget_5")
    began, ended = result["window"]
    swept = {link.peer for link in bluez_run.links if began <= link.up <= ended}
    assert len(swept) == result["locks"], f"links in the sweep to {sorted(swept)}"
    # The budget holds on the wire for the whole run, not only during the sweep.
    assert 1 <= peak_links(bluez_run.links) <= result["budget"], _links(bluez_run.links)


def test_unseal_and_seal_under_a_ticket_take_at_most_two_round_trips_each(
    bluez_run: GuestRun,
) -> None:
    result = bluez_run.passed("ops_under_ticket")
    for op in result["ops"]:
        links = [
            link
            for link in bluez_run.links
            if link.peer == op["address"] and op["t0"] <= link.up <= op["t1"]
        ]
        assert len(links) == 1, f"{op['op']}: links {links}"
        trips = operation_trips(links[0])
        assert trips.operation <= MAX_ROUND_TRIPS_PER_OP, f"{op['op']}: {trips}"
        assert trips.messages[:2] == ("CHALLENGE_REQUEST", "COMMAND"), trips


def test_a_lock_gone_mid_operation_fails_clearly_and_nothing_is_stuck(bluez_run: GuestRun) -> None:
    bluez_run.passed("lock_gone_mid_operation")


def test_a_gateway_sigkilled_mid_command_reconciles_the_locks_logs_exactly_once(
    bluez_run: GuestRun,
) -> None:
    bluez_run.passed("sigkill_mid_command")


def test_the_daemon_recovers_from_a_bluetoothd_restart_without_restarting(
    bluez_run: GuestRun,
) -> None:
    bluez_run.passed("bluetoothd_restart")


def test_the_guest_ran_every_scenario_and_exited_cleanly(bluez_run: GuestRun) -> None:
    assert bluez_run.rc == 0, bluez_run.report()


def _links(links: list[Link]) -> str:
    return "\n".join(f"{link.peer} {link.up:.3f}-{link.down}" for link in links)


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
    bluez_run.passed(name)
