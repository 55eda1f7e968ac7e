"""Hostile cmd/ input against the gateway's Uplink on a real mosquitto (security issue 12).

A command is parsed on the event loop that also reads the PUBACKs of the gateway's own events,
so whatever a command costs before it is refused, the whole uplink pays.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import pytest

from gateway.protocol.canonical import JSONValue
from gateway.protocol.events import Priority
from gateway.uplink.commands import MAX_COMMAND_BYTES, MAX_RUNNING, Command, CommandDispatcher
from tests.fixtures.fake_buffer import FakeEventBuffer
from tests.fixtures.mosquitto import Broker, Received, SubscriberFactory, wait_until
from tests.fixtures.uplink import ROOT, make_uplink, running

BOMB = b"[" * 30_000 + b"]" * 30_000  # under the size cap, far over the depth cap


async def _echo(command: Command) -> Mapping[str, JSONValue]:
    return {"echo": command.payload.get("x")}


def _replies(messages: list[Received]) -> list[dict[str, JSONValue]]:
    return [json.loads(m.payload) for m in messages if "/reply/" in m.topic]


async def test_a_json_bomb_on_cmd_is_refused_and_events_keep_flowing(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    buf = FakeEventBuffer()
    dispatcher = CommandDispatcher()
    dispatcher.register("echo", _echo)
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/reply/#"]).start()
    uplink = make_uplink(mosquitto.url, buf, dispatcher=dispatcher)
    async with running(uplink, commands_from=mosquitto):
        sub.publish(f"{ROOT}/cmd/echo", BOMB)
        sub.publish(f"{ROOT}/cmd/echo", b'{"id": "after", "x": 1}')
        buf.add_many(Priority.AUDIT, 20)
        await wait_until(lambda: len(buf.published) == 20, 10, "own events acknowledged")
        await sub.wait_for(lambda m: len(m) >= 2)
    bomb, after = _replies(sub.messages)
    assert bomb["error"] == "bad_json" and "nesting deeper" in str(bomb["detail"])
    assert after == {"ok": True, "result": {"echo": 1}, "id": "after"}


async def test_an_oversized_command_never_reaches_the_parser(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    big = b'{"id": "big", "pad": "' + b"x" * (MAX_COMMAND_BYTES + 10_000) + b'"}'
    dispatcher = CommandDispatcher()
    dispatcher.register("echo", _echo)
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/reply/#"]).start()
    for protocol in ("5", "3.1.1"):
        sub.clear()
        uplink = make_uplink(mosquitto.url, FakeEventBuffer(), dispatcher=dispatcher,
                             protocol=protocol)  # fmt: skip
        async with running(uplink, commands_from=mosquitto):
            sub.publish(f"{ROOT}/cmd/echo", big)
            sub.publish(f"{ROOT}/cmd/echo", b'{"id": "after"}')
            await sub.wait_for(lambda m: any(r["id"] == "after" for r in _replies(m)))
            await wait_until(lambda p=protocol: len(sub.messages) >= 2 or p == "5", 10, "answers")
        codes = {r["id"]: r.get("error") for r in _replies(sub.messages)}
        if protocol == "5":  # Maximum Packet Size on CONNECT: the broker never delivered it
            assert codes == {"after": None}
        else:  # 3.1.1 cannot say so: refused unread
            assert codes == {None: "too_large", "after": None}
        dispatcher = CommandDispatcher()
        dispatcher.register("echo", _echo)


async def test_a_command_flood_runs_at_most_max_running_and_answers_the_rest_busy(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    release = asyncio.Event()
    started = 0

    async def slow(_command: Command) -> Mapping[str, JSONValue]:
        nonlocal started
        started += 1
        await release.wait()
        return {}

    dispatcher = CommandDispatcher()
    dispatcher.register("slow", slow)
    flood = 300
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/reply/#"]).start()
    uplink = make_uplink(mosquitto.url, FakeEventBuffer(), dispatcher=dispatcher)
    async with running(uplink, commands_from=mosquitto):
        for n in range(flood):
            sub.publish(f"{ROOT}/cmd/slow", json.dumps({"id": n}).encode())
        await wait_until(lambda: uplink.commands.refused["busy"] == flood - MAX_RUNNING,
                         15, "the excess refused")  # fmt: skip
        assert started == MAX_RUNNING
        assert uplink.commands.running <= MAX_RUNNING
        release.set()
        await wait_until(lambda: uplink.commands.running == 0, 10, "the running ones done")
        await sub.wait_for(lambda m: sum(1 for r in _replies(m) if r["ok"]) == MAX_RUNNING)
    replies = _replies(sub.messages)
    assert sum(1 for r in replies if r.get("error") == "busy") <= flood - MAX_RUNNING
    assert uplink.commands.refused["busy"] == flood - MAX_RUNNING


async def test_a_flood_beyond_the_pending_replies_is_dropped_unanswered_and_counted(
    mosquitto: Broker, subscriber_factory: SubscriberFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13 item 10: replies waiting for the broker are capped, so a flood cannot grow them."""
    dispatcher = CommandDispatcher()
    dispatcher.register("echo", _echo)
    flood, cap = 400, 8
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/reply/#"]).start()
    uplink = make_uplink(mosquitto.url, FakeEventBuffer(), dispatcher=dispatcher)
    async with running(uplink, commands_from=mosquitto):
        uplink.commands.max_pending_replies = cap
        for n in range(flood):
            sub.publish(f"{ROOT}/cmd/echo", json.dumps({"id": n, "x": n}).encode())
        unanswered = uplink.commands.refused
        await sub.wait_for(lambda m: len(_replies(m)) + unanswered["unanswered"] == flood)
        await wait_until(lambda: uplink.commands.pending_replies == 0, 10, "replies acked")
    replies = _replies(sub.messages)
    assert unanswered["unanswered"] > 0
    assert all(r["ok"] and r["result"] == {"echo": r["id"]} for r in replies)
    dropped = [r for r in caplog.records if "dropped unanswered" in r.getMessage()]
    assert [r.levelname for r in dropped if r.levelname == "WARNING"] == ["WARNING"]


async def test_a_wildcard_response_topic_is_refused_with_a_reply(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    dispatcher = CommandDispatcher()
    dispatcher.register("echo", _echo)
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/reply/#", "ms/#"]).start()
    uplink = make_uplink(mosquitto.url, FakeEventBuffer(), dispatcher=dispatcher)
    async with running(uplink, commands_from=mosquitto):
        sub.publish(f"{ROOT}/cmd/echo", b'{"id": "w", "x": 1}', response_topic="ms/+/r")
        sub.publish(f"{ROOT}/cmd/echo", b'{"id": "ok", "x": 2}', response_topic="ms/gw/r")
        await sub.wait_for(lambda m: len(m) >= 2)
    (refused,) = sub.on(f"{ROOT}/reply/echo")
    (answered,) = sub.on("ms/gw/r")
    assert json.loads(refused.payload)["error"] == "bad_response_topic"
    assert json.loads(answered.payload)["result"] == {"echo": 2}


async def test_an_unsigned_resend_is_refused_without_a_master_key(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    buf = FakeEventBuffer()
    sub = await subscriber_factory(mosquitto, [f"{ROOT}/reply/#"]).start()
    async with running(make_uplink(mosquitto.url, buf), commands_from=mosquitto):
        sub.publish(f"{ROOT}/cmd/resend", b'{"id": "rs", "from_seq": 1}')
        (reply,) = await sub.wait_for(lambda m: len(m) >= 1)
    answer = json.loads(reply.payload)
    assert (answer["ok"], answer["error"], answer["id"]) == (False, "verifier_missing", "rs")
    assert "master key" in answer["detail"]
