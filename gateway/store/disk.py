"""Disk space for the buffer: telling a full disk from the size cap, and the reserve file.

A full disk (ENOSPC, which SQLite reports as SQLITE_FULL) leaves no room even for the writes
that make room: deleting rows and checkpointing the WAL write pages too. So the buffer keeps a
small preallocated reserve file (`buffer.reserve` beside `buffer.db`) and deletes it the
moment the disk fills up, which gives the bookkeeping the space it needs; it is made again once
the disk has room.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path

__all__ = ["ReserveFile", "disk_free", "is_full_error"]

log = logging.getLogger(__name__)


def is_full_error(exc: BaseException) -> bool:
    """SQLITE_FULL from SQLite, or ENOSPC/EDQUOT from the operating system."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_free(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of `directory`."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


class ReserveFile:
    """A preallocated file of `size` bytes, given up when the disk is full."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        return self.path.exists()

    def ensure(self) -> bool:
        """Create the reserve when the disk has room for it (four times over); True if held."""
        if self.held:
            return True
        try:
            if disk_free(self.path.parent) < 4 * self.size:
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("buffer reserve %s not made: %s", self.path, exc)
            self.path.unlink(missing_ok=True)
            return False
        return True

    def release(self) -> bool:
        """Delete the reserve to free its space; True if there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True
