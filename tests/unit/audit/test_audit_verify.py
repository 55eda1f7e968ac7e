"""`sealgw audit verify`: clean trails pass; gaps, edits, re-chained forgeries and bad
checkpoints are named, from JSON lines and from a master ledger, in process and as a CLI."""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.audit.verify import LEDGER_SCHEMA, GatewayKeys, audit_events, verify_file
from gateway.cli.audit import main as audit_main
from gateway.protocol.checkpoint import CHECKPOINT_TYPE, checkpoint_data, public_key_fingerprint
from gateway.protocol.events import EventDraft, Priority, event_hash
from tests.fixtures.trails import (
    GATEWAY,
    T0,
    append_event,
    by_seq,
    kinds,
    pem,
    rechain,
    trail,
    write_lines,
)


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


def test_clean_trail_verifies_with_every_checkpoint(
    tmp_path: Path, identity: Ed25519PrivateKey, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_lines(tmp_path / "events.jsonl", trail(identity))
    code, out = run_audit(capsys, str(path), "--gateway-key", str(key_file))
    assert code == 0, out
    assert "4 verified, 0 bad" in out
    assert "signed: newest verified checkpoint covers seq 23 (head 24)" in out
    assert out.rstrip().endswith(
        "VERIFIED: chain intact, every event covered by a verified checkpoint"
    )


def test_duplicates_and_any_order_are_fine(tmp_path: Path, identity: Ed25519PrivateKey) -> None:
    objs = trail(identity)
    received = objs + objs[2:9] + objs[-3:]
    random.Random(5).shuffle(received)
    report = verify_file(
        write_lines(tmp_path / "e.jsonl", received), GatewayKeys((identity.public_key(),))
    )
    assert report.ok, report.problems
    assert report.chain.duplicates == 10
    assert report.checkpoints[GATEWAY].verified == 4


def test_without_a_key_an_intact_trail_is_unsigned_not_verified(
    tmp_path: Path, identity: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_lines(tmp_path / "events.jsonl", trail(identity))
    code, out = run_audit(capsys, str(path))
    assert code == 3
    assert "4 unverified" in out
    assert "unsigned: 24 events from seq 1 on" in out
    assert "UNSIGNED: chain intact, but not every event is signed (no --gateway-key given)" in out


# -- tampering ----------------------------------------------------------------------------------


def test_deleted_lines_are_named_as_gaps(
    tmp_path: Path, identity: Ed25519PrivateKey, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objs = [obj for obj in trail(identity) if obj["seq"] not in {3, 8, 9, 10}]
    code, out = run_audit(
        capsys, str(write_lines(tmp_path / "e.jsonl", objs)), "--gateway-key", str(key_file)
    )
    assert code == 1
    assert "GAP             seq 3 (1 missing)" in out
    assert "GAP             seq 8-10 (3 missing)" in out
    assert "BROKEN: 2 problems found" in out


def test_edited_data_field_is_named(
    tmp_path: Path, identity: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    objs = trail(identity)
    by_seq(objs, 9)["data"]["n"] = 999
    code, out = run_audit(capsys, str(write_lines(tmp_path / "e.jsonl", objs)))
    assert code == 1
    assert "EDITED          seq 9: hash does not match content" in out


def test_edited_and_rehashed_event_breaks_the_next_link(
    tmp_path: Path, identity: Ed25519PrivateKey
) -> None:
    objs = trail(identity)
    forged = by_seq(objs, 9)
    forged["data"]["n"] = 999
    forged["hash"] = event_hash(forged)
    report = verify_file(write_lines(tmp_path / "e.jsonl", objs))
    assert kinds(report) == [("broken_link", 10)]


def test_a_rechained_tail_is_caught_by_the_signed_checkpoint(
    tmp_path: Path, identity: Ed25519PrivateKey
) -> None:
    objs = trail(identity)
    by_seq(objs, 9)["data"]["n"] = 999
    rechain(objs, 9)  # every hash and link is consistent again
    report = verify_file(
        write_lines(tmp_path / "e.jsonl", objs), GatewayKeys((identity.public_key(),))
    )
    assert kinds(report) == [("bad_checkpoint", 12), ("bad_checkpoint", 18), ("bad_checkpoint", 24)]
    assert "covers_hash is not the chain's hash at seq 11" in report.problems[0].detail
    assert report.checkpoints[GATEWAY].signed_through == 5


def test_forged_checkpoint_signature_is_named(
    tmp_path: Path, identity: Ed25519PrivateKey, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rogue = Ed25519PrivateKey.generate()

    def forge(gw: str, head: tuple[int, str], ts: datetime) -> dict[str, Any]:
        data = checkpoint_data(rogue, gw, head, ts)
        return {**data, "key_id": public_key_fingerprint(identity.public_key())}

    objs = trail(identity, 10, signer=forge)
    code, out = run_audit(
        capsys, str(write_lines(tmp_path / "e.jsonl", objs)), "--gateway-key", str(key_file)
    )
    assert code == 1
    assert "BAD CHECKPOINT  seq 6: signature does not verify" in out
    assert "BAD CHECKPOINT  seq 12: signature does not verify" in out
    assert "signed: nothing (no verified checkpoint)" in out


def test_checkpoint_signed_by_an_unknown_key_is_named(
    tmp_path: Path, identity: Ed25519PrivateKey
) -> None:
    rogue = Ed25519PrivateKey.generate()
    objs = trail(rogue, 5)
    report = verify_file(
        write_lines(tmp_path / "e.jsonl", objs), GatewayKeys((identity.public_key(),))
    )
    assert kinds(report) == [("bad_checkpoint", 6)]
    assert "unknown key sha256:" in report.problems[0].detail


def test_checkpoint_whose_hash_does_not_match_the_chain_is_named(
    tmp_path: Path, identity: Ed25519PrivateKey
) -> None:
    def wrong_hash(gw: str, head: tuple[int, str], ts: datetime) -> dict[str, Any]:
        return checkpoint_data(identity, gw, (head[0], "f" * 64), ts)  # honestly signed, wrong

    objs = trail(identity, 10, signer=wrong_hash)
    for keys in (GatewayKeys(), GatewayKeys((identity.public_key(),))):
        report = verify_file(write_lines(tmp_path / "e.jsonl", objs), keys)
        assert kinds(report) == [("bad_checkpoint", 6), ("bad_checkpoint", 12)]
        assert report.problems[0].detail == "covers_hash is not the chain's hash at seq 5"


def test_checkpoint_is_anchored_by_the_next_link_when_its_event_is_missing(
    identity: Ed25519PrivateKey,
) -> None:
    objs = [obj for obj in trail(identity, 10) if obj["seq"] != 5]
    report = audit_events(objs, GatewayKeys((identity.public_key(),)))
    assert kinds(report) == [("gap", 5)]
    assert report.checkpoints[GATEWAY].verified == 2


def test_lines_that_are_not_events_are_reported_not_fatal(
    tmp_path: Path, identity: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    objs = trail(identity, 5)
    junk = ["not json", "[1, 2]", '{"seq": 3}', '{"a": 1, "a": 2}', "\xff"]
    code, out = run_audit(capsys, str(write_lines(tmp_path / "e.jsonl", objs, junk)))
    assert code == 1
    assert "UNREADABLE      line 7: not JSON" in out
    assert "UNREADABLE      line 8: not a JSON object" in out
    assert "UNREADABLE      line 9: not an event: no 'v'" in out
    assert "UNREADABLE      line 10: a member name appears twice" in out
    assert "gateway gw-0001: 6 events, head seq 6" in out
    assert "BROKEN: 5 problems found" in out


def test_gateway_scoped_keys_and_json_output(
    tmp_path: Path, identity: Ed25519PrivateKey, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = Ed25519PrivateKey.generate()
    objs = trail(identity, 5) + trail(other, 5, gateway="gw-0002")
    raw = other.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    path = write_lines(tmp_path / "e.jsonl", objs)
    code, out = run_audit(
        capsys,
        str(path),
        "--json",
        "--gateway-key",
        f"gw-0001={key_file}",
        "--gateway-key",
        f"gw-0002={raw}",
    )
    result = json.loads(out)
    assert code == 0
    assert result["ok"] is True
    assert list(result)[-1] == "ok"
    assert result["gateways"]["gw-0002"]["checkpoints_verified"] == 1
    code, out = run_audit(capsys, str(path), "--json", "--gateway-key", f"gw-0001={raw}")
    result = json.loads(out)
    assert code == 1
    assert [(p["gateway"], p["kind"]) for p in result["problems"]] == [
        ("gw-0001", "bad_checkpoint")
    ]
    assert result["gateways"]["gw-0002"]["checkpoints_unverified"] == 1


def test_usage_and_io_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert audit_main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
    path = write_lines(tmp_path / "e.jsonl", [])
    assert audit_main(["audit", "verify", str(path), "--gateway-key", "nonsense"]) == 2
    assert "cannot read key nonsense" in capsys.readouterr().err
    assert audit_main(["audit"]) == 2


# -- master ledger ------------------------------------------------------------------------------


def make_ledger(path: Path, objs: list[dict[str, Any]]) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(LEDGER_SCHEMA)
        conn.executemany(
            "INSERT INTO events (gateway, seq, id, payload) VALUES (?, ?, ?, ?)",
            [(o["gateway"], o["seq"], o["id"], json.dumps(o).encode()) for o in objs],
        )
    return path


def test_ledger_file_verifies(tmp_path: Path, identity: Ed25519PrivateKey) -> None:
    objs = trail(identity)
    ledger = make_ledger(tmp_path / "ledger.db", objs + objs[:3])
    report = verify_file(ledger, GatewayKeys((identity.public_key(),)))
    assert report.source == "ledger"
    assert report.ok, report.problems
    assert (report.records, report.chain.duplicates) == (27, 3)


def test_tampered_ledger_rows_are_named(tmp_path: Path, identity: Ed25519PrivateKey) -> None:
    ledger = make_ledger(tmp_path / "ledger.db", trail(identity))
    with contextlib.closing(sqlite3.connect(ledger)) as conn, conn:
        payload = conn.execute("SELECT payload FROM events WHERE seq = 7").fetchone()[0]
        edited = payload.replace(b'"n": 5', b'"n": 50')
        conn.execute("UPDATE events SET payload = ? WHERE seq = 7", (edited,))
        conn.execute("DELETE FROM events WHERE seq = 15")
        conn.execute("UPDATE events SET seq = 99 WHERE seq = 3")
    report = verify_file(ledger)
    assert kinds(report) == [("unreadable", 3), ("edited", 7), ("gap", 15)]
    assert report.problems[0].detail == "row 3: ledger seq differs from the payload's"


def test_sqlite_file_without_an_events_table_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert audit_main(["audit", "verify", str(path)]) == 2
    assert "no events table" in capsys.readouterr().err


# -- huge holes ---------------------------------------------------------------------------------


def shifted_trail(identity: Ed25519PrivateKey, start: int, count: int) -> list[dict[str, Any]]:
    """Events `start`..`start + count - 1` of a long-running gateway, with one checkpoint."""
    objs: list[dict[str, Any]] = []
    head = (start - 1, "cd" * 32)
    for n in range(count - 1):
        draft = EventDraft("meter.reading", "M-01", {"n": n}, Priority.TELEMETRY, T0)
        head = append_event(objs, draft, GATEWAY, head)
    data = checkpoint_data(identity, GATEWAY, head, T0)
    append_event(
        objs, EventDraft(CHECKPOINT_TYPE, GATEWAY, data, Priority.AUDIT, T0), GATEWAY, head
    )
    return objs


def test_a_window_of_an_old_gateway_is_one_leading_gap(identity: Ed25519PrivateKey) -> None:
    objs = shifted_trail(identity, 40_000_001, 30)
    report = audit_events(objs, GatewayKeys((identity.public_key(),)))
    assert [(p.kind, p.seq, p.last_seq) for p in report.problems] == [("gap", 1, 40_000_000)]
    assert report.checkpoints[GATEWAY].verified == 1


def test_an_absurd_seq_is_named_without_walking_to_it(identity: Ed25519PrivateKey) -> None:
    objs = trail(identity, 10)
    by_seq(objs, 7)["seq"] = 10**15
    report = audit_events(objs, GatewayKeys((identity.public_key(),)))
    assert [(p.kind, p.seq, p.last_seq) for p in report.problems] == [
        ("gap", 7, 7),
        ("gap", 13, 10**15 - 1),
        ("edited", 10**15, 10**15),
    ]


def test_announced_evictions_shrink_a_wide_gap(identity: Ed25519PrivateKey) -> None:
    objs = shifted_trail(identity, 50_001, 5)
    announce = EventDraft(
        "gateway.telemetry_evicted",
        GATEWAY,
        {"first_seq": 1, "last_seq": 40_000, "count": 40_000},
        Priority.STATE,
        T0,
    )
    append_event(objs, announce, GATEWAY, (objs[-1]["seq"], objs[-1]["hash"]))
    report = audit_events(objs, GatewayKeys())
    assert [(p.kind, p.seq, p.last_seq) for p in report.problems] == [("gap", 40_001, 50_000)]
