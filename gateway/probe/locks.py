"""`sealgw probe locks -c CONFIG`: the lock service of this config, timed on its radio.

The probe builds the daemon's own services from the config (gateway.daemon.services) in a
scratch state directory of its own: a fresh buffer, lock state, ticket store and credential
key, never the gateway's. It runs the lock service and reports, as JSON lines (docs/probe.md):

1. `booted`: every configured lock reached once after start, its log reconciled
   (`boot_sweep_s`), and the probe's X25519 credential key, for the master station to issue
   it a ticket (keep `--work-dir` to keep the key for a later run with that ticket);
2. the ticket and operator certificate, from files or as one JSON line on stdin
   (`{"ticket": ..., "certificate": ...}`); without them the operations are skipped;
3. `measured`: a sweep (the scheduler runs a background reconciliation of every lock at once:
   connect, verified state, LOG_FETCH, disconnect) and `ops` operations one at a time,
   alternating unseal and seal over the ticket's seals, each run the daemon's way
   (`SealOperations.execute`, then `wait` for the settled, durable outcome). Every session and
   operation carries its start and end on the system's monotonic clock (`time.monotonic`,
   shared by every process of the machine), so a radio capture can be cut to match;
4. with `--handheld`, `handheld`: the handheld GATT service is served on the locks' adapter (a
   bumble adapter; docs/handheld.md 8.1) and a pairing code printed; the probe serves until
   stdin says `done` or closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.auth.authorization import CREDENTIAL_KEY_FILE
from gateway.auth.policy import OperationRequest
from gateway.auth.provision import IDENTITY_KEY, init_gateway
from gateway.auth.ticket_store import load_or_create_credential_key
from gateway.config.loader import load_config
from gateway.config.model import GatewayConfig
from gateway.daemon.services import Services, build_services
from gateway.errors import ConfigError, ProbeError
from gateway.locks.scheduler import ConnectionScheduler, Urgency
from gateway.locks.service import LockService
from gateway.locks.session import LockSession
from gateway.protocol.canonical import JSONValue
from gateway.protocol.certs import parse_certificate
from gateway.protocol.clock import SystemClock
from gateway.protocol.strict_json import load_object
from gateway.protocol.tickets import Ticket, parse_ticket, x25519_public_bytes
from gateway.store.buffer import EventBuffer
from gateway.uplink.commands import CommandDispatcher
from gateway.uplink.uplink import Uplink

__all__ = ["Documents", "LocksProbe", "probe_locks"]

WAIT_S = 60.0
Report = Callable[[dict[str, JSONValue]], None]


@dataclass(frozen=True, slots=True)
class Documents:
    """Where the ticket and certificate come from: two files, or one line on stdin."""

    ticket: Path | None = None
    certificate: Path | None = None
    stdin: bool = False


@dataclass(frozen=True, slots=True)
class LocksProbe:
    """The config, the scratch directory, how many operations, and whether to serve handhelds."""

    config: Path
    work: Path
    ops: int = 40
    documents: Documents = field(default_factory=Documents)
    handheld: bool = False


async def probe_locks(probe: LocksProbe, report: Report) -> dict[str, JSONValue]:
    """Boot, sweep and operations (and the handheld service); the figures of all but the last."""
    config = _scratch_config(load_config(probe.config), probe.work)
    stdin = _StdinLines() if probe.documents.stdin or probe.handheld else None
    async with _Rig(config) as rig:
        booted = await rig.boot()
        report({"phase": "booted", **booted})
        ticket = await _documents(rig, probe.documents, stdin)
        sweep = await rig.sweep()
        ops = await rig.operations(ticket, probe.ops) if ticket is not None else []
        measured: dict[str, JSONValue] = {
            **booted,
            "max_connections": config.ble.max_connections,
            "sweep": sweep,
            "ops": ops,
            "background_connects_during_ops": rig.extra_connects,
            "att_mtu": min(rig.spy.mtus, default=0),
        }
        report({"phase": "measured", **measured})
        if probe.handheld:
            assert stdin is not None
            await rig.serve_handhelds(report, stdin)
    return measured


def _scratch_config(config: GatewayConfig, work: Path) -> GatewayConfig:
    """The config with its state in `work`; its locks, keys and trust anchor are kept."""
    if not config.ble.locks:
        raise ConfigError("ble.locks", "the locks probe needs [[ble.locks]] to measure")
    work.mkdir(parents=True, exist_ok=True)
    if not (work / IDENTITY_KEY).exists():  # the handheld service speaks with an identity
        init_gateway(work, config.gateway.id)
    gateway = dataclasses.replace(config.gateway, state_dir=work)
    buffer = dataclasses.replace(config.buffer, path=work / "buffer.db")
    return dataclasses.replace(config, gateway=gateway, buffer=buffer)


async def _documents(rig: _Rig, documents: Documents, stdin: _StdinLines | None) -> Ticket | None:
    """Accept the ticket and certificate (files, or one JSON line on stdin); the ticket."""
    if documents.stdin:
        assert stdin is not None
        line = load_object(await stdin.line(), "documents line")
        ticket_doc, cert_doc = line.get("ticket"), line.get("certificate")
        if not isinstance(ticket_doc, str) or not isinstance(cert_doc, str):
            raise ProbeError('the documents line needs "ticket" and "certificate" strings')
    elif documents.ticket is not None and documents.certificate is not None:
        ticket_doc = documents.ticket.read_text(encoding="utf-8")
        cert_doc = documents.certificate.read_text(encoding="utf-8")
    elif documents.ticket is not None or documents.certificate is not None:
        raise ConfigError("--ticket", "operations need both --ticket and --certificate")
    else:
        return None
    authorization = rig.services.authorization
    assert authorization is not None  # the lock service needs it (daemon/services.py)
    authorization.tickets.accept_certificate(cert_doc)
    authorization.tickets.accept_ticket(ticket_doc)
    rig.certificate = cert_doc  # its device key is the requester of every operation
    return parse_ticket(ticket_doc)


class _Rig:
    """The daemon's services of one config, running their lock service, spied on."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.clock = SystemClock()
        self.buffer = EventBuffer(config.buffer_path, config.gateway.id, config.buffer, self.clock)
        self.dispatcher = CommandDispatcher()
        self.uplink = Uplink(  # never run: the lock service publishes its retained states to it
            config.uplink, config.gateway.id, config.client_id, self.buffer, self.dispatcher,
            self.clock, "probe",
        )  # fmt: skip
        self.services = Services()
        self.spy: SessionSpy = SessionSpy()
        self.certificate = ""
        self.extra_connects = 0
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0

    @property
    def locks(self) -> LockService:
        assert self.services.locks is not None
        return self.services.locks

    async def __aenter__(self) -> _Rig:
        await self.buffer.open()
        try:
            self.services = build_services(
                self.config, clock=self.clock, buffer=self.buffer, uplink=self.uplink,
                dispatcher=self.dispatcher,
            )  # fmt: skip
        except BaseException:
            await self.buffer.close()
            raise
        self.spy.watch(self.locks.scheduler)
        self._started = time.monotonic()
        self._task = asyncio.create_task(self.locks.run(), name="sealgw-probe-locks")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.services.close()
        await self.buffer.close()

    async def boot(self) -> dict[str, JSONValue]:
        """Wait until a session reached every lock once after start, and no session is left."""
        locks = set(self.locks.locks)
        try:
            await self.spy.reached_all(locks)
        except TimeoutError:
            missing = ", ".join(sorted(locks - self.spy.reached))
            raise ProbeError(f"locks not reached within {WAIT_S:.0f} s: {missing}") from None
        boot_s = time.monotonic() - self._started
        await self.spy.idle()
        key = load_or_create_credential_key(self.config.gateway.state_dir / CREDENTIAL_KEY_FILE)
        return {
            "locks": len(locks),
            "boot_sweep_s": round(boot_s, 3),
            "credential_key": x25519_public_bytes(key).hex(),
        }

    async def sweep(self) -> dict[str, JSONValue]:
        """Reconcile every lock at once through the scheduler, as background work does."""
        service, spy = self.locks, self.spy
        spy.peak = 0
        began = time.monotonic()
        await asyncio.gather(
            *(
                service.scheduler.run(seal_id, Urgency.BACKGROUND, self._reconcile(seal_id))
                for seal_id in service.locks
            )
        )
        ended = time.monotonic()
        return {
            "began": began,
            "ended": ended,
            "s": round(ended - began, 3),
            "peak_sessions": spy.peak,
        }

    async def operations(self, ticket: Ticket, count: int) -> list[JSONValue]:
        """Alternate unseal and seal over the ticket's seals, one operation at a time."""
        operations, spy = self.locks.operations, self.spy
        seals = list(ticket.seal_ids)
        device_key = parse_certificate(self.certificate).device_key
        connects = self.locks.scheduler.stats.connects
        done: list[JSONValue] = []
        for n in range(count):
            seal_id = seals[n % len(seals)]
            op = "unseal" if (n // len(seals)) % 2 == 0 else "seal"
            request = OperationRequest(
                ticket.operator, device_key, ticket.ticket_id, ticket.work_order, seal_id, op
            )
            await spy.idle()
            spy.durations.clear()
            began = time.monotonic()
            started = await operations.execute(request)
            outcome = await operations.wait(started.op_id)
            ended = time.monotonic()
            if outcome is None or not outcome.ok:
                raise ProbeError(f"{op} on {seal_id} failed: {outcome}")
            connected = [d * 1000 for u, d in spy.durations if u is Urgency.HANDHELD]
            done.append(
                {
                    "seal_id": seal_id,
                    "op": op,
                    "began": began,
                    "ended": ended,
                    "ms": (ended - began) * 1000,
                    "connected_ms": connected,
                }
            )
        self.extra_connects = self.locks.scheduler.stats.connects - connects - count
        return done

    async def serve_handhelds(self, report: Report, stdin: _StdinLines) -> None:
        """Serve the handheld GATT service with a fresh pairing code until stdin says done."""
        handheld, server = self.services.handheld, self.services.handheld_server
        if handheld is None or server is None:
            raise ConfigError("handheld.enabled", "the probe serves the config's handhelds")
        await server.start()
        issued = await handheld.issue_pairing_code()
        report(
            {"phase": "handheld", "pairing_code": issued.code, "listen": handheld.section.listen}
        )
        while (await stdin.line(timeout=None)).strip() not in ("", "done"):
            pass

    def _reconcile(self, seal_id: str) -> Callable[[LockSession], Awaitable[None]]:
        """What a background reconciliation does on its link: verified state, then the log."""
        lock = self.locks.locks[seal_id]
        return lambda session: self.locks.log_sync.refresh(lock, session)


class SessionSpy:
    """Wraps the scheduler's `run`: times each action, counts sessions in flight, sees MTUs."""

    def __init__(self) -> None:
        self.durations: list[tuple[Urgency, float]] = []
        self.running = 0
        self.peak = 0
        self.mtus: list[int] = []
        self.reached: set[str] = set()  # seals whose session action completed
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._progress = asyncio.Event()

    def watch(self, scheduler: ConnectionScheduler[LockSession]) -> None:
        """Spy on `scheduler` (the real `run` still does all the work)."""
        real = scheduler.run

        async def run(
            seal_id: str,
            urgency: Urgency,
            action: Callable[[LockSession], Awaitable[Any]],
            **kwargs: Any,
        ) -> Any:
            self._in_flight += 1
            self._idle.clear()
            try:
                return await real(seal_id, urgency, self._timed(seal_id, urgency, action), **kwargs)
            finally:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.set()

        scheduler.run = run  # type: ignore[method-assign]

    async def idle(self) -> None:
        """Wait until no session is queued, connecting, open or disconnecting."""
        async with asyncio.timeout(WAIT_S):
            await self._idle.wait()

    async def reached_all(self, seals: set[str]) -> None:
        """Wait until a session action completed on every one of `seals` (TimeoutError)."""
        async with asyncio.timeout(WAIT_S):
            while not seals <= self.reached:
                self._progress.clear()
                await self._progress.wait()

    def _timed(
        self, seal_id: str, urgency: Urgency, action: Callable[[LockSession], Awaitable[Any]]
    ) -> Callable[[LockSession], Awaitable[Any]]:
        async def timed(session: LockSession) -> Any:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.mtus.append(session.att_mtu)
            began = time.perf_counter()
            try:
                result = await action(session)
            finally:
                self.durations.append((urgency, time.perf_counter() - began))
                self.running -= 1
            self.reached.add(seal_id)
            self._progress.set()
            return result

        return timed


class _StdinLines:
    """Lines from stdin without blocking the event loop (the radio runs on it)."""

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None

    async def line(self, timeout: float | None = WAIT_S * 10) -> str:  # noqa: ASYNC109 - a deadline per line
        """The next line ("" once stdin is closed)."""
        if self._reader is None:
            loop = asyncio.get_running_loop()
            self._reader = asyncio.StreamReader(limit=1 << 20)
            protocol = asyncio.StreamReaderProtocol(self._reader)
            await loop.connect_read_pipe(lambda: protocol, sys.stdin)
        async with asyncio.timeout(timeout):
            return (await self._reader.readline()).decode("utf-8", errors="replace")
