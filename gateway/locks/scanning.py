"""Scanning under a radio supervisor: the scanner runs, and comes back when the radio does.

`ScanSupervisor.run` starts the scanner (all the time, or for `scan_window_s` every
`scan_interval_s`) and waits until the adapter reports its controller link lost (the HCI
transport closed, the dongle went away). Then, and whenever a start fails, the radio is down:
one WARNING line and one `gateway.radio_down` alarm per outage (repeats at DEBUG), and the
adapter is reopened with jittered backoff (1 s to 30 s), reset after a healthy run. The next
successful start raises `gateway.radio_up`.

Stopping the scanner is bounded (`STOP_TIMEOUT_S`): a frozen controller never answers HCI, and
its timeout must neither hold up the daemon's stop nor replace the cancellation.

It also keeps the time the scanner was actually on (`scan_time`), the clock that
`presence.ReachWatch` measures a lock's silence with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from gateway.drivers.ble.adapters import BleTransport
from gateway.drivers.pacing import Backoff
from gateway.errors import GatewayError, StorageError
from gateway.locks.config import BleSection
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.protocol.events import Emit, Event, EventDraft, EventType, Priority

__all__ = [
    "HEALTHY_RUN_S",
    "RADIO_BACKOFF",
    "STOP_TIMEOUT_S",
    "RadioState",
    "RadioStats",
    "ScanSupervisor",
]

_log = logging.getLogger(__name__)

RADIO_BACKOFF = (1.0, 30.0)  # between attempts to reopen the adapter
HEALTHY_RUN_S = 30.0  # a scan up this long resets the backoff
STOP_TIMEOUT_S = 1.0  # longest wait for a scanner to stop (a frozen controller never answers)
START_TIMEOUT_S = 10.0  # longest wait for a scanner to start

_RADIO_ERRORS = (BleakError, OSError, TimeoutError, GatewayError)

AdvertCallback = Callable[[BLEDevice, AdvertisementData], None]


class RadioState(StrEnum):
    """The scanner's radio as the health snapshot shows it."""

    STARTING = "starting"
    UP = "up"
    DOWN = "down"


@dataclass(slots=True)
class RadioStats:
    """Radio figures for the health snapshot."""

    state: RadioState = RadioState.STARTING
    outages: int = 0
    reopens: int = 0
    last_error: str = ""


class _RadioLostError(Exception):
    """The adapter reported its controller link gone while scanning."""


class ScanSupervisor:
    """Runs the scanner; reopens the adapter with backoff after the radio went away."""

    def __init__(
        self,
        section: BleSection,
        transport: BleTransport,
        on_advert: AdvertCallback,
        *,
        gateway_id: str,
        emit: Emit,
        clock: Clock,
    ) -> None:
        self._section = section
        self._transport = transport
        self._on_advert = on_advert
        self._gateway_id = gateway_id
        self._emit = emit
        self._clock = clock
        self._scan_total = 0.0
        self._scan_since: float | None = None
        self._up_since: float | None = None
        self._down_since: float | None = None
        self.stats = RadioStats()

    # -- what others read -----------------------------------------------------------------------

    def scan_time(self) -> float:
        """Seconds the scanner has been on (with the radio up) since start."""
        running = 0.0 if self._scan_since is None else self._clock.monotonic() - self._scan_since
        return self._scan_total + running

    @property
    def scanning(self) -> bool:
        """True while the scanner is on."""
        return self._scan_since is not None

    def snapshot(self) -> dict[str, JSONValue]:
        """`radio` (up, down, starting), `radio_outages`, `radio_reopens`, `radio_error`."""
        return {
            "radio": self.stats.state.value,
            "radio_outages": self.stats.outages,
            "radio_reopens": self.stats.reopens,
            "radio_error": self.stats.last_error,
        }

    # -- the supervisor -------------------------------------------------------------------------

    async def run(self) -> None:
        """Scan until cancelled, reopening the radio with backoff whenever it goes away."""
        backoff = Backoff(*RADIO_BACKOFF)
        while True:
            try:
                await self._scan()
            except _RadioLostError as exc:
                self._down(str(exc) or "the controller link was lost")
            except _RADIO_ERRORS as exc:
                self._down(_describe(exc))
            if self._up_since is not None:
                if self._clock.monotonic() - self._up_since >= HEALTHY_RUN_S:
                    backoff.reset()
                self._up_since = None
            self.stats.reopens += 1
            await self._clock.sleep(backoff.next_delay())

    async def _scan(self) -> None:
        scanner = self._transport.make_scanner(
            self._on_advert, scanning_mode=self._section.scan_mode
        )
        window, interval = self._section.scan_window_s, self._section.scan_interval_s
        while True:
            await self._start(scanner)
            try:
                await self._wait_or_lost(window if interval else None)
            finally:
                await self._stop(scanner)
            await self._wait_or_lost(interval - window, scanning=False)

    async def _start(self, scanner: BleakScanner) -> None:
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await scanner.start()
        except BaseException:
            await self._stop(scanner)
            raise
        self._scan_since = self._clock.monotonic()
        self._up()

    async def _stop(self, scanner: BleakScanner) -> None:
        """Stop within STOP_TIMEOUT_S; a failure to stop is logged, never raised."""
        if self._scan_since is not None:
            self._scan_total += self._clock.monotonic() - self._scan_since
            self._scan_since = None
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await scanner.stop()
        except (*_RADIO_ERRORS, RuntimeError) as exc:
            _log.debug("scanner stop failed: %r", exc)

    async def _wait_or_lost(self, seconds: float | None, *, scanning: bool = True) -> None:
        """Wait `seconds` (None: for ever); raise _RadioLostError if the link goes."""
        lost = asyncio.ensure_future(self._transport.wait_lost())
        timer = asyncio.ensure_future(
            self._clock.sleep(seconds) if seconds is not None else asyncio.Event().wait()
        )
        try:
            await asyncio.wait((lost, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (lost, timer):
                task.cancel()
            await asyncio.gather(lost, timer, return_exceptions=True)
        if lost.done() and not lost.cancelled() and scanning:
            error = lost.exception()
            raise _RadioLostError(_describe(error) if error else lost.result() or "")

    # -- radio up and down ----------------------------------------------------------------------

    def _up(self) -> None:
        self._up_since = self._clock.monotonic()
        if self.stats.state is RadioState.DOWN:
            down_s = self._clock.monotonic() - (self._down_since or self._clock.monotonic())
            _log.warning("BLE radio %s is back after %.0f s", self._transport.adapter, down_s)
            self._event(EventType.GATEWAY_RADIO_UP, Priority.STATE, {"down_s": round(down_s, 1)})
        self.stats.state = RadioState.UP
        self._down_since = None

    def _down(self, reason: str) -> None:
        self.stats.last_error = reason
        if self.stats.state is RadioState.DOWN:
            _log.debug("BLE radio %s still down: %s", self._transport.adapter, reason)
            return
        self.stats.state = RadioState.DOWN
        self.stats.outages += 1
        self._down_since = self._clock.monotonic()
        _log.warning(
            "BLE radio %s is down (%s); scanning resumes when it reopens",
            self._transport.adapter,
            reason,
        )
        data: dict[str, JSONValue] = {"adapter": self._transport.adapter, "reason": reason}
        self._event(EventType.GATEWAY_RADIO_DOWN, Priority.ALARM, data)

    def _event(self, kind: EventType, priority: Priority, data: dict[str, JSONValue]) -> None:
        draft = EventDraft(kind, self._gateway_id, data, priority, self._clock.now())
        try:
            future = self._emit(draft)
        except StorageError as exc:
            _log.warning("%s not stored: %s", kind, exc)
            return
        future.add_done_callback(_ignore_result)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _ignore_result(future: asyncio.Future[Event]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if future.exception() is not None:
            _log.warning("radio event not stored: %s", future.exception())
