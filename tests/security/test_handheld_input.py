"""Handheld-side attacks on a HandheldService listening on a real loopback socket (issue 14)."""

from __future__ import annotations

import pytest

from firmware_sim.handheld.client import HandheldRefusedError
from gateway.handheld.budget import AUDIT_BURST, AUDIT_REFILL_S
from gateway.handheld.transport import connect
from gateway.protocol.handheld import Record, RecordKind, Refusal
from tests.fixtures.auth import OPERATOR
from tests.fixtures.handheld import Bench


async def test_a_revoked_operator_reads_no_seal_state_in_a_session_opened_before(
    handheld_bench: Bench,
) -> None:
    issued = await handheld_bench.service.issue_pairing_code()
    handheld = handheld_bench.handheld()
    await handheld.pair(handheld_bench.address, issued.code)
    async with await handheld.open_session(handheld_bench.address) as session:
        assert (await session.seal_state("SL-0001"))["state"] == "sealed"
        handheld_bench.revoked.append(handheld_bench.world.revoke(operators=[OPERATOR]))
        with pytest.raises(HandheldRefusedError) as refused:
            await session.seal_state("SL-0001")
    assert refused.value.code == "operator_revoked"


async def test_a_connection_flood_is_audited_within_a_budget_then_counted(
    handheld_bench: Bench,
) -> None:
    flood = AUDIT_BURST + 60
    for _ in range(flood):
        stream = await connect(handheld_bench.address)
        await stream.write(Record(RecordKind.REQUEST, 1, bytes(20)))
        assert await stream.read() == Refusal("unexpected_message", "Record")  # still answered
        await stream.close()
    denied = handheld_bench.events_of("handheld.session_denied")
    assert len(denied) == AUDIT_BURST
    assert handheld_bench.service.failure_budget.suppressed_total == flood - AUDIT_BURST

    handheld_bench.clock.advance(AUDIT_REFILL_S)  # one more audited refusal carries the count
    stream = await connect(handheld_bench.address)
    await stream.write(Record(RecordKind.REQUEST, 1, bytes(20)))
    await stream.read()
    await stream.close()
    last = handheld_bench.events_of("handheld.session_denied")[-1]
    assert len(handheld_bench.events_of("handheld.session_denied")) == AUDIT_BURST + 1
    assert last.data["suppressed"] == flood - AUDIT_BURST
