"""Handheld-side attacks on a HandheldService listening on a real loopback socket (issue 14)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from firmware_sim.handheld.client import HandheldRefusedError
from gateway.handheld.budget import AUDIT_BURST, AUDIT_REFILL_S
from gateway.handheld.transport import connect
from gateway.protocol.handheld import Record, RecordKind, Refusal
from tests.fixtures.auth import OPERATOR
from tests.fixtures.handheld import Bench, start_bench


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    started = await start_bench(tmp_path)
    yield started
    await started.server.stop()


async def test_a_revoked_operator_reads_no_seal_state_in_a_session_opened_before(
    bench: Bench,
) -> None:
    issued = await bench.service.issue_pairing_code()
    handheld = bench.handheld()
    await handheld.pair(bench.address, issued.code)
    async with await handheld.open_session(bench.address) as session:
        assert (await session.seal_state("SL-0001"))["state"] == "sealed"
        bench.revoked.append(bench.world.revoke(operators=[OPERATOR]))
        with pytest.raises(HandheldRefusedError) as refused:
            await session.seal_state("SL-0001")
    assert refused.value.code == "operator_revoked"


async def test_a_connection_flood_is_audited_within_a_budget_then_counted(bench: Bench) -> None:
    flood = AUDIT_BURST + 60
    for _ in range(flood):
        stream = await connect(bench.address)
        await stream.write(Record(RecordKind.REQUEST, 1, bytes(20)))
        assert await stream.read() == Refusal("unexpected_message", "Record")  # still answered
        await stream.close()
    denied = bench.events_of("handheld.session_denied")
    assert len(denied) == AUDIT_BURST
    assert bench.service.failure_budget.suppressed_total == flood - AUDIT_BURST

    bench.clock.advance(AUDIT_REFILL_S)  # one more audited refusal carries the count
    stream = await connect(bench.address)
    await stream.write(Record(RecordKind.REQUEST, 1, bytes(20)))
    await stream.read()
    await stream.close()
    last = bench.events_of("handheld.session_denied")[-1]
    assert len(bench.events_of("handheld.session_denied")) == AUDIT_BURST + 1
    assert last.data["suppressed"] == flood - AUDIT_BURST
