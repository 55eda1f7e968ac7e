"""Smoke test of the faults bench: power cuts and broker flaps lose and duplicate nothing."""

from __future__ import annotations

import bench.faults

HEADLINE = ["lost", "duplicated_with_new_id", "seq_gaps", "chain_breaks", "worst_stop_s"]


def test_quick_faults_bench_reports_zero_loss_and_a_bounded_stop() -> None:
    result = bench.faults.run(quick=True, verbose=False)

    assert list(result)[-len(HEADLINE) :] == HEADLINE
    assert result["kills"] == 3 and result["broker_flaps"] == 2
    assert result["lock_log_entries"] > 0 and result["covers_opened"] > 0
    assert result["healed"] is True
    assert result["lost"] == 0
    assert result["duplicated_with_new_id"] == 0
    assert result["seq_gaps"] == 0
    assert result["chain_breaks"] == 0
    assert result["blackhole_stop_s"]
