"""Signed checkpoints of the event chain: the gateway vouches for (seq, hash) with its identity.

The checkpoint format itself (pure, shared with the master) is gateway.protocol.checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import GatewayError
from gateway.protocol.checkpoint import CHECKPOINT_TYPE, DEFAULT_INTERVAL_S, checkpoint_data
from gateway.protocol.clock import Clock
from gateway.protocol.events import Emit, Event, EventDraft, Priority

__all__ = ["Checkpointer"]

_log = logging.getLogger(__name__)

HeadProvider = Callable[[], tuple[int, str]]


class Checkpointer:
    """Commits a signed `gateway.checkpoint` every `interval_s`, and once more at shutdown."""

    def __init__(
        self,
        identity: Ed25519PrivateKey,
        gateway_id: str,
        head: HeadProvider,
        emit: Emit,
        *,
        clock: Clock,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("checkpoint interval must be positive")
        self._identity = identity
        self._gateway_id = gateway_id
        self._head = head
        self._emit = emit
        self._clock = clock
        self.interval_s = interval_s
        self._lock = asyncio.Lock()
        self._last: Event | None = None
        self._last_covers = 0
        self._failures = 0

    @property
    def last(self) -> Event | None:
        """The last checkpoint event this checkpointer committed, or None."""
        return self._last

    async def run(self) -> None:
        """Checkpoint every `interval_s` until cancelled; storage failures are logged, not fatal."""
        while True:
            await self._clock.sleep(self.interval_s)
            try:
                await self.checkpoint_now()
            except GatewayError as exc:
                self._failures += 1
                level = logging.WARNING if self._failures == 1 else logging.DEBUG
                _log.log(level, "checkpoint not committed (%d so far): %s", self._failures, exc)

    async def checkpoint_now(self) -> Event | None:
        """Commit a checkpoint of the current head; None when nothing new was committed."""
        async with self._lock:
            head = self._head()
            if self._idle(head):
                return None
            moment = self._clock.now()
            data = checkpoint_data(self._identity, self._gateway_id, head, moment)
            draft = EventDraft(CHECKPOINT_TYPE, self._gateway_id, data, Priority.AUDIT, moment)
            event = await self._emit(draft)
            self._last, self._last_covers, self._failures = event, head[0], 0
            _log.debug("checkpoint seq %d covers seq %d", event.seq, head[0])
            return event

    def _idle(self, head: tuple[int, str]) -> bool:
        """True for an empty chain, or when the only event after the last checkpoint is itself."""
        if head[0] < 1:
            return True
        last = self._last
        return (
            last is not None and head == (last.seq, last.hash) and self._last_covers == last.seq - 1
        )
