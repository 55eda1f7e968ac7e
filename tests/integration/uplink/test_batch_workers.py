"""Batch encoder workers (uplink.batch_workers): real worker processes, a real mosquitto.

The promise: a worker changes where the CPU is spent, never what is sent. Runs encoded in a
worker are the bytes the uplink would have encoded itself, in seq order per priority; a worker
killed mid-drain loses nothing; a daemon killed by SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.protocol.batch import decode_batch
from gateway.protocol.batch_encode import encode_batch
from gateway.protocol.events import Priority
from gateway.uplink.encoder_pool import EncoderPool
from gateway.uplink.uplink import Uplink
from tests.fixtures.fake_buffer import FakeEventBuffer
from tests.fixtures.mosquitto import Broker, SubscriberFactory, wait_until
from tests.fixtures.uplink import GATEWAY, ROOT, make_uplink, running

BATCH = f"{ROOT}/batch"


def _reading(n: int) -> dict[str, object]:
    values = {
        f"current_l{p}": {"value": round(n * 0.01 * p - 3, 2), "unit": "A"} for p in (1, 2, 3)
    }
    values["energy_import"] = {"value": 1000 + n, "unit": "kWh"}
    return {"meter": f"M-{n % 50:03d}", "protocol": "modbus", "values": values}


def _pool(uplink: Uplink) -> EncoderPool:
    pool = uplink.encoder_pool
    assert pool is not None
    return pool


async def test_runs_encoded_in_a_worker_are_the_uplinks_own_bytes_in_seq_order(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    buf = FakeEventBuffer()
    sub = await subscriber_factory(mosquitto, [BATCH]).start()
    uplink = make_uplink(mosquitto.url, buf, encoding="batch", batch_max_events=64, batch_workers=2)
    async with running(uplink):
        await wait_until(lambda: _pool(uplink).ready, 20, "the encoder workers ready")
        for n in range(1000):
            buf.add(Priority.TELEMETRY, "meter.reading", _reading(n))
            if n % 300 == 0:
                buf.add(Priority.STATE, "gateway.health", {"uptime_s": n})
        for n in range(10):  # a short last run, encoded in process: it must still go last
            buf.add(Priority.TELEMETRY, "meter.reading", _reading(n))
        await wait_until(lambda: buf.published == set(buf.events), 20, "all acknowledged")
        offloaded = _pool(uplink).runs_offloaded
    runs = [decode_batch(m.payload, GATEWAY) for m in sub.messages]
    telemetry = [run for run in runs if run.priority is Priority.TELEMETRY]
    assert offloaded >= len(telemetry) // 2 > 0  # most runs went through the workers
    sent = [p for run in telemetry for p in run.payloads]
    expected = [e.payload for e in buf.events.values() if e.priority is Priority.TELEMETRY]
    assert sent == expected  # every reading once, in seq order
    for message in sub.messages:  # byte for byte what the uplink encodes in process
        run = decode_batch(message.payload, GATEWAY)
        assert message.payload == encode_batch(run.payloads)


async def test_a_worker_killed_mid_drain_loses_and_reorders_nothing(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    buf = FakeEventBuffer()
    sub = await subscriber_factory(mosquitto, [BATCH]).start()
    uplink = make_uplink(mosquitto.url, buf, encoding="batch", batch_max_events=32, batch_workers=1)
    async with running(uplink):
        pool = _pool(uplink)
        await wait_until(lambda: pool.ready, 20, "the encoder worker ready")
        (pid,) = pool.pids
        for n in range(6000):
            buf.add(Priority.TELEMETRY, "meter.reading", _reading(n))
        await wait_until(lambda: pool.runs_offloaded >= 5, 20, "runs in the worker")
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: not pool.ready, 10, "the pool saw its worker die")
        killed_at = pool.runs_offloaded
        await wait_until(lambda: buf.published == set(buf.events), 30, "all acknowledged")
        assert pool.runs_offloaded == killed_at  # the rest was encoded in process
    assert len(buf.published) == 6000
    runs = [decode_batch(m.payload, GATEWAY) for m in sub.messages]
    delivered = [p for run in runs for p in run.payloads]
    assert set(delivered) == {e.payload for e in buf.events.values()}  # nothing lost
    firsts = [run.first_seq for run in runs]
    assert firsts == sorted(firsts)  # and the runs went out in seq order


class _GatedPool(EncoderPool):
    """Workers that answer only when the test says so (in the uplink's own bytes)."""

    def __init__(self) -> None:
        super().__init__(0)
        self.gate: list[tuple[asyncio.Future[bytes | None], list[bytes]]] = []

    @property
    def ready(self) -> bool:
        return True

    def submit(self, payloads: Sequence[bytes]) -> asyncio.Future[bytes | None]:
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self.gate.append((future, list(payloads)))
        self.runs_offloaded += 1
        return future

    def open_gate(self) -> None:
        for future, payloads in self.gate:
            future.set_result(encode_batch(payloads))


async def test_a_short_run_encoded_in_process_waits_for_the_runs_cut_before_it(
    mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    buf = FakeEventBuffer()
    sub = await subscriber_factory(mosquitto, [BATCH]).start()
    uplink = make_uplink(mosquitto.url, buf, encoding="batch", batch_max_events=64)
    pool = _GatedPool()
    uplink._pump._pool = pool  # type: ignore[attr-defined]  # slow workers, on cue
    for n in range(64 * 3 + 5):  # three runs for the workers, then five readings
        buf.add(Priority.TELEMETRY, "meter.reading", _reading(n))
    async with running(uplink):
        await wait_until(lambda: len(pool.gate) == 3, 10, "three runs in the workers")
        assert uplink.stats.published == 0  # the five were cut too, and wait their turn
        pool.open_gate()
        await wait_until(lambda: buf.published == set(buf.events), 10, "all acknowledged")
    runs = [decode_batch(m.payload, GATEWAY) for m in sub.messages]
    assert [len(run.payloads) for run in runs] == [64, 64, 64, 5]  # the short one last
    assert [p for run in runs for p in run.payloads] == [e.payload for e in buf.events.values()]


def test_a_daemon_killed_by_sigkill_leaves_no_worker_behind(tmp_path: Path) -> None:
    """The workers read their requests from the daemon's pipe: its death is their end of input."""
    script = tmp_path / "host.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            from gateway.uplink.encoder_pool import EncoderPool

            async def main():
                pool = EncoderPool(2)
                await pool.start()
                while not pool.ready or len(pool.pids) < 2:
                    await asyncio.sleep(0.01)
                print(*pool.pids, flush=True)
                await asyncio.sleep(3600)

            asyncio.run(main())
            """
        )
    )
    root = Path(__file__).resolve().parents[3]
    with subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    ) as host:
        try:
            assert host.stdout is not None
            pids = [int(pid) for pid in host.stdout.readline().split()]
            assert len(pids) == 2 and all(_alive(pid) for pid in pids)
            host.send_signal(signal.SIGKILL)
            host.wait(10)
            deadline = time.monotonic() + 10
            while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.02)  # polling a condition with a deadline
            assert not any(_alive(pid) for pid in pids), "a worker outlived its daemon"
        finally:
            host.kill()


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not reaped by init yet, does not count)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return status != "Z"
