"""Processes of the demo, the bench and the tests: children in their own sessions, the
simulator's control channel, and the TCP relay the gateway reaches its broker through (cut to
make an outage).

Every child runs in a new session (`start_new_session`), so stopping it stops its whole process
group; `ProcessSet.close()` in a `finally` leaves no orphans, and `sealgw demo` turns SIGTERM
into that cleanup. Each child also gets SIGTERM from the kernel if its parent dies abruptly
(`firmware_sim.children.die_with_parent`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import IO, Any

from firmware_sim.children import die_with_parent
from gateway.errors import GatewayError

__all__ = ["Child", "DemoStepError", "ProcessSet", "SimControl", "TcpRelay", "run_cli"]

PYTHON = (sys.executable, "-m", "gateway")
CLI_TIMEOUT_S = 20.0


class DemoStepError(GatewayError):
    """A step of the demo did not reach its condition (the message says which)."""


def child_env() -> dict[str, str]:
    """The environment of every child: unbuffered, and this checkout importable."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{root}:{path}".rstrip(":")}


def run_cli(
    args: Sequence[str], *, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run `sealgw ARGS` to completion, or raise DemoStepError with the end of its stderr."""
    try:
        done = subprocess.run(
            [*PYTHON, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
            check=False,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
    except subprocess.TimeoutExpired:
        raise DemoStepError(f"`sealgw {args[0]} {args[1]}` took over {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DemoStepError(f"`sealgw {' '.join(args[:2])}` failed: {' / '.join(tail)}")
    return done


class Child:
    """One long-running child process (its own process group), logging to a file."""

    def __init__(self, name: str, args: Sequence[str], log: Path, *, control: bool = False):
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*PYTHON, *args],
                stdin=subprocess.PIPE if control else subprocess.DEVNULL,
                stdout=subprocess.PIPE if control else out,
                stderr=out,
                env=child_env(),
                start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 (lock-free; see children.py)
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group and reap it."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait; SIGKILL the group if it hangs. Returns the exit code."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
        code = self.process.wait(10)
        self._signal_group(signal.SIGKILL)  # stragglers in the group (socat, ...)
        return code

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


class ProcessSet:
    """Every child the demo started; `close()` stops whatever still runs, newest first."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.children: list[Child] = []

    def start(self, name: str, args: Sequence[str], *, control: bool = False) -> Child:
        child = Child(name, args, self.work / f"{name}.log", control=control)
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                child.stop(timeout=10)
            for stream in (child.process.stdin, child.process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self.children.clear()


class SimControl:
    """`sealgw sim`'s stdout lines (ready, quiet, answers) and its stdin control channel.

    `quiet` is set once the simulator printed `sim quiet` (its scripted activity is over),
    whichever `wait_line` was waiting when the line came.
    """

    def __init__(self, child: Child) -> None:
        if child.process.stdin is None or child.process.stdout is None:
            raise ValueError("the simulator needs control=True")
        self.child = child
        self.quiet = threading.Event()
        self._stdin: IO[bytes] = child.process.stdin
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(
            target=self._read, args=(child.process.stdout,), daemon=True
        )
        self._reader.start()
        self._lock = threading.Lock()

    def wait_line(self, prefix: str, timeout: float) -> str:
        """The next stdout line starting with `prefix` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
            if line.startswith("error "):
                raise DemoStepError(f"simulator: {line}")
        raise DemoStepError(f"simulator did not print {prefix!r} within {timeout:.0f} s")

    def command(self, line: str, timeout: float = 5.0) -> None:
        """Send one control line and wait for its `ok` (DemoStepError on `error`)."""
        with self._lock:
            self._stdin.write(line.encode() + b"\n")
            self._stdin.flush()
            self.wait_line(f"ok {line}", timeout)

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").strip()
            if line.startswith("sim quiet"):
                self.quiet.set()
            self._lines.put(line)


class TcpRelay:
    """A TCP proxy on 127.0.0.1 to the broker, in its own thread; `cut()` makes an outage.

    While cut, every connection is dropped and new ones are closed at once, so the gateway sees
    its broker vanish while clients connected to the broker directly keep their sessions.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.is_cut = False
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> TcpRelay:
        self._thread.start()
        self._call(self._start()).result(5)
        return self

    def cut(self) -> None:
        """Drop every relayed connection and refuse new ones."""
        self._call(self._set_cut(cut=True)).result(5)

    def restore(self) -> None:
        """Relay again."""
        self._call(self._set_cut(cut=False)).result(5)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(TimeoutError, RuntimeError):
            self._call(self._close()).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_cut(self, *, cut: bool) -> None:
        self.is_cut = cut
        if cut:
            for writer in list(self._writers):
                writer.transport.abort()

    async def _close(self) -> None:
        await self._set_cut(cut=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
