"""The gateway, measured from outside: `sealgw probe NAME --json` as a child process.

The bench imports nothing of the gateway but its protocol. What it times inside the gateway
(decisions, buffer commits, uplink drains, lock operations, read plans) is timed by the
gateway's own probes (gateway/probe/, docs/probe.md); the bench starts them as subprocesses
of this checkout's gateway and reads their JSON. A probe dies with the bench
(firmware_sim/children.py), so a bench stopped by a signal leaves none behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from firmware_sim.children import die_with_parent
from firmware_sim.procs import child_env

__all__ = [
    "ProbeError",
    "ProbeSession",
    "probe",
    "probe_session",
    "run_probe",
]

TIMEOUT_S = 900.0
STOP_S = 20.0


class ProbeError(RuntimeError):
    """A probe failed: its exit status and the end of what it wrote to stderr."""


def probe_argv(name: str, args: Sequence[str]) -> list[str]:
    """`python -m gateway probe NAME ARGS --json`."""
    return [sys.executable, "-m", "gateway", "probe", name, *args, "--json"]


def run_probe(name: str, *args: object, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """Run one probe to its end; its JSON object. ProbeError when it fails."""
    done = subprocess.run(
        probe_argv(name, [str(arg) for arg in args]),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=die_with_parent(),
    )
    if done.returncode != 0:
        raise ProbeError(f"probe {name} exited {done.returncode}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def probe(name: str, *args: object) -> dict[str, Any]:
    """`run_probe` for a bench whose event loop must keep running (it serves the device)."""
    process = await asyncio.create_subprocess_exec(
        *probe_argv(name, [str(arg) for arg in args]),
        env=child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent(),
    )
    try:
        async with asyncio.timeout(TIMEOUT_S):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise ProbeError(f"probe {name} exited {process.returncode}: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


class ProbeSession:
    """A running probe that reports phases as JSON lines and reads lines on stdin."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    async def phase(self, wanted: str) -> dict[str, Any]:
        """The next line, which must be phase `wanted`. ProbeError if the probe ends first."""
        assert self.process.stdout is not None
        async with asyncio.timeout(TIMEOUT_S):
            raw = await self.process.stdout.readline()
        if not raw:
            raise ProbeError(f"probe {self.name} ended before {wanted}: {await self._stderr()}")
        line: dict[str, Any] = json.loads(raw)
        if line.get("phase") != wanted:
            raise ProbeError(f"probe {self.name}: expected phase {wanted}, got {line}")
        return line

    async def send(self, line: str) -> None:
        """One line to the probe's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def finish(self) -> dict[str, Any]:
        """Close stdin, wait for the probe's final JSON object and its exit."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        async with asyncio.timeout(TIMEOUT_S):
            rest = await self.process.stdout.read()
            code = await self.process.wait()
        if code != 0:
            raise ProbeError(f"probe {self.name} exited {code}: {await self._stderr()}")
        result: dict[str, Any] = json.loads(rest.decode().strip().splitlines()[-1])
        return result

    async def _stderr(self) -> str:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_S):
                await self.process.wait()
        return self.log.read_text(errors="replace")[-2000:]


@contextlib.asynccontextmanager
async def probe_session(name: str, log: Path, *args: object) -> AsyncIterator[ProbeSession]:
    """Start a probe (stdin and stdout piped, stderr to `log`); stopped by SIGTERM, then SIGKILL."""
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            *probe_argv(name, [str(arg) for arg in args]),
            env=child_env(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            limit=1 << 24,
            preexec_fn=die_with_parent(),
        )
    try:
        yield ProbeSession(name, process, log)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(STOP_S):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
