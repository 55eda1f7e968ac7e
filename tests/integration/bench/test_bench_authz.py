"""`python -m bench authz --json` prints one object whose last figures are the headline ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_authz_bench_reports_decisions_and_ticket_verification() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "authz", "--json", "--quick"],
        cwd=REPO,  # bench is not installed: it runs from the checkout
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout)
    assert list(result)[-2:] == ["verify_ticket_us", "decisions_per_s"]
    assert result["decisions_per_s"] > 0
    assert 0 < result["verify_ticket_us"] < result["decide_us"]
    assert result["logic_only_decide_us"] < result["decide_us"]
    assert result["checkpoint_sign_us"] > 0
    assert result["checkpoint_verify_us"] > 0
