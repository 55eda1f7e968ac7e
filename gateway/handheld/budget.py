"""How many refused handheld connections each peer may put in the audit trail.

Pairing attempts and refusals are audited, and an unauthenticated peer can make as many as it
can open connections: unbounded, that fills the event buffer (and the uplink) with one peer's
noise. Each peer (host, or "unix" for the local socket) gets a burst of audited failures, then
one more per refill interval; beyond that its failures are counted, not audited. The count
rides on that peer's next audited failure as `suppressed`, so the trail still says how many.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AUDIT_BURST", "AUDIT_REFILL_S", "FailureBudget"]

_log = logging.getLogger(__name__)

AUDIT_BURST = 20
AUDIT_REFILL_S = 3.0
MAX_PEERS = 1024


@dataclass(slots=True)
class _Peer:
    tokens: float
    at: float
    suppressed: int = 0


class FailureBudget:
    """A token bucket per peer for audited failures; the least recently seen peers are forgotten."""

    def __init__(
        self,
        monotonic: Callable[[], float],
        *,
        burst: int = AUDIT_BURST,
        refill_s: float = AUDIT_REFILL_S,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self._monotonic = monotonic
        self._burst = burst
        self._refill_s = refill_s
        self._max_peers = max_peers
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self.suppressed_total = 0

    def take(self, peer: str) -> int | None:
        """None: over budget, counted not audited. Else how many were suppressed before."""
        now = self._monotonic()
        state = self._peer(peer, now)
        state.tokens = min(self._burst, state.tokens + (now - state.at) / self._refill_s)
        state.at = now
        if state.tokens < 1:
            state.suppressed += 1
            self.suppressed_total += 1
            level = logging.WARNING if state.suppressed == 1 else logging.DEBUG
            _log.log(level, "handheld peer %s: refusals beyond the audit budget are counted", peer)
            return None
        state.tokens -= 1
        suppressed, state.suppressed = state.suppressed, 0
        return suppressed

    def _peer(self, peer: str, now: float) -> _Peer:
        state = self._peers.pop(peer, None)
        if state is None:
            state = _Peer(float(self._burst), now)
            while len(self._peers) >= self._max_peers:
                self._peers.popitem(last=False)
        self._peers[peer] = state
        return state
