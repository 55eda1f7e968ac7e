"""Verify a gateway's event hash chain from events as received (any order, duplicates allowed)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.protocol.events import GENESIS_HASH, EventType, event_hash


class ProblemKind(StrEnum):
    """What an audit found; the values are the `kind` strings of reports and the ledger."""

    GAP = "gap"
    EDITED = "edited"
    BROKEN_LINK = "broken_link"
    CONFLICT = "conflict"
    BAD_CHECKPOINT = "bad_checkpoint"
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """One finding: a gap, an edited event, a broken link or conflicting duplicates."""

    gateway: str
    kind: ProblemKind  # GAP, EDITED, BROKEN_LINK or CONFLICT
    seq: int
    detail: str


@dataclass(slots=True)
class ChainReport:
    """What verification found, per gateway."""

    events: dict[str, int] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def gaps(self) -> list[ChainProblem]:
        return [p for p in self.problems if p.kind is ProblemKind.GAP]


def verify_chain(
    events: Iterable[Mapping[str, Any]], *, evicted: Mapping[str, set[int]] | None = None
) -> ChainReport:
    """Check hashes, links and seq continuity per gateway. `evicted` seqs are announced gaps."""
    report = ChainReport()
    by_gateway = _collect(events, report)
    for gateway, chain in sorted(by_gateway.items()):
        announced = _Evicted((evicted or {}).get(gateway, set()), _announced_evictions(chain))
        _verify_one(gateway, chain, announced, report)
    return report


def _collect(
    events: Iterable[Mapping[str, Any]], report: ChainReport
) -> dict[str, dict[int, Mapping[str, Any]]]:
    by_gateway: dict[str, dict[int, Mapping[str, Any]]] = {}
    for obj in events:
        gateway, seq = str(obj.get("gateway")), int(obj.get("seq", 0))
        chain = by_gateway.setdefault(gateway, {})
        known = chain.get(seq)
        if known is None:
            chain[seq] = obj
        elif known.get("hash") == obj.get("hash") and known.get("id") == obj.get("id"):
            report.duplicates += 1
        else:
            report.problems.append(
                ChainProblem(
                    gateway, ProblemKind.CONFLICT, seq, "two different events share this seq"
                )
            )
    return by_gateway


def _announced_evictions(chain: Mapping[int, Mapping[str, Any]]) -> list[range]:
    """The seq ranges gateway.telemetry_evicted events announced (kept as ranges, not sets)."""
    ranges = []
    for obj in chain.values():
        if obj.get("type") == EventType.GATEWAY_TELEMETRY_EVICTED:
            data = obj.get("data") or {}
            ranges.append(range(int(data.get("first_seq", 0)), int(data.get("last_seq", -1)) + 1))
    return ranges


class _Evicted:
    """Membership in explicitly given seqs or announced ranges."""

    def __init__(self, seqs: set[int], ranges: list[range]) -> None:
        self._seqs = seqs
        self._ranges = ranges

    def __contains__(self, seq: object) -> bool:
        return seq in self._seqs or any(seq in span for span in self._ranges)


def _verify_one(
    gateway: str, chain: Mapping[int, Mapping[str, Any]], evicted: _Evicted, report: ChainReport
) -> None:
    report.events[gateway] = len(chain)
    head = max(chain)
    report.heads[gateway] = head
    first = 1 if 1 in chain or 1 not in evicted else min(chain)
    for seq in range(first, head + 1):
        obj = chain.get(seq)
        if obj is None:
            if seq not in evicted:
                report.problems.append(ChainProblem(gateway, ProblemKind.GAP, seq, "missing"))
            continue
        _check_event(gateway, seq, obj, chain.get(seq - 1), report)


def _check_event(
    gateway: str,
    seq: int,
    obj: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    report: ChainReport,
) -> None:
    if event_hash(obj) != obj.get("hash"):
        report.problems.append(
            ChainProblem(gateway, ProblemKind.EDITED, seq, "hash does not match content")
        )
        return
    expected_prev = GENESIS_HASH if seq == 1 else (previous or {}).get("hash")
    if expected_prev is not None and obj.get("prev_hash") != expected_prev:
        report.problems.append(
            ChainProblem(
                gateway, ProblemKind.BROKEN_LINK, seq, "prev_hash differs from the previous hash"
            )
        )
