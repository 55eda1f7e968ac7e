"""Signed chain checkpoints: periodic with a manual clock, idle skips, signatures, real buffer."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.checkpointer import Checkpointer
from gateway.audit.config import AuditSection
from gateway.audit.verify import GatewayKeys, audit_events
from gateway.config.loader import _build
from gateway.config.model import BufferSection
from gateway.errors import ConfigError, StorageFullError
from gateway.protocol.checkpoint import (
    CHECKPOINT_TYPE,
    checkpoint_data,
    checkpoint_message,
    public_key_fingerprint,
    verify_checkpoint,
)
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import GENESIS_HASH, Event, EventDraft, Priority, seal_event
from gateway.protocol.signed import b64url
from gateway.store.buffer import EventBuffer

GATEWAY = "gw-0001"
INTERVAL = 300.0


@dataclass
class MemoryChain:
    """A stand-in for the buffer: seals drafts into an in-memory chain, head like the store's."""

    events: list[Event] = field(default_factory=list)
    before_commit: list[EventDraft] = field(default_factory=list)

    @property
    def head(self) -> tuple[int, str]:
        return (self.events[-1].seq, self.events[-1].hash) if self.events else (0, GENESIS_HASH)

    def add(self, draft: EventDraft) -> Event:
        seq, prev = self.head
        event = seal_event(draft, GATEWAY, seq + 1, prev)
        self.events.append(event)
        return event

    async def emit(self, draft: EventDraft) -> Event:
        """Commit `draft`, after any drafts queued ahead of it (a busy buffer)."""
        while self.before_commit:
            self.add(self.before_commit.pop(0))
        return self.add(draft)

    def reading(self, clock: ManualClock, n: int) -> Event:
        return self.add(
            EventDraft("meter.reading", "M-01", {"n": n}, Priority.TELEMETRY, clock.now())
        )

    def objects(self) -> list[dict[str, Any]]:
        return [json.loads(event.payload) for event in self.events]


@pytest.fixture
def identity() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def chain() -> MemoryChain:
    return MemoryChain()


def checkpointer(
    identity: Ed25519PrivateKey, chain: MemoryChain, clock: ManualClock
) -> Checkpointer:
    return Checkpointer(
        identity, GATEWAY, lambda: chain.head, chain.emit, clock=clock, interval_s=INTERVAL
    )


def checkpoints(chain: MemoryChain) -> list[dict[str, Any]]:
    return [obj for obj in chain.objects() if obj["type"] == CHECKPOINT_TYPE]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_periodic_checkpoints_cover_the_head_and_skip_when_idle(
    identity: Ed25519PrivateKey, chain: MemoryChain, clock: ManualClock
) -> None:
    for n in range(3):
        chain.reading(clock, n)
    task = asyncio.create_task(checkpointer(identity, chain, clock).run())
    await settle()
    assert checkpoints(chain) == []  # nothing before the first interval
    clock.advance(INTERVAL)
    await settle()
    first = checkpoints(chain)
    assert [(c["seq"], c["data"]["covers_seq"]) for c in first] == [(4, 3)]
    assert first[0]["data"]["covers_hash"] == chain.events[2].hash
    clock.advance(INTERVAL)  # idle: only the checkpoint itself was committed since
    await settle()
    assert len(checkpoints(chain)) == 1
    chain.reading(clock, 3)
    clock.advance(INTERVAL)
    await settle()
    second = checkpoints(chain)[-1]
    assert (second["seq"], second["data"]["covers_seq"]) == (6, 5)
    assert second["ts"] == "2026-01-01T00:15:00.000Z"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    public = identity.public_key()
    assert all(verify_checkpoint(c, public) for c in checkpoints(chain))


async def test_checkpoint_now_on_an_empty_chain_does_nothing(
    identity: Ed25519PrivateKey, chain: MemoryChain, clock: ManualClock
) -> None:
    assert await checkpointer(identity, chain, clock).checkpoint_now() is None
    assert chain.events == []


async def test_events_committed_ahead_of_the_checkpoint_get_covered_next_time(
    identity: Ed25519PrivateKey, chain: MemoryChain, clock: ManualClock
) -> None:
    chain.reading(clock, 0)
    busy = EventDraft("meter.reading", "M-02", {"n": 1}, Priority.TELEMETRY, clock.now())
    chain.before_commit.append(busy)
    maker = checkpointer(identity, chain, clock)
    first = await maker.checkpoint_now()
    assert first is not None
    assert (first.seq, first.data["covers_seq"]) == (3, 1)  # seq 2 slipped in between
    second = await maker.checkpoint_now()
    assert second is not None
    assert (second.seq, second.data["covers_seq"]) == (4, 3)
    assert await maker.checkpoint_now() is None
    assert maker.last == second


async def test_verification_fails_for_another_key_and_for_any_changed_claim(
    identity: Ed25519PrivateKey, chain: MemoryChain, clock: ManualClock
) -> None:
    chain.reading(clock, 0)
    event = await checkpointer(identity, chain, clock).checkpoint_now()
    assert event is not None
    obj = json.loads(event.payload)
    assert verify_checkpoint(obj, identity.public_key())
    other = Ed25519PrivateKey.generate()
    assert not verify_checkpoint(obj, other.public_key())
    assert obj["data"]["key_id"] == public_key_fingerprint(identity.public_key())
    for name, value in (("gateway", "gw-0002"), ("ts", "2026-01-01T00:00:01.000Z")):
        assert not verify_checkpoint({**obj, name: value}, identity.public_key())
    stretched = {**obj, "seq": 9, "data": {**obj["data"], "covers_seq": 8}}
    assert not verify_checkpoint(stretched, identity.public_key())
    assert not verify_checkpoint({**obj, "type": "gateway.health"}, identity.public_key())


async def test_signature_input_is_the_documented_bytes(identity: Ed25519PrivateKey) -> None:
    message = checkpoint_message(GATEWAY, 41, "ab" * 32, "2026-01-01T00:00:00.000Z")
    assert message == (
        b"sealgw/v1 gateway.checkpoint\x00"
        b'{"covers_hash":"' + b"ab" * 32 + b'","covers_seq":41,"gateway":"gw-0001",'
        b'"ts":"2026-01-01T00:00:00.000Z"}'
    )
    sig = identity.sign(message)
    obj = {
        "type": CHECKPOINT_TYPE,
        "gateway": GATEWAY,
        "seq": 42,
        "ts": "2026-01-01T00:00:00.000Z",
        "data": {
            "covers_seq": 41,
            "covers_hash": "ab" * 32,
            "sig": b64url(sig),
            "key_id": public_key_fingerprint(identity.public_key()),
        },
    }
    assert verify_checkpoint(obj, identity.public_key())


def test_vector_of_docs_audit_md() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    data = checkpoint_data(key, GATEWAY, (41, "ab" * 32), datetime(2026, 1, 1, tzinfo=UTC))
    assert data["key_id"] == (
        "sha256:a050837d85070582ccf7394b0988847cc312cb88259b894899f6f239cf1791a5"
    )
    assert data["sig"] == (
        "Qekamaotpz8f0pMtCzIWfj6YQ7Jie1gh0siAHtcDzfmx1dtv3_FmKhJbg1a3MSBmub_bBZ0W5gsHCTv34-p2Aw"
    )


def test_interval_must_be_positive(identity: Ed25519PrivateKey, chain: MemoryChain) -> None:
    with pytest.raises(ValueError, match="positive"):
        Checkpointer(
            identity, GATEWAY, lambda: chain.head, chain.emit, clock=ManualClock(), interval_s=0
        )


async def test_checkpoints_through_the_real_buffer_verify_as_a_trail(
    tmp_path: Path, identity: Ed25519PrivateKey, clock: ManualClock
) -> None:
    buffer = EventBuffer(tmp_path / "buffer.db", GATEWAY, BufferSection(), clock)
    await buffer.open()
    committed: list[Event] = []
    buffer.on_commit = committed.extend
    maker = Checkpointer(
        identity, GATEWAY, lambda: buffer.head, buffer.submit, clock=clock, interval_s=INTERVAL
    )
    try:
        for n in range(5):
            await buffer.append(
                EventDraft("seal.sealed", "SL-0001", {"n": n}, Priority.AUDIT, clock.now())
            )
        clock.advance(1)
        shutdown = await maker.checkpoint_now()
    finally:
        await buffer.close()
    assert shutdown is not None
    assert (shutdown.seq, shutdown.data["covers_seq"]) == (6, 5)
    report = audit_events(
        [json.loads(e.payload) for e in committed], GatewayKeys((identity.public_key(),))
    )
    assert report.ok, report.problems
    assert report.checkpoints[GATEWAY].verified == 1
    assert report.checkpoints[GATEWAY].signed_through == 5


def test_audit_config_section_bounds_the_interval() -> None:
    assert _build(AuditSection, {}, "audit.", Path()).checkpoint_interval_s == 300
    assert _build(AuditSection, {"checkpoint_interval_s": 60}, "audit.", Path()) == AuditSection(60)
    with pytest.raises(ConfigError, match=r"audit\.checkpoint_interval_s: must be >= 10"):
        _build(AuditSection, {"checkpoint_interval_s": 5}, "audit.", Path())


async def test_a_checkpoint_that_cannot_be_stored_is_retried_next_interval(
    identity: Ed25519PrivateKey,
    chain: MemoryChain,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    chain.reading(clock, 0)
    refusals = [StorageFullError("audit reserve exhausted")]

    async def emit(draft: EventDraft) -> Event:
        if refusals:
            raise refusals.pop()
        return await chain.emit(draft)

    maker = Checkpointer(identity, GATEWAY, lambda: chain.head, emit, clock=clock, interval_s=60)
    task = asyncio.create_task(maker.run())
    await settle()
    with caplog.at_level(logging.DEBUG, logger="gateway.checkpoint"):
        clock.advance(60)
        await settle()
        assert checkpoints(chain) == []
        clock.advance(60)
        await settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [c["data"]["covers_seq"] for c in checkpoints(chain)] == [1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert ["checkpoint not committed" in r.getMessage() for r in warnings] == [True]
