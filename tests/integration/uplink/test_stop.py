"""Stopping the uplink: the connection state, and a stop that races a dropped connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import pytest

from gateway.protocol.events import Priority
from gateway.uplink.connection import ConnectionState
from gateway.uplink.reconnect import ReconnectState
from tests.fixtures.fake_buffer import FakeEventBuffer, PendingEvent
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


class _SlowReadBuffer(FakeEventBuffer):
    """A buffer whose reads answer late, from the state when they were asked, as the real
    buffer's one thread does: a read queued before a commit answers without the commit."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.reads_waiting = 0

    async def fetch_pending(self, after: Mapping[Priority, int], limit: int) -> list[PendingEvent]:
        answer = await super().fetch_pending(after, limit)
        self.reads_waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.reads_waiting -= 1
        return answer


@pytest.mark.parametrize("encoding", ["json", "batch"])
async def test_a_read_from_before_the_last_commit_does_not_end_the_final_drain(
    mosquitto: Broker, encoding: str
) -> None:
    """The daemon commits gateway.stopped, then stops the uplink: a read that was asked before
    that commit and answers "nothing" after the stop began must not end the drain."""
    buf = _SlowReadBuffer()
    uplink = make_uplink(mosquitto.url, buf, encoding=encoding)
    task = asyncio.create_task(uplink.run())
    try:
        await wait_until(lambda: uplink.connected, 10, "connected")
        buf.gate.clear()
        uplink.wake()  # the pump reads the empty buffer; the answer is held back
        await wait_until(lambda: buf.reads_waiting > 0, 5, "a read under way")
        last = buf.add(Priority.AUDIT, "gateway.stopped")
        stopping = asyncio.create_task(uplink.stop(timeout=5.0))
        await asyncio.sleep(0)  # the stop begins (the drain waits) before the read answers
        buf.gate.set()
        await stopping
    finally:
        await asyncio.wait((task,), timeout=5)
        task.cancel()
    assert last.seq in buf.published
