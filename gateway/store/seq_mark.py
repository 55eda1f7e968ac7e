"""The buffer's durable high-water mark, kept outside the database (`buffer.mark` beside it).

SQLite can lose committed transactions without an error: a garbled WAL frame ends WAL recovery
there, and a deleted or truncated buffer.db opens as an empty database. The mark remembers the
last committed seq and hash, the last seq the broker acknowledged and the chain epoch, so the
buffer can tell at open that history went missing and never hand out a seq twice.

The file holds two fixed-size slots. A write goes to the older slot with `pwrite` and is
`fdatasync`ed before the commit's events are released; a torn write spoils only that slot, and
the reader takes the valid slot with the highest generation. One small synced write per group
commit, no rename, so the figure of `python -m bench pipeline` stays where it was.
Slot layout: `SGWMARK1 <crc32 of the JSON, 8 hex> <JSON>`, padded with spaces, then a newline.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SLOT_SIZE", "MarkFile", "SeqMark", "mark_path"]

log = logging.getLogger(__name__)

SLOT_SIZE = 512
_MAGIC = b"SGWMARK1"


@dataclass(frozen=True, slots=True)
class SeqMark:
    """What the buffer had durably committed, as of the last write."""

    gateway: str
    committed_seq: int
    committed_hash: str
    acked_seq: int = 0
    epoch: int = 0
    generation: int = 0

    def to_json(self) -> dict[str, Any]:
        """The mark's members (docs/events.md, "The durable mark")."""
        return {
            "gateway": self.gateway,
            "committed_seq": self.committed_seq,
            "committed_hash": self.committed_hash,
            "acked_seq": self.acked_seq,
            "epoch": self.epoch,
            "generation": self.generation,
        }


def mark_path(buffer_path: Path) -> Path:
    """`buffer.db` -> `buffer.mark`: outside every `buffer.db*` glob an operator may delete."""
    return buffer_path.with_name(f"{buffer_path.stem}.mark")


class MarkFile:
    """Reads and durably writes the two-slot mark file; used by the buffer's writer thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._generation = 0

    def open(self) -> SeqMark | None:
        """Open (create 0600) the file; the newest valid mark in it, or None."""
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if created:
            _fsync_dir(self.path.parent)
        mark = self._read()
        self._generation = mark.generation if mark else 0
        return mark

    def write(self, mark: SeqMark) -> SeqMark:
        """Write `mark` into the older slot and fdatasync it; return it with its generation."""
        if self._fd is None:
            raise OSError(f"mark file {self.path} is not open")
        self._generation += 1
        stamped = SeqMark(
            mark.gateway,
            mark.committed_seq,
            mark.committed_hash,
            mark.acked_seq,
            mark.epoch,
            self._generation,
        )
        os.pwrite(self._fd, _encode(stamped), (self._generation % 2) * SLOT_SIZE)
        os.fdatasync(self._fd)
        return stamped

    def close(self) -> None:
        """Close the file; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _read(self) -> SeqMark | None:
        assert self._fd is not None
        data = os.pread(self._fd, 2 * SLOT_SIZE, 0)
        found = [m for m in (_decode(data[i : i + SLOT_SIZE]) for i in (0, SLOT_SIZE)) if m]
        if data and not found:
            log.warning("buffer mark %s has no valid slot; treating it as absent", self.path)
        return max(found, key=lambda m: m.generation) if found else None


def _encode(mark: SeqMark) -> bytes:
    body = json.dumps(mark.to_json(), sort_keys=True, separators=(",", ":")).encode()
    line = b"%s %08x %s" % (_MAGIC, zlib.crc32(body), body)
    if len(line) > SLOT_SIZE - 1:
        raise ValueError("buffer mark does not fit its slot")
    return line.ljust(SLOT_SIZE - 1) + b"\n"


def _decode(slot: bytes) -> SeqMark | None:
    """The mark in one slot, or None when the slot is empty, torn or foreign."""
    parts = slot.rstrip(b" \n\x00").split(b" ", 2)
    if len(parts) != 3 or parts[0] != _MAGIC:
        return None
    try:
        if int(parts[1], 16) != zlib.crc32(parts[2]):
            return None
        obj = json.loads(parts[2])
        return SeqMark(
            str(obj["gateway"]),
            int(obj["committed_seq"]),
            str(obj["committed_hash"]),
            int(obj["acked_seq"]),
            int(obj["epoch"]),
            int(obj["generation"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
