"""Finding 8: eviction notices must not hide kept audit events (docs/security.md).

A real buffer evicts telemetry around a kept `seal.unsealed`; the trail it leaves is then
verified by `sealgw audit verify` and by the master's ledger, honest and tampered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.cli.audit import main as audit_main
from gateway.config.model import BufferSection
from gateway.protocol.checkpoint import CHECKPOINT_TYPE, checkpoint_data
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import EventDraft, Priority, event_hash
from gateway.store.buffer import EventBuffer
from master_station.ledger.factory import open_ledger

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SMALL = BufferSection(max_bytes=256 * 1024, audit_reserve_bytes=64 * 1024)
EVICTED = "gateway.telemetry_evicted"

Trail = list[dict[str, Any]]


def _draft(kind: str, priority: Priority, n: int) -> EventDraft:
    data = {"n": n, "kwh": 1000.25 + n, "note": "x" * 200}
    return EventDraft(kind, "M-0001", data, priority, T0)


async def _evicted_trail(path: Path, identity: Ed25519PrivateKey) -> tuple[Trail, int]:
    """A real buffer's rows after eviction, ending in a signed checkpoint; and the unseal's seq."""
    buffer = EventBuffer(path, "gw-1", SMALL, ManualClock())
    await buffer.open()
    try:
        for n in range(30):
            await buffer.append(_draft("meter.reading", Priority.TELEMETRY, n))
        unseal = await buffer.append(_draft("seal.unsealed", Priority.AUDIT, 0))
        for start in range(30, 2000, 100):
            batch = (_draft("meter.reading", Priority.TELEMETRY, start + i) for i in range(100))
            await asyncio.gather(*(buffer.submit(d) for d in batch))
        assert buffer.stats.evicted_telemetry > 0
        data = checkpoint_data(identity, "gw-1", buffer.head, T0)
        await buffer.append(EventDraft(CHECKPOINT_TYPE, "gw-1", data, Priority.AUDIT, T0))
    finally:
        await buffer.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT payload FROM events ORDER BY seq").fetchall()
    return [json.loads(payload) for (payload,) in rows], unseal.seq


def _hidden_by_old_range(trail: Trail, seq: int) -> bool:
    """The unseal lies inside a notice's first_seq..last_seq with evicted neighbours."""
    held = {obj["seq"] for obj in trail}
    notices = [obj["data"] for obj in trail if obj["type"] == EVICTED]
    inside = any(d["first_seq"] < seq < d["last_seq"] for d in notices)
    return inside and seq in held and seq - 1 not in held and seq + 1 not in held


def _audit(tmp_path: Path, trail: Trail, identity: Ed25519PrivateKey) -> int:
    lines = tmp_path / "trail.jsonl"
    lines.write_text("".join(json.dumps(obj, separators=(",", ":")) + "\n" for obj in trail))
    key = tmp_path / "gw.pub"
    key.write_bytes(
        identity.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return audit_main(["audit", "verify", str(lines), "--gateway-key", str(key)])


def _ledger_report(tmp_path: Path, trail: Trail) -> Any:
    ledger = open_ledger(str(tmp_path / "ledger.db"))
    try:
        for obj in trail:
            ledger.add(json.dumps(obj, separators=(",", ":")).encode())
        return ledger.verify("gw-1"), ledger.gaps("gw-1")
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def identity() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


async def test_an_honest_evicted_trail_verifies(
    tmp_path: Path, identity: Ed25519PrivateKey
) -> None:
    trail, unseal = await _evicted_trail(tmp_path / "buffer.db", identity)
    assert _hidden_by_old_range(trail, unseal)
    held = {obj["seq"] for obj in trail}
    for notice in (obj["data"] for obj in trail if obj["type"] == EVICTED):
        runs = [range(first, last + 1) for first, last in notice["runs"]]
        assert sum(len(run) for run in runs) == notice["count"]
        assert not any(seq in held for run in runs for seq in run)
        assert len(notice["run_hashes"]) == len(runs)
    assert _audit(tmp_path, trail, identity) == 0
    report, gaps = _ledger_report(tmp_path, trail)
    assert gaps == [] and report.ok and report.verified_seq == trail[-1]["seq"]


async def test_a_deleted_unseal_inside_an_eviction_is_a_gap(
    tmp_path: Path, identity: Ed25519PrivateKey
) -> None:
    trail, unseal = await _evicted_trail(tmp_path / "buffer.db", identity)
    assert _hidden_by_old_range(trail, unseal)
    forged = [obj for obj in trail if obj["seq"] != unseal]
    assert _audit(tmp_path, forged, identity) == 1
    report, gaps = _ledger_report(tmp_path, forged)
    assert (unseal, unseal) in gaps and not report.ok


async def test_an_unseal_rewritten_into_a_denial_breaks_the_chain(
    tmp_path: Path, identity: Ed25519PrivateKey
) -> None:
    trail, unseal = await _evicted_trail(tmp_path / "buffer.db", identity)
    assert _hidden_by_old_range(trail, unseal)
    forged = [dict(obj) for obj in trail]
    ordered = sorted(forged, key=lambda o: o["seq"])
    for index, obj in enumerate(ordered):
        if obj["seq"] == unseal:
            obj["type"] = "seal.op_denied"
            obj["hash"] = event_hash(obj)
        elif obj["seq"] == ordered[index - 1]["seq"] + 1 and ordered[index - 1]["seq"] >= unseal:
            obj["prev_hash"] = ordered[index - 1]["hash"]  # re-chain held successors
            obj["hash"] = event_hash(obj)
    assert _audit(tmp_path, forged, identity) == 1
    report, _gaps = _ledger_report(tmp_path, forged)
    assert any(p.kind == "broken_link" for p in report.problems)
