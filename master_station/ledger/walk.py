"""The incremental chain check: walk each gateway's stored chain on from its verified head.

For every row past `chain_head` the walk re-reads the stored payload, checks that its content
still gives its stored hash (gateway.protocol.event_payload, exact and fast), that its
`prev_hash` links to the row before (or across an announced eviction run), and that a
checkpoint's claim matches the stored hash it covers; it stops at the first gap or problem and
moves `chain_head` forward (never back). Rows arrive in any order and from any number of
masters: the walk only ever judges a contiguous prefix of what is committed.

Several masters sharing a PostgreSQL ledger each walk the gateways they wrote to. The walk of
one gateway runs under an exclusive hold (`Db.exclusive`, an advisory lock on PostgreSQL), so
each row is judged once and a finding recorded once; a master that finds the hold taken tries
again at its next tick (its own rows may have been committed after the other walk read).
Design: docs/master.md ("Shared subscriptions and gap healing").
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.errors import ProtocolError
from gateway.protocol.chain import EPOCH_TYPE, RunLinks, announced_ranges, link_ok, verify_chain
from gateway.protocol.checkpoint import parse_checkpoint
from gateway.protocol.events import GENESIS_HASH, format_ts
from master_station.ledger.backend import Db, insert_problem
from master_station.ledger.models import Problem, SeqRange, VerifyReport
from master_station.ledger.recent import RecentlyVerified
from master_station.ledger.rows import (
    as_bytes,
    check_row,
    check_runs,
    link_to,
    subtract_ranges,
    to_ranges,
)
from master_station.ledger.schema import UPSERT_HEAD

__all__ = ["CHECKPOINT_TYPE", "EVICTED_TYPE", "ChainWalk", "Walked"]

_log = logging.getLogger(__name__)

EVICTED_TYPE = "gateway.telemetry_evicted"  # the same string as gateway.protocol.chain.EVICTED_TYPE
CHECKPOINT_TYPE = "gateway.checkpoint"
GROUP = 200  # chains per statement
ROWS_PER_QUERY = 4000  # rows per statement, shared among its chains
GAP_ROWS = 2000  # rows after a stopped walk's head looked at for gaps
WALKED_KEPT = 8192  # hashes of walked rows kept for checkpoint claims (older ones: a query)
Head = tuple[int, str]
Finding = tuple[int, str, str]  # (seq, kind, detail)


@dataclass(frozen=True, slots=True)
class Walked:
    """Where a walk left the chain: the head, checkpoints matched, announced absences, and
    whether it passed every stored row (then nothing after the head is missing)."""

    head: Head
    checkpoints: int
    evicted: list[SeqRange]
    at_end: bool
    gaps: list[SeqRange] = field(default_factory=list)  # after the head (within GAP_ROWS rows)


@dataclass(slots=True)
class _Walk:
    """One chain's walk in progress."""

    gateway: str
    start: Head
    notices: list[dict[str, Any]]
    head: Head = (0, GENESIS_HASH)
    stopped: bool = False
    checkpoints: int = 0
    findings: list[Finding] = field(default_factory=list)
    walked: dict[int, str] = field(default_factory=dict)  # seq -> hash of rows just passed
    evicted: list[SeqRange] = field(init=False)
    runs: RunLinks = field(init=False)

    def __post_init__(self) -> None:
        self.head = self.start
        self.evicted = _evicted(self.notices)
        self.runs = RunLinks(self.notices)

    def passed(self, seq: int, stored_hash: str) -> None:
        self.walked[seq] = stored_hash
        if len(self.walked) > WALKED_KEPT:
            for old in list(itertools.islice(self.walked, WALKED_KEPT // 2)):
                del self.walked[old]
        self.head = (seq, stored_hash)

    def result(self, gaps: list[SeqRange]) -> Walked:
        return Walked(self.head, self.checkpoints, self.evicted, not self.stopped, gaps)


class ChainWalk:
    """Chain checks over a `Db`: the incremental walk, the full check, heads and evictions."""

    def __init__(
        self, db: Db, now: Callable[[], datetime], recent: RecentlyVerified | None = None
    ) -> None:
        self._db = db
        self._now = now
        self._recent = recent

    def advance(self, gateway: str) -> Walked:
        """Walk past the verified head while the chain is contiguous and sound."""
        return self.advance_many([gateway])[gateway]

    def advance_many(self, gateways: Iterable[str]) -> dict[str, Walked]:
        """Walk several chains with a few queries per GROUP gateways, not a few per chain."""
        names = sorted(set(gateways))
        walks: dict[str, _Walk] = {}
        for start in range(0, len(names), GROUP):
            group = names[start : start + GROUP]
            heads, notices = self._heads(group), self._notices_of(group)
            for gateway in group:
                walks[gateway] = _Walk(gateway, heads.get(gateway, (0, GENESIS_HASH)),
                                       notices.get(gateway, []))  # fmt: skip
        pending = {gateway: walk.head[0] for gateway, walk in walks.items()}
        while pending:
            group = sorted(pending)[:GROUP]
            per_gateway = max(ROWS_PER_QUERY // len(group), 16)
            rows = self._rows_after(group, pending, per_gateway)
            for gateway in group:
                mine = rows.get(gateway, [])
                walk = walks[gateway]
                for seq, payload, stored_hash in mine:
                    if not self._step(walk, seq, payload, stored_hash):
                        break
                if walk.stopped or len(mine) < per_gateway:
                    del pending[gateway]
                else:
                    pending[gateway] = mine[-1][0]
        self._save_heads(walks.values())
        gaps = self._gaps_after([walk for walk in walks.values() if walk.stopped])
        return {gateway: walk.result(gaps.get(gateway, [])) for gateway, walk in walks.items()}

    def full(self, gateway: str, duplicates: int) -> VerifyReport:
        """Everything again, with gateway.protocol.chain.verify_chain."""
        rows = self._db.query("SELECT payload FROM events WHERE gateway = ?", (gateway,))
        objs = [json.loads(as_bytes(r[0])) for r in rows]
        report = verify_chain(objs) if objs else None
        problems = [] if report is None else report.problems
        gaps = to_ranges(p.seq for p in problems if p.kind == "gap")
        found = tuple(
            Problem(gateway, p.seq, p.kind, None, p.detail, "") for p in problems if p.kind != "gap"
        )
        head_seq = report.heads.get(gateway, 0) if report else 0
        bad = [p.seq for p in problems]
        verified = min(bad) - 1 if bad else head_seq
        by_seq = {int(o["seq"]): str(o["hash"]) for o in objs}
        return VerifyReport(
            gateway=gateway,
            events=len(objs),
            head_seq=head_seq,
            verified_seq=verified,
            verified_hash=by_seq.get(verified, GENESIS_HASH),
            gaps=tuple(gaps),
            problems=found,
            duplicates=duplicates,
            evicted=tuple(self.evicted(gateway)),
        )

    def head(self, gateway: str) -> Head:
        rows = self._db.query(
            "SELECT verified_seq, verified_hash FROM chain_head WHERE gateway = ?", (gateway,)
        )
        return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)

    def evicted(self, gateway: str) -> list[SeqRange]:
        """Seq ranges announced as absent: evicted telemetry and the lost history of epochs."""
        return _evicted(self._notices(gateway))

    # -- private ---------------------------------------------------------------------------

    def _notices(self, gateway: str) -> list[dict[str, Any]]:
        """The eviction notices and epoch starts of `gateway`, parsed."""
        return self._notices_of([gateway]).get(gateway, [])

    def _notices_of(self, gateways: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        marks = ", ".join("?" for _ in gateways)
        rows = self._db.query(
            f"SELECT gateway, payload FROM events WHERE type IN (?, ?) AND gateway IN ({marks})"  # noqa: S608 - placeholders only
            " ORDER BY gateway, seq",
            (EVICTED_TYPE, EPOCH_TYPE, *gateways),
        )
        found: dict[str, list[dict[str, Any]]] = {}
        for gateway, payload in rows:
            found.setdefault(str(gateway), []).append(json.loads(as_bytes(payload)))
        return found

    def _heads(self, gateways: Sequence[str]) -> dict[str, Head]:
        marks = ", ".join("?" for _ in gateways)
        rows = self._db.query(
            "SELECT gateway, verified_seq, verified_hash FROM chain_head"  # noqa: S608 - placeholders only
            f" WHERE gateway IN ({marks})",
            tuple(gateways),
        )
        return {str(gw): (int(seq), str(digest)) for gw, seq, digest in rows}

    def _rows_after(
        self, gateways: Sequence[str], floors: Mapping[str, int], limit: int
    ) -> dict[str, list[tuple[int, bytes, str]]]:
        """Up to `limit` rows past each gateway's floor, in seq order, in one statement."""
        one = (
            "SELECT * FROM (SELECT gateway, seq, payload, hash FROM events WHERE gateway = ?"  # noqa: S608 - placeholders and an int
            f" AND seq > ? ORDER BY seq LIMIT {int(limit)}) AS t{{}}"
        )
        sql = " UNION ALL ".join(one.format(index) for index in range(len(gateways)))
        params = [value for gateway in gateways for value in (gateway, floors[gateway])]
        found: dict[str, list[tuple[int, bytes, str]]] = {}
        for gateway, seq, payload, stored_hash in self._db.query(sql, params):
            found.setdefault(str(gateway), []).append(
                (int(seq), as_bytes(payload), str(stored_hash))
            )
        for rows in found.values():
            rows.sort(key=lambda row: row[0])
        return found

    def _gaps_after(self, walks: Sequence[_Walk]) -> dict[str, list[SeqRange]]:
        """Missing ranges after each stopped walk's head, minus announced absences."""
        found: dict[str, list[SeqRange]] = {}
        for start in range(0, len(walks), GROUP):
            group = walks[start : start + GROUP]
            one = (
                "SELECT * FROM (SELECT gateway, seq FROM events WHERE gateway = ? AND seq > ?"  # noqa: S608 - placeholders and an int
                f" ORDER BY seq LIMIT {GAP_ROWS}) AS t{{}}"
            )
            sql = " UNION ALL ".join(one.format(index) for index in range(len(group)))
            params = [value for walk in group for value in (walk.gateway, walk.head[0])]
            seqs: dict[str, list[int]] = {}
            for gateway, seq in self._db.query(sql, params):
                seqs.setdefault(str(gateway), []).append(int(seq))
            for walk in group:
                found[walk.gateway] = _holes(walk.head[0], sorted(seqs.get(walk.gateway, [])),
                                             walk.evicted)  # fmt: skip
        return found

    def _step(self, walk: _Walk, seq: int, payload: bytes, stored_hash: str) -> bool:
        """Judge the next row of a chain; False once the walk stops (a gap or a finding)."""
        link = link_to(walk.head, seq, walk.evicted)
        if link is None:
            walk.stopped = True  # a gap: stop here until it is filled
            return False
        obj, finding = None, check_runs(walk.runs, walk.head, seq)
        if finding is None:
            link = link or walk.runs.ends.get(seq - 1, "")
            obj, finding = self._check(walk.gateway, seq, payload, stored_hash, link)
        if finding is not None:
            walk.findings.append((seq, *finding))
            walk.stopped = True
            return False
        if obj is not None:
            walk.checkpoints += self._check_checkpoint(
                walk.gateway, obj, walk.walked, walk.findings
            )
        walk.passed(seq, stored_hash)
        return True

    def _check(
        self, gateway: str, seq: int, payload: bytes, stored_hash: str, link: str
    ) -> tuple[Mapping[str, Any] | None, tuple[str, str] | None]:
        """(the event when it had to be read, what is wrong); see ledger/recent.py."""
        known = self._recent.take(gateway, seq) if self._recent is not None else None
        if (
            known is not None
            and known.hash == stored_hash
            and hashlib.sha256(payload).digest() == known.digest
        ):
            if link_ok({"seq": seq, "prev_hash": known.prev_hash}, link or None):
                return None, None
            return None, ("broken_link", "prev_hash differs from the previous event's hash")
        return check_row(payload, stored_hash, link)

    def _check_checkpoint(
        self,
        gateway: str,
        obj: Mapping[str, Any],
        walked: Mapping[int, str],
        findings: list[Finding],
    ) -> int:
        if obj.get("type") != CHECKPOINT_TYPE:
            return 0
        try:
            claim = parse_checkpoint(obj)
        except ProtocolError as exc:
            findings.append((int(obj["seq"]), "checkpoint", f"malformed checkpoint: {exc}"))
            return 0
        covered = walked.get(claim.covers_seq)
        if covered is None:
            rows = self._db.query(
                "SELECT hash FROM events WHERE gateway = ? AND seq = ?",
                (gateway, claim.covers_seq),
            )
            covered = str(rows[0][0]) if rows else None
        if covered is not None and covered != claim.covers_hash:
            detail = f"checkpoint covers seq {claim.covers_seq} with a different hash"
            findings.append((claim.seq, "checkpoint", detail))
            return 0
        return 1

    def _save_heads(self, walks: Iterable[_Walk]) -> None:
        moved = [walk for walk in walks if walk.head != walk.start or walk.findings]
        if not moved:
            return
        now = format_ts(self._now())
        with self._db.transaction() as tx:
            for walk in moved:
                if walk.head != walk.start:
                    tx.execute(UPSERT_HEAD, (walk.gateway, walk.head[0], walk.head[1], now))
                for seq, kind, detail in walk.findings:
                    insert_problem(tx, walk.gateway, kind, detail, seq=seq, received=now)
                    _log.warning("gateway %s: chain problem at seq %d: %s", walk.gateway, seq,
                                 detail)  # fmt: skip


def _evicted(notices: Iterable[Mapping[str, Any]]) -> list[SeqRange]:
    return sorted(span for obj in notices for span in announced_ranges(obj))


def _holes(floor: int, seqs: Sequence[int], evicted: Sequence[SeqRange]) -> list[SeqRange]:
    holes: list[SeqRange] = []
    previous = floor
    for seq in seqs:
        if seq > previous + 1:
            holes.extend(subtract_ranges((previous + 1, seq - 1), evicted))
        previous = seq
    return holes
