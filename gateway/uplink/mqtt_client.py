"""One MQTT connection: a paho-mqtt 2.x client driven by the asyncio loop, used once.

Threading. paho's network loop is NOT run in its own thread (loop_start). Instead the socket is
registered with the event loop (add_reader / add_writer) and paho's loop_read, loop_write and
loop_misc are called from loop callbacks, as paho's "external event loop" mode allows. Why:
- throughput: a burst of publish() calls only queues packets and registers the writer once;
  a single writer callback then flushes them all, and a socket read handles every PUBACK in
  it. In threaded mode each publish wakes paho's thread through a socket pair, and each PUBACK
  has to hop back into the loop (call_soon_threadsafe) with the GIL ping-ponging between them;
- correctness: every paho callback (CONNACK, PUBACK, message, disconnect) runs on the loop
  thread, so the uplink's state needs no locks and no thread hops.
The one blocking step, paho's connect() (name resolution, TCP connect, TLS handshake, CONNECT),
runs in a daemon thread of its own, not the loop's default executor: `asyncio.run` joins that
executor at exit, so a connect hanging on a black-holed broker or a dead DNS server would hold
up a stop for as long as it hangs. The attempt is abandoned after `connect_timeout_s` (plus a
grace) whatever the thread does; the socket callbacks are installed only after it returns, so
nothing from that thread touches the loop.

A connection is never reused: the uplink makes a new one (hence a new paho client) for every
attempt, so paho's own queue of unacknowledged messages dies with the connection and paho
never resends copies of its own after a reconnect (see gateway/uplink/reconnect.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import ConfigError, TransientError

__all__ = ["ConnackInfo", "ConnectFailedError", "ConnectParams", "MqttConnection"]

log = logging.getLogger(__name__)

MISC_INTERVAL_S = 1.0
CONNECT_GRACE_S = 1.0
UNSUPPORTED_PROTOCOL = 0x84  # v5 reason code; paho maps a v3 CONNACK return code 1 onto it
PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}

MessageHandler = Callable[[paho.MQTTMessage], None]
AckHandler = Callable[[int, bool], None]


@dataclass(frozen=True, slots=True)
class ConnectParams:
    """Everything one connection attempt needs; built fresh for each attempt."""

    host: str
    port: int
    client_id: str
    protocol: Literal["5", "3.1.1"]
    keepalive_s: int
    will_topic: str
    will_payload: bytes
    max_inflight: int
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str = ""
    password: str | None = None
    connect_timeout_s: float = 10.0
    max_packet_bytes: int = 0  # MQTT 5 Maximum Packet Size announced on CONNECT; 0: none

    def __repr__(self) -> str:
        return f"ConnectParams({self.host}:{self.port}, client_id={self.client_id!r})"


@dataclass(frozen=True, slots=True)
class ConnackInfo:
    """What the broker told us when it accepted the connection."""

    protocol: Literal["5", "3.1.1"]
    receive_maximum: int | None
    topic_alias_maximum: int = 0  # MQTT 5: aliases we may use; 0 = none


class ConnectFailedError(TransientError):
    """A connection attempt failed; `reason` is a one-line explanation fit for a log."""

    def __init__(self, reason: str, *, unsupported_protocol: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unsupported_protocol = unsupported_protocol


class MqttConnection:
    """A single connection attempt and, if it succeeds, its life until it closes."""

    def __init__(
        self,
        params: ConnectParams,
        *,
        on_message: MessageHandler,
        on_ack: AckHandler,
    ) -> None:
        self.params = params
        self._on_message = on_message
        self._on_ack = on_ack
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._client = _make_client(params)
        self._connack: asyncio.Future[ReasonCode] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._sock: Any = None
        self._misc: asyncio.TimerHandle | None = None
        self._last_error = ""
        self._receive_maximum: int | None = None
        self._topic_alias_maximum = 0
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_publish = self._handle_publish
        self._client.on_message = self._handle_message
        self._client.on_log = self._handle_log

    @property
    def is_open(self) -> bool:
        return self._connack.done() and not self.closed.done()

    async def open(self) -> ConnackInfo:
        """Connect and wait for a successful CONNACK; raise ConnectFailedError otherwise."""
        timeout = self.params.connect_timeout_s
        try:
            await self._connect_socket()
            async with asyncio.timeout(timeout):
                await asyncio.wait(
                    (self._connack, self.closed), return_when=asyncio.FIRST_COMPLETED
                )
        except TimeoutError:
            self.abort()
            raise ConnectFailedError(f"no CONNACK within {timeout:g} s") from None
        except BaseException:
            self.abort()
            raise
        return self._check_connack()

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        """Queue a publish and return its message id; raise TransientError when closed."""
        if not self.is_open:
            raise TransientError("not connected")
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_QUEUE_SIZE):
            raise TransientError(f"publish failed: {paho.error_string(info.rc)}")
        return info.mid

    def subscribe(self, topic: str, qos: int) -> None:
        """Send a SUBSCRIBE (the SUBACK is not awaited)."""
        self._client.subscribe(topic, qos)

    def new_publish_properties(self) -> Properties | None:
        """An empty PUBLISH property set under v5, None under 3.1.1."""
        if self.params.protocol != "5":
            return None
        return Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]

    async def close(self, grace_s: float) -> None:
        """Send DISCONNECT (so the broker does not fire the Will) and wait for the socket."""
        if self.is_open:
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await asyncio.shield(self.closed)
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once, without DISCONNECT; idempotent."""
        if self._sock is not None:
            self._client._sock_close()  # paho has no public abort
        self._finish("closed by the gateway")

    # -- paho wiring (all on the loop thread once _connect_socket returned) --

    async def _connect_socket(self) -> None:
        p = self.params
        worker = _in_daemon_thread(self._loop, self._blocking_connect, f"mqtt-connect:{p.host}")
        try:
            async with asyncio.timeout(p.connect_timeout_s + CONNECT_GRACE_S):
                await asyncio.shield(worker)
        except TimeoutError:  # name resolution hung: paho's timeout covers only the TCP part
            worker.add_done_callback(lambda _f: self._client._sock_close())
            raise ConnectFailedError(f"cannot reach {p.host}:{p.port}: timed out") from None
        except asyncio.CancelledError:
            worker.add_done_callback(lambda _f: self._client._sock_close())
            raise
        except ssl.SSLCertVerificationError as exc:
            reason = f"certificate verify failed ({exc.verify_message})"
            raise ConnectFailedError(f"TLS handshake failed: {reason}") from None
        except ssl.SSLError as exc:
            raise ConnectFailedError(f"TLS handshake failed: {_ssl_reason(exc)}") from None
        except ConnectionRefusedError:
            raise ConnectFailedError(f"TCP connection to {p.host}:{p.port} refused") from None
        except OSError as exc:
            raise ConnectFailedError(f"cannot reach {p.host}:{p.port}: {exc}") from None
        self._attach()

    def _blocking_connect(self) -> None:
        p = self.params
        if p.protocol == "5":
            props = None
            if p.max_packet_bytes:  # the broker then never sends us a larger packet
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.MaximumPacketSize = p.max_packet_bytes
            self._client.connect(p.host, p.port, p.keepalive_s, clean_start=True, properties=props)
        else:
            self._client.connect(p.host, p.port, p.keepalive_s)

    def _attach(self) -> None:
        sock = self._client.socket()
        if sock is None:
            raise ConnectFailedError(_before_connack(self._last_error or "closed during connect"))
        self._sock = sock
        self._client.on_socket_register_write = self._register_write
        self._client.on_socket_unregister_write = self._unregister_write
        self._client.on_socket_close = self._socket_closed
        self._loop.add_reader(sock, self._readable)
        if self._client.want_write():
            self._loop.add_writer(sock, self._writable)
        self._misc = self._loop.call_later(MISC_INTERVAL_S, self._tick)

    def _readable(self) -> None:
        self._client.loop_read()
        # TLS may hold decrypted bytes the selector cannot see; drain them now.
        sock = self._client.socket()
        while isinstance(sock, ssl.SSLSocket) and sock.pending():
            self._client.loop_read()
            sock = self._client.socket()

    def _writable(self) -> None:
        self._client.loop_write()

    def _tick(self) -> None:
        self._client.loop_misc()
        if self._sock is not None:
            self._misc = self._loop.call_later(MISC_INTERVAL_S, self._tick)

    def _register_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._loop.add_writer(sock, self._writable)

    def _unregister_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._loop.remove_writer(sock)

    def _socket_closed(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._sock = None
        if self._misc is not None:
            self._misc.cancel()
        # paho calls on_disconnect (with the broker's reason) right after this; fall back later.
        self._loop.call_soon(self._finish, self._last_error or "connection closed")

    def _handle_connect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._receive_maximum = getattr(properties, "ReceiveMaximum", None)
        self._topic_alias_maximum = int(getattr(properties, "TopicAliasMaximum", 0) or 0)
        if not self._connack.done():
            self._connack.set_result(reason)

    def _handle_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            self._finish(f"broker sent DISCONNECT: {str(reason).lower()}")
        else:
            self._finish(self._last_error or "connection closed by the network or the broker")

    def _handle_publish(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._on_ack(mid, not reason.is_failure)

    def _handle_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self._on_message(msg)

    def _handle_log(self, _client: paho.Client, _userdata: Any, level: int, text: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            self._last_error = text

    def _finish(self, reason: str) -> None:
        if threading.get_ident() != self._loop_thread:  # paho closed it inside connect()
            self._loop.call_soon_threadsafe(self._finish, reason)
            return
        if not self.closed.done():
            self.closed.set_result(reason)

    def _check_connack(self) -> ConnackInfo:
        if not self._connack.done():
            reason = self.closed.result()
            self.abort()
            raise ConnectFailedError(_before_connack(reason))
        code = self._connack.result()
        if code.is_failure:
            self.abort()
            raise ConnectFailedError(
                f"connection refused: {str(code).lower()}",
                unsupported_protocol=code.value == UNSUPPORTED_PROTOCOL,
            )
        return ConnackInfo(self.params.protocol, self._receive_maximum, self._topic_alias_maximum)


class _PahoClient(paho.Client):
    """paho's client, except that a failed TLS handshake closes its socket (paho leaks it)."""

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        assert self._ssl_context is not None
        ssl_sock = self._ssl_context.wrap_socket(
            tcp_sock, server_hostname=self._host, do_handshake_on_connect=False
        )
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock


def _in_daemon_thread(
    loop: asyncio.AbstractEventLoop, work: Callable[[], None], name: str
) -> asyncio.Future[None]:
    """Run blocking `work` in a daemon thread; the future resolves on the loop when it ends."""
    future: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)

    def body() -> None:
        error: BaseException | None = None
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=body, name=name, daemon=True).start()
    return future


def _make_client(params: ConnectParams) -> paho.Client:
    """A fresh paho client configured for one attempt."""
    protocol = PROTOCOLS[params.protocol]
    client = _PahoClient(
        CallbackAPIVersion.VERSION2,
        client_id=params.client_id,
        clean_session=True if protocol == paho.MQTTv311 else None,
        protocol=protocol,
    )
    client.max_inflight_messages_set(params.max_inflight)
    client.max_queued_messages_set(0)
    client.connect_timeout = params.connect_timeout_s
    client.will_set(params.will_topic, params.will_payload, qos=1, retain=True)
    if params.username or params.password is not None:
        client.username_pw_set(params.username, params.password)
    if params.tls:
        client.tls_set_context(_tls_context(params))
    return client


def _tls_context(params: ConnectParams) -> ssl.SSLContext:
    """Verify the broker against ca_file (or the system store); present our cert if given."""
    try:
        context = ssl.create_default_context(cafile=str(params.ca_file) if params.ca_file else None)
        if params.cert_file is not None:
            key = str(params.key_file) if params.key_file else None
            context.load_cert_chain(str(params.cert_file), key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("uplink", f"cannot load TLS files: {_ssl_reason(exc)}") from None
    return context


def _ssl_reason(exc: OSError) -> str:
    """The readable part of an SSL error: 'tlsv1 alert unknown ca', not the error tuple."""
    reason = getattr(exc, "reason", None)
    text = exc.strerror if isinstance(exc.strerror, str) else str(exc)
    return str(reason).lower().replace("_", " ") if reason else text


def _before_connack(reason: str) -> str:
    """Explain a connection that closed after the TCP/TLS connect but before CONNACK."""
    lowered = reason.lower()
    if "ssl" in lowered or "alert" in lowered or "certificate" in lowered:
        # Under TLS 1.3 the broker checks our certificate after our side of the handshake is
        # done, so its verdict arrives as an alert (or, if our CONNECT crossed it, a bare EOF).
        return f"TLS handshake failed: {_alert_text(reason)} (broker rejected our certificate?)"
    return f"connection closed before CONNACK: {reason}"


def _alert_text(text: str) -> str:
    """Pull 'tlsv1 alert unknown ca' out of paho's 'failed to receive on socket: [SSL: ...]'."""
    start = text.rfind("] ")
    tail = text[start + 2 :] if start >= 0 else text
    return tail.split(" (_ssl.c")[0].strip()
