"""Finding 3: forged commands must not flush security entries out of the lock's log ring."""

from __future__ import annotations

from pathlib import Path

from gateway.locks.config import read_key_file
from gateway.protocol import seal_exchange as ex
from gateway.protocol import seal_frames as sf
from gateway.protocol.clock import ManualClock
from tests.security.radio import Session, connect, radio

FORGED = 300  # the review flushed the ring with 270


async def _forge(session: Session, lock_id: bytes) -> bool:
    """One keyless attempt: a challenge, then a COMMAND with a made-up header and MAC."""
    challenge = await session.request(ex.challenge_request())
    if not isinstance(challenge, sf.Challenge):
        assert challenge == sf.ErrorFrame(sf.ErrorCode.BUSY)
        return False
    header = sf.encode_ticket_header(
        sf.TicketHeader(
            bytes(16), 0, 0xFFFF_FFFF, frozenset({sf.Operation.UNSEAL}), bytes(8), (lock_id,)
        )
    )
    forged = sf.Command(challenge.counter, sf.Operation.UNSEAL, 0, header, bytes(16))
    answer = await session.request(forged)
    assert isinstance(answer, sf.CommandResult)
    assert answer.result is sf.ResultCode.BAD_MAC
    return True


async def test_forged_commands_cannot_flush_the_wire_cut_entry(tmp_path: Path) -> None:
    async with radio(tmp_path) as bench:
        clock = bench.world.clock
        assert isinstance(clock, ManualClock)
        lock_id = bench.world.lock_ids["SL-0001"]
        bench.world.inject("SL-0001", "wire_cut")

        session = await connect(bench, "SL-0001")
        accepted = [await _forge(session, lock_id) for _ in range(FORGED)]
        await session.client.disconnect()
        clock.advance(61)  # a minute later one more attempt is logged, with the count
        session = await connect(bench, "SL-0001")
        assert await _forge(session, lock_id)
        entries = await session.fetch_log(
            read_key_file(bench.world.keys["SL-0001"].log_key_file), lock_id, page=10
        )
        await session.client.disconnect()

        events = [e.event for e in entries]
        assert sf.LogEvent.TAMPER_WIRE_CUT in events
        rejected = [e for e in entries if e.event is sf.LogEvent.OP_REJECTED]
        assert len(rejected) == 2  # the first attempt, then one entry carrying the count
        assert int.from_bytes(rejected[1].operator[:4], "big") == sum(accepted) - 1
