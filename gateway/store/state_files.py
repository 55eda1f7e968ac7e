"""Small state and key files: written atomically, and moved aside (not crash-looped on) if corrupt.

Every file the gateway keeps in its state dir besides the SQLite databases goes through
`write_atomic`: a fresh temporary file in the same directory, fsync, rename over the old one,
fsync of the directory. A power cut then leaves either the old file or the new one, never a
truncated mix. `move_aside` renames a file that failed to parse to `NAME.corrupt-STAMP`, so the
evidence is kept and the next start does not trip on it again; the caller records a
`CorruptFile` that the daemon raises as a gateway.state_corrupt alarm (docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["CorruptFile", "move_aside", "write_atomic"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CorruptFile:
    """A state file that could not be read and was moved aside: what it was and what was lost."""

    path: Path
    moved_to: Path | None
    reason: str
    consequence: str


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically and durably (temp file, fsync, rename, fsync dir)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new name in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_aside(path: Path, reason: str, consequence: str) -> CorruptFile:
    """Rename a corrupt file (and its SQLite side files) out of the way; log it at ERROR."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        path.replace(moved)
    except FileNotFoundError:
        moved_to: Path | None = None
    else:
        moved_to = moved
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            side.replace(moved.with_name(moved.name + suffix))
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)
    _log.error("%s is corrupt (%s): moved to %s; %s", path, reason, moved_to, consequence)
    return CorruptFile(path, moved_to, reason, consequence)
