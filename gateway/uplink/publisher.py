"""Retained and control messages: the status birth and Will, retained seal states, alarms now.

None of these go through the event buffer. Retained values are remembered and published again
after every reconnect (and on cmd/rebirth); messages published while offline wait in a small
bounded queue for the next connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping

from gateway.protocol.canonical import JSONValue, canonical_bytes
from gateway.protocol.clock import Clock
from gateway.protocol.events import EventType, format_ts
from gateway.uplink.connection import UplinkConnection

__all__ = ["URGENT_QUEUE", "Publisher", "check_suffix"]

log = logging.getLogger(__name__)

URGENT_QUEUE = 64


class Publisher:
    """Publishes this gateway's status, retained values and out-of-chain alarms."""

    def __init__(self, prefix: str, gateway_id: str, version: str, clock: Clock) -> None:
        self._prefix = prefix
        self._gateway_id = gateway_id
        self._version = version
        self._clock = clock
        self._retained: dict[str, bytes] = {}
        self._urgent: deque[tuple[str, bytes, int]] = deque(maxlen=URGENT_QUEUE)
        self._conn: UplinkConnection | None = None

    def topic(self, suffix: str) -> str:
        """The full topic of `suffix` under this gateway's subtree."""
        return f"{self._prefix}/{suffix}"

    @property
    def _live(self) -> UplinkConnection | None:
        conn = self._conn
        return conn if conn is not None and conn.connected else None

    def attach(self, conn: UplinkConnection) -> None:
        """A new connection: birth first, then every retained value, then what waited."""
        self._conn = conn
        conn.publish_control(self.topic("status"), self.status(conn.protocol), retain=True)
        for suffix, payload in self._retained.items():
            conn.publish_control(self.topic(suffix), payload, retain=True)
        while self._urgent:
            suffix, payload, qos = self._urgent.popleft()
            conn.publish_control(self.topic(suffix), payload, qos=qos)

    def detach(self, conn: UplinkConnection) -> None:
        if self._conn is conn:
            self._conn = None

    def rebirth(self) -> int:
        """Republish the online status and every retained value now; returns how many."""
        conn = self._live
        if conn is None:
            return 0
        conn.publish_control(self.topic("status"), self.status(conn.protocol), retain=True)
        for suffix, payload in self._retained.items():
            conn.publish_control(self.topic(suffix), payload, retain=True)
        return 1 + len(self._retained)

    def set_retained(self, topic_suffix: str, payload: bytes) -> None:
        """Publish `payload` retained now if connected, and again after every reconnect."""
        check_suffix(topic_suffix)
        self._retained[topic_suffix] = payload
        conn = self._live
        if conn is not None:
            conn.publish_control(self.topic(topic_suffix), payload, retain=True)

    def publish_now(self, topic_suffix: str, payload: bytes, qos: int = 1) -> bool:
        """Publish outside the buffer; if offline, queue it (bounded) for the next connect."""
        check_suffix(topic_suffix)
        conn = self._live
        if conn is not None:
            conn.publish_control(self.topic(topic_suffix), payload, qos=qos)
            return True
        if len(self._urgent) == self._urgent.maxlen:
            log.warning("urgent queue full; dropping the oldest unsent message")
        self._urgent.append((topic_suffix, payload, qos))
        return False

    def publish_alarm_now(self, alarm_type: EventType | str, data: Mapping[str, JSONValue]) -> bool:
        """An alarm that could not be stored: published to alarm/{type} outside the chain."""
        kind = str(alarm_type)
        body = {**data, "type": kind, "ts": format_ts(self._clock.now())}
        return self.publish_now(f"alarm/{kind}", canonical_bytes(body), qos=1)

    def offline(self, conn: UplinkConnection) -> asyncio.Future[bool]:
        """The clean-stop status (reason shutdown); resolves at its PUBACK, False if lost."""
        return conn.publish_control(self.topic("status"), self.status(None), retain=True)

    def status(self, protocol: str | None) -> bytes:
        """The retained status: online over `protocol`, or offline after a clean stop (None)."""
        body: dict[str, JSONValue] = {
            "state": "online" if protocol is not None else "offline",
            "ts": format_ts(self._clock.now()),
            "gateway": self._gateway_id,
            "version": self._version,
        }
        if protocol is not None:
            body["protocol"] = protocol
        else:
            body["reason"] = "shutdown"
        return canonical_bytes(body)

    def will(self) -> bytes:
        """The Last Will the broker publishes when the connection dies without DISCONNECT."""
        body = {"state": "offline", "gateway": self._gateway_id, "reason": "connection_lost"}
        return canonical_bytes(body)


def check_suffix(suffix: str) -> None:
    """Refuse a topic suffix that would leave the gateway's subtree or contain wildcards."""
    if not suffix or suffix.startswith("/") or any(c in suffix for c in "#+\0"):
        raise ValueError(f"bad topic suffix {suffix!r}")
