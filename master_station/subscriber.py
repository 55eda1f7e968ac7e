"""A paho subscriber that collects gateway events and retained messages, in its own thread.

Events arrive one per message on `events/{type}`, or rebuilt from `batch` messages (the batch
encoding, docs/mqtt.md); `events` holds both, parsed.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.errors import ProtocolError
from gateway.protocol.batch import BatchDecodeError, decode_batch
from gateway.protocol.strict_json import load_object


class EventSubscriber:
    """Subscribes to `{root}/+/events/#` (and anything else asked) and keeps what arrives."""

    def __init__(self, host: str, port: int, *, topic_root: str = "sealgw/v1", client_id: str = ""):
        self.topic_root = topic_root
        self.events: list[dict[str, Any]] = []
        self.messages: list[tuple[str, bytes, bool]] = []
        self.undecodable: list[tuple[str, str]] = []  # (topic, why) of bad batch messages
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._connected = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"subscriber-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self._client.reconnect_delay_set(1, 2)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._address = (host, port)
        self.extra_topics: list[str] = [f"{topic_root}/+/status", f"{topic_root}/+/seals/+/state"]

    def start(self, timeout: float = 10.0) -> EventSubscriber:
        """Connect and subscribe; return once subscribed."""
        self._client.connect(*self._address)
        self._client.loop_start()
        if not self._connected.wait(timeout):
            raise TimeoutError("subscriber did not connect")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> EventSubscriber:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def seqs(self, gateway: str) -> list[int]:
        """Sequence numbers received from `gateway`, sorted, duplicates kept."""
        with self._lock:
            return sorted(e["seq"] for e in self.events if e.get("gateway") == gateway)

    def missing(self, gateway: str) -> list[int]:
        """Sequence numbers below the highest received that have not arrived."""
        seqs = set(self.seqs(gateway))
        return sorted(set(range(1, max(seqs, default=0) + 1)) - seqs)

    def request_resend(
        self,
        gateway: str,
        from_seq: int,
        to_seq: int | None = None,
        *,
        signer: Callable[[str, str, Mapping[str, Any], int], bytes] | None = None,
    ) -> None:
        """Ask the gateway to publish again from `from_seq` (cmd/resend), signed if a signer
        (MasterAuthority.sign_command) is given: gateways holding a master key require it."""
        body: dict[str, Any] = {"from_seq": from_seq}
        if to_seq is not None:
            body["to_seq"] = to_seq
        topic = f"{self.topic_root}/{gateway}/cmd/resend"
        payload = signer("resend", gateway, body, 300) if signer else json.dumps(body).encode()
        self._client.publish(topic, payload, qos=1)

    def retained(self, topic: str) -> bytes | None:
        """The last payload seen on `topic`."""
        with self._lock:
            found = [payload for t, payload, _ in self.messages if t == topic]
        return found[-1] if found else None

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` holds (checked on every message) or the timeout passes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.2))
        return True

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        topics = [(f"{self.topic_root}/+/events/#", 1), (f"{self.topic_root}/+/batch", 1)]
        topics += [(t, 1) for t in self.extra_topics]
        client.subscribe(topics)
        self._connected.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            if "/events/" in message.topic:
                with contextlib.suppress(ProtocolError):  # a bad payload is not an event
                    self.events.append(load_object(message.payload, "event"))
            elif message.topic.endswith("/batch"):
                self._on_batch(message.topic, bytes(message.payload))
            self._changed.notify_all()

    def _on_batch(self, topic: str, payload: bytes) -> None:
        gateway = topic[len(self.topic_root) + 1 :].split("/", maxsplit=1)[0]
        try:
            batch = decode_batch(payload, gateway)
        except BatchDecodeError as exc:
            self.undecodable.append((topic, str(exc)))
            return
        self.events.extend(json.loads(event) for event in batch.payloads)
