"""The MQTT uplink against a real mosquitto: ordering, status, outages, TLS, auth, fallback."""

from __future__ import annotations

import itertools
import json
import logging
import random
from pathlib import Path

import pytest

from gateway.drivers.pacing import Backoff, TokenBucket
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import Priority
from tests.fixtures.fake_buffer import FakeEventBuffer
from tests.fixtures.mosquitto import Broker, BrokerFactory, Pki, SubscriberFactory, wait_until
from tests.fixtures.mqtt_proxy import MqttProxy
from tests.fixtures.uplink import ROOT, SpyClock, make_uplink, running, seqs_of

STATUS = f"{ROOT}/status"


def _mixed_backlog(buf: FakeEventBuffer) -> None:
    order = [Priority.TELEMETRY, Priority.AUDIT, Priority.ALARM, Priority.STATE] * 4
    for priority in order + [Priority.TELEMETRY] * 4:
        buf.add(priority)


async def test_events_go_out_alarms_first_in_seq_order(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    buf = FakeEventBuffer()
    _mixed_backlog(buf)
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/events/#"]).start()
    uplink = make_uplink(mosquitto.url, buf)
    async with running(uplink):
        messages = await sub.wait_for(lambda m: len(m) >= 20)
        await wait_until(lambda: buf.published == set(buf.events), 5, "all marked published")
    expected = sorted(buf.events.values(), key=lambda e: (e.priority, e.seq))
    assert [m.topic for m in messages] == [f"{ROOT}/events/{e.type}" for e in expected]
    assert [m.payload for m in messages] == [e.payload for e in expected]
    assert all(m.qos == 1 for m in messages)
    assert uplink.stats.acked == 20
    assert len(buf.marks) < 20  # PUBACKs are coalesced into batches


async def test_birth_is_retained_and_clean_stop_publishes_offline(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    uplink = make_uplink(mosquitto.url, FakeEventBuffer())
    async with running(uplink):
        late = await subscriber_factory(mosquitto, [STATUS]).start()
        (birth,) = await late.wait_for(lambda m: len(m) >= 1)
    body = json.loads(birth.payload)
    assert birth.retain
    assert body["state"] == "online"
    assert body["gateway"] == "gw-test"
    assert body["protocol"] == "5"
    assert body["version"] == "0.1.0-test"
    after = await subscriber_factory(mosquitto, [STATUS]).start()
    (offline,) = await after.wait_for(lambda m: len(m) >= 1)
    assert offline.retain
    assert json.loads(offline.payload)["state"] == "offline"
    assert json.loads(offline.payload)["reason"] == "shutdown"


async def test_last_will_is_retained_after_the_connection_dies(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    proxy = await MqttProxy(mosquitto.host, mosquitto.port).start()
    watcher = await subscriber_factory(mosquitto, [STATUS]).start()
    uplink = make_uplink(proxy.url, FakeEventBuffer(), reconnect_min_s=30, reconnect_max_s=30)
    try:
        async with running(uplink):
            await watcher.wait_for(lambda m: any(b'"online"' in x.payload for x in m))
            proxy.drop_all()  # the TCP connection dies without DISCONNECT
            await watcher.wait_for(lambda m: b'"offline"' in m[-1].payload)
            late = await subscriber_factory(mosquitto, [STATUS]).start()
            (will,) = await late.wait_for(lambda m: len(m) >= 1)
            assert not uplink.connected
    finally:
        await proxy.close()
    assert will.retain
    assert json.loads(will.payload) == {
        "gateway": "gw-test",
        "reason": "connection_lost",
        "state": "offline",
    }


async def test_broker_outage_drains_everything_in_order(
    mosquitto: Broker, subscriber_factory: SubscriberFactory, caplog: pytest.LogCaptureFixture
) -> None:
    clock = SpyClock()
    buf = FakeEventBuffer()
    buf.add_many(Priority.TELEMETRY, 20)
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/events/#"]).start()
    uplink = make_uplink(mosquitto.url, buf, clock=clock, reconnect_min_s=1, reconnect_max_s=4)
    async with running(uplink):
        await wait_until(lambda: len(buf.published) == 20, 10, "first batch acked")
        mosquitto.stop()
        await wait_until(lambda: not uplink.connected and clock.sleeping > 0, 10, "backoff")
        clock.advance(4)  # one attempt while the broker is down
        refused = "TCP connection to 127.0.0.1"
        await wait_until(lambda: (uplink.stats.last_error or "").startswith(refused), 10, "refusal")
        await wait_until(lambda: clock.sleeping > 0, 10, "backoff again")
        while_down = buf.add_many(Priority.TELEMETRY, 30) + buf.add_many(Priority.ALARM, 5)
        mosquitto.start()
        await sub.wait_subscribed(2, timeout=10)
        sub.clear()
        while not uplink.connected:  # only the test moves the backoff clock
            clock.advance(4)
            await wait_until(lambda: uplink.connected or clock.sleeping > 0, 10, "attempt")
        await wait_until(lambda: len(buf.published) == 55, 10, "backlog acked")
        messages = await sub.wait_for(lambda m: len(m) >= 35)
    expected = [e.seq for e in sorted(while_down, key=lambda e: (e.priority, e.seq))]
    assert seqs_of(messages) == expected
    assert uplink.stats.reconnects == 1
    assert f"TCP connection to 127.0.0.1:{mosquitto.port} refused" in caplog.text


async def test_connection_dropped_mid_drain_loses_nothing_and_bounds_duplicates(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    proxy = await MqttProxy(mosquitto.host, mosquitto.port).start()
    buf = FakeEventBuffer()
    buf.add_many(Priority.TELEMETRY, 600)
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/events/#"]).start()
    uplink = make_uplink(proxy.url, buf, max_inflight=50)
    try:
        async with running(uplink):
            await wait_until(lambda: len(buf.published) >= 150, 10, "part of the backlog")
            proxy.drop_all()
            await wait_until(lambda: len(buf.published) == 600, 20, "the whole backlog")
            messages = await sub.wait_for(lambda m: len({*seqs_of(m)}) == 600, 10)
    finally:
        await proxy.close()
    seqs = seqs_of(messages)
    assert sorted(set(seqs)) == list(range(1, 601))
    assert len(seqs) - 600 <= 50  # at most one window resent: paho never adds its own copies
    first_after_gap = [b for a, b in itertools.pairwise(seqs) if b <= a]
    assert len(first_after_gap) <= 1  # one rewind at the reconnect, in order otherwise
    assert uplink.stats.reconnects == 1


async def test_drain_rate_is_bounded_and_new_alarms_jump_the_backlog(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    clock = SpyClock()
    buf = FakeEventBuffer()
    buf.add_many(Priority.TELEMETRY, 40)
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/events/#"]).start()
    uplink = make_uplink(mosquitto.url, buf, clock=clock, drain_rate_per_s=10)
    async with running(uplink, stop_timeout=0.2):  # the rest cannot drain: the clock stands
        await wait_until(lambda: len(buf.published) == 10 and clock.sleeping > 0, 10, "burst")
        assert uplink.stats.published == 10  # one second's worth of tokens, then it waits
        alarm = buf.add(Priority.ALARM)
        clock.advance(0.1)  # exactly one token
        await wait_until(lambda: len(buf.published) == 11 and clock.sleeping > 0, 10, "token")
        assert alarm.seq in buf.published
        clock.advance(1.0)
        await wait_until(lambda: len(buf.published) == 21 and clock.sleeping > 0, 10, "refill")
        messages = await sub.wait_for(lambda m: len(m) >= 21)
    assert uplink.stats.published == 21
    assert seqs_of(messages)[10] == alarm.seq
    assert seqs_of(messages)[11:] == list(range(11, 21))


async def test_tls_with_client_certificate(
    mosquitto_factory: BrokerFactory, subscriber_factory: SubscriberFactory, pki: Pki
) -> None:
    broker = mosquitto_factory(pki=pki)
    buf = FakeEventBuffer()
    event = buf.add(Priority.AUDIT)
    sub = await subscriber_factory(broker, [f"{ROOT}/events/#"], pki=pki).start()
    uplink = make_uplink(
        broker.url, buf, ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key
    )
    async with running(uplink):
        (message,) = await sub.wait_for(lambda m: len(m) >= 1)
    assert message.payload == event.payload


async def test_client_certificate_from_another_ca_is_refused_with_a_clear_log(
    mosquitto_factory: BrokerFactory, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    broker = mosquitto_factory(pki=pki)
    uplink = make_uplink(
        broker.url,
        FakeEventBuffer(),
        ca_file=pki.ca_cert,
        cert_file=pki.rogue_client_cert,
        key_file=pki.rogue_client_key,
    )
    caplog.set_level(logging.DEBUG, logger="gateway")
    async with running(uplink, connect=False):
        await wait_until(lambda: uplink.stats.last_error is not None, 10, "a failure")
    assert not uplink.connected
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # TLS 1.3: the broker's "unknown ca" alert usually arrives; if our CONNECT crossed it, the
    # kernel may report only an EOF. Either way the line says what happened and why.
    (line,) = warnings
    assert "TLS handshake failed" in line
    assert "unknown ca" in line or "broker rejected our certificate" in line
    assert "unknown ca" in broker.log_text() or "certificate verify failed" in broker.log_text()


async def test_untrusted_broker_certificate_is_refused(
    mosquitto_factory: BrokerFactory, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    broker = mosquitto_factory(pki=pki)
    uplink = make_uplink(
        broker.url,
        FakeEventBuffer(),
        ca_file=pki.rogue_ca_cert,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
    )
    async with running(uplink, connect=False):
        await wait_until(lambda: uplink.stats.last_error is not None, 10, "a failure")
    assert "TLS handshake failed: certificate verify failed" in caplog.text
    assert caplog.text.count("TLS handshake failed") == 1  # repeats go to DEBUG


async def test_username_and_password_file(
    mosquitto_factory: BrokerFactory,
    subscriber_factory: SubscriberFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    acl = "user gw-test\ntopic readwrite sealgw/v1/gw-test/#\nuser observer\ntopic read #\n"
    broker = mosquitto_factory(users={"gw-test": "s3cret-pw", "observer": "obs-pw"}, acl=acl)
    good, bad = tmp_path / "good.pw", tmp_path / "bad.pw"
    good.write_text("s3cret-pw\n")
    bad.write_text("wrong-pw-xyz\n")
    buf = FakeEventBuffer()
    event = buf.add(Priority.STATE)
    sub = subscriber_factory(broker, [f"{ROOT}/#"], username="observer", password="obs-pw")
    await sub.start()
    caplog.set_level(logging.DEBUG, logger="gateway")
    refused = make_uplink(broker.url, FakeEventBuffer(), username="gw-test", password_file=bad)
    async with running(refused, connect=False):
        await wait_until(lambda: refused.stats.last_error is not None, 10, "a refusal")
    uplink = make_uplink(broker.url, buf, username="gw-test", password_file=good)
    async with running(uplink):
        messages = await sub.wait_for(lambda m: any("/events/" in x.topic for x in m))
    assert [m.payload for m in messages if "/events/" in m.topic] == [event.payload]
    assert "connection refused: not authorized" in (refused.stats.last_error or "")
    assert "s3cret-pw" not in caplog.text
    assert "wrong-pw-xyz" not in caplog.text


async def test_falls_back_to_mqtt_311_and_remembers(
    mosquitto: Broker, subscriber_factory: SubscriberFactory, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await MqttProxy(mosquitto.host, mosquitto.port, refuse_v5=1).start()
    watcher = await subscriber_factory(mosquitto, [STATUS]).start()
    uplink = make_uplink(proxy.url, FakeEventBuffer())
    try:
        async with running(uplink):
            births = await watcher.wait_for(lambda m: any(b'"online"' in x.payload for x in m))
            proxy.drop_all()
            await wait_until(lambda: uplink.stats.reconnects == 1, 10, "reconnect")
    finally:
        await proxy.close()
    assert proxy.levels[:3] == [5, 4, 4]  # refused v5, then 3.1.1, and 3.1.1 again after a drop
    assert json.loads(births[-1].payload)["protocol"] == "3.1.1"
    assert "refused MQTT 5" in caplog.text


async def test_many_retained_values_stay_within_the_brokers_receive_maximum(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    buf = FakeEventBuffer()
    buf.add_many(Priority.TELEMETRY, 300)
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/seals/#", f"{ROOT}/events/#"]).start()
    uplink = make_uplink(mosquitto.url, buf, max_inflight=100)  # mosquitto announces 20
    for n in range(60):
        uplink.set_retained(f"seals/SL-{n:04d}/state", b'{"state":"sealed"}')
    async with running(uplink):
        await wait_until(lambda: len(buf.published) == 300, 10, "events")
        messages = await sub.wait_for(lambda m: len(m) >= 360)
    assert len({m.topic for m in messages if "/seals/" in m.topic}) == 60
    assert uplink.stats.connections == 1  # the broker never cut us off for exceeding it


async def test_retained_values_are_republished_on_every_connect(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    proxy = await MqttProxy(mosquitto.host, mosquitto.port).start()
    topic = f"{ROOT}/seals/SL-0001/state"
    sub = await subscriber_factory(mosquitto, [topic, f"{ROOT}/alarm/#"]).start()
    uplink = make_uplink(proxy.url, FakeEventBuffer())
    uplink.set_retained("seals/SL-0001/state", b'{"state":"sealed"}')
    assert not uplink.publish_alarm_now("gateway.storage_full", {"state": "full"})  # queued
    try:
        async with running(uplink):
            await sub.wait_for(lambda m: len(sub.on(topic)) == 1 and len(m) == 2)
            uplink.set_retained("seals/SL-0001/state", b'{"state":"unsealed"}')
            await sub.wait_for(lambda m: len(sub.on(topic)) == 2)
            proxy.drop_all()
            await sub.wait_for(lambda m: len(sub.on(topic)) == 3)
    finally:
        await proxy.close()
    assert [m.payload for m in sub.on(topic)] == [
        b'{"state":"sealed"}',
        b'{"state":"unsealed"}',
        b'{"state":"unsealed"}',
    ]
    (alarm,) = sub.on(f"{ROOT}/alarm/gateway.storage_full")
    assert json.loads(alarm.payload)["state"] == "full"
    late = await subscriber_factory(mosquitto, [topic]).start()
    (kept,) = await late.wait_for(lambda m: len(m) >= 1)
    assert kept.retain and kept.payload == b'{"state":"unsealed"}'


def test_backoff_is_jittered_exponential_and_bounded() -> None:
    backoff = Backoff(1.0, 8.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(1.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_token_bucket_counts_on_the_injected_clock() -> None:
    clock = ManualClock()
    bucket = TokenBucket(5.0, clock)
    assert bucket.take(100) == 5
    assert bucket.take(1) == 0
    assert bucket.wait_time() == pytest.approx(0.2)
    clock.advance(0.4)
    assert bucket.take(100) == 2
    bucket.give_back(1)
    assert bucket.take(100) == 1
    assert TokenBucket(0, clock).take(1000) == 1000


def test_token_bucket_lends_whole_lumps_and_the_debt_delays_the_next() -> None:
    clock = ManualClock()
    bucket = TokenBucket(10.0, clock)
    assert bucket.borrow(25) == 25  # 10 tokens at hand: 15 in debt
    assert bucket.borrow(25) == 0
    assert bucket.wait_time() == pytest.approx(1.6)  # back to one whole token
    assert bucket.borrow(3, now=True) == 3  # an alarm goes at once and deepens the debt
    clock.advance(1.5)
    assert bucket.borrow(1) == 0
    clock.advance(0.5)
    assert bucket.borrow(4) == 4
    bucket.give_back(4)
    assert bucket.take(100) == 2
    assert TokenBucket(0, clock).borrow(1000) == 1000
