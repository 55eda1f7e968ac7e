"""Finding 4 of reliability round 2: a deleted or zero-length buffer.db restarted seq at 1."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.audit import EXIT_PROBLEMS, EXIT_UNSIGNED
from gateway.config.model import BufferSection
from gateway.protocol.chain import verify_chain
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import GENESIS_HASH, Event, EventDraft, Priority
from gateway.store.buffer import EventBuffer
from tests.e2e.faults.conftest import REPO, run_writer


async def restart(path: Path) -> list[Event]:
    """Open the buffer as the restarted gateway does and commit one event; return the new rows."""
    buffer = EventBuffer(path, "gw-fault", BufferSection(), ManualClock())
    await buffer.open()
    draft = EventDraft(
        "seal.sealed", "SL-0002", {"after": True}, Priority.AUDIT, buffer.clock.now()
    )
    await buffer.append(draft)
    pending = await buffer.fetch_pending({}, 100)
    await buffer.close()
    return sorted((Event.from_payload(p.payload) for p in pending), key=lambda e: e.seq)


def audit_verify(tmp_path: Path, objs: list[dict[str, object]]) -> int:
    """Exit code of `sealgw audit verify` over the events as JSON lines, without a key.

    0 verified needs a checkpoint key; an intact chain without one is 3 (unsigned), and a
    broken one 1 (docs/audit.md, section 5).
    """
    file = tmp_path / "received.jsonl"
    file.write_text("".join(json.dumps(obj) + "\n" for obj in objs))
    command = [sys.executable, "-m", "gateway.cli.main", "audit", "verify", str(file)]
    return subprocess.run(command, cwd=REPO, capture_output=True, check=False).returncode


@pytest.mark.parametrize("how", ["deleted", "zero-length"])
def test_lost_buffer_file_continues_seq_in_a_new_epoch(tmp_path: Path, how: str) -> None:
    path = tmp_path / "buffer.db"
    delivered = [json.loads(p) for p in run_writer(path, batches=5, size=20, close=True)]
    head = max(obj["seq"] for obj in delivered)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if how == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"")

    new = asyncio.run(restart(path))
    assert [e.type for e in new[:2]] == ["gateway.chain_epoch", "gateway.buffer_recovered"]
    assert all(e.priority is Priority.ALARM for e in new[:2])
    assert [e.seq for e in new] == list(range(head + 1, head + 1 + len(new)))
    epoch = next(e for e in new if e.type == "gateway.chain_epoch")
    assert epoch.prev_hash == GENESIS_HASH
    assert epoch.data["epoch"] == 1
    assert (epoch.data["prev_seq"], epoch.data["prev_hash"]) == (head, delivered[-1]["hash"])
    assert epoch.data["lost_first_seq"] == 1 and epoch.data["lost_last_seq"] == head

    received = delivered + [json.loads(e.payload) for e in new]
    assert verify_chain(received).ok
    assert audit_verify(tmp_path, received) == EXIT_UNSIGNED, "intact (no key given: unsigned)"
    unannounced = [obj for obj in received if obj["type"] != "gateway.chain_epoch"]
    assert not verify_chain(unannounced).ok
    assert audit_verify(tmp_path, unannounced) == EXIT_PROBLEMS
