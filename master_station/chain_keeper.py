"""The listener's chain keeper: verifies the chains that moved, off the ingest path, and heals gaps.

It runs on its own thread with its own ledger connection, so the ledger writer never waits for
a chain walk: the writer commits a batch, acknowledges it and names the gateways it touched;
every `tick_s` the keeper walks those chains (`Ledger.check_chain`), and asks a gateway for
any range missing longer than `gap_grace_s` (`cmd/resend`, at most every
`resend_interval_s` per range, coordinated with other masters by `Ledger.claim_resend`).

A gateway stays on the keeper's list until a walk of it ran after the keeper heard of it: when
another master holds the gateway's walk (a shared PostgreSQL ledger), that walk may have read
before this master's rows were committed, so the keeper tries again at its next tick. A
gateway with open gaps stays too, until they close. Details: docs/master.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.errors import ProtocolError
from gateway.protocol.canonical import canonical_bytes
from gateway.protocol.strict_json import load_object
from master_station.ledger.models import Ledger, LedgerError, SeqRange

__all__ = ["MAX_RANGES_PER_TICK", "ChainKeeper", "CommandSigner", "HealingPolicy", "Publish"]

_log = logging.getLogger(__name__)

MAX_RANGES_PER_TICK = 16

CommandSigner = Callable[[str, str, Mapping[str, Any], int], bytes]
"""(name, gateway, args, lifetime_s) -> a signed command document (MasterAuthority.sign_command)."""
Publish = Callable[[str, bytes, Properties], None]
"""(topic, payload, MQTT 5 properties): publish at QoS 1."""
Bump = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class HealingPolicy:
    """When and how to ask gateways for what is missing."""

    enabled: bool
    client_id: str
    topic_root: str
    gap_grace_s: float = 10.0
    resend_interval_s: float = 30.0
    signer: CommandSigner | None = None

    def response_topic(self, gateway: str) -> str:
        """Where gateways answer this master's `cmd/resend` (inside the gateway's subtree)."""
        return f"{self.topic_root}/{gateway}/reply/resend/{self.client_id}"


@dataclass(slots=True)
class _Pending:
    """A resend request waiting for its reply."""

    gateway: str
    span: SeqRange


class ChainKeeper:
    """Walks the chains that moved and asks for missing ranges; `run` is a thread's target."""

    def __init__(
        self,
        ledger: Ledger,
        policy: HealingPolicy,
        publish: Publish,
        bump: Bump,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.policy = policy
        self._publish = publish
        self._bump = bump
        self._clock = clock
        self._lock = threading.Lock()
        self._moved: set[str] = set()
        self._unchecked: set[str] = set()  # walks another master held: try again
        self._gap_seen: dict[str, dict[int, float]] = {}
        self._gone: dict[str, list[SeqRange]] = {}
        self._pending: dict[str, _Pending] = {}
        self._request_counter = 0

    def moved(self, gateways: Iterable[str]) -> None:
        """Note gateways whose events were just committed (any thread)."""
        with self._lock:
            self._moved.update(gateways)

    def run(self, stop: threading.Event, tick_s: float) -> None:
        """Tick until `stop` is set, then check once more without asking for anything."""
        while not stop.wait(tick_s):
            self.tick()
        self.tick(heal=False)

    def tick(self, *, heal: bool = True) -> None:
        """Walk the chains that moved (and those with open gaps); ask for due ranges."""
        try:
            self._tick(heal)
        except LedgerError as exc:
            _log.warning("chain check failed: %s", exc)
        except Exception:  # noqa: BLE001 - the keeper outlives a failed check
            _log.exception("chain check failed")

    def on_reply(self, gateway: str, payload: bytes, correlation: bytes | None) -> None:
        """A gateway's answer to `cmd/resend` (from the listener's writer thread)."""
        reply = load_object(payload, "resend reply")
        request_id = reply.get("id")
        if request_id is None and correlation:  # a signed request carries no top-level id
            request_id = correlation.decode(errors="replace")
        with self._lock:
            pending = self._pending.pop(str(request_id), None) if request_id is not None else None
        self._bump("resend_replies", 1)
        result = reply.get("result") if isinstance(reply.get("result"), dict) else {}
        requeued = result.get("requeued") if isinstance(result, dict) else None
        if isinstance(requeued, int):
            self._bump("resend_requeued", requeued)
        if not reply.get("ok"):
            _log.warning("gateway %s refused cmd/resend: %s", gateway, reply.get("error"))
            return
        if pending is not None and isinstance(result, dict):
            self._note_gone(pending, result.get("first_available_seq"))

    # -- private ---------------------------------------------------------------------------

    def _tick(self, heal: bool) -> None:
        with self._lock:
            watched = self._moved | self._unchecked
            watched |= {gw for gw, seen in self._gap_seen.items() if seen}
            self._moved = set()
        now = self._clock()
        checked = self.ledger.check_chains(sorted(watched)) if watched else {}
        for gateway, gaps in checked.items():
            if gaps is None:
                with self._lock:
                    self._unchecked.add(gateway)
                continue
            with self._lock:
                self._unchecked.discard(gateway)
            self._bump("chain_checks", 1)
            due = self._due(gateway, gaps, now)
            if heal and self.policy.enabled:
                for span in due[:MAX_RANGES_PER_TICK]:
                    self._request_resend(gateway, span)

    def _due(self, gateway: str, gaps: Iterable[SeqRange], now: float) -> list[SeqRange]:
        """Gaps open longer than the grace period, minus ranges the gateway no longer has."""
        with self._lock:
            gone = list(self._gone.get(gateway, []))
            seen = self._gap_seen.setdefault(gateway, {})
        open_gaps = [g for gap in gaps for g in _minus(gap, gone)]
        starts = {span[0] for span in open_gaps}
        for start in list(seen):
            if start not in starts:
                del seen[start]
        for start in starts:
            seen.setdefault(start, now)
        grace = self.policy.gap_grace_s
        return [span for span in open_gaps if now - seen[span[0]] >= grace]

    def _request_resend(self, gateway: str, span: SeqRange) -> None:
        policy = self.policy
        claimed = self.ledger.claim_resend(gateway, span, requester=policy.client_id,
                                           now=time.time(),
                                           min_interval_s=policy.resend_interval_s)  # fmt: skip
        if not claimed:
            return
        with self._lock:
            self._request_counter += 1
            request_id = f"{policy.client_id}-{self._request_counter}"
            self._pending[request_id] = _Pending(gateway, span)
        body: dict[str, Any] = {"from_seq": span[0], "to_seq": span[1], "id": request_id}
        payload = canonical_bytes(body)
        if policy.signer is not None:  # unsigned, gateways answer verifier_missing
            payload = policy.signer("resend", gateway, body, max(60, int(policy.resend_interval_s)))
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = policy.response_topic(gateway)
        props.CorrelationData = request_id.encode()
        props.MessageExpiryInterval = max(1, int(policy.resend_interval_s))
        self._publish(f"{policy.topic_root}/{gateway}/cmd/resend", payload, props)
        self._bump("resend_requests", 1)
        _log.info("gateway %s: asked to resend seq %d..%d", gateway, *span)

    def _note_gone(self, pending: _Pending, first_available: Any) -> None:
        """Seqs below the first the gateway still holds are gone: record once, stop asking."""
        lo, hi = pending.span
        try:
            last_gone = hi if first_available is None else min(hi, int(first_available) - 1)
        except (TypeError, ValueError):
            raise ProtocolError(f"first_available_seq {first_available!r} is not a seq") from None
        if last_gone < lo:
            return
        with self._lock:
            self._gone.setdefault(pending.gateway, []).append((lo, last_gone))
        detail = f"gateway no longer holds seq {lo}..{last_gone}"
        self.ledger.record_problem(pending.gateway, "gone", detail, seq=lo)
        _log.warning("gateway %s: %s", pending.gateway, detail)


def _minus(span: SeqRange, gone: Iterable[SeqRange]) -> list[SeqRange]:
    pieces = [span]
    for lo, hi in gone:
        pieces = [
            piece
            for a, b in pieces
            for piece in ((a, min(b, lo - 1)), (max(a, hi + 1), b))
            if piece[0] <= piece[1]
        ]
    return pieces
