"""The running simulator's control channel: one command a line on stdin, one answer on stdout.

    lock SL-0005 tamper           a lock fault (lock_peripheral.FAULTS)
    meter M-645-1 cover_open      a meter fault (meters_sim.FAULTS)

Each command is answered `ok <command>` or `error <command>: <why>`, so a script (the demo,
a test) can drive the bench and know when the fault is in place.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from firmware_sim.locks.world import LockWorld
    from firmware_sim.meters.fleet import MeterSim

_log = logging.getLogger(__name__)


def apply_command(line: str, world: LockWorld, meters: MeterSim | None) -> str:
    """Carry out one control line; return the answer line."""
    words = line.split()
    if not words:
        return ""
    try:
        _dispatch(words, world, meters)
    except (KeyError, ValueError) as exc:
        return f"error {line.strip()}: {exc}"
    return f"ok {line.strip()}"


def _dispatch(words: list[str], world: LockWorld, meters: MeterSim | None) -> None:
    if len(words) != 3:
        raise ValueError("expected: lock SEAL FAULT | meter METER FAULT")
    kind, target, fault = words
    if kind == "lock":
        world.inject(target, fault)
    elif kind == "meter" and meters is not None:
        meters.inject(target, fault)
    else:
        raise ValueError(f"unknown target kind {kind!r}")


async def serve_stdin(world: LockWorld, meters: MeterSim | None) -> None:
    """Read control lines from stdin until it closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (OSError, ValueError) as exc:  # a terminal or /dev/null: no control channel
        _log.debug("no control channel on stdin: %s", exc)
        return
    while line := await reader.readline():
        answer = apply_command(line.decode(errors="replace"), world, meters)
        if answer:
            print(answer, flush=True)
