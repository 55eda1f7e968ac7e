"""`sealgw master listen`: receive gateway events over MQTT 5 into the ledger, and heal gaps.

Threads: paho's network loop (loop_start) only queues what arrives; one writer thread writes
batches to the ledger and acknowledges them (manual PUBACK, after the commit, so a master that
dies mid-batch gets the messages again); the chain keeper (master_station/chain_keeper.py), on
its own thread and ledger connection, walks the chains that moved and sends `cmd/resend`.

Sessions are persistent (clean_start False, a session expiry): a short master outage, or a
broker restart with persistence, loses nothing. With `share_group`, events are subscribed as
`$share/GROUP/...` so several masters split them; status and seal states are retained, and a
broker never delivers retained messages to shared subscriptions, so those stay non-shared.

Gap healing (`cmd/resend`) is automatic unless masters share a subscription while each keeps
its own SQLite ledger: then every ledger holds only part of each chain, its "gaps" are the other
master's events, and asking for them would only multiply traffic. With a shared (PostgreSQL)
ledger, gaps are judged on the shared ledger after a grace period, and a claim row in the
ledger keeps two masters from asking for the same range at once. Details: docs/master.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.errors import ConfigError, ProtocolError, TransientError
from gateway.protocol.batch import BatchDecodeError, DecodedBatch, decode_batch
from gateway.protocol.strict_json import load_object
from master_station.chain_keeper import ChainKeeper, CommandSigner, HealingPolicy
from master_station.ledger.models import AddOutcome, AddResult, Ledger, LedgerError

__all__ = [
    "LedgerObserver",
    "ListenerOptions",
    "ListenerStats",
    "MasterListener",
    "parse_broker_url",
]

_log = logging.getLogger(__name__)

_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_GATEWAY = re.compile(r"^(\+|[A-Za-z0-9_-]{1,64})$")
RETRY_S = 1.0


class LedgerObserver(Protocol):
    """Told what the listener stored (the console's rollups: master_station/ledger/rollup.py).

    Called on the worker thread after each commit. A failing observer never holds the
    listener: the failure is logged and `dirty` set, so the observer catches up at its `tick`.
    """

    dirty: bool

    def reconcile(self) -> list[str]: ...

    def stored(self, payloads: Sequence[bytes]) -> None: ...

    def outside_alarm(self, gateway: str, kind: str, payload: bytes) -> None: ...

    def tick(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ListenerOptions:
    """Where to listen and how to heal; `heal` None means automatic (see the module doc)."""

    broker_url: str
    topic_root: str = "sealgw/v1"
    gateways: tuple[str, ...] = ("+",)
    share_group: str | None = None
    client_id: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    session_expiry_s: int = 3600
    keepalive_s: int = 30
    heal: bool | None = None
    gap_grace_s: float = 10.0
    resend_interval_s: float = 30.0
    tick_s: float = 1.0
    batch_max: int = 200
    signer: CommandSigner | None = field(default=None, repr=False, compare=False)

    def resolved_client_id(self) -> str:
        """The MQTT client id; stable ids (give one) keep the session across restarts."""
        return self.client_id or f"sealgw-master-{socket.gethostname()}-{os.getpid()}"[:64]


@dataclass(slots=True)
class ListenerStats:
    """Counters since start; `snapshot()` copies them."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    invalid: int = 0
    rejected: int = 0
    seal_states: int = 0
    statuses: int = 0
    resend_requests: int = 0
    resend_replies: int = 0
    resend_requeued: int = 0
    connects: int = 0
    batches: int = 0
    writes: int = 0  # ledger transactions of events
    chain_checks: int = 0

    def snapshot(self) -> ListenerStats:
        return ListenerStats(**{f.name: getattr(self, f.name) for f in fields(self)})

    def to_json(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class _Inbound:
    """One message handed from paho's thread to the worker."""

    kind: str  # events | batch | status | state | reply | alarm
    gateway: str
    key: str  # the seal for `state`
    payload: bytes
    mid: int
    qos: int
    correlation: bytes | None = None


@dataclass(frozen=True, slots=True)
class _Events:
    """The event payloads of one batch of messages, their topics' gateways, and the hash of
    each one's content where a batch decoder computed it (None: the ledger computes it)."""

    payloads: list[bytes]
    gateways: list[str]
    hashes: list[str | None]


class MasterListener:
    """Subscribes to gateways, writes what arrives to the ledger, asks for missing events."""

    def __init__(
        self,
        options: ListenerOptions,
        ledger: Ledger,
        *,
        chain_ledger: Ledger | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: LedgerObserver | None = None,
    ) -> None:
        """`chain_ledger`: a second connection to the same ledger for the chain keeper (the
        writer then never waits for a walk); without one both use `ledger`."""
        _check_options(options)
        self.observer = observer
        self.options = options
        self.ledger = ledger
        self.client_id = options.resolved_client_id()
        self.healing = options.heal if options.heal is not None else _auto_heal(options, ledger)
        self._root = options.topic_root.rstrip("/")
        self._stats = ListenerStats()
        self._stats_lock = threading.Lock()
        self._inbox: queue.Queue[_Inbound] = queue.Queue()
        self._stop = threading.Event()
        self._stop_keeper = threading.Event()
        self._closing = False
        self._subscribed = threading.Event()
        policy = HealingPolicy(self.healing, self.client_id, self._root, options.gap_grace_s,
                               options.resend_interval_s, options.signer)  # fmt: skip
        self.keeper = ChainKeeper(chain_ledger or ledger, policy, self._publish, self._bump,
                                  clock=clock)  # fmt: skip
        self._worker = threading.Thread(target=self._work, name="master-ledger", daemon=True)
        self._keeper = threading.Thread(
            target=self.keeper.run, args=(self._stop_keeper, options.tick_s),
            name="master-chains", daemon=True,
        )  # fmt: skip
        self._client = self._make_client()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> MasterListener:
        """Connect, subscribe and start writing; return once the broker acknowledged."""
        host, port, tls = parse_broker_url(self.options.broker_url)
        if tls:
            self._client.tls_set_context(self._tls_context())
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.options.session_expiry_s
        self._worker.start()
        self._keeper.start()
        try:
            self._client.connect(
                host, port, self.options.keepalive_s, clean_start=False, properties=props
            )
        except OSError as exc:
            self._stop.set()
            self._stop_keeper.set()
            raise TransientError(f"cannot reach broker {host}:{port}: {exc}") from None
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TransientError(f"broker {host}:{port} did not acknowledge the subscriptions")
        _log.info("master %s listening (healing %s)", self.client_id, self.healing)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect, write what was received, check the chains once more, and stop."""
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join(timeout)
        self._stop_keeper.set()
        if self._keeper.is_alive():
            self._keeper.join(timeout)

    def __enter__(self) -> MasterListener:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def stats(self) -> ListenerStats:
        with self._stats_lock:
            return self._stats.snapshot()

    def response_topic(self, gateway: str) -> str:
        """Where gateways answer this master's `cmd/resend` (inside the gateway's subtree)."""
        return self.keeper.policy.response_topic(gateway)

    def subscriptions(self) -> list[str]:
        """The topic filters this listener subscribes to."""
        share = f"$share/{self.options.share_group}/" if self.options.share_group else ""
        topics = []
        for gw in self.options.gateways:
            base = f"{self._root}/{gw}"
            topics += [f"{share}{base}/events/#", f"{base}/status", f"{base}/seals/+/state"]
            topics.append(f"{share}{base}/batch")
            topics.append(f"{share}{base}/alarm/#")
            topics.append(f"{base}/reply/resend/{self.client_id}")
        return topics

    # -- paho thread -----------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        client.reconnect_delay_set(1, 10)
        if self.options.username is not None:
            client.username_pw_set(self.options.username, self.options.password)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    def _tls_context(self) -> ssl.SSLContext:
        opts = self.options
        context = ssl.create_default_context(cafile=str(opts.ca_file) if opts.ca_file else None)
        if opts.cert_file is not None:
            key = str(opts.key_file) if opts.key_file else None
            context.load_cert_chain(str(opts.cert_file), key)
        return context

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            _log.warning("broker refused the master's connection: %s", rc)
            return
        with self._stats_lock:
            self._stats.connects += 1
        _log.info("connected (session present: %s)", flags.session_present)
        client.subscribe([(topic, 1) for topic in self.subscriptions()])

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        refused = [code for code in codes if code.is_failure]
        if refused:
            _log.error("broker refused %d subscriptions: %s", len(refused), refused)
        self._subscribed.set()

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not self._closing:
            _log.warning("disconnected from the broker (%s); reconnecting", rc)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        inbound = self._classify(msg)
        if inbound is None:
            self._client.ack(msg.mid, msg.qos)
            return
        self._inbox.put(inbound)

    def _classify(self, msg: paho.MQTTMessage) -> _Inbound | None:
        parts = msg.topic[len(self._root) + 1 :].split("/")
        if not msg.topic.startswith(self._root + "/") or len(parts) < 2:
            return None
        gateway, kind, key = parts[0], parts[1], ""
        if kind == "seals" and len(parts) == 4 and parts[3] == "state":
            kind, key = "state", parts[2]
        elif kind == "alarm" and len(parts) == 3:
            key = parts[2]
        elif kind == "reply":
            kind = "reply"
        elif kind not in ("events", "status", "batch") or (kind == "batch" and len(parts) != 2):
            return None
        props = getattr(msg, "properties", None)
        correlation = getattr(props, "CorrelationData", None)
        return _Inbound(kind, gateway, key, bytes(msg.payload), msg.mid, msg.qos, correlation)

    # -- worker thread ---------------------------------------------------------------------

    def _work(self) -> None:
        self._observe(lambda o: o.reconcile())
        next_tick = time.monotonic() + self.options.tick_s
        while not (self._stop.is_set() and self._inbox.empty()):
            batch = self._take(min(self.options.tick_s, max(0.0, next_tick - time.monotonic())))
            if batch:
                self._write_safely(batch)
            if time.monotonic() >= next_tick and not self._stop.is_set():
                self._observe(lambda o: o.tick())
                next_tick = time.monotonic() + self.options.tick_s

    def _take(self, timeout: float) -> list[_Inbound]:
        try:
            batch = [self._inbox.get(timeout=max(timeout, 0.01))]
        except queue.Empty:
            return []
        while len(batch) < self.options.batch_max:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write_safely(self, batch: list[_Inbound]) -> None:
        """_write, but nothing unforeseen ends the worker (the batch stays unacknowledged)."""
        try:
            self._write(batch)
        except Exception:  # noqa: BLE001 - the worker outlives any one batch
            _log.exception("a batch of %d messages could not be handled", len(batch))

    def _write(self, batch: list[_Inbound]) -> None:
        """Write a batch, retrying while the ledger fails; acknowledge only what is written."""
        while True:
            try:
                self._apply(batch)
            except LedgerError as exc:
                _log.error("ledger write failed, retrying: %s", exc)
                if self._stop.wait(RETRY_S):
                    return  # unacknowledged: the broker delivers them again next session
                continue
            for item in batch:
                self._client.ack(item.mid, item.qos)
            return

    def _apply(self, batch: list[_Inbound]) -> None:
        """Write a batch; a message that cannot be handled becomes one problem record.

        Only a LedgerError (the ledger itself failing) leaves the batch unacknowledged. Any
        other failure belongs to one message, which must never stop the worker: a retained
        message would otherwise stop it again after every restart. Batch-encoded messages are
        rebuilt into their events first (one that does not decode is one problem record).
        """
        events = self._events(batch)
        if events.payloads:
            self._add_events(events)
        for item in batch:
            if item.kind in ("events", "batch"):
                continue
            try:
                self._apply_one(item)
            except LedgerError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the worker
                self._reject(item, exc)

    def _add_events(self, events: _Events) -> None:
        try:
            results = self.ledger.add_many(
                events.payloads, events.gateways, content_hashes=events.hashes
            )
        except LedgerError:
            raise
        except Exception:  # noqa: BLE001 - not expected (parse_event refuses bad events)
            results = []
            for payload, gateway in zip(events.payloads, events.gateways, strict=True):
                try:
                    results += self.ledger.add_many([payload], [gateway])
                except LedgerError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the culprit becomes a problem record
                    self._reject(_Inbound("events", gateway, "", payload, 0, 0), exc)
        self._count(results)
        self._bump("writes")
        self.keeper.moved(events.gateways)
        if len(results) == len(events.payloads):
            stored = [p for p, r in zip(events.payloads, results, strict=True) if r.stored]
            if stored:
                self._observe(lambda o: o.stored(stored))
        elif self.observer is not None:
            self.observer.dirty = True

    def _apply_one(self, item: _Inbound) -> None:
        if item.kind == "state":
            self.ledger.put_seal_state(item.gateway, item.key, _retained(item))
            self._bump("seal_states")
        elif item.kind == "status":
            self.ledger.put_status(item.gateway, _retained(item))
            self._bump("statuses")
        elif item.kind == "reply":
            self.keeper.on_reply(item.gateway, item.payload, item.correlation)
        elif item.kind == "alarm":
            load_object(item.payload, "alarm message")
            self._observe(lambda o: o.outside_alarm(item.gateway, item.key, item.payload))

    def _reject(self, item: _Inbound, exc: Exception) -> None:
        """Keep a refused message as a problem (once per gateway and kind), acknowledge it."""
        reason = str(exc) if isinstance(exc, ProtocolError) else f"{type(exc).__name__}: {exc}"
        detail = f"{item.kind} message of {len(item.payload)} bytes refused: {reason}"[:300]
        self._bump("rejected")
        level = logging.WARNING if self.stats.rejected == 1 else logging.DEBUG
        _log.log(level, "gateway %s: %s", item.gateway, detail)
        self.ledger.record_problem(item.gateway, f"bad_{item.kind}", detail)

    def _events(self, batch: list[_Inbound]) -> _Events:
        """Every event payload of the batch in arrival order, batch messages rebuilt (with
        the hashes the rebuilding computed).

        A batch message that does not decode is one `invalid` problem (kept with its bytes),
        and is acknowledged like any other message: it never blocks the listener.
        """
        events = _Events([], [], [])
        for item in batch:
            if item.kind == "events":
                events.payloads.append(item.payload)
                events.gateways.append(item.gateway)
                events.hashes.append(None)
            elif item.kind == "batch":
                rebuilt = self._decode_batch(item)
                if rebuilt is not None:
                    events.payloads.extend(rebuilt.payloads)
                    events.gateways.extend([item.gateway] * len(rebuilt.payloads))
                    events.hashes.extend(rebuilt.hashes)
        return events

    def _decode_batch(self, item: _Inbound) -> DecodedBatch | None:
        self._bump("batches")
        try:
            return decode_batch(item.payload, item.gateway)
        except BatchDecodeError as exc:
            digest = hashlib.sha256(item.payload).hexdigest()[:32]
            detail = f"batch message does not decode: {exc}"
            self.ledger.record_problem(
                item.gateway, "invalid", detail, key=f"batch:{digest}", payload=item.payload
            )
            self._bump("invalid")
            _log.warning("gateway %s: %s", item.gateway, detail)
            return None

    def _count(self, results: Iterable[AddResult]) -> None:
        names = {
            AddOutcome.STORED: "stored",
            AddOutcome.DUPLICATE: "duplicates",
            AddOutcome.CONFLICT: "conflicts",
            AddOutcome.INVALID: "invalid",
        }
        with self._stats_lock:
            for result in results:
                self._stats.received += 1
                name = names[result.outcome]
                setattr(self._stats, name, getattr(self._stats, name) + 1)

    def _bump(self, name: str, amount: int = 1) -> None:
        with self._stats_lock:
            setattr(self._stats, name, getattr(self._stats, name) + amount)

    # -- the observer (rollups) -----------------------------------------------------------

    def _observe(self, call: Callable[[LedgerObserver], object]) -> None:
        """Tell the observer; its failure is logged and marks it dirty, never stops the worker."""
        if self.observer is None:
            return
        try:
            call(self.observer)
        except Exception:  # noqa: BLE001 - the rollups catch up at their next tick
            _log.exception("the ledger observer failed; it catches up at its next tick")
            self.observer.dirty = True

    def _publish(self, topic: str, payload: bytes, props: Properties) -> None:
        self._client.publish(topic, payload, qos=1, properties=props)


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of mqtt://host[:port] or mqtts://host[:port]."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError("broker", f"{url!r} is not mqtt://host:port or mqtts://host:port")
    tls = parts.scheme == "mqtts"
    try:
        return parts.hostname, parts.port or (8883 if tls else 1883), tls
    except ValueError:
        raise ConfigError("broker", f"{url!r} has a bad port") from None


def _check_options(options: ListenerOptions) -> None:
    parse_broker_url(options.broker_url)
    if options.client_id and not _CLIENT_ID.match(options.client_id):
        raise ConfigError("client_id", f"{options.client_id!r} must match {_CLIENT_ID.pattern}")
    for gateway in options.gateways:
        if not _GATEWAY.match(gateway):
            raise ConfigError("gateway", f"{gateway!r} is not a gateway id or '+'")
    if options.share_group is not None and not _CLIENT_ID.match(options.share_group):
        raise ConfigError("share_group", f"{options.share_group!r} must match {_CLIENT_ID.pattern}")
    if not options.gateways:
        raise ConfigError("gateway", "at least one gateway (or '+') is needed")


def _auto_heal(options: ListenerOptions, ledger: Ledger) -> bool:
    """Heal unless the events are split between masters that each keep their own ledger."""
    return options.share_group is None or ledger.shared


def _retained(item: _Inbound) -> bytes:
    """A retained status or seal state, checked strictly (an empty payload clears it)."""
    if item.payload:
        load_object(item.payload, f"{item.kind} message")
    return item.payload
