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
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.errors import ProtocolError
from gateway.protocol.chain import EPOCH_TYPE, RunLinks, announced_ranges, link_ok, verify_chain
from gateway.protocol.checkpoint import parse_checkpoint
from gateway.protocol.events import GENESIS_HASH, format_ts
from master_station.ledger.backend import Db, insert_problem
from master_station.ledger.models import Problem, SeqRange, VerifyReport
from master_station.ledger.recent import RecentlyVerified
from master_station.ledger.rows import as_bytes, check_row, check_runs, link_to, to_ranges
from master_station.ledger.schema import UPSERT_HEAD

__all__ = ["CHECKPOINT_TYPE", "EVICTED_TYPE", "ChainWalk", "Walked"]

_log = logging.getLogger(__name__)

EVICTED_TYPE = "gateway.telemetry_evicted"  # the same string as gateway.protocol.chain.EVICTED_TYPE
CHECKPOINT_TYPE = "gateway.checkpoint"
VERIFY_BATCH = 1000
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
        start = head = self.head(gateway)
        notices = self._notices(gateway)
        evicted = _evicted(notices)
        runs = RunLinks(notices)
        findings: list[Finding] = []
        checkpoints = 0
        walked: dict[int, str] = {}  # seq -> hash of the rows this walk passed
        for seq, payload, stored_hash in self._rows_after(gateway, head[0]):
            link = link_to(head, seq, evicted)
            if link is None:
                self._save_head(gateway, start, head, findings)
                return Walked(head, checkpoints, evicted, at_end=False)
            obj, finding = None, check_runs(runs, head, seq)
            if finding is None:
                obj, finding = self._check(gateway, seq, payload, stored_hash,
                                           link or runs.ends.get(seq - 1, ""))  # fmt: skip
            if finding is not None:
                findings.append((seq, *finding))
                self._save_head(gateway, start, head, findings)
                return Walked(head, checkpoints, evicted, at_end=False)
            if obj is not None:
                checkpoints += self._check_checkpoint(gateway, obj, walked, findings)
            walked[seq] = stored_hash
            head = (seq, stored_hash)
        self._save_head(gateway, start, head, findings)
        return Walked(head, checkpoints, evicted, at_end=True)

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
        rows = self._db.query(
            "SELECT payload FROM events WHERE gateway = ? AND type IN (?, ?)",
            (gateway, EVICTED_TYPE, EPOCH_TYPE),
        )
        return [json.loads(as_bytes(payload)) for (payload,) in rows]

    def _rows_after(self, gateway: str, seq: int) -> Iterator[tuple[int, bytes, str]]:
        while True:
            rows = self._db.query(
                "SELECT seq, payload, hash FROM events WHERE gateway = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (gateway, seq, VERIFY_BATCH),
            )
            for row in rows:
                yield int(row[0]), as_bytes(row[1]), str(row[2])
            if len(rows) < VERIFY_BATCH:
                return
            seq = int(rows[-1][0])

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

    def _save_head(self, gateway: str, start: Head, head: Head, findings: list[Finding]) -> None:
        if head == start and not findings:
            return
        now = format_ts(self._now())
        with self._db.transaction() as tx:
            if head != start:
                tx.execute(UPSERT_HEAD, (gateway, head[0], head[1], now))
            for seq, kind, detail in findings:
                insert_problem(tx, gateway, kind, detail, seq=seq, received=now)
                _log.warning("gateway %s: chain problem at seq %d: %s", gateway, seq, detail)


def _evicted(notices: Iterable[Mapping[str, Any]]) -> list[SeqRange]:
    return sorted(span for obj in notices for span in announced_ranges(obj))
