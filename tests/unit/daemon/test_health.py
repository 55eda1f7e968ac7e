"""The health snapshot builder, fed by providers and a manual clock."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.daemon.health import HealthMonitor, HealthProviders, cpu_temperature_c, rss_mb
from gateway.protocol.canonical import JSONValue, canonical_json
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import Priority


def meters_snapshot() -> dict[str, JSONValue]:
    return {
        "meters": {
            "M-1": {"polls": 10, "ok": 10, "failing": False},
            "M-2": {"polls": 10, "ok": 4, "failing": True},
            "M-3": {"polls": 0, "ok": 0, "failing": False},
        },
        "districts": {},
    }


def test_snapshot_reports_every_figure_and_the_drain_rate(tmp_path: Path) -> None:
    clock = ManualClock()
    acked = [100]
    thermal = tmp_path / "temp"
    thermal.write_text("48312\n")
    statm = tmp_path / "statm"
    statm.write_text("5000 2560 300 1 0 900 0\n")
    providers = HealthProviders(
        buffer_depth=lambda: {Priority.ALARM: 1, Priority.TELEMETRY: 40},
        acked=lambda: acked[0],
        broker_connected=lambda: True,
        state_dir=tmp_path,
        locks=lambda: {"locks": 200, "seen": 198, "connected": 3, "offline": 2, "adverts": 9},
        meters=meters_snapshot,
        extra=lambda: {"storage_full": False},
    )
    cpu = [1.0]
    monitor = HealthMonitor(
        providers, clock, thermal_path=thermal, statm_path=statm, cpu_time=lambda: cpu[0]
    )
    clock.advance(10)
    acked[0] += 500
    cpu[0] += 0.5

    first = monitor.snapshot(mark=True)
    clock.advance(10)
    second = monitor.snapshot()

    assert first["uptime_s"] == 10.0
    assert first["buffer_depth"] == {"alarm": 1, "audit": 0, "state": 0, "telemetry": 40}
    assert first["drain_rate_per_s"] == 50.0 and first["cpu_pct"] == 5.0
    assert second["drain_rate_per_s"] == 0.0, "the rate covers the interval since the last mark"
    assert first["broker_connected"] is True and first["storage_full"] is False
    assert first["locks"] == {"locks": 200, "seen": 198, "connected": 3, "offline": 2}
    assert first["meters"] == {
        "configured": 3,
        "ok": 1,
        "failing": 1,
        "never_read": 1,
        "read_success_rate": 0.7,
        "meters": {
            "M-1": {"polls": 10, "ok": 10},
            "M-2": {"polls": 10, "ok": 4},
            "M-3": {"polls": 0, "ok": 0},
        },
    }
    assert first["cpu_temp_c"] == 48.3
    assert first["rss_mb"] == round(2560 * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    assert isinstance(first["disk_free_mb"], float) and first["disk_free_mb"] > 0
    assert first["tasks"] is None  # no running loop here
    canonical_json(first)  # publishable as event data


async def test_optional_services_and_missing_host_figures_are_none(tmp_path: Path) -> None:
    providers = HealthProviders(
        buffer_depth=dict, acked=lambda: 0, broker_connected=lambda: False, state_dir=tmp_path
    )
    monitor = HealthMonitor(providers, ManualClock(), thermal_path=tmp_path / "absent")

    snapshot = monitor.snapshot()

    assert snapshot["locks"] is None and snapshot["meters"] is None
    assert snapshot["cpu_temp_c"] is None
    assert isinstance(snapshot["tasks"], int) and snapshot["tasks"] >= 1
    assert cpu_temperature_c(tmp_path / "absent") is None
    assert rss_mb(tmp_path / "absent") is None
    assert (rss_mb() or 0) > 1  # this very process, from /proc/self/statm


async def test_compact_health_carries_per_meter_counters_only_when_they_changed(
    tmp_path: Path,
) -> None:
    current = meters_snapshot()
    providers = HealthProviders(
        buffer_depth=dict,
        acked=lambda: 0,
        broker_connected=lambda: True,
        state_dir=tmp_path,
        meters=lambda: current,
    )
    monitor = HealthMonitor(providers, ManualClock(), compact_meters=True)

    first = monitor.snapshot(mark=True)["meters"]
    current["meters"]["M-2"] = {"polls": 11, "ok": 5, "failing": True}  # type: ignore[index]
    second = monitor.snapshot(mark=True)["meters"]
    third = monitor.snapshot(mark=True)["meters"]
    status = monitor.snapshot()["meters"]  # `sealgw status` (unmarked) stays complete

    assert isinstance(first, dict) and isinstance(second, dict) and isinstance(third, dict)
    assert set(first["meters"]) == {"M-1", "M-2", "M-3"}  # type: ignore[arg-type]
    assert second["meters"] == {"M-2": {"polls": 11, "ok": 5}}
    assert third["meters"] == {}
    assert third["meters_changed_only"] is True
    assert third["read_success_rate"] == second["read_success_rate"]
    assert isinstance(status, dict) and len(status["meters"]) == 3  # type: ignore[arg-type]
