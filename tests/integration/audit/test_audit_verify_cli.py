"""`sealgw audit verify`: clean trails pass; gaps, edits, re-chained forgeries and bad
checkpoints are named, from JSON lines and from a master ledger, in process and as a CLI."""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.audit.verify import LEDGER_SCHEMA
from gateway.cli.audit import main as audit_main
from gateway.protocol.checkpoint import CHECKPOINT_TYPE, checkpoint_data
from gateway.protocol.events import GENESIS_HASH, EventDraft, Priority, event_hash, seal_event

REPO = Path(__file__).resolve().parents[3]
GATEWAY = "gw-0001"
T0 = datetime(2026, 11, 22, 8, tzinfo=UTC)
Signer = Callable[[str, tuple[int, str], datetime], dict[str, Any]]


def trail(
    identity: Ed25519PrivateKey,
    count: int = 20,
    *,
    every: int = 5,
    gateway: str = GATEWAY,
    signer: Signer | None = None,
) -> list[dict[str, Any]]:
    """`count` events with a checkpoint after every `every` of them (seq 6 covers 5, ...)."""
    sign = signer or (lambda gw, head, ts: checkpoint_data(identity, gw, head, ts))
    objs: list[dict[str, Any]] = []
    head = (0, GENESIS_HASH)
    for n in range(count):
        ts = T0 + timedelta(seconds=n)
        draft = EventDraft("seal.sealed", "SL-0001", {"n": n}, Priority.AUDIT, ts)
        head = _append(objs, draft, gateway, head)
        if (n + 1) % every == 0:
            data = sign(gateway, head, ts)
            draft = EventDraft(CHECKPOINT_TYPE, gateway, data, Priority.AUDIT, ts)
            head = _append(objs, draft, gateway, head)
    return objs


def _append(
    objs: list[dict[str, Any]], draft: EventDraft, gateway: str, head: tuple[int, str]
) -> tuple[int, str]:
    event = seal_event(draft, gateway, head[0] + 1, head[1])
    objs.append(json.loads(event.payload))
    return event.seq, event.hash


def by_seq(objs: list[dict[str, Any]], seq: int) -> dict[str, Any]:
    return next(obj for obj in objs if obj["seq"] == seq)


def rechain(objs: list[dict[str, Any]], start: int) -> None:
    """What a forger without the key can do: recompute hashes and links from seq `start` on."""
    ordered = sorted(objs, key=lambda o: o["seq"])
    for index, obj in enumerate(ordered):
        if obj["seq"] >= start:
            obj["prev_hash"] = ordered[index - 1]["hash"] if index else GENESIS_HASH
            obj["hash"] = event_hash(obj)


def write_lines(path: Path, objs: list[dict[str, Any]], extra: Sequence[str] = ()) -> Path:
    lines = [json.dumps(obj, separators=(",", ":")) for obj in objs] + list(extra)
    path.write_text("\n".join(lines) + "\n")
    return path


def pem(identity: Ed25519PrivateKey, path: Path) -> Path:
    path.write_bytes(
        identity.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def kinds(report: Any) -> list[tuple[str, int]]:
    return [(p.kind, p.seq) for p in report.problems]


@pytest.fixture(scope="module")
def identity() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def key_file(tmp_path: Path, identity: Ed25519PrivateKey) -> Path:
    return pem(identity, tmp_path / "identity.pub")


def run_audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = audit_main(["audit", "verify", *args])
    return code, capsys.readouterr().out


# -- clean trails -------------------------------------------------------------------------------


# -- tampering ----------------------------------------------------------------------------------


# -- master ledger ------------------------------------------------------------------------------


def make_ledger(path: Path, objs: list[dict[str, Any]]) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(LEDGER_SCHEMA)
        conn.executemany(
            "INSERT INTO events (gateway, seq, id, payload) VALUES (?, ?, ?, ?)",
            [(o["gateway"], o["seq"], o["id"], json.dumps(o).encode()) for o in objs],
        )
    return path


# -- the command line, as an operator runs it ---------------------------------------------------


def audit_command() -> list[str]:
    """`python -m gateway audit` once the lead wires it into sealgw, else the module's own."""
    from gateway.cli.main import build_parser

    wired = any(
        isinstance(action, argparse._SubParsersAction) and "audit" in action.choices
        for action in build_parser()._actions
    )
    return [sys.executable, "-m", "gateway" if wired else "gateway.cli.audit", "audit"]


def test_cli_detects_a_tampered_chain(
    tmp_path: Path, identity: Ed25519PrivateKey, key_file: Path
) -> None:
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


# -- huge holes ---------------------------------------------------------------------------------


def shifted_trail(identity: Ed25519PrivateKey, start: int, count: int) -> list[dict[str, Any]]:
    """Events `start`..`start + count - 1` of a long-running gateway, with one checkpoint."""
    objs: list[dict[str, Any]] = []
    head = (start - 1, "cd" * 32)
    for n in range(count - 1):
        draft = EventDraft("meter.reading", "M-01", {"n": n}, Priority.TELEMETRY, T0)
        head = _append(objs, draft, GATEWAY, head)
    data = checkpoint_data(identity, GATEWAY, head, T0)
    _append(objs, EventDraft(CHECKPOINT_TYPE, GATEWAY, data, Priority.AUDIT, T0), GATEWAY, head)
    return objs
