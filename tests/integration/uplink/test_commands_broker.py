"""Commands over a real broker through the uplink: replies, errors and signed commands."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.protocol.clock import SystemClock
from gateway.protocol.events import Priority
from gateway.remote.auth import CommandVerifier, ReplayCache
from gateway.uplink.commands import CommandDispatcher
from tests.fixtures.commands import make_dispatcher
from tests.fixtures.fake_buffer import FakeEventBuffer
from tests.fixtures.mosquitto import Broker, SubscriberFactory, wait_until
from tests.fixtures.remote import signed_command
from tests.fixtures.uplink import GATEWAY, ROOT, make_uplink, running, seqs_of

# -- over the broker --


async def test_error_replies_go_to_the_reply_topic(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/reply/#"]).start()
    uplink = make_uplink(mosquitto.url, FakeEventBuffer(), dispatcher=make_dispatcher())
    async with running(uplink, commands_from=mosquitto):
        sub.publish(f"{ROOT}/cmd/nope", b'{"id": "a"}')
        sub.publish(f"{ROOT}/cmd/echo", b'{"id": "b", oops')
        await sub.wait_for(lambda m: len(m) >= 2)
    (unknown,) = sub.on(f"{ROOT}/reply/nope")
    (bad,) = sub.on(f"{ROOT}/reply/echo")
    assert json.loads(unknown.payload)["error"] == "unknown_command"
    assert json.loads(unknown.payload)["id"] == "a"
    assert json.loads(bad.payload)["error"] == "bad_json"
    assert not unknown.retain and unknown.qos == 1


async def test_response_topic_and_correlation_data_are_honoured(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    sub = await subscriber_factory(mosquitto, ["ms/responses/#", f"{ROOT}/reply/#"]).start()
    uplink = make_uplink(mosquitto.url, FakeEventBuffer(), dispatcher=make_dispatcher())
    async with running(uplink, commands_from=mosquitto):
        sub.publish(
            f"{ROOT}/cmd/echo",
            b'{"id": 77, "x": "hi"}',
            response_topic="ms/responses/gw-test",
            correlation_data=b"\x00corr-77",
        )
        (reply,) = await sub.wait_for(lambda m: len(m) >= 1)
    assert reply.topic == "ms/responses/gw-test"
    assert reply.correlation_data == b"\x00corr-77"
    assert json.loads(reply.payload) == {"ok": True, "result": {"echo": "hi"}, "id": 77}


async def test_resend_requeues_and_republishes(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    buf = FakeEventBuffer()
    buf.add_many(Priority.TELEMETRY, 8)
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/events/#", f"{ROOT}/reply/#"]).start()
    master = Ed25519PrivateKey.generate()
    dispatcher = CommandDispatcher(
        CommandVerifier(master.public_key(), GATEWAY, SystemClock(), ReplayCache())
    )
    uplink = make_uplink(mosquitto.url, buf, dispatcher=dispatcher)
    async with running(uplink, commands_from=mosquitto):
        await wait_until(lambda: len(buf.published) == 8, 10, "all published")
        await sub.wait_for(lambda m: len(m) >= 8)
        sub.clear()
        resend = signed_command(master, "resend", {"from_seq": 3, "to_seq": 5}, gateway=GATEWAY)
        sub.publish(f"{ROOT}/cmd/resend", resend)
        messages = await sub.wait_for(lambda m: len(m) >= 4)
        sub.publish(f"{ROOT}/cmd/resend", signed_command(master, "resend", {"from_seq": -1},
                                                         gateway=GATEWAY))  # fmt: skip
        await sub.wait_for(lambda m: len(sub.on(f"{ROOT}/reply/resend")) >= 2)
        await wait_until(lambda: len(buf.published) == 8, 10, "republished and acked")
    replies = [json.loads(m.payload) for m in sub.on(f"{ROOT}/reply/resend")]
    assert {"ok": True, "result": {"requeued": 3, "first_available_seq": 1}, "id": None} in replies
    assert any(r.get("error") == "bad_request" for r in replies)
    assert seqs_of(messages) == [3, 4, 5]
