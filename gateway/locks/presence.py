"""seal.unreachable: a lock that was advertising went silent while we were listening.

A lock holds one link at a time and stops advertising while connected, so someone else holding
that link (or jamming the lock) looks like silence. `ReachWatch` times each lock's silence on
the scan clock (`ScanSupervisor.scan_time`: only time the scanner was actually on counts, so a
radio outage or the pause between scan windows is not silence). A lock heard in this scan run,
or within `offline_after_s`, that has been silent for `unreachable_after_s` while this gateway
holds no link to it raises `seal.unreachable` (alarm) once; its next verified advert clears it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.errors import StorageError
from gateway.locks.state import LockSpec, SealStates
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.protocol.events import Emit, EventDraft, EventType, Priority

__all__ = ["ReachWatch"]

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Heard:
    scan_at: float  # scan clock of the last verified advert (or of our own link)
    alarmed: bool = False


class ReachWatch:
    """Raises seal.unreachable for locks gone silent while scanning, once per silence."""

    def __init__(
        self,
        locks: Mapping[str, LockSpec],
        states: SealStates,
        emit: Emit,
        clock: Clock,
        *,
        scan_time: Callable[[], float],
        unreachable_after_s: float,
        offline_after_s: float,
    ) -> None:
        self._locks = locks
        self._states = states
        self._emit = emit
        self._clock = clock
        self._scan_time = scan_time
        self._after_s = unreachable_after_s
        self._recent_s = offline_after_s
        self._heard: dict[str, _Heard] = {}

    @property
    def unreachable(self) -> int:
        """Locks silent now, after an alarm."""
        return sum(1 for heard in self._heard.values() if heard.alarmed)

    def heard(self, seal_id: str) -> None:
        """A verified advert (or state read) of the lock: its silence, if any, is over."""
        previous = self._heard.get(seal_id)
        if previous is not None and previous.alarmed:
            _log.info("seal %s is reachable again", seal_id)
        self._heard[seal_id] = _Heard(self._scan_time())

    def check(self, linked: frozenset[str]) -> None:
        """Raise seal.unreachable for locks silent too long; `linked` are held by us."""
        now = self._scan_time()
        for seal_id in linked:
            self._heard[seal_id] = _Heard(now)  # our own link silences it: not an attack
        for seal_id, heard in self._heard.items():
            silent_s = now - heard.scan_at
            if heard.alarmed or silent_s < self._after_s or not self._recent(seal_id):
                continue
            heard.alarmed = True
            self._raise(seal_id, silent_s)

    def _recent(self, seal_id: str) -> bool:
        """Heard in this scan run (always true for entries here) or within offline_after_s."""
        record = self._states.get(seal_id)
        if record is None or record.last_seen is None:
            return True
        return self._clock.monotonic() - record.last_seen <= self._recent_s + self._after_s

    def _raise(self, seal_id: str, silent_s: float) -> None:
        record = self._states.get(seal_id)
        seen = record.last_seen_at if record is not None else None
        data: dict[str, JSONValue] = {
            "lock_id": self._locks[seal_id].lock_id.hex(),
            "last_seen": seen.isoformat() if seen is not None else None,
            "silent_s": round(silent_s, 1),
        }
        _log.warning("seal %s is unreachable: silent %.0f s while scanning", seal_id, silent_s)
        draft = EventDraft(
            EventType.SEAL_UNREACHABLE, seal_id, data, Priority.ALARM, self._clock.now()
        )
        try:
            future = self._emit(draft)
        except StorageError as exc:
            _log.warning("seal %s: seal.unreachable not stored: %s", seal_id, exc)
            return
        future.add_done_callback(lambda f: None if f.cancelled() else f.exception())
