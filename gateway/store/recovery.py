"""Telling at open whether the buffer lost committed history, and how to announce it.

The durable mark (gateway.store.seq_mark) says what was committed. When the database holds
less (a WAL frame garbled and recovery stopped there, or buffer.db deleted, truncated or moved
aside as corrupt), seqs must not be handed out again: the buffer continues above the mark and
the first event it commits is a `gateway.chain_epoch` alarm, the genesis of a new chain epoch
(docs/events.md, "Chain epochs").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from gateway.protocol.canonical import JSONValue
from gateway.store.seq_mark import SeqMark

__all__ = ["BreakReason", "ChainBreak", "file_state", "find_break"]


class BreakReason(StrEnum):
    """Why stored history is gone; the `reason` of gateway.chain_epoch."""

    ROLLBACK = "rollback"  # the database opened at an older commit (e.g. WAL recovery stopped)
    MISSING = "missing"  # buffer.db did not exist
    EMPTY = "empty"  # buffer.db had zero length
    CORRUPT = "corrupt"  # buffer.db failed its integrity check and was moved aside


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The mark is ahead of the database: history from `kept_seq + 1` to the mark is gone."""

    reason: BreakReason
    mark: SeqMark
    kept_seq: int

    @property
    def epoch(self) -> int:
        return self.mark.epoch + 1

    def epoch_data(self) -> dict[str, JSONValue]:
        """The data of the gateway.chain_epoch event that starts the new epoch."""
        first, last = self.kept_seq + 1, self.mark.committed_seq
        return {
            "epoch": self.epoch,
            "reason": self.reason.value,
            "prev_seq": self.mark.committed_seq,
            "prev_hash": self.mark.committed_hash,
            "lost_first_seq": first,
            "lost_last_seq": last,
            "lost_count": max(0, last - first + 1),
            "acked_seq": self.mark.acked_seq,
        }


def file_state(path: Path) -> BreakReason:
    """How buffer.db looks before it is opened: missing, empty, or there (ROLLBACK if less)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return BreakReason.MISSING
    return BreakReason.EMPTY if size == 0 else BreakReason.ROLLBACK


def find_break(
    head: tuple[int, str], mark: SeqMark | None, state: BreakReason
) -> ChainBreak | None:
    """A ChainBreak when the database's head is behind (or beside) what the mark recorded."""
    if mark is None or mark.committed_seq == 0 or head[0] > mark.committed_seq:
        return None
    if head == (mark.committed_seq, mark.committed_hash):
        return None
    kept = head[0] if head[0] < mark.committed_seq else mark.committed_seq
    return ChainBreak(state, mark, kept)
