"""The lock's log ring: indexes never reused, security entries kept until they were fetched.

docs/protocol.md, section 8. The ring overwrites its oldest entry when full, except an
unfetched security entry (TAMPER_WIRE_CUT, TAMPER_SHELL_OPEN): while the oldest entry is one,
the ring is *blocked* and refuses new entries, and the lock refuses what would need one.
"Fetched" means the entry went out in a LOG_ENTRIES answer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from gateway.protocol.seal_frames import LogEntry, LogEvent

__all__ = ["SECURITY_EVENTS", "LogRing"]

SECURITY_EVENTS = frozenset({LogEvent.TAMPER_WIRE_CUT, LogEvent.TAMPER_SHELL_OPEN})


class LogRing:
    """Entries oldest first, the next index, and the indexes of unfetched security entries."""

    def __init__(
        self,
        capacity: int,
        entries: Iterable[LogEntry] = (),
        next_index: int = 1,
        unfetched: Iterable[int] = (),
    ) -> None:
        self.capacity = capacity
        self._entries: deque[LogEntry] = deque(entries, maxlen=capacity)
        self.next_index = next_index
        self.unfetched: set[int] = set(unfetched)

    @property
    def head(self) -> int:
        """Index of the newest entry (0 when the log is empty)."""
        return self.next_index - 1

    @property
    def oldest(self) -> int:
        """Index of the oldest entry still held (0 when the log is empty)."""
        return self._entries[0].index if self._entries else 0

    @property
    def blocked(self) -> bool:
        """True when the next append would overwrite an unfetched security entry."""
        full = len(self._entries) == self.capacity
        return full and self._entries[0].index in self.unfetched

    def entries(self) -> tuple[LogEntry, ...]:
        """Everything held, oldest first."""
        return tuple(self._entries)

    def append(self, entry: LogEntry) -> None:
        """Add the entry `next_index` (the caller checked `blocked`)."""
        if self.blocked:
            raise RuntimeError("log ring is blocked by unfetched security entries")
        self._entries.append(entry)
        self.next_index = entry.index + 1
        if entry.event in SECURITY_EVENTS:
            self.unfetched.add(entry.index)
        self.unfetched &= {e.index for e in self._entries}

    def fetch(self, after: int, count: int) -> tuple[LogEntry, ...]:
        """Entries with index > after, oldest first, at most `count`; they count as fetched."""
        batch = tuple(e for e in self._entries if e.index > after)[:count]
        self.unfetched -= {e.index for e in batch}
        return batch
