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

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from gateway.errors import ProtocolError
from gateway.protocol.chain import EPOCH_TYPE, RunLinks, announced_ranges, verify_chain
from gateway.protocol.checkpoint import parse_checkpoint
from gateway.protocol.events import GENESIS_HASH, format_ts
from master_station.ledger.backend import Db, insert_problem
from master_station.ledger.models import Problem, SeqRange, VerifyReport
from master_station.ledger.rows import as_bytes, check_row, check_runs, link_to, to_ranges
from master_station.ledger.schema import UPSERT_HEAD

__all__ = ["CHECKPOINT_TYPE", "EVICTED_TYPE", "ChainWalk"]

_log = logging.getLogger(__name__)

EVICTED_TYPE = "gateway.telemetry_evicted"  # the same string as gateway.protocol.chain.EVICTED_TYPE
CHECKPOINT_TYPE = "gateway.checkpoint"
VERIFY_BATCH = 1000
Head = tuple[int, str]
Finding = tuple[int, str, str]  # (seq, kind, detail)


class ChainWalk:
    """Chain checks over a `Db`: the incremental walk, the full check, heads and evictions."""

    def __init__(self, db: Db, now: Callable[[], datetime]) -> None:
        self._db = db
        self._now = now

    def advance(self, gateway: str) -> tuple[Head, int]:
        """Walk past the verified head while the chain is contiguous and sound.

        Returns the new head and the checkpoints whose claims matched on the way.
        """
        start = head = self.head(gateway)
        evicted = self.evicted(gateway)
        runs = RunLinks(self._notices(gateway))
        findings: list[Finding] = []
        checkpoints = 0
        for seq, payload, stored_hash in self._rows_after(gateway, head[0]):
            link = link_to(head, seq, evicted)
            if link is None:
                break  # a gap: stop here until it is filled
            obj, finding = None, check_runs(runs, head, seq)
            if finding is None:
                obj, finding = check_row(payload, stored_hash, link or runs.ends.get(seq - 1, ""))
            if finding is not None or obj is None:
                findings.append((seq, *(finding or ("edited", "not an event"))))
                break
            checkpoints += self._check_checkpoint(gateway, obj, findings)
            head = (seq, stored_hash)
        self._save_head(gateway, start, head, findings)
        return head, checkpoints

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
        return sorted(span for obj in self._notices(gateway) for span in announced_ranges(obj))

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

    def _check_checkpoint(
        self, gateway: str, obj: Mapping[str, Any], findings: list[Finding]
    ) -> int:
        if obj.get("type") != CHECKPOINT_TYPE:
            return 0
        try:
            claim = parse_checkpoint(obj)
        except ProtocolError as exc:
            findings.append((int(obj["seq"]), "checkpoint", f"malformed checkpoint: {exc}"))
            return 0
        rows = self._db.query(
            "SELECT hash FROM events WHERE gateway = ? AND seq = ?", (gateway, claim.covers_seq)
        )
        if rows and str(rows[0][0]) != claim.covers_hash:
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
