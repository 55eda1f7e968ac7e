"""Send one command to a gateway (`{root}/{gw}/cmd/{name}`) and wait for its MQTT 5 reply."""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.errors import ProtocolError, TransientError
from gateway.protocol.canonical import canonical_bytes
from gateway.protocol.strict_json import load_object
from master_station.listener import ListenerOptions, parse_broker_url

__all__ = ["CommandReply", "send_command"]


@dataclass(frozen=True, slots=True)
class CommandReply:
    """The gateway's answer: `ok`, and `result` or `error`/`detail`."""

    ok: bool
    body: Mapping[str, Any]

    @property
    def error(self) -> str | None:
        error = self.body.get("error")
        return str(error) if error is not None else None


def send_command(
    connection: ListenerOptions,
    gateway: str,
    name: str,
    body: Mapping[str, Any],
    *,
    timeout: float = 10.0,
) -> CommandReply:
    """Publish the command with a response topic under the gateway's reply subtree; await it."""
    return _Exchange(connection, gateway, name).run(body, timeout)


class _Exchange:
    """One request and its reply over a short-lived MQTT 5 connection."""

    def __init__(self, connection: ListenerOptions, gateway: str, name: str) -> None:
        self.connection = connection
        self.root = connection.topic_root.rstrip("/")
        self.gateway = gateway
        self.name = name
        self.correlation = os.urandom(8).hex()
        self.reply_topic = f"{self.root}/{gateway}/reply/{name}/{self.correlation}"
        self._subscribed = threading.Event()
        self._answered = threading.Event()
        self._reply: dict[str, Any] = {}
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sealgw-master-cmd-{self.correlation}",
            protocol=paho.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def run(self, body: Mapping[str, Any], timeout: float) -> CommandReply:
        host, port, tls = parse_broker_url(self.connection.broker_url)
        self._configure(tls)
        try:
            self._client.connect(host, port, 30)
        except OSError as exc:
            raise TransientError(f"cannot reach broker {host}:{port}: {exc}") from None
        self._client.loop_start()
        try:
            return self._exchange(body, timeout)
        finally:
            self._client.disconnect()
            self._client.loop_stop()

    def _configure(self, tls: bool) -> None:
        opts = self.connection
        if opts.username is not None:
            self._client.username_pw_set(opts.username, opts.password)
        if tls:
            context = ssl.create_default_context(cafile=str(opts.ca_file) if opts.ca_file else None)
            if opts.cert_file is not None:
                key = str(opts.key_file) if opts.key_file else None
                context.load_cert_chain(str(opts.cert_file), key)
            self._client.tls_set_context(context)

    def _exchange(self, body: Mapping[str, Any], timeout: float) -> CommandReply:
        if not self._subscribed.wait(timeout):
            raise TransientError("the broker did not acknowledge the reply subscription")
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = self.correlation.encode()
        props.MessageExpiryInterval = max(1, int(timeout))
        topic = f"{self.root}/{self.gateway}/cmd/{self.name}"
        self._client.publish(topic, canonical_bytes(dict(body)), qos=1, properties=props)
        if not self._answered.wait(timeout):
            raise TransientError(
                f"gateway {self.gateway} did not answer cmd/{self.name} within {timeout:g} s"
            )
        return CommandReply(bool(self._reply.get("ok")), self._reply)

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.reply_topic, qos=1)

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            reply = load_object(msg.payload, "command reply")
        except ProtocolError:
            return
        self._reply = reply
        self._answered.set()
