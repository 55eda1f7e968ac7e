"""Stopping the uplink: the connection state, and a stop that races a dropped connection."""

from __future__ import annotations

import json

from gateway.protocol.events import Priority
from gateway.uplink.connection import ConnectionState
from gateway.uplink.reconnect import ReconnectState
from tests.fixtures.fake_buffer import FakeEventBuffer
from tests.fixtures.mosquitto import Broker, Received, SubscriberFactory, wait_until
from tests.fixtures.mqtt_proxy import MqttProxy
from tests.fixtures.uplink import ROOT, make_uplink, running, seqs_of

STATUS = f"{ROOT}/status"


def statuses(messages: list[Received]) -> list[tuple[str, str | None]]:
    bodies = [json.loads(m.payload) for m in messages if m.topic == STATUS]
    return [(body["state"], body.get("reason")) for body in bodies]


async def test_a_stop_right_after_a_drop_still_drains_and_publishes_shutdown(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    proxy = await MqttProxy(mosquitto.host, mosquitto.port).start()
    buf = FakeEventBuffer()
    buf.add_many(Priority.TELEMETRY, 10)
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/#"]).start()
    uplink = make_uplink(proxy.url, buf)
    try:
        async with running(uplink, stop_timeout=5.0):
            await wait_until(lambda: len(buf.published) == 10, 10, "the backlog")
            proxy.drop_all()  # the uplink has not seen the drop yet when the stop begins
            last = buf.add(Priority.AUDIT, "gateway.stopped")
        messages = await sub.wait_for(lambda m: ("offline", "shutdown") in statuses(m), 10)
        messages = await sub.wait_for(lambda m: last.seq in seqs_of(m), 10)
    finally:
        await proxy.close()
    assert last.seq in buf.published
    assert statuses(messages)[-1] == ("offline", "shutdown")
    assert uplink.state is ReconnectState.STOPPED
    assert not uplink.connected


async def test_connected_turns_false_when_the_socket_closes(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    proxy = await MqttProxy(mosquitto.host, mosquitto.port).start()
    uplink = make_uplink(proxy.url, FakeEventBuffer(), reconnect_min_s=30, reconnect_max_s=30)
    try:
        async with running(uplink):
            conn = uplink._reconnect.connection  # the one connection in use
            assert conn is not None and conn.state is ConnectionState.CONNECTED
            proxy.drop_all()
            reason = await conn.closed
            assert conn.state is ConnectionState.CLOSED, reason  # in the same callback
            assert not uplink.connected
            assert not conn.publish_control(STATUS, b"{}").result()  # refused at once
    finally:
        await proxy.close()
