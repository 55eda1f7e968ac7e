"""The master listener against a real mosquitto: exactly once, shared subscriptions, resends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from master_station.ledger.factory import open_ledger
from master_station.ledger.models import Ledger
from master_station.listener import ListenerOptions, MasterListener
from tests.fixtures.master import ROOT, chain, cli_listener, publish_events, publisher
from tests.fixtures.mosquitto import Broker, SubscriberFactory, wait_until


def options(broker: Broker, **kw: Any) -> ListenerOptions:
    return ListenerOptions(broker_url=f"mqtt://{broker.host}:{broker.port}", tick_s=0.1, **kw)


async def test_events_land_in_the_ledger_exactly_once(mosquitto: Broker, tmp_path: Path) -> None:
    events = chain("gw-1", 30) + chain("gw-2", 30)
    ledger = open_ledger(tmp_path / "ledger.db")
    with publisher(mosquitto) as pub:
        pub.publish(f"{ROOT}/gw-1/status", b'{"gateway":"gw-1","state":"online"}', 1, True)
        state = b'{"seal":"SL-1","state":"sealed","wire":"intact","tamper":false,"online":true}'
        pub.publish(f"{ROOT}/gw-1/seals/SL-1/state", state, 1, True).wait_for_publish(5)
        with MasterListener(options(mosquitto, client_id="m-once"), ledger) as listener:
            publish_events(pub, events + events[:5] + events[40:45])
            await wait_until(lambda: listener.stats.received == 70, 15, "70 events received")
            await wait_until(lambda: listener.stats.seal_states == 1, 5, "retained seal state")
            stats = listener.stats
    assert ledger.event_ids() == {e.id for e in events}
    assert (stats.stored, stats.duplicates, stats.conflicts) == (60, 10, 0)
    assert [s.payload["state"] for s in ledger.statuses()] == ["online"]
    assert [(s.gateway, s.key) for s in ledger.seal_states()] == [("gw-1", "SL-1")]
    assert ledger.verify("gw-1").ok and ledger.verify("gw-2").ok
    ledger.close()


async def test_a_short_master_outage_loses_nothing(mosquitto: Broker, tmp_path: Path) -> None:
    events = chain("gw-1", 40)
    ledger = open_ledger(tmp_path / "ledger.db")
    opts = options(mosquitto, client_id="m-persistent", gateways=("gw-1",))
    with publisher(mosquitto) as pub:
        with MasterListener(opts, ledger) as listener:
            publish_events(pub, events[:10])
            await wait_until(lambda: listener.stats.stored == 10, 10, "first ten")
        publish_events(pub, events[10:])  # nobody listening: the broker queues for the session
        with MasterListener(opts, ledger) as listener:
            await wait_until(lambda: ledger.count() == 40, 10, "the queued thirty")
    assert ledger.verify("gw-1").ok
    ledger.close()


async def test_two_masters_on_one_shared_subscription_split_the_events(
    mosquitto: Broker, tmp_path: Path
) -> None:
    events = chain("gw-1", 60) + chain("gw-2", 60)
    ledger_a = open_ledger(tmp_path / "a.db")
    path_b = tmp_path / "b.db"
    opts = options(mosquitto, client_id="m-a", share_group="masters")
    with (
        cli_listener(mosquitto, path_b, "--share-group", "masters", "--client-id", "m-b"),
        MasterListener(opts, ledger_a) as listener_a,
        publisher(mosquitto) as pub,
    ):
        assert listener_a.healing is False  # split chains in separate ledgers: no resends
        publish_events(pub, events)
        ledger_b = open_ledger(path_b)
        await wait_until(lambda: ledger_a.count() + ledger_b.count() >= 120, 20, "all events")
        ids_a, ids_b = ledger_a.event_ids(), ledger_b.event_ids()
        ledger_b.close()
    assert ids_a and ids_b, "both masters must receive a share"
    assert not ids_a & ids_b
    assert ids_a | ids_b == {e.id for e in events}
    ledger_a.close()


async def test_a_gap_makes_the_master_ask_for_a_resend(
    mosquitto: Broker, tmp_path: Path, subscriber_factory: SubscriberFactory
) -> None:
    events = chain("gw-1", 6)
    gateway = await subscriber_factory(mosquitto, [f"{ROOT}/gw-1/cmd/#"]).start()
    ledger: Ledger = open_ledger(tmp_path / "ledger.db")
    opts = options(mosquitto, client_id="m-heal", gap_grace_s=0.2, resend_interval_s=5)
    with publisher(mosquitto) as pub, MasterListener(opts, ledger) as listener:
        assert listener.healing is True
        publish_events(pub, [e for e in events if e.seq != 3])
        received = await gateway.wait_for(lambda ms: bool(ms), 10)
        request = received[0]
        body = json.loads(request.payload)
        assert request.topic == f"{ROOT}/gw-1/cmd/resend"
        assert (body["from_seq"], body["to_seq"]) == (3, 3)
        assert request.correlation_data == body["id"].encode()
        publish_events(pub, [events[2]])  # the gateway requeues seq 3 ...
        reply = {"id": body["id"], "ok": True, "result": {"requeued": 1, "first_available_seq": 3}}
        gateway.publish(listener.response_topic("gw-1"), json.dumps(reply).encode())
        await wait_until(lambda: listener.stats.resend_replies == 1, 10, "the reply")
        stats = listener.stats
    assert ledger.verify("gw-1").ok
    assert stats.resend_requests == 1 and stats.resend_requeued == 1
    assert not [p for p in ledger.problems() if p.kind == "gone"]
    ledger.close()


async def test_a_range_the_gateway_no_longer_holds_is_recorded_as_gone(
    mosquitto: Broker, tmp_path: Path, subscriber_factory: SubscriberFactory
) -> None:
    events = chain("gw-1", 5)
    gateway = await subscriber_factory(mosquitto, [f"{ROOT}/gw-1/cmd/resend"]).start()
    ledger = open_ledger(tmp_path / "ledger.db")
    opts = options(mosquitto, client_id="m-gone", gap_grace_s=0.1, resend_interval_s=60)
    with publisher(mosquitto) as pub, MasterListener(opts, ledger) as listener:
        publish_events(pub, [events[0], events[4]])
        body = json.loads((await gateway.wait_for(lambda ms: bool(ms), 10))[0].payload)
        assert (body["from_seq"], body["to_seq"]) == (2, 4)
        reply = {
            "id": body["id"],
            "ok": True,
            "result": {"requeued": 0, "first_available_seq": None},
        }
        gateway.publish(listener.response_topic("gw-1"), json.dumps(reply).encode())
        await wait_until(lambda: bool(ledger.problems("gw-1")), 10, "the gone problem")
    assert [(p.kind, p.seq) for p in ledger.problems("gw-1")] == [("gone", 2)]
    assert ledger.gaps("gw-1") == [(2, 4)]  # still a hole in the chain, and reported as one
    ledger.close()
