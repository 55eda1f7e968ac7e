"""Finding 4: unauthenticated CHALLENGE_REQUESTs must neither wear flash nor run unbounded."""

from __future__ import annotations

from pathlib import Path

from firmware_sim.locks.model import CHALLENGE_BURST, COUNTER_BLOCK
from gateway.protocol import seal_exchange as ex
from gateway.protocol import seal_frames as sf
from tests.security.radio import connect, radio

FLOOD = 200


async def test_a_challenge_flood_is_rate_limited_and_reserves_counters_in_blocks(
    tmp_path: Path,
) -> None:
    async with radio(tmp_path) as bench:
        model = bench.world.locks["SL-0001"].model
        writes_before = model.nvm_writes
        session = await connect(bench, "SL-0001")
        answers = [await session.request(ex.challenge_request()) for _ in range(FLOOD)]
        await session.client.disconnect()

        challenges = [a for a in answers if isinstance(a, sf.Challenge)]
        busy = [a for a in answers if a == sf.ErrorFrame(sf.ErrorCode.BUSY)]
        assert len(challenges) == CHALLENGE_BURST
        assert len(busy) == FLOOD - CHALLENGE_BURST
        assert [c.counter for c in challenges] == sorted({c.counter for c in challenges})
        # Counters come from blocks reserved ahead: at most one flash write per block.
        assert model.nvm_writes - writes_before <= 1 + CHALLENGE_BURST // COUNTER_BLOCK
