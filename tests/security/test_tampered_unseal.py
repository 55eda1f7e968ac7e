"""Finding 5: the lock itself refuses to unseal a TAMPERED seal outside an audit ticket."""

from __future__ import annotations

from pathlib import Path

from gateway.protocol import seal_frames as sf
from tests.security.radio import T0, connect, credential, radio, run_command


async def test_tampered_seal_opens_only_under_an_audit_ticket(tmp_path: Path) -> None:
    async with radio(tmp_path) as bench:
        bench.world.inject("SL-0001", "wire_cut")
        model = bench.world.locks["SL-0001"].model
        assert model.state is sf.LockState.TAMPERED
        # A gateway with a stale view (it still believes SEALED) lets a replacement ticket by.
        replace = credential(bench, "SL-0001", ("unseal", "seal"), T0 - 60, T0 + 3600)
        audit = credential(
            bench, "SL-0001", ("unseal",), T0 - 60, T0 + 3600, flow="audit", role="district_manager"
        )
        session = await connect(bench, "SL-0001")
        refused = await run_command(session, replace, sf.Operation.UNSEAL)
        assert refused.result is sf.ResultCode.NEEDS_AUDIT
        assert model.state is sf.LockState.TAMPERED
        opened = await run_command(session, audit, sf.Operation.UNSEAL)
        await session.client.disconnect()
        assert (opened.result, opened.state) == (sf.ResultCode.OK, sf.LockState.UNSEALED)
