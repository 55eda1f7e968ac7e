"""What this process verified as it stored, kept until the chain walk reads the rows back.

The ingest checks every payload's content against its hash before it stores it; the walk then
re-reads the stored row and checks it again (an edit at rest between the two must be found).
When the walk reads a row this process stored, SHA-256 of the bytes read equal to the digest
noted here proves they are the bytes that were checked, so their content hash, `hash` member
and `prev_hash` are the ones noted: the walk skips parsing and re-canonicalizing them. A row
stored by another master, or pushed out of this bounded record, is checked in full.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RecentlyVerified", "VerifiedRow"]


@dataclass(frozen=True, slots=True)
class VerifiedRow:
    """A stored event as verified at ingest: its payload's SHA-256, hash and prev_hash.

    Only plain events are noted: a checkpoint or an epoch start needs its content read again
    (the walk checks what it claims).
    """

    digest: bytes
    hash: str
    prev_hash: str


class RecentlyVerified:
    """A bounded record of (gateway, seq) -> VerifiedRow, shared by a process's ledgers."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._rows: OrderedDict[tuple[str, int], VerifiedRow] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, gateway: str, seq: int, row: VerifiedRow) -> None:
        with self._lock:
            self._rows[(gateway, seq)] = row
            while len(self._rows) > self.limit:
                self._rows.popitem(last=False)

    def take(self, gateway: str, seq: int) -> VerifiedRow | None:
        """The row noted for (gateway, seq), forgotten here."""
        with self._lock:
            return self._rows.pop((gateway, seq), None)

    def __len__(self) -> int:
        return len(self._rows)
