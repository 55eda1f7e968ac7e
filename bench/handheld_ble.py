"""Handheld requests over BLE on the virtual radio, for the seal bench (docs/handheld.md, 8.1).

On a running `bench.lock_rig`, the gateway's adapter also serves the handheld GATT service
(`BleHandheldServer` in front of a real `HandheldService` whose backend is the rig's
LockService), and a simulated handheld with its own controller on the same LocalLink pairs
(console code, LE Secure Connections on the link), opens one session and sends `seal_state`
requests one at a time. Each request is timed from the write of its first chunk until the
decrypted answer: chunking, ATT writes and notifications, the record channel and the service.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.lock_rig import LockRig
from firmware_sim.handheld.ble import BleHandheldRadio
from firmware_sim.handheld.client import HandheldIdentity, SimulatedHandheld
from firmware_sim.handheld.transport import HandheldLink
from gateway.drivers.ble.bumble.backend import BumbleTransport
from gateway.handheld.ble import BleHandheldServer
from gateway.handheld.config import HandheldSection
from gateway.handheld.service import HandheldService
from gateway.handheld.store import PairedDeviceStore

__all__ = ["measure_requests"]


async def measure_requests(rig: LockRig, state_dir: Path, count: int, seal_id: str) -> list[float]:
    """Pair a BLE handheld, open a session and time `count` requests (milliseconds)."""
    assert rig.adapters is not None and rig.trust is not None
    transport = rig.adapters.get(rig.locks.adapter)
    assert isinstance(transport, BumbleTransport)
    service = HandheldService(
        HandheldSection(enabled=True, listen="ble"),
        identity=Ed25519PrivateKey.generate(),
        trust=rig.trust,
        store=PairedDeviceStore.open(state_dir / "handhelds.json"),
        backend=rig.service.operations,
        emit=rig.buffer.submit,
        clock=rig.clock,
        revocations=lambda: None,
    )
    server = BleHandheldServer(
        transport.bumble_adapter,
        service.handle,
        name="sealgw-bench",
        slots=rig.service.scheduler.budget,
        max_links=1,
    )
    radio = BleHandheldRadio(rig.locks.link)

    async def dial(address: str) -> HandheldLink:
        del address
        return await radio.dial()

    await server.start()
    try:
        handheld = SimulatedHandheld(HandheldIdentity(rig.certificate, rig.handheld), dial=dial)
        await handheld.pair("ble", (await service.issue_pairing_code()).code)
        timings: list[float] = []
        async with await handheld.open_session("ble") as session:
            for _ in range(count):
                started = time.perf_counter()
                await session.seal_state(seal_id)
                timings.append((time.perf_counter() - started) * 1000)
        return timings
    finally:
        await radio.close()
        await server.stop()
