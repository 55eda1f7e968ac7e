"""Simulated seal locks through the real stack: bleak on our bumble backend over TCP HCI.

The gateway side here is a minimal session built from the pure protocol steps
(gateway/protocol/seal_exchange.py) on `make_scanner` / `make_client` with the world's adapter
string; tickets come from the master authority and are decrypted as the gateway does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakGATTProtocolError
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from firmware_sim.locks.world import LockWorld
from gateway.drivers.ble.adapters import BleAdapters, BleTransport
from gateway.errors import AuthError
from gateway.locks.config import read_key_file
from gateway.protocol import seal_advert as adv
from gateway.protocol import seal_exchange as ex
from gateway.protocol import seal_fragments as fr
from gateway.protocol import seal_frames as sf
from gateway.protocol.clock import ManualClock
from gateway.protocol.seal_crypto import SessionContext
from gateway.protocol.tickets import open_credential, x25519_public_bytes

WAIT_S = 5.0
GATEWAY_ID = "gw-test"
Op = sf.Operation


@dataclass
class Bench:
    world: LockWorld
    ble: BleTransport
    truth: Path
    gateway_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)

    def advert_tracker(self) -> adv.AdvertTracker:
        """What the gateway holds: K_adv per lock, read from the files the config names."""
        return adv.AdvertTracker(
            {
                self.world.lock_ids[s]: read_key_file(k.adv_key_file)
                for s, k in self.world.keys.items()
            }
        )

    def k_log(self, seal_id: str) -> bytes:
        return read_key_file(self.world.keys[seal_id].log_key_file)

    def credential(
        self, seal_id: str, ops: tuple[str, ...] = ("unseal", "seal")
    ) -> ex.TicketCredential:
        """Issue a ticket at the master station and open its credential as the gateway does."""
        now = int(self.world.clock.now().timestamp())
        ticket = self.world.authority.issue_ticket(
            work_order="WO-1",
            flow="meter_replace",
            operator="op-1",
            role="meter_installer",
            gateway=GATEWAY_ID,
            gateway_key=x25519_public_bytes(self.gateway_key),
            seals=[(seal_id, self.world.lock_ids[seal_id])],
            ops=list(ops),
            not_before=now - 60,
            not_after=now + 3600,
            max_uses=5,
            issued_at=now - 60,
        )
        return open_credential(ticket, seal_id, self.gateway_key)

    def truth_entries(self, seal_id: str) -> list[tuple[int, str]]:
        lines = [json.loads(line) for line in self.truth.read_text().splitlines()]
        return [(r["index"], r["type"]) for r in lines if r["seal"] == seal_id]


class Session:
    """One gateway link to a lock: fragments out by write-without-response, answers in."""

    def __init__(self, client: BleakClient) -> None:
        self.client = client
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.writes = 0
        self.notifications = 0
        self._reassembler = fr.Reassembler()

    async def start(self) -> None:
        await self.client.start_notify(fr.RESPONSE_CHAR_UUID, self._on_notify)

    async def send(self, frame: sf.Frame) -> None:
        for part in fr.fragment(sf.encode(frame), self.client.mtu_size):
            self.writes += 1
            await self.client.write_gatt_char(fr.COMMAND_CHAR_UUID, part, response=False)

    async def request(self, frame: sf.Frame) -> sf.Frame:
        await self.send(frame)
        return sf.decode_message(await asyncio.wait_for(self.answers.get(), WAIT_S))

    async def command(
        self, credential: ex.TicketCredential, op: sf.Operation
    ) -> tuple[sf.CommandResult, sf.Command, SessionContext]:
        """Challenge, then the command; return the unverified answer and what verifies it."""
        request = ex.challenge_request()
        challenge = await self.request(request)
        assert isinstance(challenge, sf.Challenge)
        ctx = ex.check_challenge(request, challenge, credential.lock_id, None)
        command = ex.build_command(credential, ctx, challenge.counter, op)
        answer = await self.request(command)
        assert isinstance(answer, sf.CommandResult)
        return answer, command, ctx

    async def fetch_log(self, seal_k_log: bytes, lock_id: bytes, page: int) -> list[sf.LogEntry]:
        entries: list[sf.LogEntry] = []
        after = 0
        while True:
            request = ex.log_fetch(after, page)
            answer = await self.request(request)
            assert isinstance(answer, sf.LogEntries)
            batch = ex.verify_log_entries(seal_k_log, lock_id, request, answer)
            entries += batch.entries
            if not batch.more:
                return entries
            after = batch.entries[-1].index

    def _on_notify(self, _char: object, data: bytearray) -> None:
        self.notifications += 1
        message = self._reassembler.feed(bytes(data), time.monotonic())
        if message is not None:
            self.answers.put_nowait(message)


async def _bench(
    tmp_path: Path, count: int, clock: ManualClock | None = None
) -> AsyncIterator[Bench]:
    truth = tmp_path / "truth.jsonl"
    world = LockWorld(count, tmp_path / "sim", truth, clock=clock)
    adapters = BleAdapters()
    await world.start()
    try:
        yield Bench(world, adapters.get(world.adapter), truth)
    finally:
        await adapters.close()
        await world.close()


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    async for value in _bench(tmp_path, 3):
        yield value


async def _connect(bench: Bench, seal_id: str) -> Session:
    lock = bench.world.locks[seal_id]
    session: Session | None = None

    def on_gone(_client: BleakClient) -> None:
        assert session is not None
        session.gone.set()

    client = bench.ble.make_client(lock.address, disconnected_callback=on_gone, timeout=WAIT_S)
    session = Session(client)
    await client.connect()
    await session.start()
    return session


async def _next_advert(
    bench: Bench,
    address: str,
    accept: adv.AdvertTracker,
    predicate: Callable[[adv.Advert], bool] = lambda _a: True,
) -> adv.AdvertObservation:
    """Scan until `address` sends a fresh advert that verifies (and passes `predicate`)."""
    found: asyncio.Queue[adv.AdvertObservation] = asyncio.Queue()

    def on_advert(device: BLEDevice, data: AdvertisementData) -> None:
        payload = data.manufacturer_data.get(adv.COMPANY_ID)
        if device.address != address or payload is None:
            return
        seen = accept.observe(payload)
        if seen is not None and seen.fresh and predicate(seen.advert):
            found.put_nowait(seen)

    async with bench.ble.make_scanner(on_advert):
        return await asyncio.wait_for(found.get(), WAIT_S)


async def test_scanner_sees_every_lock_and_verifies_its_advert(bench: Bench) -> None:
    tracker = bench.advert_tracker()
    for seal_id, lock in bench.world.locks.items():
        seen = await _next_advert(bench, lock.address, tracker)
        assert seen.lock_id == bench.world.lock_ids[seal_id]
        assert seen.advert.state is sf.LockState.SEALED
        assert seen.advert.log_head == 1  # BOOT
        assert not seen.advert.tamper

    forged = bytearray(bench.world.locks["SL-0001"].advert_payload)
    forged[6] ^= sf.StatusFlags.TAMPER  # flip the tamper flag without the key
    with pytest.raises(AuthError) as caught:
        bench.advert_tracker().observe(bytes(forged))
    assert caught.value.code == "bad_advert_mac"


async def test_unseal_then_seal_under_a_master_ticket_in_two_round_trips_each(bench: Bench) -> None:
    credential = bench.credential("SL-0001")
    session = await _connect(bench, "SL-0001")
    assert session.client.mtu_size == 517

    answer, command, ctx = await session.command(credential, Op.UNSEAL)
    unsealed = ex.verify_result(credential, ctx, command, answer)
    assert (unsealed.result, unsealed.state) == (sf.ResultCode.OK, sf.LockState.UNSEALED)
    assert (session.writes, session.notifications) == (2, 2)  # one write + one notify, twice

    answer, command, ctx = await session.command(credential, Op.SEAL)
    sealed = ex.verify_result(credential, ctx, command, answer)
    assert (sealed.result, sealed.state, sealed.wire) == (
        sf.ResultCode.OK,
        sf.LockState.SEALED,
        sf.WireLoop.INTACT,
    )
    assert (session.writes, session.notifications) == (4, 4)

    state = adv.decode_advert(bytes(await session.client.read_gatt_char(fr.STATE_CHAR_UUID)))
    assert (state.state, state.log_head) == (sf.LockState.SEALED, sealed.log_index)
    await session.client.disconnect()
    assert bench.truth_entries("SL-0001") == [
        (1, "boot"),
        (unsealed.log_index, "unsealed"),
        (sealed.log_index, "sealed"),
    ]


async def test_a_rejected_command_is_a_verified_refusal(bench: Bench) -> None:
    credential = bench.credential("SL-0002", ops=("seal",))
    session = await _connect(bench, "SL-0002")
    answer, command, ctx = await session.command(credential, Op.UNSEAL)
    refused = ex.verify_result(credential, ctx, command, answer)
    assert (refused.result, refused.state) == (sf.ResultCode.OP_NOT_ALLOWED, sf.LockState.SEALED)
    await session.client.disconnect()
    assert bench.truth_entries("SL-0002")[-1] == (refused.log_index, "op_rejected")


async def test_tamper_changes_the_advert_without_a_connection(bench: Bench) -> None:
    lock = bench.world.locks["SL-0002"]
    tracker = bench.advert_tracker()
    before = await _next_advert(bench, lock.address, tracker)

    bench.world.inject("SL-0002", "tamper")
    after = await _next_advert(bench, lock.address, tracker, lambda a: a.tamper)

    assert after.advert.counter > before.advert.counter
    assert after.advert.state is sf.LockState.TAMPERED
    assert after.advert.log_head == before.advert.log_head + 1
    assert not lock.connected
    assert bench.truth_entries("SL-0002")[-1] == (2, "tamper_shell_open")


async def test_log_fetch_returns_what_the_truth_file_recorded(bench: Bench) -> None:
    for fault in ("low_battery", "wire_cut", "tamper", "shell_close", "wire_restore", "reboot"):
        bench.world.inject("SL-0003", fault)
    session = await _connect(bench, "SL-0003")
    lock_id = bench.world.lock_ids["SL-0003"]
    entries = await session.fetch_log(bench.k_log("SL-0003"), lock_id, page=2)
    await session.client.disconnect()

    fetched = [(e.index, e.event.name.lower()) for e in entries]
    assert fetched == bench.truth_entries("SL-0003")
    assert [name for _, name in fetched] == [
        "boot",
        "battery_low",
        "tamper_wire_cut",
        "tamper_shell_open",
        "boot",
    ]


async def test_dropped_link_mid_command_still_actuates_and_logs(bench: Bench) -> None:
    credential = bench.credential("SL-0001")
    bench.world.inject("SL-0001", "drop_link")
    session = await _connect(bench, "SL-0001")
    request = ex.challenge_request()
    challenge = await session.request(request)
    assert isinstance(challenge, sf.Challenge)
    ctx = ex.check_challenge(request, challenge, credential.lock_id, None)
    await session.send(ex.build_command(credential, ctx, challenge.counter, Op.UNSEAL))
    await asyncio.wait_for(session.gone.wait(), WAIT_S)
    assert session.answers.empty()

    again = await _connect(bench, "SL-0001")
    entries = await again.fetch_log(bench.k_log("SL-0001"), credential.lock_id, page=10)
    await again.client.disconnect()
    assert entries[-1].event is sf.LogEvent.UNSEALED
    assert bench.world.locks["SL-0001"].model.state is sf.LockState.UNSEALED


async def test_dropped_link_before_actuation_leaves_the_lock_alone(bench: Bench) -> None:
    credential = bench.credential("SL-0001")
    bench.world.inject("SL-0001", "drop_link_before")
    session = await _connect(bench, "SL-0001")
    request = ex.challenge_request()
    challenge = await session.request(request)
    assert isinstance(challenge, sf.Challenge)
    ctx = ex.check_challenge(request, challenge, credential.lock_id, None)
    await session.send(ex.build_command(credential, ctx, challenge.counter, Op.UNSEAL))
    await asyncio.wait_for(session.gone.wait(), WAIT_S)
    assert bench.world.locks["SL-0001"].model.state is sf.LockState.SEALED
    assert bench.truth_entries("SL-0001") == [(1, "boot")]


async def test_corrupted_answer_fails_its_mac_and_slow_answers_arrive_late(bench: Bench) -> None:
    credential = bench.credential("SL-0002")
    bench.world.inject("SL-0002", "corrupt")
    bench.world.inject("SL-0002", "slow:0.3")
    session = await _connect(bench, "SL-0002")

    started = time.monotonic()
    answer, command, ctx = await session.command(credential, Op.UNSEAL)
    assert time.monotonic() - started >= 0.3
    with pytest.raises(AuthError):
        ex.verify_result(credential, ctx, command, answer)

    bench.world.inject("SL-0002", "fast")
    answer, command, ctx = await session.command(credential, Op.SEAL)
    assert ex.verify_result(credential, ctx, command, answer).result is sf.ResultCode.OK
    await session.client.disconnect()
    assert [t for _, t in bench.truth_entries("SL-0002")] == ["boot", "unsealed", "sealed"]


async def test_mechanical_failure_and_bad_fragment(bench: Bench) -> None:
    credential = bench.credential("SL-0003")
    bench.world.inject("SL-0003", "mechanical_failure")
    session = await _connect(bench, "SL-0003")
    await session.client.write_gatt_char(fr.COMMAND_CHAR_UUID, b"\x70", response=True)
    error = sf.decode_message(await asyncio.wait_for(session.answers.get(), WAIT_S))
    assert error == sf.ErrorFrame(sf.ErrorCode.BAD_FRAGMENT)
    with pytest.raises(BleakGATTProtocolError):
        await session.client.read_gatt_char(fr.COMMAND_CHAR_UUID)

    answer, command, ctx = await session.command(credential, Op.UNSEAL)
    failed = ex.verify_result(credential, ctx, command, answer)
    assert (failed.result, failed.state) == (sf.ResultCode.MECHANICAL_FAULT, sf.LockState.FAULT)
    assert failed.flags & sf.StatusFlags.FAULT
    await session.client.disconnect()


async def test_advert_counter_moves_every_600_s_with_nothing_else_changing(tmp_path: Path) -> None:
    clock = ManualClock()
    async for bench in _bench(tmp_path, 1, clock):
        lock = bench.world.locks["SL-0001"]
        tracker = bench.advert_tracker()
        first = await _next_advert(bench, lock.address, tracker)
        clock.advance(600)
        later = await _next_advert(bench, lock.address, tracker)
        assert later.advert.counter == first.advert.counter + 1
        assert later.advert.log_head == first.advert.log_head


async def test_a_lock_out_of_range_times_its_link_out_and_is_not_heard(bench: Bench) -> None:
    lock = bench.world.locks["SL-0003"]
    session = await _connect(bench, "SL-0003")
    assert lock.connected

    bench.world.inject("SL-0003", "out_of_range")

    # Both ends learn it from the supervision timeout, as over the air; no one hangs.
    await asyncio.wait_for(session.gone.wait(), WAIT_S)
    await _wait_for(lambda: not lock.connected)
    tracker = bench.advert_tracker()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_next_advert(bench, lock.address, tracker), 1.5)

    bench.world.inject("SL-0003", "in_range")
    seen = await _next_advert(bench, lock.address, tracker)
    assert seen.lock_id == bench.world.lock_ids["SL-0003"]
    session = await _connect(bench, "SL-0003")
    await session.client.disconnect()


async def test_the_world_closes_with_a_link_up_after_the_gateway_controller_left(
    tmp_path: Path,
) -> None:
    truth = tmp_path / "truth.jsonl"
    world = LockWorld(2, tmp_path / "sim", truth)
    adapters = BleAdapters()
    await world.start()
    try:
        bench = Bench(world, adapters.get(world.adapter), truth)
        await _connect(bench, "SL-0001")
        assert world.locks["SL-0001"].connected
    finally:
        # The gateway's controller leaves the radio first; the lock's Disconnect must still
        # complete (an LL PDU to nobody is lost, not an error that leaves the host waiting).
        await asyncio.wait_for(world.close(), WAIT_S)
        await adapters.close()


async def _wait_for(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.02)
