"""Smoke test of the seal bench: it runs on the virtual radio and reports its headline figures."""

from __future__ import annotations

import bench.seal

HEADLINE = ["att_round_trips_per_op", "op_p50_ms", "op_p95_ms", "locks_swept_per_min"]


def test_quick_seal_bench_reports_round_trips_latency_and_sweep() -> None:
    result = bench.seal.run(quick=True, verbose=False)

    assert list(result)[-len(HEADLINE) :] == HEADLINE
    for key in ("writes_per_op", "notifications_per_op", "connected_op_p50_ms", "sweep_locks"):
        assert key in result
    assert result["att_round_trips_per_op"] <= 2
    assert result["max_connections"] == 5
    assert result["peak_connections"] <= 5
    assert result["sweep_peak_sessions"] <= 5
    assert 0 < result["op_p50_ms"] <= result["op_p95_ms"]
    assert result["locks_swept_per_min"] > 0
    assert 0 < result["handheld_ble_request_p50_ms"] <= result["handheld_ble_request_p95_ms"]
