"""Tamper evidence is the same in both encodings: a trail with signed checkpoints that reached
one master ledger event by event and another in batch messages gives the same ledger bytes and
the same `sealgw audit verify` outcome; an edited event breaks both (an edit in one, the
refused run's gap in the other)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.verify import GatewayKeys, verify_file
from gateway.cli.audit import main as audit_main
from gateway.protocol.batch import BatchDecodeError, decode_batch
from gateway.protocol.batch_encode import encode_batch
from master_station.ledger.factory import open_ledger
from tests.fixtures.trails import GATEWAY, pem, trail


def canonical(obj: dict[str, object]) -> bytes:
    """The canonical payload of an envelope without escapes (sorted members, compact)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def ledger_of(path: Path, payloads: list[bytes]) -> Path:
    ledger = open_ledger(path)
    try:
        ledger.add_many(payloads, [GATEWAY] * len(payloads))
    finally:
        ledger.close()
    return path


def stored(path: Path) -> list[bytes]:
    """The payloads as the ledger keeps them, by seq."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [bytes(row[0]) for row in conn.execute("SELECT payload FROM events ORDER BY seq")]


def test_both_encodings_give_the_same_ledger_and_the_same_audit_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = Ed25519PrivateKey.generate()
    payloads = [canonical(obj) for obj in trail(identity, 42, every=7)]  # 48 events, 6 checkpoints
    runs = [payloads[i : i + 8] for i in range(0, len(payloads), 8)]  # runs across checkpoints
    rebuilt = [p for run in runs for p in decode_batch(encode_batch(run), GATEWAY).payloads]
    assert rebuilt == payloads

    as_json = ledger_of(tmp_path / "json.db", payloads)
    as_batch = ledger_of(tmp_path / "batch.db", rebuilt)
    assert stored(as_json) == stored(as_batch) == payloads

    keys = GatewayKeys((identity.public_key(),))
    reports = [verify_file(path, keys).to_json() for path in (as_json, as_batch)]
    assert reports[0] == reports[1]
    assert reports[0]["gateways"][GATEWAY]["events"] == len(payloads)
    key = pem(identity, tmp_path / "identity.pub")
    codes = []
    for path in (as_json, as_batch):
        codes.append(audit_main(["audit", "verify", str(path), "--gateway-key", str(key)]))
        assert "VERIFIED" in capsys.readouterr().out
    assert codes == [0, 0]


def test_an_edited_event_is_caught_in_both_encodings(tmp_path: Path) -> None:
    identity = Ed25519PrivateKey.generate()
    objs = trail(identity, 14, every=7)
    objs[3]["data"] = {"n": 99}  # edited after it was hashed: its `hash` no longer fits
    payloads = [canonical(obj) for obj in objs]
    runs = [payloads[i : i + 8] for i in range(0, len(payloads), 8)]
    with pytest.raises(BatchDecodeError, match="last hash"):
        decode_batch(encode_batch(runs[0]), GATEWAY)  # the master refuses the whole run
    rebuilt = [p for run in runs[1:] for p in decode_batch(encode_batch(run), GATEWAY).payloads]

    keys = GatewayKeys((identity.public_key(),))
    as_json = verify_file(ledger_of(tmp_path / "json.db", payloads), keys)
    as_batch = verify_file(ledger_of(tmp_path / "batch.db", rebuilt), keys)
    assert not as_json.ok and not as_batch.ok
    assert {p.seq for p in as_json.problems} == {4}
    assert {p.kind for p in as_batch.problems} == {"gap"}  # seqs 1..8 never arrived
