"""Commands: the dispatcher on its own: replies, error kinds, secrets kept out, registration."""

from __future__ import annotations

import json
import logging

import pytest

from gateway.errors import AuthError
from gateway.uplink.commands import Command
from tests.fixtures.commands import SECRET, echo, make_dispatcher


async def test_success_reply_carries_the_result_and_request_id() -> None:
    reply = await make_dispatcher().dispatch(Command.parse("echo", b'{"id": "r-1", "x": 5}'))
    assert reply == {"ok": True, "result": {"echo": 5}, "id": "r-1"}


@pytest.mark.parametrize(
    ("name", "raw", "code"),
    [
        ("echo", b"{not json", "bad_json"),
        ("echo", b"[1, 2]", "bad_json"),
        ("echo", b"\xff\xfe", "bad_json"),
        ("nope", b'{"id": 3}', "unknown_command"),
        ("denied", b"{}", "revoked"),
        ("badcfg", b"{}", "bad_request"),
        ("badval", b"{}", "bad_request"),
        ("boom", b"{}", "internal_error"),
    ],
)
async def test_failures_get_stable_codes(name: str, raw: bytes, code: str) -> None:
    reply = await make_dispatcher().dispatch(Command.parse(name, raw))
    assert reply["ok"] is False
    assert reply["error"] == code
    assert isinstance(reply["detail"], str) and reply["detail"]


async def test_internal_error_is_logged_with_traceback_but_not_leaked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reply = await make_dispatcher().dispatch(Command.parse("boom", b'{"id": 9}'))
    assert reply == {"ok": False, "error": "internal_error", "detail": "RuntimeError", "id": 9}
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None
    assert SECRET not in json.dumps(reply)


async def test_empty_payload_is_an_empty_object() -> None:
    reply = await make_dispatcher().dispatch(Command.parse("echo", b""))
    assert reply == {"ok": True, "result": {"echo": None}, "id": None}


async def test_signed_commands_need_the_verifier() -> None:
    dispatcher = make_dispatcher()
    command = Command.parse("ticket.install", b'{"x": 1}')
    refused = await dispatcher.dispatch(command)
    assert refused["error"] == "verifier_missing"

    def reject(_c: Command) -> None:
        raise AuthError("bad signature", code="bad_signature")

    dispatcher.verifier = reject
    assert (await dispatcher.dispatch(command))["error"] == "bad_signature"
    seen: list[str] = []
    dispatcher.verifier = lambda c: seen.append(c.name)
    assert (await dispatcher.dispatch(command))["ok"] is True
    assert (await dispatcher.dispatch(Command.parse("echo", b"{}")))["ok"] is True
    assert seen == ["ticket.install"]  # unsigned handlers skip the verifier


def test_register_rejects_duplicates_and_bad_names() -> None:
    dispatcher = make_dispatcher()
    with pytest.raises(ValueError, match="already registered"):
        dispatcher.register("echo", echo)
    with pytest.raises(ValueError, match="lowercase"):
        dispatcher.register("Bad Name", echo)
    assert "echo" in dispatcher.names()


# -- over the broker --
