"""verify_chain for inputs with huge holes: a day's dump of an old gateway, or a corrupt seq.

gateway.protocol.chain.verify_chain walks every seq from 1 to the head and reports each missing one,
which is right for a ledger and ruinous for a file that starts at seq 40,000,000 or holds one
event whose seq was edited to 10**15. This splits each gateway's events at runs of more than
MAX_ENUMERATED_GAP missing seqs, runs verify_chain on every window, and returns those runs as
ranges instead (less whatever `gateway.telemetry_evicted` and `gateway.chain_epoch` events
announce).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.protocol.chain import ChainReport, announced_ranges, verify_chain

__all__ = ["MAX_ENUMERATED_GAP", "SeqRange", "verify_sparse_chain"]

MAX_ENUMERATED_GAP = 10_000

EventObj = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SeqRange:
    """Missing seqs `first`..`last` (inclusive) of one gateway."""

    gateway: str
    first: int
    last: int


def verify_sparse_chain(events: Iterable[EventObj]) -> tuple[ChainReport, list[SeqRange]]:
    """verify_chain per window; runs of more than MAX_ENUMERATED_GAP missing seqs as ranges."""
    combined = ChainReport()
    wide: list[SeqRange] = []
    for gateway, group in sorted(_by_gateway(events).items()):
        announced = _announced(group)
        for (low, high), skip_leading in _windows(group):
            window = [obj for obj in group if low <= obj["seq"] <= high]
            start = low if skip_leading else 1
            evicted = _clip(announced, start, high)
            _merge(combined, verify_chain(window, evicted={gateway: evicted}, start=start))
        for first, last in _wide_gaps(group):
            wide.extend(SeqRange(gateway, a, b) for a, b in _subtract(first, last, announced))
    return combined, wide


def _by_gateway(events: Iterable[EventObj]) -> dict[str, list[EventObj]]:
    groups: dict[str, list[EventObj]] = {}
    for obj in events:
        groups.setdefault(str(obj["gateway"]), []).append(obj)
    return groups


def _windows(group: Sequence[EventObj]) -> Iterator[tuple[tuple[int, int], bool]]:
    """((low, high), skip the seqs before low) for each run of seqs without a wide gap."""
    seqs = sorted({int(obj["seq"]) for obj in group})
    low = previous = seqs[0]
    for seq in seqs[1:]:
        if seq - previous - 1 > MAX_ENUMERATED_GAP:
            yield (low, previous), _wide(low)
            low = seq
        previous = seq
    yield (low, previous), _wide(low)


def _wide_gaps(group: Sequence[EventObj]) -> Iterator[tuple[int, int]]:
    previous = 0
    for seq in sorted({int(obj["seq"]) for obj in group}):
        if seq - previous - 1 > MAX_ENUMERATED_GAP:
            yield previous + 1, seq - 1
        previous = seq


def _wide(low: int) -> bool:
    return low - 1 > MAX_ENUMERATED_GAP


def _announced(group: Iterable[EventObj]) -> list[tuple[int, int]]:
    """Ranges announced absent: evicted telemetry and the lost history of chain epochs."""
    return sorted(span for obj in group for span in announced_ranges(obj))


def _clip(ranges: Iterable[tuple[int, int]], low: int, high: int) -> set[int]:
    seqs: set[int] = set()
    for first, last in ranges:
        seqs.update(range(max(first, low), min(last, high) + 1))
    return seqs


def _subtract(
    first: int, last: int, ranges: Sequence[tuple[int, int]]
) -> Iterator[tuple[int, int]]:
    """The parts of first..last that no range covers."""
    start = first
    for low, high in ranges:
        if high < start or low > last:
            continue
        if low > start:
            yield start, low - 1
        start = max(start, high + 1)
    if start <= last:
        yield start, last


def _merge(into: ChainReport, part: ChainReport) -> None:
    for gateway, count in part.events.items():
        into.events[gateway] = into.events.get(gateway, 0) + count
        into.heads[gateway] = max(into.heads.get(gateway, 0), part.heads[gateway])
    into.duplicates += part.duplicates
    into.problems.extend(part.problems)
    into.weak.extend(part.weak)
