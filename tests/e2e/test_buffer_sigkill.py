"""The durable event buffer survives SIGKILL of its process: no acknowledged event is lost."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from gateway.config.model import BufferSection
from gateway.protocol.clock import ManualClock
from gateway.store.buffer import EventBuffer
from tests.fixtures.buffers import assert_chain

REPO = Path(__file__).resolve().parents[2]


CHILD = """
import asyncio, sys
from datetime import UTC, datetime
from pathlib import Path
from gateway.store.buffer import EventBuffer
from gateway.protocol.clock import SystemClock
from gateway.config.model import BufferSection
from gateway.protocol.events import EventDraft, Priority

def report(future):
    sys.stdout.write(f"{future.result().seq}\\n")
    sys.stdout.flush()

async def main():
    buffer = EventBuffer(Path(sys.argv[1]), "gw-crash", BufferSection(), SystemClock())
    await buffer.open()
    n = 0
    while True:
        for _ in range(25):
            draft = EventDraft("meter.reading", "M-1", {"n": n}, Priority(n % 4),
                               datetime.now(UTC))
            buffer.submit(draft).add_done_callback(report)
            n += 1
        await asyncio.sleep(0.002)

asyncio.run(main())
"""


def test_sigkill_loses_no_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acknowledged: list[int] = []
    while len(acknowledged) < 1500:
        line = child.stdout.readline()
        assert line, "child exited early"
        acknowledged.append(int(line))
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate(timeout=10)
    acknowledged += [int(line) for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    assert child.returncode == -signal.SIGKILL

    async def reopen() -> tuple[int, str]:
        buffer = EventBuffer(path, "gw-crash", BufferSection(), ManualClock())
        await buffer.open()
        head = buffer.head
        await buffer.close()
        return head

    head = asyncio.run(reopen())
    events = assert_chain(path)
    assert len(events) == head[0] >= max(acknowledged)
    assert set(acknowledged) <= {e.seq for e in events}
    assert events[-1].hash == head[1]
