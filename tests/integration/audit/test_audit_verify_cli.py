"""`sealgw audit verify` as an operator runs it: a subprocess names the tampering in a trail."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.fixtures.trails import by_seq, pem, trail

REPO = Path(__file__).resolve().parents[3]


def audit_command() -> list[str]:
    """`python -m gateway audit` once the lead wires it into sealgw, else the module's own."""
    from gateway.cli.main import build_parser

    wired = any(
        isinstance(action, argparse._SubParsersAction) and "audit" in action.choices
        for action in build_parser()._actions
    )
    return [sys.executable, "-m", "gateway" if wired else "gateway.cli.audit", "audit"]


def test_cli_detects_a_tampered_chain(tmp_path: Path) -> None:
    identity = Ed25519PrivateKey.generate()
    key_file = pem(identity, tmp_path / "identity.pub")
    objs = trail(identity)
    by_seq(objs, 9)["data"]["n"] = 999
    lines = [json.dumps(o) for o in objs]
    del lines[13]  # seq 14
    path = tmp_path / "received.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [*audit_command(), "verify", str(path), "--gateway-key", str(key_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "EDITED          seq 9: hash does not match content" in done.stdout
    assert "GAP             seq 14 (1 missing)" in done.stdout
    assert "BROKEN: 2 problems found" in done.stdout
