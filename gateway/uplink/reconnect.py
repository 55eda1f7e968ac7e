"""The reconnect supervisor: keeps one uplink connection up, and takes it down cleanly.

It owns the attempts, the full-jitter backoff between them, the MQTT 5 -> 3.1.1 fallback under
`uplink.protocol = "auto"`, and the stop sequence. What happens on a connection (birth,
delivery, commands, the clean-stop status) belongs to a `Session` (the Uplink).

Each attempt gets a NEW connection (and paho client, gateway/uplink/mqtt_client.py): paho keeps
its own copy of every unacknowledged QoS 1 message and resends it on reconnect; a reused client
would add those copies on top of the buffer's refetch, and with a flapping link they pile up.
With a fresh client per connection and a clean session, the buffer is the only source of
resends: at most one duplicate per event per outage.

Stopping. The stop drains the buffer and publishes the clean-stop status (offline, reason
shutdown) on the connection it finds. If there is none (a drop just before the stop), or it turns
out to be dead (dropped and not noticed yet, or dropped during the drain), the supervisor makes
one more attempt at once, without backoff, and finishes on the new connection, all within the
stop timeout, so the final events (gateway.stopped and its checkpoint) still go out. A gateway
that never connected in this run makes no such attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable
from enum import StrEnum
from typing import Literal, Protocol, TypeVar

from gateway.drivers.pacing import Backoff
from gateway.errors import ConfigError
from gateway.protocol.clock import Clock
from gateway.uplink.config import UplinkSection
from gateway.uplink.connection import FailureLog, UplinkConnection, UplinkStats
from gateway.uplink.mqtt_client import ConnackInfo, ConnectFailedError

__all__ = ["ReconnectLogic", "ReconnectState", "Session"]

log = logging.getLogger(__name__)

STOP_RECONNECTS = 1  # attempts during a stop, when the connection it found was gone or dead
MqttVersion = Literal["5", "3.1.1"]
T = TypeVar("T")


class ReconnectState(StrEnum):
    """What the supervisor is doing."""

    IDLE = "idle"  # run() not called yet
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"  # backing off before the next attempt
    STOPPING = "stopping"
    STOPPED = "stopped"


class Session(Protocol):
    """What happens on each connection; the Uplink implements it."""

    def new_connection(self, protocol: MqttVersion) -> UplinkConnection:
        """A fresh, unopened connection (ConfigError if the settings cannot make one)."""
        ...

    def started(self, conn: UplinkConnection, info: ConnackInfo) -> None:
        """The connection is up: subscribe, birth, reset delivery."""
        ...

    async def serve(self, conn: UplinkConnection, stopping: asyncio.Event) -> None:
        """Serve until the connection closes or `stopping` is set."""
        ...

    async def finish(self, conn: UplinkConnection, timeout: float) -> bool:  # noqa: ASYNC109
        """Drain, publish the clean-stop status, disconnect; False if the connection died."""
        ...

    def lost(self, conn: UplinkConnection) -> None:
        """The connection is over: forget everything that belonged to it."""
        ...


class ReconnectLogic:
    """Connect, serve, back off with jitter, fall back to 3.1.1; until stop()."""

    def __init__(  # noqa: PLR0917 - the uplink wires these once
        self,
        settings: UplinkSection,
        session: Session,
        clock: Clock,
        stats: UplinkStats,
        failures: FailureLog,
        rng: random.Random | None = None,
    ) -> None:
        self.state = ReconnectState.IDLE
        self.protocol: MqttVersion = "3.1.1" if settings.protocol == "3.1.1" else "5"
        self.connection: UplinkConnection | None = None
        self._settings = settings
        self._session = session
        self._clock = clock
        self._stats = stats
        self._failures = failures
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s, rng)
        self._stop = asyncio.Event()
        self._stop_timeout = 0.0
        self._done: asyncio.Future[None] | None = None

    @property
    def connected(self) -> bool:
        """True only while the current connection is CONNECTED."""
        conn = self.connection
        return conn is not None and conn.connected

    async def run(self) -> None:
        """Keep connected until stop(), then stop cleanly."""
        self._done = asyncio.get_running_loop().create_future()
        try:
            conn = await self._keep_connected()
            await self._stop_cleanly(conn)
        finally:
            if self.connection is not None:
                self._lost(self.connection)
            self.state = ReconnectState.STOPPED
            if not self._done.done():
                self._done.set_result(None)

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - part of the component API
        """Ask run() to stop within `timeout` and wait for it (a little longer, at most)."""
        self._stop_timeout = timeout
        self._stop.set()
        if self._done is not None and not self._done.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout + 2.0):
                    await asyncio.shield(self._done)

    async def _keep_connected(self) -> UplinkConnection | None:
        """Connect, serve, back off, until stop(); returns the connection still up then."""
        while not self._stop.is_set():
            conn = await self._until_stopped(self._connect())
            if conn is not None:
                await self._session.serve(conn, self._stop)
                if conn.connected:
                    return conn  # stopped while connected
                self._lost(conn)
            if not self._stop.is_set():
                self.state = ReconnectState.WAITING
                await self._until_stopped(self._clock.sleep(self._backoff.next_delay()))
        return None

    async def _stop_cleanly(self, conn: UplinkConnection | None) -> None:
        """Finish on `conn`; if it is gone or dead, once more on a new one (see the module doc)."""
        self.state = ReconnectState.STOPPING
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stop_timeout
        retries = STOP_RECONNECTS if self._stats.connections else 0
        while True:
            if conn is not None:
                if await self._session.finish(conn, deadline - loop.time()):
                    return
                self._lost(conn)
            if retries <= 0 or loop.time() >= deadline:
                return
            retries -= 1
            log.info("uplink not connected while stopping; one more attempt to finish")
            conn = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - loop.time()):
                    conn = await self._connect()

    async def _connect(self) -> UplinkConnection | None:
        """One attempt (two if the broker refuses MQTT 5 under protocol=auto)."""
        if self.state is not ReconnectState.STOPPING:
            self.state = ReconnectState.CONNECTING
        try:
            conn = self._session.new_connection(self.protocol)
            info = await conn.open()
        except ConnectFailedError as exc:
            if exc.unsupported_protocol and self._fall_back():
                return await self._connect()
            self._failures.failed(exc.reason)
            return None
        except ConfigError as exc:
            self._failures.failed(str(exc))
            return None
        self._started(conn, info)
        return conn

    def _fall_back(self) -> bool:
        if self._settings.protocol != "auto" or self.protocol != "5":
            return False
        log.warning("broker refused MQTT 5; using MQTT 3.1.1 from now on")
        self.protocol = "3.1.1"
        return True

    def _started(self, conn: UplinkConnection, info: ConnackInfo) -> None:
        self.connection = conn
        self._backoff.reset()
        self._stats.reconnects += 1 if self._stats.connections else 0
        self._stats.connections += 1
        self._failures.reset()
        if self.state is not ReconnectState.STOPPING:
            self.state = ReconnectState.CONNECTED
        log.info("uplink connected to %s (MQTT %s)", self._settings.url, info.protocol)
        self._session.started(conn, info)

    def _lost(self, conn: UplinkConnection) -> None:
        was_current = self.connection is conn
        if was_current:
            self.connection = None
        conn.abort()
        if was_current and not self._stop.is_set():
            reason = conn.closed.result() if conn.closed.done() else "closed"
            self._failures.failed(f"connection lost: {reason}")
        if was_current:
            self._session.lost(conn)

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
