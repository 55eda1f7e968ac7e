"""Commands from the master station: parsing, a registry of handlers, and replies.

Every command gets exactly one reply, success or a stable error code, so the master station
never waits on a command that died silently:

    {"ok": true, "result": {...}, "id": ...}
    {"ok": false, "error": "bad_json" | "bad_request" | "unknown_command" | "internal_error"
                           | "too_large" | "busy" | "bad_response_topic" | <AuthError.code>,
     "detail": "...", "id": ...}

Input is bounded before it is parsed: a payload over MAX_COMMAND_BYTES is answered `too_large`
unread (MQTT 5 brokers do not even deliver it: the gateway's CONNECT says Maximum Packet Size),
JSON deeper than MAX_DEPTH is `bad_json`, and at most MAX_RUNNING commands run at once, the
excess being answered `busy`. Replies wait for the few in-flight slots the uplink keeps for
control messages, so at most MAX_PENDING_REPLIES of them may wait for the broker's PUBACK:
beyond that a command is dropped unread and counted `unanswered`, so a flood cannot queue
replies without bound. A response topic with a wildcard is refused (the reply goes to
reply/{name}), since nothing may be published to it. Refusals are logged at WARNING the first
time for each code and at DEBUG after, with a count.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.errors import AuthCode, AuthError, ConfigError, ProtocolError
from gateway.protocol.canonical import JSONValue
from gateway.protocol.command_doc import CommandBody, parse_command
from gateway.protocol.signed import MAX_DOC_BYTES
from gateway.protocol.strict_json import loads_strict

if TYPE_CHECKING:
    import paho.mqtt.client as paho

    from gateway.uplink.connection import UplinkConnection

__all__ = [
    "MAX_COMMAND_BYTES",
    "MAX_PACKET_BYTES",
    "MAX_RUNNING",
    "Command",
    "CommandDispatcher",
    "CommandHandler",
    "CommandServer",
    "Reply",
    "Verifier",
    "command_args",
    "signed_body",
]

log = logging.getLogger(__name__)

Reply = dict[str, JSONValue]
CommandHandler = Callable[["Command"], Awaitable[Mapping[str, JSONValue]]]
Verifier = Callable[["Command"], None]

MAX_DETAIL = 200
MAX_COMMAND_BYTES = MAX_DOC_BYTES
"""Largest command payload read: a signed document (64 KiB) is the largest command there is."""
MAX_PACKET_BYTES = MAX_COMMAND_BYTES + 4096
"""The MQTT Maximum Packet Size the gateway announces: a command plus topic and properties."""
MAX_RUNNING = 32
"""Commands running at once; more are answered `busy` at once, never queued without bound."""
MAX_PENDING_REPLIES = 1024
"""Replies published and not yet acknowledged; beyond, commands are dropped (`unanswered`)."""
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-./")


@dataclass(frozen=True, slots=True)
class Command:
    """One command message: `name` is the topic part after cmd/."""

    name: str
    payload: Mapping[str, JSONValue]
    raw: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None
    request_id: JSONValue = None
    parse_error: str | None = field(default=None, compare=False)

    @classmethod
    def parse(
        cls,
        name: str,
        raw: bytes,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> Command:
        """Build a command from a message; never raises, a bad payload is kept in parse_error."""
        payload, error = _decode_payload(raw)
        request_id = payload.get("id") if isinstance(payload.get("id"), str | int) else None
        return cls(
            name=name,
            payload=payload,
            raw=raw,
            response_topic=response_topic or None,
            correlation_data=correlation_data,
            request_id=request_id,
            parse_error=error,
        )


@dataclass(frozen=True, slots=True)
class _Registration:
    handler: CommandHandler
    signed: bool


class CommandDispatcher:
    """Routes commands to registered handlers and turns every outcome into a reply."""

    def __init__(self, verifier: Verifier | None = None) -> None:
        self.verifier = verifier
        self._handlers: dict[str, _Registration] = {}
        self.refused: Counter[str] = Counter()
        """Commands refused before or by their handler's checks, by error code."""

    def register(self, name: str, handler: CommandHandler, *, signed: bool = False) -> None:
        """Route cmd/`name` to `handler`; `signed` handlers run only after the verifier passes."""
        if not name or not set(name) <= NAME_CHARS:
            raise ValueError(f"command name {name!r} is not lowercase [a-z0-9_./-]")
        if name in self._handlers:
            raise ValueError(f"command {name!r} is already registered")
        self._handlers[name] = _Registration(handler, signed)

    def names(self) -> list[str]:
        """The registered command names, sorted."""
        return sorted(self._handlers)

    async def dispatch(self, command: Command) -> Reply:
        """Run the command and return its reply; never raises (except on cancellation)."""
        if command.response_topic is not None and not valid_response_topic(command.response_topic):
            detail = f"response topic {command.response_topic[:64]!r} is not a topic name"
            self._log_refusal(command, "bad_response_topic", detail)
            return error_reply(command, "bad_response_topic", detail)
        if command.parse_error is not None:
            return error_reply(command, "bad_json", command.parse_error)
        registration = self._handlers.get(command.name)
        if registration is None:
            return error_reply(command, "unknown_command", f"no command {command.name!r}")
        try:
            if registration.signed:
                self._verify(command)
            result = await registration.handler(command)
        except AuthError as exc:
            self._log_refusal(command, exc.code, str(exc))
            return error_reply(command, exc.code, str(exc))
        except ValueError as exc:  # ConfigError and ProtocolError are ValueErrors too
            return error_reply(command, "bad_request", _describe(exc))
        except Exception as exc:
            log.exception("command %s failed", command.name)
            return error_reply(command, "internal_error", type(exc).__name__)
        return {"ok": True, "result": dict(result), "id": command.request_id}

    def _log_refusal(self, command: Command, code: str, detail: str) -> None:
        """WARNING the first time for each code, DEBUG after (a flood must not flood the log)."""
        self.refused[code] += 1
        level = logging.WARNING if self.refused[code] == 1 else logging.DEBUG
        log.log(level, "command %s refused: %s (%s; %d so far)", command.name, code, detail,
                self.refused[code])  # fmt: skip

    def _verify(self, command: Command) -> None:
        if self.verifier is None:
            raise AuthError(
                f"cmd/{command.name} must be signed by the master station, and this gateway"
                " has no master key (authorization.master_key_file) to verify it",
                code=AuthCode.VERIFIER_MISSING,
            )
        self.verifier(command)


def error_reply(command: Command, code: str, detail: str) -> Reply:
    """A failure reply with a stable `code` and a short human `detail`."""
    return {"ok": False, "error": code, "detail": detail[:MAX_DETAIL], "id": command.request_id}


def valid_response_topic(topic: str) -> bool:
    """A topic one may publish to: no wildcards, no NUL, 1..65535 UTF-8 bytes."""
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        return False
    try:
        return len(topic.encode("utf-8")) <= 0xFFFF
    except UnicodeEncodeError:
        return False


def encode_reply(reply: Reply) -> bytes:
    """Compact JSON bytes for a reply."""
    return json.dumps(reply, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _decode_payload(raw: bytes) -> tuple[dict[str, JSONValue], str | None]:
    if len(raw) > MAX_COMMAND_BYTES:
        return {}, f"payload of {len(raw)} bytes exceeds {MAX_COMMAND_BYTES}"
    if not raw.strip():
        return {}, None
    try:
        obj: Any = loads_strict(
            raw,
            not_json="payload is not JSON: {}",
            duplicate="payload has a duplicate member name",
            constant="payload contains {}, which JSON does not allow",
            max_bytes=MAX_COMMAND_BYTES,
        )
    except ProtocolError as exc:
        return {}, str(exc)
    if not isinstance(obj, dict):
        return {}, "payload is not a JSON object"
    return obj, None


def _describe(exc: ValueError) -> str:
    if isinstance(exc, ConfigError):
        return f"{exc.key}: {exc.reason}" if exc.key else exc.reason
    return str(exc) or type(exc).__name__


def signed_body(command: Command) -> CommandBody:
    """The body of a command the verifier already accepted (handlers read args from it)."""
    try:
        return parse_command(command.raw).body
    except ProtocolError as exc:
        raise AuthError(f"malformed command document: {exc}", code="malformed") from None


def command_args(command: Command) -> Mapping[str, Any]:
    """The arguments of a command: the signed body's args, or (unsigned) the payload itself."""
    if "sig" in command.payload:
        return signed_body(command).args
    return command.payload


class CommandServer:
    """Serves the gateway's cmd/ topics: parse, dispatch, and publish exactly one reply.

    The reply goes to the MQTT 5 response topic (with the correlation data) when the command
    gave one, else to reply/{name}. Commands run as tasks, so a slow handler holds up nothing.
    """

    def __init__(
        self,
        dispatcher: CommandDispatcher,
        topic: Callable[[str], str],
        connection: Callable[[], UplinkConnection | None],
    ) -> None:
        self._dispatcher = dispatcher
        self._topic = topic
        self._connection = connection
        self._tasks: set[asyncio.Future[None]] = set()  # commands and refusals being answered
        self._running = 0  # commands among them
        self._unacked = 0  # replies published, PUBACK not yet received
        self.max_running = MAX_RUNNING
        self.max_pending_replies = MAX_PENDING_REPLIES
        self.refused: Counter[str] = Counter()  # too_large, busy (and unanswered): never run

    @property
    def running(self) -> int:
        """Commands being run now (refusals being answered are not counted)."""
        return self._running

    @property
    def pending_replies(self) -> int:
        """Replies published and not yet acknowledged by the broker."""
        return self._unacked

    def on_message(self, msg: paho.MQTTMessage) -> None:
        """A message on a subscribed topic (on the loop thread); never raises into paho."""
        prefix = self._topic("cmd/")
        if not msg.topic.startswith(prefix):
            return
        if msg.retain:
            log.warning(
                "ignoring retained command on %s (a stale command is not replayed)", msg.topic
            )
            return
        props = getattr(msg, "properties", None)
        name = msg.topic[len(prefix) :]
        raw = bytes(msg.payload) if len(msg.payload) <= MAX_COMMAND_BYTES else b""
        command = Command.parse(
            name,
            raw,
            response_topic=getattr(props, "ResponseTopic", None),
            correlation_data=getattr(props, "CorrelationData", None),
        )
        if self._unacked >= self.max_pending_replies:
            self._drop(command)
        elif len(msg.payload) > MAX_COMMAND_BYTES:  # MQTT 3.1.1 has no Maximum Packet Size
            self._refuse(command, "too_large", f"payload exceeds {MAX_COMMAND_BYTES} bytes")
        elif self._running >= self.max_running:
            self._refuse(command, "busy", f"{self.max_running} commands are running; retry")
        else:
            self._running += 1
            self._start(self._run(command)).add_done_callback(self._ran)

    def _refuse(self, command: Command, code: str, detail: str) -> None:
        self.refused[code] += 1
        level = logging.WARNING if self.refused[code] == 1 else logging.DEBUG
        log.log(level, "command %s answered %s (%d so far): %s", command.name, code,
                self.refused[code], detail)  # fmt: skip
        if len(self._tasks) < 2 * self.max_running:
            self._start(self._send(command, error_reply(command, code, detail)))
        else:  # so many answers pending that even the refusal is dropped (and counted)
            self.refused["unanswered"] += 1

    def _drop(self, command: Command) -> None:
        """So many replies wait for the broker that this command is not even answered."""
        self.refused["unanswered"] += 1
        level = logging.WARNING if self.refused["unanswered"] == 1 else logging.DEBUG
        log.log(level, "command %s dropped unanswered: %d replies wait for the broker (%d so far)",
                command.name, self._unacked, self.refused["unanswered"])  # fmt: skip

    def _start(self, work: Awaitable[None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _ran(self, _task: asyncio.Future[None]) -> None:
        self._running -= 1

    def _done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("command task failed", exc_info=task.exception())

    async def close(self) -> None:
        """Cancel the commands still running."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, command: Command) -> None:
        await self._send(command, await self._dispatcher.dispatch(command))

    async def _send(self, command: Command, reply: Reply) -> None:
        """Publish the reply; it counts as pending until its PUBACK (or the connection ends)."""
        conn = self._connection()
        if conn is None or not conn.connected:
            log.debug("reply to %s dropped: not connected", command.name)
            return
        topic = command.response_topic if conn.protocol == "5" else None
        if topic is not None and not valid_response_topic(topic):
            topic = None
        target = topic or self._topic(f"reply/{command.name}")
        correlation = command.correlation_data if topic else None
        sent = conn.publish_control(target, encode_reply(reply), correlation_data=correlation)
        self._unacked += 1
        sent.add_done_callback(self._acked)

    def _acked(self, _sent: asyncio.Future[bool]) -> None:
        self._unacked -= 1
