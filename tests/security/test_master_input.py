"""Hostile broker input against the master listener on a real mosquitto (security issue 11).

A retained message is delivered again at every (re)subscription, so a message that stops the
ledger worker stops it after every restart too. Each hostile message must end as one problem
record while every gateway's events keep landing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from master_station.ledger.factory import open_ledger
from master_station.listener import ListenerOptions, MasterListener
from tests.fixtures.master import chain
from tests.fixtures.mosquitto import Broker, wait_until

ROOT = "sealgw/v1"
DEEP = b'{"state":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@contextmanager
def gateway_client(broker: Broker) -> Iterator[paho.Client]:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def _listener(broker: Broker, ledger_path: Path) -> MasterListener:
    url = f"mqtt://{broker.host}:{broker.port}"
    options = ListenerOptions(broker_url=url, client_id="m-hostile", tick_s=0.1)
    return MasterListener(options, open_ledger(ledger_path))


async def test_a_retained_deeply_nested_status_does_not_stop_the_master(
    mosquitto: Broker, tmp_path: Path
) -> None:
    events = chain("gw-good", 20)
    path = tmp_path / "ledger.db"
    with gateway_client(mosquitto) as pub:
        pub.publish(f"{ROOT}/gw-evil/status", DEEP, qos=1, retain=True).wait_for_publish(5)
        for restart in range(2):  # the retained bomb comes again after the restart
            with _listener(mosquitto, path) as listener:
                batch = events[restart * 10 : restart * 10 + 10]
                for event in batch:
                    topic = f"{ROOT}/{event.gateway}/events/{event.type}"
                    pub.publish(topic, event.payload, qos=1).wait_for_publish(5)
                await wait_until(
                    lambda n=10 * (restart + 1): listener.ledger.count() == n,
                    15,
                    "gw-good's events stored past the bomb",
                )
                ledger = listener.ledger
            ledger.close()
    ledger = open_ledger(path)
    problems = [p for p in ledger.problems("gw-evil") if p.kind == "bad_status"]
    assert len(problems) == 1, problems
    assert "nesting deeper than" in problems[0].detail
    assert ledger.statuses() == []
    assert ledger.verify("gw-good").ok
    ledger.close()


async def test_an_oversized_seal_state_and_a_bad_event_are_problems_not_stops(
    mosquitto: Broker, tmp_path: Path
) -> None:
    huge = b'{"seal":"SL-1","pad":"' + b"x" * 400_000 + b'"}'
    events = chain("gw-good", 5)
    with _listener(mosquitto, tmp_path / "ledger.db") as listener, gateway_client(mosquitto) as pub:
        pub.publish(f"{ROOT}/gw-evil/seals/SL-1/state", huge, qos=1, retain=True)
        pub.publish(f"{ROOT}/gw-evil/events/seal.sealed", DEEP, qos=1)
        for event in events:
            pub.publish(f"{ROOT}/gw-good/events/{event.type}", event.payload, qos=1)
        await wait_until(lambda: listener.ledger.count() == 5, 15, "good events stored")
        await wait_until(lambda: len(listener.ledger.problems("gw-evil")) == 2, 15, "problems")
        kinds = sorted(p.kind for p in listener.ledger.problems("gw-evil"))
        assert listener.ledger.seal_states() == []
    assert kinds == ["bad_state", "invalid"]
    listener.ledger.close()
