"""Finding 7: what docs/protocol.md promises about malformed commands and log fetches holds."""

from __future__ import annotations

from pathlib import Path

from gateway.locks.config import read_key_file
from gateway.protocol import seal_exchange as ex
from gateway.protocol import seal_frames as sf
from gateway.protocol.seal_fragments import COMMAND_CHAR_UUID, fragment
from tests.security.radio import T0, connect, credential, radio


async def test_a_malformed_command_consumes_the_challenge(tmp_path: Path) -> None:
    async with radio(tmp_path) as bench:
        unseal = credential(bench, "SL-0001", ("unseal",), T0 - 60, T0 + 3600)
        session = await connect(bench, "SL-0001")
        request = ex.challenge_request()
        challenge = await session.request(request)
        assert isinstance(challenge, sf.Challenge)
        ctx = ex.check_challenge(request, challenge, unseal.lock_id, None)
        command = ex.build_command(unseal, ctx, challenge.counter, sf.Operation.UNSEAL)

        broken = sf.encode(command)[:-1]  # a COMMAND one byte short: BAD_FRAME
        broken = broken[:2] + (len(broken) - 4).to_bytes(2, "big") + broken[4:]
        for part in fragment(broken, session.client.mtu_size):
            await session.client.write_gatt_char(COMMAND_CHAR_UUID, part, response=False)
        assert sf.decode_message(await session.answers.get()) == sf.ErrorFrame(
            sf.ErrorCode.BAD_FRAME
        )
        late = await session.request(command)  # the challenge is gone (section 5, step 5)
        await session.client.disconnect()
        assert late == sf.ErrorFrame(sf.ErrorCode.UNEXPECTED_MESSAGE)
        assert bench.world.locks["SL-0001"].model.state is sf.LockState.SEALED


async def test_log_fetch_edges_are_answered_as_specified(tmp_path: Path) -> None:
    async with radio(tmp_path) as bench:
        lock_id = bench.world.lock_ids["SL-0001"]
        k_log = read_key_file(bench.world.keys["SL-0001"].log_key_file)
        session = await connect(bench, "SL-0001")
        probes = []
        for after, max_count in ((0, 0), (1, 10), (99, 10)):
            request = sf.LogFetch(b"\x11" * 16, after, max_count)
            answer = await session.request(request)
            assert isinstance(answer, sf.LogEntries)
            probes.append(ex.verify_log_entries(k_log, lock_id, request, answer))
        await session.client.disconnect()
        # max_count 0 is a head probe; after >= head returns nothing; all verify.
        assert [(b.head, b.oldest, len(b.entries)) for b in probes] == [(1, 1, 0)] * 3
