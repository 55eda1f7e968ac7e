"""The batch encoding end to end: the uplink on a real mosquitto, the reference master behind it."""

from __future__ import annotations

import itertools
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from gateway.protocol.batch import decode_batch
from gateway.protocol.events import Priority
from master_station.ledger.factory import open_ledger
from master_station.ledger.models import Ledger
from master_station.listener import ListenerOptions, MasterListener
from tests.fixtures.fake_buffer import FakeEventBuffer
from tests.fixtures.mosquitto import Broker, SubscriberFactory, wait_until
from tests.fixtures.mqtt_proxy import MqttProxy
from tests.fixtures.uplink import GATEWAY, ROOT, make_uplink, running

BATCH = f"{ROOT}/batch"


def _reading(n: int) -> dict[str, object]:
    values = {
        f"voltage_l{phase}": {"value": round(229.5 + (n * phase) % 17 / 10, 1), "unit": "V"}
        for phase in (1, 2, 3)
    }
    values["energy_import"] = {"value": round(1000 + n * 0.37, 2), "unit": "kWh"}
    return {"meter": f"M-{n % 40:03d}", "protocol": "modbus", "values": values}


def _district(buf: FakeEventBuffer, readings: int) -> None:
    for n in range(readings):
        buf.add(Priority.TELEMETRY, "meter.reading", _reading(n))
        if n % 25 == 0:
            buf.add(Priority.STATE, "gateway.health", {"uptime_s": n, "buffer_depth": {}})
        if n % 60 == 0:
            buf.add(Priority.ALARM, "seal.tamper", {"lock_id": n, "cause": "shell_open"})


def _master(broker: Broker, tmp_path: Path, name: str) -> tuple[MasterListener, Ledger]:
    ledger = open_ledger(tmp_path / f"{name}.db")
    options = ListenerOptions(
        broker_url=broker.url, client_id=name, gateways=(GATEWAY,), tick_s=0.1, heal=False
    )
    return MasterListener(options, ledger), ledger


async def test_batches_reach_the_ledger_as_the_same_events(
    mosquitto: Broker, subscriber_factory: SubscriberFactory, tmp_path: Path
) -> None:
    buf = FakeEventBuffer()
    _district(buf, 300)
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/#"]).start()
    listener, ledger = _master(mosquitto, tmp_path, "m-batch")
    uplink = make_uplink(mosquitto.url, buf, encoding="batch", batch_max_events=64)
    with listener:
        async with running(uplink):
            await wait_until(lambda: buf.published == set(buf.events), 15, "all acknowledged")
        await wait_until(lambda: ledger.count() == len(buf.events), 15, "all in the ledger")
        stats = listener.stats
    stored = {e["seq"]: e for e in map(json.loads, _payloads(tmp_path / "m-batch.db"))}
    assert [json.dumps(stored[s], separators=(",", ":")).encode() for s in sorted(stored)] == [
        buf.events[s].payload for s in sorted(buf.events)
    ]  # canonical JSON is compact JSON with sorted members: byte for byte the same
    assert ledger.verify(GATEWAY).ok
    assert stats.invalid == 0
    batches = sub.on(BATCH)
    assert sub.on(f"{ROOT}/events/meter.reading") == []
    assert len(batches) < len(buf.events) / 5  # runs end where another priority cuts in
    assert stats.batches == len(batches)
    first = [decode_batch(m.payload, GATEWAY) for m in batches]
    assert first[0].priority is Priority.ALARM  # alarms first, then seq order per priority
    assert all(b.priority <= c.priority for b, c in itertools.pairwise(first))
    assert uplink.stats.acked == len(buf.events)
    ledger.close()


async def test_a_paced_backlog_still_goes_out_in_full_runs(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    """The drain rate counts events, not messages: runs are not cut to the tokens at hand,
    nor where a fetch ended (the pump reads on before it sends a run that could grow)."""
    buf = FakeEventBuffer()
    for n in range(300):
        buf.add(Priority.TELEMETRY, "meter.reading", _reading(n))
    size = max(len(e.payload) for e in buf.events.values())
    sub = await subscriber_factory(mosquitto, [BATCH]).start()
    uplink = make_uplink(
        mosquitto.url,
        buf,
        encoding="batch",
        drain_rate_per_s=150,  # the burst is 150 events; the rest waits for tokens
        batch_max_events=64,  # a paced pump fetches a run's worth at a time...
        batch_max_bytes=max(1024, 30 * size),  # ... and the size bound cuts runs at 30
    )
    async with running(uplink):
        await wait_until(lambda: buf.published == set(buf.events), 15, "all acknowledged")
    runs = [decode_batch(m.payload, GATEWAY) for m in sub.messages]
    assert [len(run.payloads) for run in runs] == [30] * 10
    assert [p for run in runs for p in run.payloads] == [e.payload for e in buf.events.values()]


async def test_a_dropped_connection_resends_exactly_the_same_events(
    mosquitto: Broker, tmp_path: Path
) -> None:
    buf = FakeEventBuffer()
    _district(buf, 600)
    proxy = await MqttProxy(mosquitto.host, mosquitto.port).start()
    listener, ledger = _master(mosquitto, tmp_path, "m-drop")
    uplink = make_uplink(proxy.url, buf, encoding="batch", batch_max_events=16)
    try:
        with listener:
            async with running(uplink):
                await wait_until(lambda: len(buf.published) > 0, 10, "first batches acked")
                proxy.drop_all()
                await wait_until(lambda: uplink.stats.reconnects >= 1, 10, "reconnected")
                await wait_until(lambda: buf.published == set(buf.events), 20, "all acked")
            await wait_until(lambda: ledger.count() == len(buf.events), 15, "ledger complete")
            stats = listener.stats
    finally:
        await proxy.close()
    assert stats.conflicts == 0 and stats.invalid == 0
    assert ledger.verify(GATEWAY).ok
    assert ledger.event_ids() == {json.loads(e.payload)["id"] for e in buf.events.values()}
    ledger.close()


async def test_alarms_do_not_wait_for_the_linger(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    buf = FakeEventBuffer(start=datetime.now(UTC))  # fresh events: they may linger
    sub = await subscriber_factory(mosquitto, [BATCH]).start()
    uplink = make_uplink(mosquitto.url, buf, encoding="batch", batch_linger_s=600)
    async with running(uplink):
        for n in range(5):
            buf.add(Priority.TELEMETRY, "meter.reading", _reading(n))
        buf.add(Priority.ALARM, "seal.tamper", {"lock_id": 1})
        (alarm,) = await sub.wait_for(lambda m: len(m) >= 1)
        assert decode_batch(alarm.payload, GATEWAY).priority is Priority.ALARM
        await wait_until(lambda: buf.published == {6}, 5, "the alarm marked published")
        assert len(sub.messages) == 1  # the readings linger
    # a clean stop flushes what lingers
    messages = await sub.wait_for(lambda m: len(m) >= 2)
    held = decode_batch(messages[1].payload, GATEWAY)
    assert held.priority is Priority.TELEMETRY
    assert len(held.payloads) == 5
    assert buf.published == set(buf.events)


async def test_a_batch_that_does_not_decode_is_one_problem_and_nothing_stops(
    mosquitto: Broker, subscriber_factory: SubscriberFactory, tmp_path: Path
) -> None:
    buf = FakeEventBuffer()
    _district(buf, 20)
    listener, ledger = _master(mosquitto, tmp_path, "m-bad")
    pub = await subscriber_factory(mosquitto, [f"{ROOT}/nothing"]).start()
    uplink = make_uplink(mosquitto.url, buf, encoding="batch")
    with listener:
        pub.publish(BATCH, b"\x11garbage that is not deflate")
        pub.publish(BATCH, b"\x10\x83\x01\x02\x03")
        await wait_until(lambda: listener.stats.invalid == 2, 10, "two invalid batches")
        async with running(uplink):
            await wait_until(lambda: buf.published == set(buf.events), 10, "all acknowledged")
        await wait_until(lambda: ledger.count() == len(buf.events), 10, "ledger complete")
    problems = [p for p in ledger.problems(GATEWAY) if "batch" in p.detail]
    assert len(problems) == 2
    assert all(p.kind == "invalid" for p in problems)
    report = ledger.verify(GATEWAY)
    assert report.verified_seq == len(buf.events)
    assert not report.gaps
    assert len(report.problems) == 2  # exactly the two bad messages
    ledger.close()


async def test_topic_aliases_are_used_when_the_broker_allows_them(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    buf = FakeEventBuffer()
    _district(buf, 50)
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/batch"]).start()
    uplink = make_uplink(mosquitto.url, buf, encoding="batch", batch_max_events=8)
    async with running(uplink):
        await wait_until(lambda: buf.published == set(buf.events), 10, "all acknowledged")
        conn = uplink._reconnect.connection
        assert conn is not None
        assert conn.topic_alias_maximum > 0  # mosquitto announces max_topic_alias (10)
        assert conn._aliases == {BATCH: 1}
    assert len(sub.messages) > 5
    assert {m.topic for m in sub.messages} == {BATCH}  # the broker resolves the alias


def _payloads(path: Path) -> list[bytes]:
    """The payloads as the ledger stores them, by seq."""
    conn = sqlite3.connect(path)
    try:
        return [bytes(row[0]) for row in conn.execute("SELECT payload FROM events ORDER BY seq")]
    finally:
        conn.close()
