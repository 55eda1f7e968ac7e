"""Issue 13 item 5: a meter cover opened and closed while the gateway was down is reported once.

A real daemon polls the simulator's DL/T 645 meters. The gateway is SIGKILLed; the cover of
M-645-1 (mapped to seal SL-0001) is opened and closed in the simulator; after the restart the
counter step is reported as exactly one meter.event, with theft.suspected when the seal was
sealed. A cover opened while the gateway runs and still open across a second SIGKILL is not
reported again under a new id.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.mosquitto import MosquittoBroker
from master_station.subscriber import EventSubscriber
from tests.e2e.faults.daemon import GATEWAY, sim_command, simulator, start_gateway, stop_gateway

METER, SEAL = "M-645-1", "SL-0001"


@pytest.fixture
def sim(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[tuple[Path, Any]]:
    with simulator(tmp_path, mosquitto.url, meters=True, poll_s=0.5) as running:
        yield running


def _events(subscriber: EventSubscriber, type_: str) -> list[dict[str, Any]]:
    """The meter's events of one type, one per id (QoS 1 may deliver a copy twice)."""
    found = {
        e["id"]: e for e in list(subscriber.events) if e["type"] == type_ and e["subject"] == METER
    }
    return list(found.values())


def _covers(subscriber: EventSubscriber) -> list[dict[str, Any]]:
    return [e for e in _events(subscriber, "meter.event") if e["data"]["event"] == "cover_opened"]


def _polled_since_start(subscriber: EventSubscriber, starts: int) -> bool:
    """A reading of the meter after the `starts`-th gateway.started (the first poll reports)."""
    events = list(subscriber.events)
    started = sorted(e["seq"] for e in events if e["type"] == "gateway.started")
    if len(started) < starts:
        return False
    return any(
        e["type"] == "meter.reading" and e["subject"] == METER and e["seq"] > started[starts - 1]
        for e in events
    )


def _seal_state(subscriber: EventSubscriber) -> str | None:
    raw = subscriber.retained(f"sealgw/v1/{GATEWAY}/seals/{SEAL}/state")
    state = None if raw is None else str(json.loads(raw).get("state"))
    return None if state == "unknown" else state  # published before the first advert


def test_cover_opened_during_downtime_is_reported_exactly_once(
    sim: tuple[Path, Any], mosquitto: MosquittoBroker
) -> None:
    config, process = sim
    with EventSubscriber(mosquitto.host, mosquitto.port) as subscriber:
        gateway = start_gateway(config)
        assert subscriber.wait_for(lambda: _polled_since_start(subscriber, 1), 60)
        assert subscriber.wait_for(lambda: _seal_state(subscriber) is not None, 60)
        seal_before = _seal_state(subscriber)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)

        sim_command(process, f"meter {METER} cover_open")
        sim_command(process, f"meter {METER} cover_close")
        gateway = start_gateway(config)
        try:
            assert subscriber.wait_for(lambda: _polled_since_start(subscriber, 2), 60)
            assert subscriber.wait_for(lambda: len(_covers(subscriber)) >= 1, 10)

            sim_command(process, f"meter {METER} cover_open")  # open across the next SIGKILL
            assert subscriber.wait_for(lambda: len(_covers(subscriber)) >= 2, 30)
            gateway.send_signal(signal.SIGKILL)
            gateway.wait(10)
            gateway = start_gateway(config)
            assert subscriber.wait_for(lambda: _polled_since_start(subscriber, 3), 60)
        finally:
            code = stop_gateway(gateway)
        assert code == 0

    covers = _covers(subscriber)
    assert len(covers) == 2, covers
    downtime, live = sorted(covers, key=lambda e: e["seq"])
    assert downtime["data"]["source"] == "counter"
    assert live["data"]["source"] in ("status", "status+counter")
    thefts = _events(subscriber, "theft.suspected")
    if seal_before == "sealed":
        # the downtime opening fires; the live one falls in the rule's debounce window
        assert [t["data"]["evidence"]["source"] for t in thefts] == ["counter"], thefts
    else:
        assert thefts == []
