"""The daemon: composes buffer, uplink and services under a supervisor; clean SIGTERM shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway import __version__
from gateway.audit.checkpointer import Checkpointer
from gateway.auth.provision import load_identity
from gateway.config.model import GatewayConfig
from gateway.daemon.control import ControlServer, control_socket_path
from gateway.daemon.debug_stall import install_debug_stall
from gateway.daemon.health import HealthMonitor, HealthProviders
from gateway.daemon.sdnotify import SystemdNotifier
from gateway.daemon.services import build_services
from gateway.daemon.supervisor import STOP_BUDGET_S, Supervisor, pending_tasks
from gateway.daemon.synthetic import run_synthetic_source
from gateway.errors import GatewayError, IdentityRequiredError, ProvisionError
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock, SystemClock
from gateway.protocol.events import Event, EventDraft, EventType, Priority, format_ts
from gateway.protocol.wallclock import (
    OFFSET_FILE_ENV,
    JumpDetector,
    OffsetClock,
    clock_synchronized,
)
from gateway.remote.service import RemoteManagement, install_remote_management
from gateway.store.buffer import EventBuffer
from gateway.store.state_files import CorruptFile
from gateway.uplink.commands import CommandDispatcher
from gateway.uplink.uplink import Uplink

_LOGGER = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 5.0
CLOCK_CHECK_S = 2.0
CLOCK_JUMP_THRESHOLD_S = 10.0
"""Wall and monotonic time drifting apart by more than this between two checks is a jump."""


class TrailClosedError(GatewayError):
    """An event was emitted after gateway.stopped and the final checkpoint were committed."""


class Gateway:
    """One gateway process: owns every component and their lifetimes."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Clock | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        identity = _identity(config)  # before anything is opened: refusing leaves nothing behind
        self.clock = clock or SystemClock()
        self.notifier = notifier or SystemdNotifier()
        self.dispatcher = CommandDispatcher()
        self.buffer = EventBuffer(config.buffer_path, config.gateway.id, config.buffer, self.clock)
        self.uplink = Uplink(
            config.uplink,
            gateway_id=config.gateway.id,
            client_id=config.client_id,
            source=self.buffer,
            dispatcher=self.dispatcher,
            clock=self.clock,
            version=__version__,
        )
        self.supervisor = Supervisor(self.clock)
        self.services = build_services(
            config,
            clock=self.clock,
            buffer=self.buffer,
            uplink=self.uplink,
            dispatcher=self.dispatcher,
        )
        self.control = ControlServer(
            control_socket_path(config.gateway.state_dir),
            {"status": self.status, **self.services.control_handlers()},
        )
        self.checkpointer = self._checkpointer(identity)
        self.remote = self._remote_management()
        self.monitor = self._health_monitor()
        self.exit_code = 0
        self.operations_refused = False
        self.jumps = 0
        self._stop = asyncio.Event()
        self._trail_closed = False
        self._started_mono = time.monotonic()

    def _checkpointer(self, identity: Ed25519PrivateKey | None) -> Checkpointer | None:
        """Signed checkpoints need the identity key from `sealgw init`; without it, none."""
        if identity is None:
            return None
        return Checkpointer(
            identity,
            self.config.gateway.id,
            lambda: self.buffer.head,
            self.buffer.submit,  # not self.emit: the final checkpoint follows the closed gate
            clock=self.clock,
            interval_s=self.config.audit.checkpoint_interval_s,
        )

    def _remote_management(self) -> RemoteManagement | None:
        """Signed remote management, when the master station's key is configured."""
        authorization = self.services.authorization
        if authorization is None:
            _LOGGER.warning("no authorization.master_key_file: signed remote management is off")
            return None
        return install_remote_management(
            self.dispatcher,
            self.config,
            self.clock,
            master_key=authorization.trust.master_key,
            rebirth=self.uplink.rebirth,
            restart=self.restart,
            emit=self.emit,
        )

    def _health_monitor(self) -> HealthMonitor:
        services = self.services
        return HealthMonitor(
            HealthProviders(
                buffer_depth=self.buffer.depth,
                acked=lambda: self.uplink.stats.acked,
                broker_connected=lambda: self.uplink.connected,
                state_dir=self.config.gateway.state_dir,
                locks=services.locks.snapshot if services.locks else None,
                meters=services.meters.snapshot if services.meters else None,
                extra=lambda: {
                    "storage_full": self.buffer.storage_full,
                    "operations_refused": self.operations_refused,
                    "clock_synchronized": clock_synchronized(),
                    "clock_jumps": self.jumps,
                },
            ),
            self.clock,
            compact_meters=self.config.uplink.encoding == "batch",
        )

    def restart(self, exit_code: int) -> None:
        """Stop cleanly, then exit with `exit_code` (systemd Restart=on-failure starts us again)."""
        self.exit_code = exit_code
        self.request_stop()

    def emit(self, draft: EventDraft) -> asyncio.Future[Event]:
        """Hand an event to the durable buffer; the future resolves at commit.

        After shutdown closed the trail, nothing more may follow its final checkpoint.
        """
        if self._trail_closed:
            raise TrailClosedError(f"{draft.type} refused: the gateway is stopping")
        return self.buffer.submit(draft)

    def draft(
        self, type_: EventType, subject: str, data: Mapping[str, JSONValue], priority: Priority
    ) -> EventDraft:
        """A draft stamped with this gateway's clock."""
        return EventDraft(type_, subject, data, priority, self.clock.now())

    def request_stop(self) -> None:
        """Ask the daemon to shut down cleanly (signal handlers call this)."""
        self._stop.set()

    async def run(self) -> None:
        """Start everything, run until stopped, then shut down in order."""
        await self.buffer.open()
        self.buffer.on_commit = self.uplink.committed
        self.buffer.on_storage_full = self._on_storage_full
        await self.buffer.append(self._started_event())
        for corrupt in self.services.corrupt_files():
            await self.buffer.append(self._corrupt_event(corrupt))
        await self._start_control()
        self._start_components()
        self.notifier.ready(f"gateway {self.config.gateway.id} running")
        _LOGGER.info("gateway %s running (buffer %s)", self.config.gateway.id, self.buffer.path)
        try:
            await self._stop.wait()
        finally:
            await self._shutdown()

    async def _start_control(self) -> None:
        """The local status socket; a gateway without one still runs."""
        try:
            await self.control.start()
        except (GatewayError, OSError) as exc:
            _LOGGER.warning("control socket unavailable, `sealgw status` will not work: %s", exc)

    def _start_components(self) -> None:
        self.supervisor.start("uplink", self.uplink.run)
        self.services.start(self.supervisor)
        if self.checkpointer is not None:
            self.supervisor.start("checkpoint", self.checkpointer.run)
        self.supervisor.start("health", self._health_loop)
        self.supervisor.start("clock", self._clock_loop)
        if self.notifier.watchdog_interval_s:
            self.supervisor.start("watchdog", self._watchdog_loop)
        if self.config.synthetic.enabled:
            self.supervisor.start(
                "synthetic",
                lambda: run_synthetic_source(self.config.synthetic, self.emit, self.clock),
            )

    async def _shutdown(self) -> None:
        """Stop every producer, then close the trail: gateway.stopped and the final checkpoint.

        Nothing is committed after those two, so the last checkpoint covers the whole trail.
        The uplink stops after them: it still drains them to the broker.
        """
        _LOGGER.info("shutting down")
        self.notifier.stopping()
        await self.control.stop()
        await self.supervisor.stop(*(n for n in self.supervisor.names() if n != "uplink"))
        await self._close_trail()
        await self.uplink.stop(timeout=SHUTDOWN_FLUSH_S)
        await self.supervisor.stop()
        await self._close_services()
        await self.buffer.close()
        _LOGGER.info("stopped")

    async def _close_services(self) -> None:
        """Release devices and files; one held by an abandoned component is left to the exit."""
        try:
            async with asyncio.timeout(STOP_BUDGET_S):
                await self.services.close()
        except TimeoutError:
            _LOGGER.error(  # noqa: TRY400 - the pending tasks say where it hangs; no traceback
                "services did not close within %.1f s: left open; tasks still pending: %s",
                STOP_BUDGET_S,
                pending_tasks(),
            )

    async def _close_trail(self) -> None:
        """Commit gateway.stopped and the checkpoint covering it; refuse every other event now."""
        self._trail_closed = True
        try:
            await self.buffer.append(
                self.draft(EventType.GATEWAY_STOPPED, self._subject(), {}, Priority.AUDIT)
            )
            if self.checkpointer is not None:
                await self.checkpointer.checkpoint_now()  # the last one covers the stop record
        except Exception:  # the record of a stop must not prevent the stop
            _LOGGER.exception("could not record gateway.stopped and its checkpoint")

    def _subject(self) -> str:
        return self.config.gateway.id

    def _started_event(self) -> EventDraft:
        data: dict[str, JSONValue] = {
            "version": __version__,
            "district": self.config.gateway.district,
        }
        if self.buffer.recovered_from is not None:
            data["buffer_recovered_from"] = str(self.buffer.recovered_from)
        return self.draft(EventType.GATEWAY_STARTED, self._subject(), data, Priority.AUDIT)

    def _corrupt_event(self, corrupt: CorruptFile) -> EventDraft:
        data: dict[str, JSONValue] = {
            "file": corrupt.path.name,
            "moved_to": corrupt.moved_to.name if corrupt.moved_to is not None else None,
            "reason": corrupt.reason[:200],
            "consequence": corrupt.consequence,
        }
        return self.draft(EventType.GATEWAY_STATE_CORRUPT, self._subject(), data, Priority.ALARM)

    async def _clock_loop(self) -> None:
        """Raise gateway.clock_jump when the wall clock steps (docs/deploy.md, section 5)."""
        detector = JumpDetector(self.clock, CLOCK_JUMP_THRESHOLD_S)
        while True:
            await self.clock.sleep(CLOCK_CHECK_S)
            found = detector.check()
            if found is None:
                continue
            jump_s, expected, wall = found
            _LOGGER.warning("wall clock jumped by %+.1f s (%s -> %s)", jump_s, expected, wall)
            self.jumps += 1
            data: dict[str, JSONValue] = {
                "jump_s": round(jump_s, 3),
                "before": format_ts(expected),
                "after": format_ts(wall),
                "threshold_s": CLOCK_JUMP_THRESHOLD_S,
                "synchronized": clock_synchronized(),
            }
            self.emit(
                self.draft(EventType.GATEWAY_CLOCK_JUMP, self._subject(), data, Priority.ALARM)
            )

    async def _health_loop(self) -> None:
        while True:
            await self.clock.sleep(self.config.health.interval_s)
            snapshot = self.monitor.snapshot(mark=True)
            self.emit(
                self.draft(EventType.GATEWAY_HEALTH, self._subject(), snapshot, Priority.STATE)
            )

    def health(self) -> dict[str, JSONValue]:
        """A snapshot of the gateway's health, as published in gateway.health."""
        return self.monitor.snapshot()

    async def status(self) -> dict[str, Any]:
        """What `sealgw status` shows: identity, health and the services' detail."""
        return {
            "gateway": self.config.gateway.id,
            "district": self.config.gateway.district,
            "version": __version__,
            **self.health(),
            "services": self.services.snapshot(),
        }

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval_s or 1.0
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _on_storage_full(self, full: bool) -> None:
        """Refuse new seal operations while audit events cannot be stored, and say so at once."""
        self.operations_refused = full
        state = "full" if full else "recovered"
        _LOGGER.error(
            "event storage %s: seal operations %s", state, "refused" if full else "resumed"
        )
        payload: dict[str, Any] = {"state": state, "gateway": self.config.gateway.id}
        self.uplink.publish_alarm_now(EventType.GATEWAY_STORAGE_FULL, payload)


def _identity(config: GatewayConfig) -> Ed25519PrivateKey | None:
    """The identity key; IdentityRequiredError without it, unless require_identity is off."""
    try:
        return load_identity(config.gateway.state_dir)
    except ProvisionError as exc:
        if config.audit.require_identity:
            raise IdentityRequiredError(
                f"{exc}. The gateway signs its audit trail with this key and will not run "
                "without it; provision it with `sealgw init -c CONFIG` and enrol identity.pub "
                "at the master station (a bench or test gateway may set "
                "[audit] require_identity = false)",
                paths=exc.paths,
            ) from exc
        _LOGGER.warning(
            "no signed gateway.checkpoint events ([audit] require_identity = false): the trail "
            "of this gateway is unsigned and `sealgw audit verify` cannot verify it: %s",
            exc,
        )
        return None


def install_signal_handlers(gateway: Gateway) -> None:
    """SIGTERM and SIGINT stop the daemon cleanly."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, gateway.request_stop)
    install_debug_stall()  # only with SEALGW_DEBUG_STALL=1, for the watchdog test


async def run_daemon(config: GatewayConfig) -> int:
    """Entry point of `sealgw run`; returns the exit code (non-zero after a remote restart)."""
    gateway = Gateway(config, clock=_daemon_clock())
    install_signal_handlers(gateway)
    await gateway.run()
    abandoned = gateway.supervisor.abandoned
    if abandoned:  # asyncio.run would wait for their tasks again, maybe for ever
        _LOGGER.error(
            "exiting with %s abandoned: their tasks are not waited for", ", ".join(abandoned)
        )
        logging.shutdown()
        os._exit(gateway.exit_code)
    return gateway.exit_code


def _daemon_clock() -> Clock:
    """The system clock; tests shift its wall time through SEALGW_TEST_CLOCK_OFFSET_FILE."""
    offset_file = os.environ.get(OFFSET_FILE_ENV)
    if not offset_file:
        return SystemClock()
    _LOGGER.warning(
        "wall clock offset from %s (%s is for tests only)", offset_file, OFFSET_FILE_ENV
    )
    return OffsetClock(SystemClock(), Path(offset_file))
