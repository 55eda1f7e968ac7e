"""`sealgw config check` as a subprocess: a bad key is named and exits 2, a good file is OK."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_config_check_cli_names_the_key_and_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "gw.toml"
    bad.write_text('[gateway]\nid = "gw"\n[buffer]\nsynchronous = "sometimes"\n')
    result = run_cli("config", "check", str(bad))
    assert result.returncode == 2
    assert "buffer.synchronous" in result.stderr
    good = tmp_path / "good.toml"
    good.write_text('[gateway]\nid = "gw"\n')
    result = run_cli("config", "check", str(good))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
