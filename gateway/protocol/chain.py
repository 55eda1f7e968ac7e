"""Verify a gateway's event hash chain from events as received (any order, duplicates allowed).

Chain epochs (docs/events.md, "Chain epochs"): a `gateway.chain_epoch` event whose prev_hash is
64 zeros starts a new epoch. It is not linked to the event before it by prev_hash; instead its
data names that event (`prev_seq` = seq - 1, `prev_hash` = its hash), which must agree when the
event is held. Its `lost_first_seq`..`lost_last_seq` are announced, like evicted telemetry.
Any other event whose prev_hash is not the previous event's hash is a broken link.

Evictions (docs/events.md, "Evicted telemetry"): a `gateway.telemetry_evicted` event names the
exact runs of seqs it dropped (`runs`) and, per run, the prev_hash of its first event and the hash
of its last (`run_hashes`), so an event kept beside a run still has both links checked. A notice
without `runs` (written before they existed) still excuses `first_seq`..`last_seq`, but it is
reported as weak: a kept audit event inside that range could have been deleted unseen.
`link_ok`, `epoch_start`, `announced_ranges` and `eviction_runs` are the pure rules a master
station applies.
"""

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


EPOCH_TYPE = EventType.GATEWAY_CHAIN_EPOCH.value
EVICTED_TYPE = EventType.GATEWAY_TELEMETRY_EVICTED.value


@dataclass(frozen=True, slots=True)
class EpochStart:
    """What a gateway.chain_epoch event declares about the break it follows."""

    epoch: int
    prev_seq: int
    prev_hash: str
    lost_first_seq: int
    lost_last_seq: int


def epoch_start(obj: Mapping[str, Any]) -> EpochStart | None:
    """The epoch `obj` opens (a well-formed gateway.chain_epoch with a zero prev_hash), or None."""
    if obj.get("type") != EPOCH_TYPE or obj.get("prev_hash") != GENESIS_HASH:
        return None
    data = obj.get("data")
    if not isinstance(data, Mapping):
        return None
    values = [data.get(k) for k in ("epoch", "prev_seq", "lost_first_seq", "lost_last_seq")]
    digest = data.get("prev_hash")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    if not isinstance(digest, str):
        return None
    epoch, prev_seq, first, last = (int(v) for v in values)  # type: ignore[arg-type]
    if prev_seq != int(obj.get("seq", 0)) - 1:
        return None
    return EpochStart(epoch, prev_seq, digest, first, last)


def link_ok(obj: Mapping[str, Any], previous_hash: str | None) -> bool:
    """Whether `obj` links to the event at seq - 1, whose hash is `previous_hash` (None: not held).

    Seq 1 links to 64 zeros. An epoch start links to the hash its data names, checked when the
    previous event is held. Everything else links by prev_hash.
    """
    seq = int(obj.get("seq", 0))
    if seq == 1:
        return obj.get("prev_hash") == GENESIS_HASH
    start = epoch_start(obj)
    if start is not None:
        return previous_hash is None or start.prev_hash == previous_hash
    return previous_hash is None or obj.get("prev_hash") == previous_hash


@dataclass(frozen=True, slots=True)
class EvictedRun:
    """Seqs `first`..`last`, all evicted; `before` is the prev_hash of `first`, `after` the hash
    of `last` (so the kept events on either side stay linked)."""

    first: int
    last: int
    before: str
    after: str


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def eviction_runs(obj: Mapping[str, Any]) -> list[EvictedRun] | None:
    """The exact runs a gateway.telemetry_evicted notice announces; None when it has none.

    A notice with malformed `runs` or `run_hashes` announces nothing (an empty list), so junk
    excuses no missing seq.
    """
    data = obj.get("data")
    if obj.get("type") != EVICTED_TYPE or not isinstance(data, Mapping) or "runs" not in data:
        return None
    runs, hashes = data.get("runs"), data.get("run_hashes")
    if not isinstance(runs, list) or not isinstance(hashes, list) or len(runs) != len(hashes):
        return []
    found: list[EvictedRun] = []
    for run, pair in zip(runs, hashes, strict=True):
        if not (isinstance(run, list) and len(run) == 2 and all(_is_int(v) for v in run)):
            return []
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(h, str) for h in pair)
        ):
            return []
        if not 1 <= run[0] <= run[1]:
            return []
        found.append(EvictedRun(run[0], run[1], pair[0], pair[1]))
    return found


def legacy_eviction(obj: Mapping[str, Any]) -> tuple[int, int] | None:
    """`first_seq`..`last_seq` of a notice without exact runs (a weak announcement), or None."""
    data = obj.get("data")
    if obj.get("type") != EVICTED_TYPE or not isinstance(data, Mapping) or "runs" in data:
        return None
    first, last = data.get("first_seq"), data.get("last_seq")
    if isinstance(first, int) and isinstance(last, int) and _is_int(first) and first <= last:
        return first, last
    return None


def announced_ranges(obj: Mapping[str, Any]) -> list[tuple[int, int]]:
    """Seq ranges an event announces as absent: evicted telemetry, or an epoch's lost history."""
    data = obj.get("data")
    if not isinstance(data, Mapping):
        return []
    runs = eviction_runs(obj)
    if runs is not None:
        return [(run.first, run.last) for run in runs]
    if obj.get("type") == EVICTED_TYPE:
        first, last = data.get("first_seq"), data.get("last_seq")
    elif epoch_start(obj) is not None:
        first, last = data.get("lost_first_seq"), data.get("lost_last_seq")
    else:
        return []
    if isinstance(first, int) and isinstance(last, int) and first <= last:
        return [(first, last)]
    return []


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """One finding: a gap, an edited event, a broken link or conflicting duplicates."""

    gateway: str
    kind: ProblemKind  # GAP, EDITED, BROKEN_LINK or CONFLICT
    seq: int
    detail: str


@dataclass(frozen=True, slots=True)
class WeakNotice:
    """An eviction notice without exact runs: `first`..`last` is excused but not verifiable."""

    gateway: str
    seq: int
    first: int
    last: int


@dataclass(slots=True)
class ChainReport:
    """What verification found, per gateway."""

    events: dict[str, int] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    problems: list[ChainProblem] = field(default_factory=list)
    weak: list[WeakNotice] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def gaps(self) -> list[ChainProblem]:
        return [p for p in self.problems if p.kind is ProblemKind.GAP]


def verify_chain(
    events: Iterable[Mapping[str, Any]],
    *,
    evicted: Mapping[str, set[int]] | None = None,
    start: int = 1,
) -> ChainReport:
    """Check hashes, links and seq continuity per gateway. `evicted` seqs are announced gaps.

    Seqs below `start` are outside the events given (a window of a longer trail) and not checked.
    """
    report = ChainReport()
    by_gateway = _collect(events, report)
    for gateway, chain in sorted(by_gateway.items()):
        announced = _Evicted((evicted or {}).get(gateway, set()), _announced_evictions(chain))
        _verify_one(gateway, chain, announced, report, start)
        _check_run_links(gateway, chain, report)
    return report


class RunLinks:
    """Announced hashes around evicted runs: `ends[last]` = hash of last, `starts[first]` =
    prev_hash of first."""

    __slots__ = ("ends", "starts")

    def __init__(self, notices: Iterable[Mapping[str, Any]]) -> None:
        self.ends: dict[int, str] = {}
        self.starts: dict[int, str] = {}
        for obj in notices:
            for run in eviction_runs(obj) or []:
                self.ends[run.last] = run.after
                self.starts[run.first] = run.before

    def problem(self, obj: Mapping[str, Any], next_held: bool) -> str | None:
        """Why a held event disagrees with the runs evicted beside it, or None."""
        seq = int(obj.get("seq", 0))
        after = self.ends.get(seq - 1)
        if after is not None and epoch_start(obj) is None and obj.get("prev_hash") != after:
            return "prev_hash differs from the announced hash of the evicted event before it"
        before = self.starts.get(seq + 1)
        if before is not None and not next_held and obj.get("hash") != before:
            return "hash differs from the prev_hash announced for the evicted event after it"
        return None


def _check_run_links(
    gateway: str, chain: Mapping[int, Mapping[str, Any]], report: ChainReport
) -> None:
    """Check held events against announced run hashes; list notices without runs as weak."""
    links = RunLinks(chain.values())
    for seq, obj in sorted(chain.items()):
        legacy = legacy_eviction(obj)
        if legacy is not None:
            report.weak.append(WeakNotice(gateway, seq, *legacy))
        if seq - 1 in chain and seq + 1 in chain:
            continue
        detail = links.problem(obj, seq + 1 in chain)
        if detail is not None:
            report.problems.append(ChainProblem(gateway, ProblemKind.BROKEN_LINK, seq, detail))


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
    """The seq ranges evictions and epochs announced (kept as ranges, not sets)."""
    return [
        range(first, last + 1) for obj in chain.values() for first, last in announced_ranges(obj)
    ]


class _Evicted:
    """Membership in explicitly given seqs or announced ranges."""

    def __init__(self, seqs: set[int], ranges: list[range]) -> None:
        self._seqs = seqs
        self._ranges = ranges

    def __contains__(self, seq: object) -> bool:
        return seq in self._seqs or any(seq in span for span in self._ranges)


def _verify_one(
    gateway: str,
    chain: Mapping[int, Mapping[str, Any]],
    evicted: _Evicted,
    report: ChainReport,
    start: int,
) -> None:
    report.events[gateway] = len(chain)
    head = max(chain)
    report.heads[gateway] = head
    for seq in range(min(start, head), head + 1):
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
    if not link_ok(obj, None if previous is None else previous.get("hash")):
        report.problems.append(
            ChainProblem(
                gateway, ProblemKind.BROKEN_LINK, seq, "prev_hash differs from the previous hash"
            )
        )
