"""Finding 1: SET_TIME must not move a valid clock into a ticket's window."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from gateway.errors import ProtocolError
from gateway.protocol import seal_crypto as crypto
from gateway.protocol import seal_exchange as ex
from gateway.protocol import seal_frames as sf
from gateway.protocol.clock import ManualClock
from tests.security.radio import DAY, T0, connect, credential, radio, run_command

Op = sf.Operation


async def test_expired_ticket_cannot_be_revived_by_winding_the_clock_back(tmp_path: Path) -> None:
    async with radio(tmp_path) as bench:
        clock = bench.world.clock
        assert isinstance(clock, ManualClock)
        set_time = credential(bench, "SL-0001", ("set_time",), T0, T0 + 3600)
        unseal = credential(bench, "SL-0001", ("unseal",), T0, T0 + 3600)
        clock.advance(30 * DAY)  # the thief comes back a month after both expired

        session = await connect(bench, "SL-0001")
        wound = await run_command(session, set_time, Op.SET_TIME, T0 + 1800)
        opened = await run_command(session, unseal, Op.UNSEAL)
        await session.client.disconnect()

        assert wound.result is sf.ResultCode.BAD_TIME
        assert opened.result is sf.ResultCode.EXPIRED
        assert bench.world.locks["SL-0001"].model.state is sf.LockState.SEALED


async def test_future_ticket_cannot_push_the_clock_past_todays_tickets(tmp_path: Path) -> None:
    async with radio(tmp_path) as bench:
        future = credential(bench, "SL-0001", ("set_time",), T0 + 2 * DAY, T0 + 2 * DAY + 3600)
        today = credential(bench, "SL-0001", ("unseal",), T0 - 60, T0 + 3600)

        session = await connect(bench, "SL-0001")
        pushed = await run_command(session, future, Op.SET_TIME, T0 + 2 * DAY + 60)
        opened = await run_command(session, today, Op.UNSEAL)
        await session.client.disconnect()

        assert pushed.result is sf.ResultCode.BAD_TIME
        assert opened.result is sf.ResultCode.OK


async def test_a_header_granting_set_time_and_unseal_is_refused_by_the_lock(tmp_path: Path) -> None:
    async with radio(tmp_path) as bench:
        lock_id = bench.world.lock_ids["SL-0001"]
        # A header MS must never issue, MAC'd with the K_TL only MS (K_lock) can derive.
        header = struct.pack(">B16sIIB8sB", 1, bytes(16), T0 - 60, T0 + 3600, 0b101, bytes(8), 1)
        header += lock_id
        k_tl = crypto.derive_ticket_key(bench.world.authority.lock_key(lock_id), header)
        session = await connect(bench, "SL-0001")
        request = ex.challenge_request()
        challenge = await session.request(request)
        assert isinstance(challenge, sf.Challenge)
        ctx = crypto.SessionContext(lock_id, challenge.nonce, request.gw_nonce)
        unsigned = sf.Command(challenge.counter, Op.UNSEAL, 0, header, bytes(16))
        command = sf.Command(
            challenge.counter, Op.UNSEAL, 0, header, crypto.command_mac(k_tl, ctx, unsigned)
        )
        opened = await session.request(command)
        await session.client.disconnect()
        assert isinstance(opened, sf.CommandResult)
        assert opened.result is sf.ResultCode.BAD_TICKET
        assert bench.world.locks["SL-0001"].model.state is sf.LockState.SEALED
        with pytest.raises(ProtocolError):
            credential(bench, "SL-0001", ("unseal", "set_time"), T0, T0 + 3600)
