"""Smoke test of the uplink bench: both encodings on the wire and draining, headline last."""

from __future__ import annotations

import bench.uplink

HEADLINE = [
    "bytes_per_reading_wire",
    "bytes_per_day_district",
    "wire_ratio",
    "drain_readings_per_s",
    "drain_ratio_batch_vs_json",
    "drain_ratio_batch_vs_raw_paho",
]


def test_quick_uplink_bench_reports_wire_bytes_and_drain_per_encoding() -> None:
    result = bench.uplink.run(quick=True, verbose=False)

    assert list(result)[-len(HEADLINE) :] == HEADLINE
    wire = result["bytes_per_reading_wire"]
    assert set(wire) == {"json", "batch"}
    assert wire["json"] > 1000  # a 24-value reading as canonical JSON
    assert 0 < wire["batch"] <= 100  # the goal: at most 100 bytes per 24-value reading
    assert (
        result["wire_messages"]["batch"]["readings"] < result["wire_messages"]["json"]["readings"]
    )
    per_day = result["bytes_per_day_district"]
    assert 0 < per_day["batch"] < per_day["json"]
    assert result["wire_events_per_hour"]["batch"] == result["wire_events_per_hour"]["json"]
    drain = result["drain_readings_per_s"]
    assert set(drain) == {"raw_paho", "json", "batch", "batch_in_process"}
    assert all(rate > 0 for rate in drain.values())
    for figure in ("drain_cpu_us_per_reading", "broker_cpu_us_per_reading"):
        assert set(result[figure]) == {"raw_paho", "json", "batch", "batch_in_process"}
    assert all(us > 0 for us in result["drain_cpu_us_per_reading"].values())
