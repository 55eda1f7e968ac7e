"""Batch encoder worker processes, seen from the uplink's event loop.

The batch encoding spends most of a backlog drain's CPU in encode_batch (reading each event's
canonical JSON and packing the run). With `uplink.batch_workers` = N > 0 the uplink starts N
worker processes (encoder_worker.py) when it starts and hands them runs, so the event loop
keeps fetching, publishing and marking while the runs are encoded on other cores.

- A worker is used only once it said it is ready, so start-up never delays a drain: until
  then, and whenever no worker is alive, the pump encodes in its own process.
- Replies come back in request order per worker; `submit` returns a future per run.
- A worker that dies (killed, out of memory, a torn reply) fails its pending futures with
  WorkerGone; the pump then encodes those runs itself. A dead worker is started again at most
  once per RESTART_AFTER_S, so a worker that keeps dying costs a start a minute, not a loop.
- The workers read their requests from a pipe: when the daemon dies, even by SIGKILL, they
  read the end of input and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import struct
import sys
from collections import deque
from collections.abc import Sequence

from gateway.uplink.encoder_worker import READY, STATUS_OK, encode_request

__all__ = ["EncoderPool", "WorkerGone"]

log = logging.getLogger(__name__)

RESTART_AFTER_S = 60.0
PIPE_BYTES = 1024 * 1024  # Linux's default fs.pipe-max-size
CLOSE_TIMEOUT_S = 2.0
_REPLY = struct.Struct(">BI")


class WorkerGone(Exception):  # noqa: N818 - a signal between the pool and the pump, not an error
    """The worker encoding this run exited before it replied; encode the run in process."""


class _Worker:
    """One worker process and its replies, in order."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.ready = False
        self.pending: deque[asyncio.Future[bytes | None]] = deque()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def alive(self) -> bool:
        return self.ready and self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.uplink.encoder_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        _widen_pipe(self._proc.stdin)
        self._reader = asyncio.create_task(self._read_replies(self._proc))

    def submit(self, payloads: Sequence[bytes]) -> asyncio.Future[bytes | None]:
        assert self._proc is not None and self._proc.stdin is not None
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        self._proc.stdin.write(encode_request(payloads))
        return future

    async def _read_replies(self, proc: asyncio.subprocess.Process) -> None:
        reason = "exited"
        try:
            await self._serve_replies(proc)
        except asyncio.IncompleteReadError:
            pass  # it exited
        except (ValueError, struct.error) as exc:
            reason = f"broke its framing: {exc}"
        finally:
            self.ready = False
            self._fail_pending()
        code = await _reap(proc, kill=reason != "exited")
        if self._closing:
            return
        log.warning(
            "batch encoder worker %d (pid %d) %s (status %s); the uplink encodes in its own "
            "process until it is started again",
            self.index,
            proc.pid,
            reason,
            code,
        )

    async def _serve_replies(self, proc: asyncio.subprocess.Process) -> None:
        """Hand each reply to the oldest pending future, until the worker's output ends."""
        assert proc.stdout is not None
        stdout = proc.stdout
        if await stdout.readexactly(1) != READY:
            raise ValueError("it did not say it is ready")
        self.ready = True
        log.debug("batch encoder worker %d ready (pid %d)", self.index, proc.pid)
        while True:
            status, length = _REPLY.unpack(await stdout.readexactly(_REPLY.size))
            body = await stdout.readexactly(length)
            if not self.pending:
                raise ValueError("a reply nobody asked for")
            future = self.pending.popleft()
            if not future.done():
                future.set_result(body if status == STATUS_OK else None)

    def _fail_pending(self) -> None:
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(WorkerGone())

    async def close(self) -> None:
        proc, reader = self._proc, self._reader
        self.ready = False
        self._closing = True
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        await _reap(proc, kill=False)
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        self._fail_pending()


async def _reap(proc: asyncio.subprocess.Process, *, kill: bool) -> int:
    """Wait for the worker to exit (killed first if `kill`, or after CLOSE_TIMEOUT_S).

    A worker whose output ended is exiting: it is not signalled then, since signalling polls
    the process and would reap it behind the child watcher's back.
    """
    if not kill:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                return await proc.wait()
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    return await proc.wait()


def _widen_pipe(stream: asyncio.StreamWriter | None) -> None:
    """Let one whole request fit in the pipe (Linux; 64 KiB by default), so the worker
    reads a run while the loop is busy elsewhere instead of waiting for it to write more."""
    pipe = stream.get_extra_info("pipe") if stream is not None else None
    if pipe is None or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return
    for size in (PIPE_BYTES, PIPE_BYTES // 4):
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, size)
            return


class EncoderPool:
    """N encoder worker processes; runs go to the least busy ready one."""

    def __init__(self, workers: int) -> None:
        self.size = workers
        self._workers: list[_Worker] = []
        self._started_at: float | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.runs_offloaded = 0

    @property
    def ready(self) -> bool:
        """Whether a worker can take a run now (else the caller encodes it itself)."""
        if any(worker.alive for worker in self._workers):
            return True
        self._restart_if_due()
        return False

    @property
    def pids(self) -> list[int]:
        return [pid for worker in self._workers if (pid := worker.pid) is not None]

    async def start(self) -> None:
        """Start the workers (they say when they are ready; nothing waits for them here)."""
        if self.size <= 0 or self._closed:
            return
        self._started_at = asyncio.get_running_loop().time()
        workers = [_Worker(index) for index in range(self.size)]
        try:
            for worker in workers:
                await worker.start()
        except OSError as exc:
            log.warning("cannot start a batch encoder worker (%s); encoding in process", exc)
        self._workers = workers

    def submit(self, payloads: Sequence[bytes]) -> asyncio.Future[bytes | None]:
        """Encode a run in a worker: the future gives the batch message, or None when the run
        cannot be one batch (send its events one by one), or raises WorkerGone."""
        ready = [worker for worker in self._workers if worker.alive]
        if not ready:
            raise WorkerGone()
        worker = min(ready, key=lambda w: len(w.pending))
        self.runs_offloaded += 1
        return worker.submit(payloads)

    async def close(self) -> None:
        self._closed = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        workers, self._workers = self._workers, []
        await asyncio.gather(*(worker.close() for worker in workers))

    def _restart_if_due(self) -> None:
        if self._closed or self.size <= 0 or self._started_at is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._started_at < RESTART_AFTER_S:
            return
        self._started_at = loop.time()
        stale, self._workers = self._workers, []
        for work in (*(worker.close() for worker in stale), self.start()):
            task = loop.create_task(work)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
