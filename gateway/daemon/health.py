"""The gateway.health snapshot: uptime, buffer, uplink, locks, meters and the host's vital signs.

`HealthMonitor` reads everything through providers (small callables the daemon passes in), so
it is tested without a daemon. Rates (events acknowledged per second, CPU share) cover the
interval since the last *marked* snapshot: the periodic health event marks, `sealgw status`
does not, so asking for status never shortens the health interval. Host figures that a
platform lacks (CPU temperature off a Pi, /proc elsewhere) are None, never an error.
State is O(1): one previous sample.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.protocol.events import Priority

__all__ = [
    "THERMAL_ZONE",
    "HealthMonitor",
    "HealthProviders",
    "cpu_temperature_c",
    "disk_free_mb",
    "lock_summary",
    "meter_summary",
    "rss_mb",
]

_log = logging.getLogger(__name__)

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
STATM = Path("/proc/self/statm")
MIB = 1024 * 1024
_LOCK_KEYS = ("locks", "seen", "connected", "offline")
_LOCK_RADIO_KEYS = ("unreachable", "radio")  # when the lock service reports them

Snapshot = Callable[[], Mapping[str, JSONValue]]


@dataclass(frozen=True, slots=True)
class HealthProviders:
    """Where the figures come from; optional services are None when not configured."""

    buffer_depth: Callable[[], Mapping[Priority, int]]
    acked: Callable[[], int]
    broker_connected: Callable[[], bool]
    state_dir: Path
    locks: Snapshot | None = None
    meters: Snapshot | None = None
    extra: Snapshot | None = None


@dataclass(frozen=True, slots=True)
class _Sample:
    mono: float
    acked: int
    cpu_s: float


class HealthMonitor:
    """Builds health snapshots; remembers one sample for the rates."""

    def __init__(
        self,
        providers: HealthProviders,
        clock: Clock,
        *,
        thermal_path: Path = THERMAL_ZONE,
        statm_path: Path = STATM,
        cpu_time: Callable[[], float] = time.process_time,
        compact_meters: bool = False,
    ) -> None:
        self.providers = providers
        self._compact_meters = compact_meters
        self._last_counters: Mapping[str, JSONValue] = {}
        self.clock = clock
        self._thermal = thermal_path
        self._statm = statm_path
        self._cpu_time = cpu_time
        self._started = clock.monotonic()
        self._last = _Sample(self._started, providers.acked(), cpu_time())

    def snapshot(self, *, mark: bool = False) -> dict[str, JSONValue]:
        """The health figures now; `mark` starts a new rate interval (the periodic event)."""
        p = self.providers
        sample = _Sample(self.clock.monotonic(), p.acked(), self._cpu_time())
        depth = p.buffer_depth()
        figures: dict[str, JSONValue] = {
            "uptime_s": round(sample.mono - self._started, 1),
            "buffer_depth": {prio.wire_name: depth.get(prio, 0) for prio in Priority},
            "drain_rate_per_s": self._rate(sample.acked - self._last.acked, sample),
            "broker_connected": p.broker_connected(),
            "locks": lock_summary(p.locks()) if p.locks is not None else None,
            "meters": meter_summary(p.meters()) if p.meters is not None else None,
            "disk_free_mb": disk_free_mb(p.state_dir),
            "cpu_temp_c": cpu_temperature_c(self._thermal),
            "cpu_pct": self._cpu_pct(sample),
            "rss_mb": rss_mb(self._statm),
            "tasks": _task_count(),
        }
        if p.extra is not None:
            figures.update(p.extra())
        if mark and self._compact_meters:
            figures["meters"] = self._changed_counters(figures["meters"])
        if mark:
            self._last = sample
        return figures

    def _changed_counters(self, meters: JSONValue) -> JSONValue:
        """Compact health: per-meter counters only for meters whose counters changed since
        the last periodic snapshot (`meters_changed_only` says so; a master differencing the
        counters treats an absent meter as unchanged)."""
        if not isinstance(meters, dict) or not isinstance(meters.get("meters"), dict):
            return meters
        counters = meters["meters"]
        assert isinstance(counters, dict)
        changed = {k: v for k, v in counters.items() if self._last_counters.get(k) != v}
        self._last_counters = counters
        return {**meters, "meters": changed, "meters_changed_only": True}

    def _rate(self, count: int, sample: _Sample) -> float:
        elapsed = sample.mono - self._last.mono
        return round(count / elapsed, 2) if elapsed > 0 else 0.0

    def _cpu_pct(self, sample: _Sample) -> float:
        return round(100 * self._rate_raw(sample.cpu_s - self._last.cpu_s, sample), 1)

    def _rate_raw(self, amount: float, sample: _Sample) -> float:
        elapsed = sample.mono - self._last.mono
        return amount / elapsed if elapsed > 0 else 0.0


def lock_summary(snapshot: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
    """Locks configured, seen, connected, offline and unreachable, and the radio (up/down)."""
    summary = {key: snapshot.get(key) for key in _LOCK_KEYS}
    summary.update({key: snapshot[key] for key in _LOCK_RADIO_KEYS if key in snapshot})
    return summary


def meter_summary(snapshot: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
    """Meters OK, failing and never read, the read success rate, and per-meter poll counters.

    The counters (`meters.{id}.polls` and `.ok`, cumulative since start) are what a master
    station differences between snapshots to compute a read success rate over any window.
    """
    meters = snapshot.get("meters")
    per_meter = _per_meter(meters)
    failing = sum(1 for m in per_meter if m.get("failing") is True)
    polled = [m for m in per_meter if _int(m.get("polls")) > 0]
    polls = sum(_int(m.get("polls")) for m in per_meter)
    good = sum(_int(m.get("ok")) for m in per_meter)
    return {
        "configured": len(per_meter),
        "ok": sum(1 for m in polled if m.get("failing") is not True),
        "failing": failing,
        "never_read": len(per_meter) - len(polled),
        "read_success_rate": round(good / polls, 4) if polls else None,
        "meters": _counters(meters),
    }


def _counters(meters: JSONValue) -> dict[str, JSONValue]:
    if not isinstance(meters, dict):
        return {}
    return {
        str(meter_id): {"polls": _int(m.get("polls")), "ok": _int(m.get("ok"))}
        for meter_id, m in meters.items()
        if isinstance(m, dict)
    }


def disk_free_mb(path: Path) -> float | None:
    """Free space of the file system holding `path`, in MiB; None if it cannot be read."""
    try:
        return round(shutil.disk_usage(path).free / MIB, 1)
    except OSError:
        return None


def cpu_temperature_c(path: Path = THERMAL_ZONE) -> float | None:
    """The SoC temperature in degrees C (Linux thermal zone, millidegrees); None elsewhere."""
    try:
        return round(int(path.read_text(encoding="ascii").strip()) / 1000, 1)
    except (OSError, ValueError):
        return None


def rss_mb(path: Path = STATM) -> float | None:
    """This process's resident memory in MiB, from /proc/self/statm; None without /proc."""
    try:
        pages = int(path.read_text(encoding="ascii").split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / MIB, 1)


def _per_meter(meters: JSONValue) -> list[dict[str, JSONValue]]:
    if not isinstance(meters, dict):
        return []
    return [m for m in meters.values() if isinstance(m, dict)]


def _task_count() -> int | None:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop
        return None


def _int(value: JSONValue) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
