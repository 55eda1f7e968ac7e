"""Fault tests of the event buffer: a real tmpfs, a garbled WAL, a lost buffer file.

Every test here carries the `faults` marker (run them alone with `pytest -m faults`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/e2e/faults/" in str(item.path):
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs mounted on a fresh directory (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the disk-full test needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", "-l", str(mount)], check=True)


WRITER = """
import asyncio, json, sys
from datetime import UTC, datetime
from pathlib import Path
from gateway.store.buffer import EventBuffer
from gateway.protocol.clock import SystemClock
from gateway.config.model import BufferSection
from gateway.protocol.events import EventDraft, Priority

async def main():
    path, batches, size, close = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    buffer = EventBuffer(path, "gw-fault", BufferSection(), SystemClock())
    await buffer.open()
    events = []
    for b in range(batches):
        drafts = [EventDraft("seal.sealed", "SL-0001", {"n": b * size + i}, Priority.AUDIT,
                             datetime.now(UTC)) for i in range(size)]
        events += await asyncio.gather(*(buffer.submit(d) for d in drafts))
        await buffer.mark_published([e.seq for e in events[-size:]])
    for event in events:
        sys.stdout.write(event.payload.decode() + "\\n")
    if close == "close":
        await buffer.close()
        sys.stdout.write("closed\\n")
    sys.stdout.write("done\\n")
    sys.stdout.flush()
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def run_writer(path: Path, batches: int, size: int, *, close: bool) -> list[bytes]:
    """Commit and deliver `batches` x `size` audit events in a child process, then SIGKILL it.

    Returns the payloads the child committed (and marked delivered) before it was killed.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(batches), str(size), "close" * close],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    payloads: list[bytes] = []
    while True:
        line = child.stdout.readline()
        assert line, "writer exited early"
        if line.strip() == b"done":
            break
        if line.startswith(b"{"):
            payloads.append(line.strip())
    child.kill()
    child.wait(timeout=10)
    child.stdout.close()
    return payloads
