"""One uplink connection with an explicit state: opened once, closed once, never reused.

`UplinkConnection` wraps the paho driver (gateway/uplink/mqtt_client.py) with what the uplink
needs of a single connection: its `ConnectionState`, the control slots that share the broker's
Receive Maximum with the event window, and control publishes whose futures resolve at PUBACK.
The state turns CLOSED in the very callback that sees the socket close, so nothing reads a
dropped connection as live, and a control future still waiting then resolves False.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from paho.mqtt.properties import Properties

from gateway.errors import TransientError
from gateway.uplink.mqtt_client import (
    AckHandler,
    ConnackInfo,
    ConnectParams,
    MessageHandler,
    MqttConnection,
)

__all__ = ["CONTROL_HEADROOM", "ConnectionState", "FailureLog", "UplinkConnection", "UplinkStats"]

log = logging.getLogger(__name__)

CONTROL_HEADROOM = 8  # in-flight slots beyond max_inflight for status, replies, retained


class ConnectionState(StrEnum):
    """Where one connection is in its single life."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSING = "closing"  # DISCONNECT sent by us, waiting for the socket to close
    CLOSED = "closed"


@dataclass(slots=True)
class UplinkStats:
    """Counters for health reports and tests."""

    published: int = 0
    acked: int = 0
    refused: int = 0
    reconnects: int = 0
    connections: int = 0
    last_error: str | None = None


class FailureLog:
    """Log the first failure (or a new kind of failure) at WARNING, repeats at DEBUG."""

    def __init__(self, url: str, stats: UplinkStats) -> None:
        self._url = url
        self._stats = stats
        self._warned = ""

    def failed(self, reason: str) -> None:
        self._stats.last_error = reason
        level = logging.DEBUG if reason == self._warned else logging.WARNING
        self._warned = reason
        log.log(level, "uplink %s: %s", self._url, reason)

    def reset(self) -> None:
        """A connection succeeded: the next failure is news again."""
        self._warned = ""


class UplinkConnection:
    """One MQTT connection of the uplink and its state."""

    def __init__(
        self, params: ConnectParams, *, on_message: MessageHandler, on_event_ack: AckHandler
    ) -> None:
        self.params = params
        self.state = ConnectionState.CONNECTING
        self._on_event_ack = on_event_ack
        self._mqtt = MqttConnection(params, on_message=on_message, on_ack=self._on_ack)
        self._control: dict[int, asyncio.Future[bool]] = {}
        self._outbox: deque[_Outgoing] = deque()
        self._control_slots = CONTROL_HEADROOM
        self.receive_maximum: int | None = None
        self.topic_alias_maximum = 0
        self._aliases: dict[str, int] = {}
        self._alias_properties: dict[int, Properties] = {}

    @property
    def connected(self) -> bool:
        """True from a successful CONNACK until the socket closes or close() begins."""
        return self.state is ConnectionState.CONNECTED

    @property
    def closed(self) -> asyncio.Future[str]:
        """Resolves with a one-line reason when the socket is gone."""
        return self._mqtt.closed

    @property
    def protocol(self) -> str:
        return self.params.protocol

    async def open(self) -> ConnackInfo:
        """Connect; raise ConnectFailedError (or ConfigError) and end CLOSED on failure."""
        try:
            info = await self._mqtt.open()
        except BaseException:
            self.state = ConnectionState.CLOSED
            raise
        self.receive_maximum = info.receive_maximum
        self.topic_alias_maximum = info.topic_alias_maximum if info.protocol == "5" else 0
        self._control_slots = control_slots(info.receive_maximum)
        self.state = ConnectionState.CONNECTED
        self._mqtt.closed.add_done_callback(self._socket_closed)
        return info

    def event_window(self, max_inflight: int) -> int:
        """The in-flight window left for events once the control slots are set aside."""
        if self.receive_maximum is None:
            return max_inflight
        return max(1, min(max_inflight, self.receive_maximum - self._control_slots))

    def subscribe(self, topic: str, qos: int) -> None:
        self._mqtt.subscribe(topic, qos)

    def publish_event(self, topic: str, payload: bytes) -> int:
        """Queue one event (or batch) message at QoS 1; its PUBACK goes to on_event_ack.

        Under MQTT 5 the topic gets an alias while the broker's Topic Alias Maximum allows,
        so it is sent in full once per connection and as two bytes after that.
        TransientError if closed.
        """
        if not self.connected:
            raise TransientError("not connected")
        alias = self._aliases.get(topic)
        if alias is not None:
            return self._mqtt.publish("", payload, 1, properties=self._alias_properties[alias])
        if len(self._aliases) >= self.topic_alias_maximum:
            return self._mqtt.publish(topic, payload, 1)
        alias = len(self._aliases) + 1
        properties = self._mqtt.new_publish_properties()
        if properties is None:
            return self._mqtt.publish(topic, payload, 1)
        properties.TopicAlias = alias
        mid = self._mqtt.publish(topic, payload, 1, properties=properties)
        self._aliases[topic] = alias  # only once the broker will have seen the full topic
        self._alias_properties[alias] = properties
        return mid

    def publish_control(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> asyncio.Future[bool]:
        """Publish a non-event message; the future resolves at its PUBACK (False if lost).

        `correlation_data` (MQTT 5 only) is put in the PUBLISH properties when the message
        leaves the outbox: a paho property set costs about 6 KB, so waiting messages hold none.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if not self.connected:
            future.set_result(False)
            return future
        self._outbox.append(_Outgoing(topic, payload, qos, retain, correlation_data, future))
        self._send_control()
        return future

    async def close(self, grace_s: float) -> None:
        """Send DISCONNECT (so the broker does not fire the Will) and wait for the socket."""
        if self.connected:
            self.state = ConnectionState.CLOSING
        await self._mqtt.close(grace_s)
        self._settle()

    def abort(self) -> None:
        """Drop the connection at once, without DISCONNECT; idempotent."""
        self._mqtt.abort()
        self._settle()

    def _socket_closed(self, _closed: asyncio.Future[str]) -> None:
        self._settle()

    def _settle(self) -> None:
        """CLOSED from now on; every control message still waiting resolves False."""
        self.state = ConnectionState.CLOSED
        waiting = [*self._control.values(), *(item.future for item in self._outbox)]
        self._control.clear()
        self._outbox.clear()
        for future in waiting:
            if not future.done():
                future.set_result(False)

    def _on_ack(self, mid: int, ok: bool) -> None:
        future = self._control.pop(mid, None)
        if future is None:
            self._on_event_ack(mid, ok)
            return
        if not future.done():
            future.set_result(ok)
        self._send_control()

    def _send_control(self) -> None:
        """Send queued control messages while control slots are free (Receive Maximum)."""
        while self.connected and self._outbox and len(self._control) < self._control_slots:
            item = self._outbox.popleft()
            try:
                mid = self._mqtt.publish(
                    item.topic,
                    item.payload,
                    item.qos,
                    retain=item.retain,
                    properties=self._properties(item.correlation_data),
                )
            except TransientError:
                item.future.set_result(False)
                continue
            if item.qos == 0:
                item.future.set_result(True)
            else:
                self._control[mid] = item.future

    def _properties(self, correlation_data: bytes | None) -> Properties | None:
        if correlation_data is None:
            return None
        properties = self._mqtt.new_publish_properties()
        if properties is not None:
            properties.CorrelationData = correlation_data
        return properties


def control_slots(receive_maximum: int | None) -> int:
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
    correlation_data: bytes | None
    future: asyncio.Future[bool]
