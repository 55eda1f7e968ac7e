"""`python -m bench commands --quick`: a flood against a real daemon, its memory reported."""

from __future__ import annotations

import bench.commands


def test_quick_commands_bench_reports_the_floods_memory_and_replies() -> None:
    result = bench.commands.run(quick=True, verbose=False)
    flood = result["commands_flood"]
    assert flood["commands"] == 2_000
    assert flood["replies"] + flood["unanswered"] == flood["commands"]
    assert flood["replies"] > 0
    assert set(flood["replies_by_outcome"]) <= {
        "ok", "busy", "bad_signature", "unknown_command", "bad_json", "bad_response_topic",
        "replayed",
    }  # fmt: skip
    assert flood["rss_mb_before"] <= flood["rss_mb_peak"]
    assert flood["rss_mb_after"] > 0
