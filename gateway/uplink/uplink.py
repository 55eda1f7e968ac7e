"""The MQTT uplink: drains the event buffer to the broker and serves commands.

Delivery is at-least-once. A window of at most `max_inflight` events is unacknowledged at any
time; it is refilled from the buffer with one cursor per priority, so alarms go first and each
priority goes out in seq order. Seqs are marked published only after their PUBACK, in batches.
When the connection drops, the window and the cursors are forgotten and whatever was not
acknowledged is fetched again after the reconnect: a duplicate carries the same id and seq.

Duplicate control: each connection attempt gets a NEW paho client (gateway/uplink/mqtt_client.py).
paho keeps its own copy of every unacknowledged QoS 1 message and resends it on reconnect; if
the client were reused, each outage would add paho's copies on top of our refetch, and with a
flapping link the copies pile up. With a fresh client per connection (and a clean session,
so the broker keeps no state for us either) the buffer is the only source of resends: at most
one duplicate per event per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties

from gateway.drivers.pacing import Backoff, TokenBucket
from gateway.errors import ConfigError, TransientError
from gateway.protocol.canonical import JSONValue, canonical_bytes
from gateway.protocol.clock import Clock
from gateway.protocol.events import Event, Priority, format_ts
from gateway.uplink.commands import Command, CommandDispatcher, command_args, encode_reply
from gateway.uplink.config import UplinkSection
from gateway.uplink.delivery import AckBatcher, DeliveryWindow, EventSource, PendingLike
from gateway.uplink.mqtt_client import (
    ConnackInfo,
    ConnectFailedError,
    ConnectParams,
    MqttConnection,
)

__all__ = ["EventSource", "PendingLike", "Uplink", "UplinkStats"]

log = logging.getLogger(__name__)

ACK_BATCH = 2048  # mark_published after this many PUBACKs ...
ACK_DELAY_S = 0.05  # ... or this long after the first unflushed one
IDLE_POLL_S = 1.0  # refill now and then even without a wake(), in case one was missed
CONTROL_HEADROOM = 8  # in-flight slots beyond max_inflight for status, replies, retained
URGENT_QUEUE = 64

T = TypeVar("T")


@dataclass(slots=True)
class UplinkStats:
    """Counters for health reports and tests."""

    published: int = 0
    acked: int = 0
    refused: int = 0
    reconnects: int = 0
    connections: int = 0
    last_error: str | None = None


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
        signed_commands: bool = False,
    ) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self.client_id = client_id or gateway_id
        self.version = version
        self.stats = UplinkStats()
        self.on_connection_change: Callable[[bool], None] | None = None
        self._source = source
        self._dispatcher = dispatcher
        self._clock = clock
        self._host, self._port, self._tls = _parse_url(settings.url)
        self._prefix = f"{settings.topic_root}/{gateway_id}"
        self._protocol: Literal["5", "3.1.1"] = "3.1.1" if settings.protocol == "3.1.1" else "5"
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s, rng)
        self._bucket = TokenBucket(settings.drain_rate_per_s, clock)
        self._delivery = DeliveryWindow()
        self._acks = AckBatcher(source.mark_published, ACK_BATCH, ACK_DELAY_S)
        self._retained: dict[str, bytes] = {}
        self._urgent: deque[tuple[str, bytes, int]] = deque(maxlen=URGENT_QUEUE)
        self._control: dict[int, asyncio.Future[bool]] = {}
        self._outbox: deque[_Outgoing] = deque()
        self._control_slots = CONTROL_HEADROOM
        self._tasks: set[asyncio.Task[None]] = set()
        self._conn: MqttConnection | None = None
        self._online = False
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._prefetching: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._stop_timeout = 0.0
        self._done: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._warned = ""
        dispatcher.register("resend", self._cmd_resend, signed=signed_commands)

    # -- public API --

    @property
    def connected(self) -> bool:
        return self._online

    @property
    def protocol(self) -> Literal["5", "3.1.1"]:
        """The MQTT version in use, or to be used on the next attempt."""
        return self._protocol

    def topic(self, suffix: str) -> str:
        """The full topic of `suffix` under this gateway's subtree."""
        return f"{self._prefix}/{suffix}"

    def wake(self, *, urgent: bool = False) -> None:
        """New events were committed: refill the window soon. Safe from any thread.

        `urgent` (an alarm was committed) drops the read-ahead, so the alarm goes next.
        """
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._woken(urgent)
        else:
            self._loop.call_soon_threadsafe(self._woken, urgent)

    def rebirth(self) -> int:
        """Republish the online status and every retained value now; returns how many."""
        if not self._online:
            return 0
        self._publish_control(self.topic("status"), self._status(True), retain=True)
        for suffix, payload in self._retained.items():
            self._publish_control(self.topic(suffix), payload, retain=True)
        return 1 + len(self._retained)

    def committed(self, events: Sequence[Event]) -> None:
        """The buffer's on_commit hook: wake, urgently when an alarm is among the events."""
        self.wake(urgent=any(event.priority is Priority.ALARM for event in events))

    def _woken(self, urgent: bool) -> None:
        if urgent and self._delivery.ahead:
            self._delivery.rewind(self._delivery.ahead[0].seq - 1)
        self._wake.set()

    def set_retained(self, topic_suffix: str, payload: bytes) -> None:
        """Publish `payload` retained now if connected, and again after every reconnect."""
        _check_suffix(topic_suffix)
        self._retained[topic_suffix] = payload
        if self._online:
            self._publish_control(self.topic(topic_suffix), payload, retain=True)

    def publish_now(self, topic_suffix: str, payload: bytes, qos: int = 1) -> bool:
        """Publish outside the buffer; if offline, queue it (bounded) for the next connect."""
        _check_suffix(topic_suffix)
        if self._online:
            self._publish_control(self.topic(topic_suffix), payload, qos=qos)
            return True
        if len(self._urgent) == self._urgent.maxlen:
            log.warning("urgent queue full; dropping the oldest unsent message")
        self._urgent.append((topic_suffix, payload, qos))
        return False

    def publish_alarm_now(self, alarm_type: str, data: Mapping[str, JSONValue]) -> bool:
        """An alarm that could not be stored: published to alarm/{type} outside the chain."""
        body = {**data, "type": alarm_type, "ts": format_ts(self._clock.now())}
        return self.publish_now(f"alarm/{alarm_type}", canonical_bytes(body), qos=1)

    async def run(self) -> None:
        """Connect, serve and reconnect until stop() is called."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._done = self._loop.create_future()
        try:
            while not self._stop.is_set():
                conn = await self._until_stopped(self._connect())
                if conn is not None:
                    await self._serve(conn)
                if not self._stop.is_set():
                    await self._until_stopped(self._clock.sleep(self._backoff.next_delay()))
        finally:
            await self._cleanup()

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - part of the component API
        """Flush what can be flushed within `timeout`, publish offline, disconnect."""
        self._stop_timeout = timeout
        self._stop.set()
        if self._done is not None and not self._done.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout + 2.0):
                    await asyncio.shield(self._done)

    # -- connection life --

    async def _connect(self) -> MqttConnection | None:
        """One attempt (two if the broker refuses MQTT 5 under protocol=auto)."""
        try:
            conn = MqttConnection(self._params(), on_message=self._on_message, on_ack=self._on_ack)
            info = await conn.open()
        except ConnectFailedError as exc:
            if exc.unsupported_protocol and self._fall_back():
                return await self._connect()
            self._failed(exc.reason)
            return None
        except ConfigError as exc:
            self._failed(str(exc))
            return None
        self._started(conn, info)
        return conn

    def _fall_back(self) -> bool:
        if self.settings.protocol != "auto" or self._protocol != "5":
            return False
        log.warning("broker refused MQTT 5; using MQTT 3.1.1 from now on")
        self._protocol = "3.1.1"
        return True

    def _started(self, conn: MqttConnection, info: ConnackInfo) -> None:
        self._conn = conn
        self._backoff.reset()
        self.stats.reconnects += 1 if self.stats.connections else 0
        self.stats.connections += 1
        self._warned = ""
        self._control_slots = _control_slots(info.receive_maximum)
        window = self.settings.max_inflight
        if info.receive_maximum is not None:
            window = max(1, min(window, info.receive_maximum - self._control_slots))
        self._delivery.reset(window)
        log.info("uplink connected to %s (MQTT %s)", self.settings.url, info.protocol)
        conn.subscribe(self.topic("cmd/#"), 1)
        self._publish_control(self.topic("status"), self._status(True), retain=True)
        self._online = True
        for suffix, payload in self._retained.items():
            self._publish_control(self.topic(suffix), payload, retain=True)
        while self._urgent:
            suffix, payload, qos = self._urgent.popleft()
            self._publish_control(self.topic(suffix), payload, qos=qos)
        self._notify(True)

    async def _serve(self, conn: MqttConnection) -> None:
        """Pump events until the connection closes or stop() is called."""
        await self._acks.flush()  # acks of the last session first, so they are not resent
        pump = asyncio.create_task(self._pump(conn))
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait((pump, conn.closed, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if self._stop.is_set() and conn.is_open:
            await self._shutdown(conn, pump)
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        self._lost(conn)

    async def _shutdown(self, conn: MqttConnection, pump: asyncio.Task[None]) -> None:
        """Drain within the stop timeout, then publish offline and disconnect cleanly."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stop_timeout
        self._drained.clear()  # only a refill that finds nothing more may set it now
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await self._drained.wait()
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        await self._acks.flush()
        offline = self._publish_control(self.topic("status"), self._status(False), retain=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.05, deadline - loop.time())):
                await offline
        await conn.close(max(0.05, deadline - loop.time()))
        log.info(
            "uplink stopped (%d events in flight were left for next time)", self._delivery.size
        )

    def _lost(self, conn: MqttConnection) -> None:
        conn.abort()
        self._conn = None
        was_online, self._online = self._online, False
        self._delivery.reset(0)
        if self._prefetching is not None:
            self._prefetching.cancel()
        for future in [*self._control.values(), *(item.future for item in self._outbox)]:
            future.cancel()
        self._control.clear()
        self._outbox.clear()
        if was_online and not self._stop.is_set():
            reason = conn.closed.result() if conn.closed.done() else "closed"
            self._failed(f"connection lost: {reason}")
        if was_online:
            self._notify(False)

    def _failed(self, reason: str) -> None:
        """Log the first failure (or a new kind of failure) at WARNING, repeats at DEBUG."""
        self.stats.last_error = reason
        level = logging.DEBUG if reason == self._warned else logging.WARNING
        self._warned = reason
        log.log(level, "uplink %s: %s", self.settings.url, reason)

    async def _cleanup(self) -> None:
        if self._conn is not None:
            self._lost(self._conn)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._acks.flush()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _until_stopped(self, work: Awaitable[T]) -> T | None:
        """Await `work`, but cancel it and return None as soon as stop() is called."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return task.result() if not task.cancelled() else None

    # -- delivery --

    async def _pump(self, conn: MqttConnection) -> None:
        while conn.is_open:
            try:
                await self._refill(conn)
            except Exception:  # a buffer failure must not take the connection down
                log.exception("uplink could not fetch events from the buffer; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_S):
                    await self._wake.wait()
            self._wake.clear()

    async def _refill(self, conn: MqttConnection) -> None:
        """Fill the window, highest priority first, within the drain rate."""
        while conn.is_open:
            free = self._delivery.free
            if free <= 0:
                return
            granted = self._bucket.take(free)
            if granted == 0:
                await self._clock.sleep(self._bucket.wait_time())
                continue
            if not self._delivery.ahead and not await self._fetch_ahead(granted):
                self._bucket.give_back(granted)
                if self._delivery.size == 0:
                    self._drained.set()
                return
            sent = self._send(conn, self._delivery.take(granted))
            self._bucket.give_back(granted - sent)
            if self._reads_ahead:
                self._prefetch()

    @property
    def _reads_ahead(self) -> bool:
        """Read ahead only when the drain is unbounded; a paced drain fetches what may go."""
        return self.settings.drain_rate_per_s <= 0

    async def _fetch_ahead(self, wanted: int) -> bool:
        """Wait for events to send: the running prefetch, then if need be a fetch of our own.

        A prefetch that was already running may have read the buffer before the latest commit,
        so an empty answer from it proves nothing; only a fetch started now may say "drained".
        """
        running = self._prefetching
        if running is not None and not running.done():
            await asyncio.shield(running)
            if self._delivery.ahead:
                return True
        limit = max(wanted, 2 * self._delivery.window) if self._reads_ahead else wanted
        self._prefetching = asyncio.create_task(self._fetch(limit))
        await asyncio.shield(self._prefetching)
        return bool(self._delivery.ahead)

    def _prefetch(self) -> None:
        """Read the next events in the background while the window drains.

        Sending then never waits for the database, whose one thread also commits and marks.
        The read-ahead is two windows deep; a committed alarm drops it (see wake), so the
        alarm is fetched next.
        """
        limit = 2 * self._delivery.window
        running = self._prefetching is not None and not self._prefetching.done()
        if not running and len(self._delivery.ahead) < limit // 2:
            self._prefetching = asyncio.create_task(self._fetch(limit - len(self._delivery.ahead)))

    async def _fetch(self, limit: int) -> None:
        generation = self._delivery.generation
        try:
            batch = await self._source.fetch_pending(self._delivery.cursors, max(1, limit))
        except Exception:  # a buffer failure must not take the connection down
            log.exception("uplink could not fetch events from the buffer; retrying")
            return
        self._delivery.read_ahead(batch, generation)
        if batch:
            self._wake.set()

    def _send(self, conn: MqttConnection, batch: Sequence[PendingLike]) -> int:
        sent = 0
        for event in batch:
            self._delivery.advance(event)
            if self._delivery.has_seq(event.seq) or not conn.is_open:
                continue
            try:
                mid = conn.publish(self.topic(f"events/{event.type}"), event.payload, 1)
            except TransientError:
                return sent
            self._delivery.add(mid, event)
            self.stats.published += 1
            sent += 1
        if sent:
            self._drained.clear()
        return sent

    def _on_ack(self, mid: int, ok: bool) -> None:
        """A PUBACK (on the loop thread): record it and top the window up when worthwhile."""
        event = self._delivery.pop(mid)
        if event is None:
            self._control_acked(mid, ok)
            return
        if ok:
            self.stats.acked += 1
            self._acks.add(event.seq)
        else:
            self.stats.refused += 1
            self._failed(f"broker refused event seq {event.seq} (retried after reconnect)")
        if self._delivery.size == 0 or self._delivery.free >= self._delivery.refill_at:
            self._wake.set()

    def _control_acked(self, mid: int, ok: bool) -> None:
        future = self._control.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(ok)
        self._send_control()

    # -- control messages and commands --

    def _publish_control(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> asyncio.Future[bool]:
        """Publish a non-event message; the future resolves at its PUBACK (False if lost)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._conn is None:
            future.set_result(False)
            return future
        self._outbox.append(_Outgoing(topic, payload, qos, retain, properties, future))
        self._send_control()
        return future

    def _send_control(self) -> None:
        """Send queued control messages while control slots are free (Receive Maximum)."""
        conn = self._conn
        while conn is not None and self._outbox and len(self._control) < self._control_slots:
            item = self._outbox.popleft()
            try:
                mid = conn.publish(
                    item.topic,
                    item.payload,
                    item.qos,
                    retain=item.retain,
                    properties=item.properties,
                )
            except TransientError:
                item.future.set_result(False)
                continue
            if item.qos == 0:
                item.future.set_result(True)
            else:
                self._control[mid] = item.future

    def _status(self, online: bool) -> bytes:
        body: dict[str, JSONValue] = {
            "state": "online" if online else "offline",
            "ts": format_ts(self._clock.now()),
            "gateway": self.gateway_id,
            "version": self.version,
        }
        if online:
            body["protocol"] = self._protocol
        else:
            body["reason"] = "shutdown"
        return canonical_bytes(body)

    def _will(self) -> bytes:
        body = {"state": "offline", "gateway": self.gateway_id, "reason": "connection_lost"}
        return canonical_bytes(body)

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        prefix = self.topic("cmd/")
        if not msg.topic.startswith(prefix):
            return
        if msg.retain:
            log.warning(
                "ignoring retained command on %s (a stale command is not replayed)", msg.topic
            )
            return
        props = getattr(msg, "properties", None)
        command = Command.parse(
            msg.topic[len(prefix) :],
            bytes(msg.payload),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation_data=getattr(props, "CorrelationData", None),
        )
        task = asyncio.create_task(self._run_command(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_command(self, command: Command) -> None:
        reply = await self._dispatcher.dispatch(command)
        conn = self._conn
        if conn is None or not conn.is_open:
            log.debug("reply to %s dropped: not connected", command.name)
            return
        topic = command.response_topic if self._protocol == "5" else None
        properties = conn.new_publish_properties()
        if topic and properties is not None and command.correlation_data is not None:
            properties.CorrelationData = command.correlation_data
        target = topic or self.topic(f"reply/{command.name}")
        self._publish_control(target, encode_reply(reply), properties=properties)

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
        self._delivery.rewind(from_seq - 1)
        self._wake.set()
        log.info("resend from seq %d to %s: %d events requeued", from_seq, to_seq, count)
        return {"requeued": count, "first_available_seq": first}

    def _params(self) -> ConnectParams:
        s = self.settings
        return ConnectParams(
            host=self._host,
            port=self._port,
            client_id=self.client_id,
            protocol=self._protocol,
            keepalive_s=s.keepalive_s,
            will_topic=self.topic("status"),
            will_payload=self._will(),
            max_inflight=s.max_inflight + CONTROL_HEADROOM,
            tls=self._tls,
            ca_file=s.ca_file,
            cert_file=s.cert_file,
            key_file=s.key_file,
            username=s.username,
            password=_read_password(s),
            connect_timeout_s=max(5.0, min(30.0, float(s.keepalive_s))),
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


def _control_slots(receive_maximum: int | None) -> int:
    """In-flight slots kept for status, retained values and replies; events get the rest.

    Together they never exceed the broker's Receive Maximum (mosquitto announces 20 by
    default), which a broker may enforce by disconnecting the client.
    """
    if receive_maximum is None:
        return CONTROL_HEADROOM
    return max(1, min(CONTROL_HEADROOM, receive_maximum // 4))


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """A control message waiting for a free control slot."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None
    future: asyncio.Future[bool]


def _read_password(settings: UplinkSection) -> str | None:
    """The password from password_file, read at each attempt so a rotation needs no restart."""
    if settings.password_file is None:
        return None
    try:
        return settings.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError("uplink.password_file", f"cannot read: {exc.strerror}") from None


def _check_suffix(suffix: str) -> None:
    if not suffix or suffix.startswith("/") or any(c in suffix for c in "#+\0"):
        raise ValueError(f"bad topic suffix {suffix!r}")


def _optional_seq(payload: Mapping[str, JSONValue], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return value
