"""The MQTT uplink: drains the event buffer to the broker and serves commands.

`Uplink` is the component the daemon runs; it composes the parts, each in its own module:
- connection.py: one connection and its `ConnectionState` (used once);
- reconnect.py: the supervisor (attempts, backoff with jitter, MQTT 5 -> 3.1.1, clean stop);
- delivery.py: the event window (priority-ordered read-ahead, bounded drain, acks);
- batch_delivery.py, batching.py: the batch encoding's pump, its runs and their linger;
- publisher.py: status birth and Will, retained seal states, alarms published now;
- commands.py: cmd/ topics, the dispatcher and its replies.
Everything runs on the event loop thread, paho included (see mqtt_client.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Literal
from urllib.parse import urlsplit

import paho.mqtt.client as paho

from gateway.errors import ConfigError
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.protocol.events import Event, EventType, Priority
from gateway.uplink.batch_delivery import BatchPump
from gateway.uplink.batching import BatchPolicy
from gateway.uplink.commands import (
    MAX_PACKET_BYTES,
    Command,
    CommandDispatcher,
    CommandServer,
    command_args,
)
from gateway.uplink.config import UplinkSection
from gateway.uplink.connection import (
    CONTROL_HEADROOM,
    FailureLog,
    UplinkConnection,
    UplinkStats,
)
from gateway.uplink.delivery import DeliveryPump, EventSource, PendingLike
from gateway.uplink.encoder_pool import EncoderPool
from gateway.uplink.mqtt_client import ConnackInfo, ConnectParams
from gateway.uplink.publisher import Publisher
from gateway.uplink.reconnect import ReconnectLogic, ReconnectState

__all__ = ["EventSource", "PendingLike", "Uplink", "UplinkStats"]

log = logging.getLogger(__name__)


class Uplink:
    """Keeps one MQTT connection up, drains the buffer over it and serves cmd/ topics."""

    def __init__(  # noqa: PLR0917 - the composition root passes these by position or name
        self,
        settings: UplinkSection,
        gateway_id: str,
        client_id: str,
        source: EventSource,
        dispatcher: CommandDispatcher,
        clock: Clock,
        version: str,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self.client_id = client_id or gateway_id
        self.version = version
        self.stats = UplinkStats()
        self.on_connection_change: Callable[[bool], None] | None = None
        self._source = source
        self._host, self._port, self._tls = _parse_url(settings.url)
        prefix = f"{settings.topic_root}/{gateway_id}"
        failures = FailureLog(settings.url, self.stats)
        self._publisher = Publisher(prefix, gateway_id, version, clock)
        policy = BatchPolicy.from_settings(settings)
        self._pump: DeliveryPump = (
            DeliveryPump(source, self.topic, clock, self.stats, failures, settings.drain_rate_per_s)
            if policy is None
            else BatchPump(
                source,
                self.topic,
                clock,
                self.stats,
                failures,
                settings.drain_rate_per_s,
                policy,
                EncoderPool(settings.batch_workers) if settings.batch_workers > 0 else None,
            )
        )
        self._reconnect = ReconnectLogic(settings, self, clock, self.stats, failures, rng)
        self._commands = CommandServer(dispatcher, self.topic, lambda: self._reconnect.connection)
        self._online = False
        self._pumping: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        dispatcher.register("resend", self._cmd_resend, signed=True)

    # -- public API --

    @property
    def encoder_pool(self) -> EncoderPool | None:
        """The batch encoder's worker processes, if any (uplink.batch_workers)."""
        return self._pump.pool if isinstance(self._pump, BatchPump) else None

    @property
    def connected(self) -> bool:
        """True only while the current connection is CONNECTED (never a dropped one)."""
        return self._reconnect.connected

    @property
    def commands(self) -> CommandServer:
        """The cmd/ server (its `refused` counter tells how many were answered busy/too_large)."""
        return self._commands

    @property
    def state(self) -> ReconnectState:
        return self._reconnect.state

    @property
    def protocol(self) -> Literal["5", "3.1.1"]:
        """The MQTT version in use, or to be used on the next attempt."""
        return self._reconnect.protocol

    def topic(self, suffix: str) -> str:
        """The full topic of `suffix` under this gateway's subtree."""
        return self._publisher.topic(suffix)

    def wake(self, *, urgent: bool = False) -> None:
        """New events were committed: refill the window soon. Safe from any thread.

        `urgent` (an alarm was committed) drops the read-ahead, so the alarm goes next.
        """
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._pump.wake(urgent)
        else:
            self._loop.call_soon_threadsafe(self._pump.wake, urgent)

    def committed(self, events: Sequence[Event]) -> None:
        """The buffer's on_commit hook: wake, urgently when an alarm is among the events."""
        self.wake(urgent=any(event.priority is Priority.ALARM for event in events))

    def rebirth(self) -> int:
        """Republish the online status and every retained value now; returns how many."""
        return self._publisher.rebirth()

    def set_retained(self, topic_suffix: str, payload: bytes) -> None:
        """Publish `payload` retained now if connected, and again after every reconnect."""
        self._publisher.set_retained(topic_suffix, payload)

    def publish_now(self, topic_suffix: str, payload: bytes, qos: int = 1) -> bool:
        """Publish outside the buffer; if offline, queue it (bounded) for the next connect."""
        return self._publisher.publish_now(topic_suffix, payload, qos)

    def publish_alarm_now(self, alarm_type: EventType | str, data: Mapping[str, JSONValue]) -> bool:
        """An alarm that could not be stored: published to alarm/{type} outside the chain."""
        return self._publisher.publish_alarm_now(alarm_type, data)

    async def run(self) -> None:
        """Connect, serve and reconnect until stop() is called."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        await self._pump.open()
        try:
            await self._reconnect.run()
        finally:
            await self._commands.close()
            await self._pump.flush_acks()
            await self._pump.close()

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - part of the component API
        """Flush what can be flushed within `timeout`, publish offline, disconnect."""
        await self._reconnect.stop(timeout)

    # -- the Session the reconnect supervisor drives --

    def new_connection(self, protocol: Literal["5", "3.1.1"]) -> UplinkConnection:
        return UplinkConnection(
            self._params(protocol),
            on_message=self._on_message,
            on_event_ack=self._pump.on_ack,
        )

    def started(self, conn: UplinkConnection, info: ConnackInfo) -> None:
        self._pump.start(conn.event_window(self.settings.max_inflight))
        conn.subscribe(self.topic("cmd/#"), 1)
        self._publisher.attach(conn)
        self._online = True
        self._notify(True)

    async def serve(self, conn: UplinkConnection, stopping: asyncio.Event) -> None:
        """Pump events until the connection closes or the stop begins (the pump then goes on
        in finish())."""
        await self._pump.flush_acks()  # acks of the last session first, so they are not resent
        self._pumping = asyncio.create_task(self._pump.run(conn))
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait(
                (self._pumping, conn.closed, stop), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
        if not (stopping.is_set() and conn.connected):
            await self._stop_pumping()

    async def finish(self, conn: UplinkConnection, timeout: float) -> bool:  # noqa: ASYNC109
        """Drain within `timeout`, then publish offline and disconnect cleanly.

        False when the connection died first: the offline status did not go out on it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._pumping is None or self._pumping.done():
            self._pumping = asyncio.create_task(self._pump.run(conn))
        await self._pump.drain(conn, timeout)
        await self._stop_pumping()
        await self._pump.flush_acks()
        offline = self._publisher.offline(conn)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.05, deadline - loop.time())):
                await asyncio.wait((offline, conn.closed), return_when=asyncio.FIRST_COMPLETED)
        delivered = offline.done() and offline.result()
        if not delivered and not conn.connected:
            return False  # the connection died: the supervisor may try once more
        await conn.close(max(0.05, deadline - loop.time()))
        log.info(
            "uplink stopped (%d events in flight were left for next time)", self._pump.inflight
        )
        return True

    def lost(self, conn: UplinkConnection) -> None:
        self._publisher.detach(conn)
        self._pump.stop()
        was_online, self._online = self._online, False
        if was_online:
            self._notify(False)

    async def _stop_pumping(self) -> None:
        pumping, self._pumping = self._pumping, None
        if pumping is not None:
            pumping.cancel()
            await asyncio.gather(pumping, return_exceptions=True)

    # -- commands --

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        self._commands.on_message(msg)

    async def _cmd_resend(self, command: Command) -> Mapping[str, JSONValue]:
        """cmd/resend {"from_seq": N, "to_seq": M?}: requeue published events and resend."""
        args = command_args(command)
        from_seq = _optional_seq(args, "from_seq")
        to_seq = _optional_seq(args, "to_seq")
        if from_seq is None:
            raise ValueError("from_seq is required")
        if to_seq is not None and to_seq < from_seq:
            raise ValueError("to_seq is below from_seq")
        count, first = await self._source.requeue(from_seq, to_seq)
        self._pump.rewind(from_seq - 1)
        log.info("resend from seq %d to %s: %d events requeued", from_seq, to_seq, count)
        return {"requeued": count, "first_available_seq": first}

    def _params(self, protocol: Literal["5", "3.1.1"]) -> ConnectParams:
        s = self.settings
        return ConnectParams(
            host=self._host,
            port=self._port,
            client_id=self.client_id,
            protocol=protocol,
            keepalive_s=s.keepalive_s,
            will_topic=self.topic("status"),
            will_payload=self._publisher.will(),
            max_inflight=s.max_inflight + CONTROL_HEADROOM,
            tls=self._tls,
            ca_file=s.ca_file,
            cert_file=s.cert_file,
            key_file=s.key_file,
            username=s.username,
            password=_read_password(s),
            connect_timeout_s=max(5.0, min(30.0, float(s.keepalive_s))),
            max_packet_bytes=MAX_PACKET_BYTES,
        )

    def _notify(self, online: bool) -> None:
        if self.on_connection_change is None:
            return
        try:
            self.on_connection_change(online)
        except Exception:
            log.exception("on_connection_change callback failed")


def _parse_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of mqtt://host:port or mqtts://host:port."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError("uplink.url", f"{url!r} is not mqtt://host:port or mqtts://host:port")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError("uplink.url", f"{url!r} has a bad port") from None
    return parts.hostname, port, tls


def _read_password(settings: UplinkSection) -> str | None:
    """The password from password_file, read at each attempt so a rotation needs no restart."""
    if settings.password_file is None:
        return None
    try:
        return settings.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError("uplink.password_file", f"cannot read: {exc.strerror}") from None


def _optional_seq(payload: Mapping[str, JSONValue], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return value
