"""A synthetic telemetry source for demos, benches and crash tests (off by default)."""

from __future__ import annotations

import asyncio
import logging

from gateway.config.model import SyntheticSection
from gateway.protocol.clock import Clock
from gateway.protocol.events import Emit, Event, EventDraft, EventType, Priority

_LOGGER = logging.getLogger(__name__)


async def run_synthetic_source(settings: SyntheticSection, submit: Emit, clock: Clock) -> None:
    """Submit `synthetic.sample` events at the configured rate until cancelled."""
    priority = Priority.from_wire(settings.priority)
    period = 1.0 / settings.rate_per_s
    counter = 0
    next_due = clock.monotonic()
    while True:
        counter += 1
        draft = EventDraft(
            type=EventType.SYNTHETIC_SAMPLE,
            subject="SYNTHETIC",
            data={"n": counter},
            priority=priority,
            ts=clock.now(),
        )
        submit(draft).add_done_callback(_log_failure)
        next_due += period
        await clock.sleep(max(0.0, next_due - clock.monotonic()))


def _log_failure(future: asyncio.Future[Event]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _LOGGER.debug("synthetic event not stored: %s", future.exception())
