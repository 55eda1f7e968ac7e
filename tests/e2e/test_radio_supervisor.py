"""The BLE radio as processes: `sealgw sim` + `sealgw run` + a broker, the HCI link through a relay.

The gateway reaches the simulator's controller over TCP HCI through a relay this test controls
(tests/fixtures/hci_relay.py): it can cut the link (and refuse reconnects), or freeze it (keep
the sockets, forward nothing, as a controller that stopped answering does), at once or at the
first HCI command of a kind, so that the gateway waits at exactly that step.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bumble import hci

from firmware_sim.mosquitto import MosquittoBroker
from master_station.subscriber import EventSubscriber
from tests.fixtures.hci_relay import HciRelay

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "gw-radio"
WAIT_S = 60.0


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def sim(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[tuple[Path, Any, HciRelay]]:
    """The simulator (2 locks, stdin control), its config pointed at a relay; health every 1 s."""
    with simulator(tmp_path, mosquitto) as running:
        yield running


@contextlib.contextmanager
def simulator(
    tmp_path: Path, mosquitto: MosquittoBroker, *, handheld: bool = False
) -> Iterator[tuple[Path, Any, HciRelay]]:
    """`sealgw sim` and its gateway config through a relay; handhelds over BLE when asked."""
    config = tmp_path / "gw.toml"
    with (tmp_path / "sim.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "sim", "--broker", mosquitto.url,
             "--write-config", str(config), "--state-dir", str(tmp_path / "sim"),
             "--locks", "2", "--no-meters", "--gateway-id", GATEWAY],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=_env(),
        )  # fmt: skip
    assert process.stdout is not None and process.stdin is not None
    ready = process.stdout.readline().decode()
    assert ready.startswith("sim ready"), ready
    text = config.read_text()
    match = re.search(r'adapter = "bumble:tcp-client:([0-9.]+):(\d+)"', text)
    assert match is not None, text
    relay = HciRelay((match.group(1), int(match.group(2))))
    text = text.replace(match.group(0), f'adapter = "bumble:tcp-client:127.0.0.1:{relay.port}"')
    text += "\n[health]\ninterval_s = 1\n"
    if handheld:  # the handheld GATT service on the locks' adapter needs the identity key
        text += '\n[handheld]\nenabled = true\nlisten = "ble"\n'
    config.write_text(text)
    if handheld:
        subprocess.run(
            [sys.executable, "-m", "gateway", "init", "-c", str(config)],
            check=True, capture_output=True, env=_env(),
        )  # fmt: skip
    try:
        yield config, process, relay
    finally:
        relay.close()
        process.stdin.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            # The simulator's own stop can hang after its controller's host was cut mid-link
            # (a simulator matter, not what these tests are about): end it.
            process.kill()
            process.wait(10)
        finally:
            process.stdout.close()


def start_gateway(config: Path) -> subprocess.Popen[bytes]:
    with (config.parent / "gateway.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL, stderr=log, env=_env(),
        )  # fmt: skip


def control(process: Any, line: str) -> None:
    """Send one control line to the simulator and check its answer."""
    process.stdin.write(f"{line}\n".encode())
    process.stdin.flush()
    while answer := process.stdout.readline().decode():
        if answer.startswith(("ok ", "error ")):
            assert answer.startswith("ok "), answer
            return
    raise AssertionError("the simulator closed its control channel")


def events_of(subscriber: EventSubscriber, kind: str) -> list[dict[str, Any]]:
    return [e for e in list(subscriber.events) if e["type"] == kind]


def radio_of(event: dict[str, Any]) -> object:
    locks = event["data"].get("locks") or {}
    return locks.get("radio") if isinstance(locks, dict) else None


def test_scanning_resumes_after_the_hci_link_drops_and_a_tamper_is_reported(
    sim: tuple[Path, Any, HciRelay], mosquitto: MosquittoBroker
) -> None:
    config, process, relay = sim
    with EventSubscriber(mosquitto.host, mosquitto.port) as subscriber:
        gateway = start_gateway(config)
        try:
            assert subscriber.wait_for(lambda: len(events_of(subscriber, "seal.boot")) >= 2, WAIT_S)

            relay.cut()
            assert subscriber.wait_for(
                lambda: bool(events_of(subscriber, "gateway.radio_down")), WAIT_S
            )
            assert subscriber.wait_for(  # down for a while: reopen attempts are refused
                lambda: (
                    sum(radio_of(e) == "down" for e in events_of(subscriber, "gateway.health")) >= 2
                ),
                WAIT_S,
            )
            relay.restore()
            assert subscriber.wait_for(
                lambda: bool(events_of(subscriber, "gateway.radio_up")), WAIT_S
            )

            control(process, "lock SL-0001 tamper")

            assert subscriber.wait_for(
                lambda: any(
                    e["subject"] == "SL-0001" for e in events_of(subscriber, "seal.tamper")
                ),
                WAIT_S,
            )
        finally:
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(30) == 0
    down = events_of(subscriber, "gateway.radio_down")
    assert len(down) == 1  # one alarm per outage
    assert down[0]["priority"] == "alarm"
    log = (config.parent / "gateway.log").read_text()
    assert "Traceback" not in log
    assert log.count("is down") == 1  # one clear line per outage


def test_the_daemon_stops_quickly_with_a_frozen_controller(
    sim: tuple[Path, Any, HciRelay], mosquitto: MosquittoBroker
) -> None:
    config, _process, relay = sim
    with EventSubscriber(mosquitto.host, mosquitto.port) as subscriber:
        gateway = start_gateway(config)
        try:
            assert subscriber.wait_for(lambda: len(events_of(subscriber, "seal.boot")) >= 2, WAIT_S)
            relay.freeze()
            started = time.monotonic()
            gateway.send_signal(signal.SIGTERM)
            code = gateway.wait(30)
            took = time.monotonic() - started
        finally:
            if gateway.poll() is None:
                gateway.kill()
                gateway.wait(10)
    assert code == 0
    assert took < 5.0, f"the daemon took {took:.1f} s to stop"


STOP_BOUND_S = 5.0

ACL = -1
"""Freeze on the host's first ACL packet instead of a command."""

FREEZE_POINTS = {
    # the adapter opening: its HCI Reset is never answered (the scanner and, with handhelds on
    # BLE, the handheld service both wait on that open)
    "opening": (hci.HCI_RESET_COMMAND, False),
    "opening-with-handhelds": (hci.HCI_RESET_COMMAND, True),
    # the open's last step for the handheld service: advertising enabled on the new Device
    "advertising": (hci.HCI_LE_SET_EXTENDED_ADVERTISING_ENABLE_COMMAND, True),
    # a lock's link being created after its first advert (the boot reconciliation)
    "connecting": (hci.HCI_LE_CREATE_CONNECTION_COMMAND, False),
    "connecting-with-handhelds": (hci.HCI_LE_CREATE_CONNECTION_COMMAND, True),
    # a lock's link is up and its first ATT request goes unanswered
    "link-up": (ACL, False),
    "link-up-with-handhelds": (ACL, True),
}


@pytest.mark.parametrize("point", list(FREEZE_POINTS))
def test_sigterm_while_the_controller_freezes_stops_within_5_s(
    point: str, tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    """Issue 13 item 8: whatever HCI step the controller stops answering at, a stop is prompt."""
    opcode, handheld = FREEZE_POINTS[point]
    with simulator(tmp_path, mosquitto, handheld=handheld) as (config, _process, relay):
        if opcode == ACL:
            relay.freeze_on_acl()
        else:
            relay.freeze_on(opcode)
        gateway = start_gateway(config)
        try:
            assert relay.frozen.wait(WAIT_S), f"the gateway never reached {point}"
            started = time.monotonic()
            gateway.send_signal(signal.SIGTERM)
            try:
                code = gateway.wait(STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                code = gateway.wait(60)
                pytest.fail(
                    f"frozen at {point}: still running {STOP_BOUND_S} s after SIGTERM "
                    f"(stopped after {time.monotonic() - started:.1f} s, exit {code})"
                )
        finally:
            if gateway.poll() is None:
                gateway.kill()
                gateway.wait(10)
    assert code == 0
    log = (config.parent / "gateway.log").read_text()
    assert "stopped" in log
    assert "Traceback" not in log
    assert "never retrieved" not in log
