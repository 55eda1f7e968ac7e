"""Handheld terminals: pairing with a console code, authenticated sessions, the attack matrix.

Everything runs over the real TCP (or Unix) listener in-process: the simulated handheld is the
far end of the real protocol. Each denial is checked for its audit event and reason code.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_sim.handheld import cli as handheld_cli
from firmware_sim.handheld.client import HandheldRefusedError, SimulatedHandheld
from gateway.cli.pair import cmd_pair, format_code, register_pair_command
from gateway.daemon.control import ControlServer
from gateway.errors import AuthError, ConfigError, ProtocolError
from gateway.handheld.store import PairedDeviceStore
from gateway.handheld.transport import connect, parse_listen
from gateway.protocol.handheld import (
    MAX_FRAME,
    Message,
    PairChallenge,
    PairDone,
    PairHello,
    PairProof,
    Record,
    RecordKind,
    Refusal,
    SessionAccept,
    SessionConfirm,
    SessionHello,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
)
from gateway.protocol.handheld_crypto import (
    GatewayHandshake,
    HandheldHandshake,
    HandheldPairing,
    PairedGateway,
    ed25519_public_bytes,
    key_fingerprint,
)
from tests.fixtures.auth import GATEWAY_ID, HOUR, OPERATOR, T0
from tests.fixtures.handheld import Bench, start_bench

WORK_ORDER = "WO-2026-0001"


async def paired(handheld_bench: Bench) -> SimulatedHandheld:
    """The world's handheld, paired with a fresh code."""
    issued = await handheld_bench.service.issue_pairing_code()
    handheld = handheld_bench.handheld()
    await handheld.pair(handheld_bench.address, issued.code)
    return handheld


async def refused(coro: object) -> str:
    """The reason code the gateway refused with."""
    with pytest.raises(HandheldRefusedError) as info:
        await coro  # type: ignore[misc]
    return info.value.code


# -- pairing --------------------------------------------------------------------------------


async def test_pairing_with_the_right_code_and_certificate(handheld_bench: Bench) -> None:
    issued = await handheld_bench.service.issue_pairing_code()
    assert len(issued.code) == 8 and issued.code.isdigit()
    handheld = handheld_bench.handheld()
    gateway = await handheld.pair(
        handheld_bench.address,
        issued.code,
        gateway_fingerprint=key_fingerprint(ed25519_public_bytes(handheld_bench.identity)),
    )
    assert gateway.gateway == GATEWAY_ID
    assert gateway.gateway_key == ed25519_public_bytes(handheld_bench.identity)
    record = handheld_bench.store.get(ed25519_public_bytes(handheld_bench.world.handheld))
    assert record is not None
    assert (record.operator, record.cert_serial) == (
        OPERATOR,
        handheld_bench.world.certificate.serial,
    )
    assert record.paired_at == T0 + HOUR == gateway.paired_at
    kinds = [e.type for e in handheld_bench.events]
    assert kinds == [
        "handheld.pairing_code_issued",
        "handheld.pairing_attempt",
        "handheld.paired",
    ]
    assert all(e.priority.name == "AUDIT" for e in handheld_bench.events)
    assert handheld_bench.events[-1].subject == OPERATOR
    assert issued.code not in json.dumps([dict(e.data) for e in handheld_bench.events])


async def test_paired_devices_survive_a_restart_in_a_private_file(handheld_bench: Bench) -> None:
    await paired(handheld_bench)
    reopened = PairedDeviceStore.open(handheld_bench.store.path)
    assert [d.operator for d in reopened.devices()] == [OPERATOR]
    assert stat.S_IMODE(os.stat(handheld_bench.store.path).st_mode) == 0o600
    assert reopened.remove(ed25519_public_bytes(handheld_bench.world.handheld))
    assert PairedDeviceStore.open(handheld_bench.store.path).devices() == ()


async def test_wrong_code_is_refused_and_audited(handheld_bench: Bench) -> None:
    issued = await handheld_bench.service.issue_pairing_code()
    wrong = f"{(int(issued.code) + 1) % 10**8:08d}"
    assert (
        await refused(handheld_bench.handheld().pair(handheld_bench.address, wrong)) == "bad_code"
    )
    assert handheld_bench.reasons("handheld.pairing_failed") == ["bad_code"]
    assert handheld_bench.store.devices() == ()


async def test_expired_code_is_refused(handheld_bench: Bench) -> None:
    issued = await handheld_bench.service.issue_pairing_code(ttl_s=60)
    handheld_bench.clock.advance(61)
    assert (
        await refused(handheld_bench.handheld().pair(handheld_bench.address, issued.code))
        == "code_expired"
    )
    assert handheld_bench.reasons("handheld.pairing_failed") == ["code_expired"]


async def test_code_works_once(handheld_bench: Bench) -> None:
    issued = await handheld_bench.service.issue_pairing_code()
    await handheld_bench.handheld().pair(handheld_bench.address, issued.code)
    assert (
        await refused(handheld_bench.handheld().pair(handheld_bench.address, issued.code))
        == "code_used"
    )
    assert handheld_bench.reasons("handheld.pairing_failed") == ["code_used"]


async def test_no_code_issued_is_refused(handheld_bench: Bench) -> None:
    assert (
        await refused(handheld_bench.handheld().pair(handheld_bench.address, "12345678"))
        == "no_code"
    )


async def test_too_many_attempts_burn_the_code(tmp_path: Path) -> None:
    handheld_bench = await start_bench(tmp_path, max_attempts=3)
    try:
        issued = await handheld_bench.service.issue_pairing_code()
        wrong = f"{(int(issued.code) + 1) % 10**8:08d}"
        for _ in range(3):
            assert (
                await refused(handheld_bench.handheld().pair(handheld_bench.address, wrong))
                == "bad_code"
            )
        reason = await refused(handheld_bench.handheld().pair(handheld_bench.address, issued.code))
        assert reason == "too_many_attempts"
        assert handheld_bench.reasons("handheld.pairing_failed") == ["bad_code"] * 3 + [
            "too_many_attempts"
        ]
        fresh = await handheld_bench.service.issue_pairing_code()
        await handheld_bench.handheld().pair(handheld_bench.address, fresh.code)
        assert len(handheld_bench.store.devices()) == 1
    finally:
        await handheld_bench.server.stop()


async def test_stolen_certificate_without_the_device_key_cannot_pair(handheld_bench: Bench) -> None:
    issued = await handheld_bench.service.issue_pairing_code()
    thief = handheld_bench.handheld(key=Ed25519PrivateKey.generate())
    assert (
        await refused(thief.pair(handheld_bench.address, issued.code))
        == "stolen_certificate_no_key"
    )
    assert handheld_bench.reasons("handheld.pairing_failed") == ["stolen_certificate_no_key"]
    # the thief's attempt did not burn the code for the real operator
    await handheld_bench.handheld().pair(handheld_bench.address, issued.code)
    assert len(handheld_bench.store.devices()) == 1


async def test_forged_expired_and_foreign_certificates_are_refused(handheld_bench: Bench) -> None:
    issued = await handheld_bench.service.issue_pairing_code()
    expired = handheld_bench.world.enroll(not_after=T0)
    other_district = handheld_bench.world.enroll(districts=["district-9"])
    assert await refused(
        handheld_bench.handheld(expired).pair(handheld_bench.address, issued.code)
    ) == ("certificate_expired")
    assert await refused(
        handheld_bench.handheld(other_district).pair(handheld_bench.address, issued.code)
    ) == ("district_out_of_scope")
    forged = _tamper_certificate(handheld_bench)
    assert await refused(forged.pair(handheld_bench.address, issued.code)) == "bad_certificate"
    assert handheld_bench.reasons("handheld.pairing_failed") == [
        "certificate_expired",
        "district_out_of_scope",
        "bad_certificate",
    ]
    assert handheld_bench.events_of("handheld.pairing_failed")[-1].subject == GATEWAY_ID


async def test_revoked_certificate_cannot_pair(handheld_bench: Bench) -> None:
    handheld_bench.revoked.append(
        handheld_bench.world.revoke(certificates=[handheld_bench.world.certificate.serial])
    )
    issued = await handheld_bench.service.issue_pairing_code()
    assert await refused(handheld_bench.handheld().pair(handheld_bench.address, issued.code)) == (
        "certificate_revoked"
    )


async def test_a_pinned_gateway_key_that_differs_stops_before_the_proof(
    handheld_bench: Bench,
) -> None:
    issued = await handheld_bench.service.issue_pairing_code()
    with pytest.raises(AuthError) as info:
        await handheld_bench.handheld().pair(
            handheld_bench.address, issued.code, gateway_fingerprint="00" * 8
        )
    assert info.value.code == "gateway_mismatch"
    assert handheld_bench.store.devices() == ()
    await handheld_bench.handheld().pair(
        handheld_bench.address, issued.code
    )  # no attempt was spent


def test_code_mac_needs_the_right_code_and_the_gateway_proves_it_too(handheld_bench: Bench) -> None:
    from gateway.protocol.handheld_crypto import GatewayPairing, HandheldPairing

    device, gateway = handheld_bench.world.handheld, Ed25519PrivateKey.generate()
    document = handheld_bench.handheld().identity.certificate

    def run(handheld_code: str, gateway_code: str) -> tuple[HandheldPairing, GatewayPairing]:
        pairing = HandheldPairing(document, device, handheld_code)
        side = GatewayPairing(
            gateway, GATEWAY_ID, pairing.hello(), ed25519_public_bytes(device), gateway_code
        )
        return pairing, side

    pairing, side = run("12345678", "12345678")
    proof = pairing.on_challenge(side.challenge())
    assert side.device_signed(proof, ed25519_public_bytes(device))
    assert side.code_matches(proof)
    done = side.done(proof, T0)
    assert pairing.on_done(done, proof).gateway == GATEWAY_ID
    with pytest.raises(AuthError):
        pairing.on_done(PairDone(T0 + 1, done.mac), proof)
    pairing, side = run("12345678", "12345679")  # one digit off: the SPAKE2 keys differ
    proof = pairing.on_challenge(side.challenge())
    assert side.device_signed(proof, ed25519_public_bytes(device))
    assert not side.code_matches(proof)
    with pytest.raises(AuthError):  # a gateway that does not know the code
        pairing.on_done(side.done(proof, T0), proof)


async def test_a_stalled_pairing_times_out_and_is_audited(tmp_path: Path) -> None:
    handheld_bench = await start_bench(tmp_path, handshake_timeout_s=1.0)
    try:
        await handheld_bench.service.issue_pairing_code()
        stream = await connect(handheld_bench.address)
        pairing = HandheldPairing(
            handheld_bench.handheld().identity.certificate,
            handheld_bench.world.handheld,
            "00000000",
        )
        await stream.write(pairing.hello())
        assert isinstance(await stream.read(), PairChallenge)
        answer = await stream.read()  # we never send the proof
        await stream.close()
    finally:
        await handheld_bench.server.stop()
    assert isinstance(answer, Refusal) and answer.reason == "timeout"
    assert handheld_bench.reasons("handheld.pairing_failed") == ["timeout"]


async def test_no_pairing_when_audit_events_cannot_be_stored(tmp_path: Path) -> None:
    handheld_bench = await start_bench(tmp_path, storage_full=True)
    try:
        issued = await handheld_bench.service.issue_pairing_code()
        assert (
            await refused(handheld_bench.handheld().pair(handheld_bench.address, issued.code))
            == "storage_full"
        )
    finally:
        await handheld_bench.server.stop()
    assert handheld_bench.store.devices() == ()


# -- sessions and the attack matrix ---------------------------------------------------------


async def test_operations_reach_the_backend_and_results_come_back(handheld_bench: Bench) -> None:
    handheld = await paired(handheld_bench)
    async with await handheld.open_session(handheld_bench.address) as session:
        assert session.operator == OPERATOR
        tickets = await session.tickets()
        assert [t["work_order"] for t in tickets] == [WORK_ORDER]
        assert (await session.seal_state("SL-0001"))["state"] == "sealed"
        started = await session.unseal("SL-0001", WORK_ORDER)
        assert started["status"] == "pending"
        done = await session.result(started["op_id"])
        assert (done["status"], done["state"], done["log_index"]) == ("done", "unsealed", 7)
        sealed = await session.seal("SL-0001", WORK_ORDER, tickets[0]["ticket_id"])
        assert sealed["op"] == "seal"
        with pytest.raises(HandheldRefusedError) as info:
            await session.seal_state("SL-9999")
        assert info.value.code == "unknown_seal"
        answer = await session.request({"op": "format_disk"})
        assert (answer["ok"], answer["error"]) == (False, "bad_request")
    request = handheld_bench.backend.executed[0]
    assert (request.operator, request.op, request.seal_id) == (OPERATOR, "unseal", "SL-0001")
    assert request.device_key == ed25519_public_bytes(handheld_bench.world.handheld)
    assert request.ticket_id == tickets[0]["ticket_id"]
    assert [e.data["op"] for e in handheld_bench.events_of("handheld.request")] == [
        "list_tickets",
        "seal_state",
        "list_tickets",
        "unseal",
        "result",
        "seal",
        "seal_state",
        "format_disk",
    ]
    async with asyncio.timeout(5):
        while not handheld_bench.events_of("handheld.session_closed"):
            await asyncio.sleep(0.01)
    assert len(handheld_bench.events_of("handheld.session_opened")) == 1
    closed = handheld_bench.events_of("handheld.session_closed")
    assert [e.data["requests"] for e in closed] == [8]


async def test_results_of_other_operators_are_not_shown(handheld_bench: Bench) -> None:
    handheld = await paired(handheld_bench)
    await handheld_bench.backend.execute(
        handheld_bench.world.request(handheld_bench.world.ticket(), operator="op-0099")
    )
    async with await handheld.open_session(handheld_bench.address) as session:
        with pytest.raises(HandheldRefusedError) as info:
            await session.result("op-1")
    assert info.value.code == "unknown_operation"


async def test_unpaired_handheld_is_refused(handheld_bench: Bench) -> None:
    pin = PairedGateway(GATEWAY_ID, ed25519_public_bytes(handheld_bench.identity), T0)
    stranger = SimulatedHandheld(handheld_bench.handheld().identity, pin)
    assert await refused(stranger.open_session(handheld_bench.address)) == "unpaired_device"
    denied = handheld_bench.events_of("handheld.session_denied")
    assert [e.data["reason"] for e in denied] == ["unpaired_device"]
    assert denied[0].subject == GATEWAY_ID


async def test_stolen_certificate_without_the_device_key_gets_no_session(
    handheld_bench: Bench,
) -> None:
    await paired(handheld_bench)
    victim = ed25519_public_bytes(handheld_bench.world.handheld)
    thief = Ed25519PrivateKey.generate()
    stream = await connect(handheld_bench.address)
    try:
        eph = X25519PrivateKey.generate().public_key().public_bytes_raw()
        await stream.write(SessionHello(victim, eph, os.urandom(16)))
        accept = await stream.read()
        assert isinstance(accept, SessionAccept)
        await stream.write(SessionConfirm(thief.sign(b"anything"), os.urandom(32)))
        answer = await stream.read()
    finally:
        await stream.close()
    assert answer == Refusal(
        "stolen_certificate_no_key", "session not signed by the paired device key"
    )
    assert handheld_bench.reasons("handheld.session_denied") == ["stolen_certificate_no_key"]


async def test_replayed_request_is_rejected(handheld_bench: Bench) -> None:
    handheld = await paired(handheld_bench)
    session = await handheld.open_session(handheld_bench.address)
    try:
        first = session.channel.seal_request({"op": "list_tickets"})
        assert (await session.exchange(first))["ok"] is True
        assert await refused(session.exchange(first)) == "replayed_request"
    finally:
        await session.close()
    assert handheld_bench.reasons("handheld.session_denied") == ["replayed_request"]
    assert len(handheld_bench.events_of("handheld.request")) == 1


async def test_replay_into_a_new_session_is_rejected(handheld_bench: Bench) -> None:
    handheld = await paired(handheld_bench)
    async with await handheld.open_session(handheld_bench.address) as old:
        captured = old.channel.seal_request({"op": "unseal", "seal_id": "SL-0001"})
    async with await handheld.open_session(handheld_bench.address) as new:
        assert await refused(new.exchange(captured)) == "bad_record"
    assert handheld_bench.backend.executed == []


async def test_reordered_request_is_rejected(handheld_bench: Bench) -> None:
    handheld = await paired(handheld_bench)
    session = await handheld.open_session(handheld_bench.address)
    try:
        session.channel.seal_request({"op": "list_tickets"})  # counter 1, held back
        second = session.channel.seal_request({"op": "list_tickets"})
        assert await refused(session.exchange(second)) == "reordered_request"
    finally:
        await session.close()
    assert handheld_bench.reasons("handheld.session_denied") == ["reordered_request"]
    assert handheld_bench.events_of("handheld.request") == []


async def test_tampered_ciphertext_is_rejected(handheld_bench: Bench) -> None:
    handheld = await paired(handheld_bench)
    session = await handheld.open_session(handheld_bench.address)
    try:
        record = session.channel.seal_request({"op": "seal_state", "seal_id": "SL-0001"})
        flipped = bytes([record.ct[0] ^ 1]) + record.ct[1:]
        assert await refused(session.exchange(Record(record.kind, 1, flipped))) == "bad_record"
    finally:
        await session.close()
    assert handheld_bench.reasons("handheld.session_denied") == ["bad_record"]


async def test_revoked_certificate_loses_its_sessions(handheld_bench: Bench) -> None:
    handheld = await paired(handheld_bench)
    handheld_bench.revoked.append(handheld_bench.world.revoke(operators=[OPERATOR]))
    assert await refused(handheld.open_session(handheld_bench.address)) == "certificate_revoked"


async def test_certificate_expiry_ends_sessions(handheld_bench: Bench) -> None:
    handheld = await paired(handheld_bench)
    handheld_bench.clock.advance(366 * 24 * HOUR)
    assert await refused(handheld.open_session(handheld_bench.address)) == "certificate_expired"


async def test_a_handheld_rejects_an_impostor_gateway(handheld_bench: Bench) -> None:
    handheld = await paired(handheld_bench)
    assert handheld.paired is not None
    impostor = PairedGateway(GATEWAY_ID, ed25519_public_bytes(Ed25519PrivateKey.generate()), T0)
    handheld.paired = impostor
    with pytest.raises(AuthError) as info:
        await handheld.open_session(handheld_bench.address)
    assert info.value.code == "bad_gateway"


async def test_garbage_and_wrong_first_messages_are_denied(handheld_bench: Bench) -> None:
    stream = await connect(handheld_bench.address)
    await stream.write(Record(RecordKind.REQUEST, 1, bytes(20)))
    answer = await stream.read()
    await stream.close()
    assert answer == Refusal("unexpected_message", "Record")
    reader, writer = await asyncio.open_connection(
        handheld_bench.server.address.host, handheld_bench.server.address.port
    )
    writer.write(encode_frame(b"{not json"))
    await writer.drain()
    reply = decode_message((await reader.read(4096))[4:])
    writer.close()
    await writer.wait_closed()
    assert isinstance(reply, Refusal) and reply.reason == "malformed"
    assert handheld_bench.reasons("handheld.session_denied") == ["unexpected_message", "malformed"]


def test_responses_are_bound_to_their_request() -> None:
    gateway_key, device = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pin = PairedGateway(GATEWAY_ID, ed25519_public_bytes(gateway_key), T0)
    client = HandheldHandshake(device, pin)
    server = GatewayHandshake(gateway_key, GATEWAY_ID, client.hello())
    gw = server.on_confirm(client.on_accept(server.accept()))
    hh = client.channel()
    assert hh.session_id == gw.session_id
    one, two = hh.seal_request({"n": 1}), hh.seal_request({"n": 2})
    assert gw.open_request(one) == {"n": 1}
    answer = gw.seal_response({"for": 1}, one)
    with pytest.raises(AuthError):
        hh.open_response(answer, two)
    assert hh.open_response(answer, one) == {"for": 1}
    with pytest.raises(AuthError):
        hh.open_response(Record(RecordKind.RESPONSE, 2, answer.ct), two)


# -- transport, console and CLIs ------------------------------------------------------------


async def test_pairing_and_session_over_a_unix_socket(tmp_path: Path) -> None:
    sock = Path("/tmp") / f"sealgw-hh-{os.getpid()}-{id(tmp_path)}.sock"
    handheld_bench = await start_bench(tmp_path, listen=f"unix:{sock}")
    try:
        handheld = await paired(handheld_bench)
        async with await handheld.open_session(handheld_bench.address) as session:
            assert (await session.seal_state("SL-0002"))["state"] == "unsealed"
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    finally:
        await handheld_bench.server.stop()
    assert not sock.exists()


def test_listen_strings() -> None:
    assert str(parse_listen("tcp:127.0.0.1:7421")) == "tcp:127.0.0.1:7421"
    assert parse_listen("tcp:[::1]:80").host == "::1"
    assert parse_listen("unix:/run/sealgw/hh.sock").path == "/run/sealgw/hh.sock"
    for bad in ("127.0.0.1:7421", "tcp:host", "tcp:h:99999", "udp:h:1", "unix:"):
        with pytest.raises(ConfigError, match=r"handheld\.listen"):
            parse_listen(bad)


async def test_sealgw_pair_prints_a_fresh_code_from_the_daemon(
    handheld_bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    control = ControlServer(tmp_path / "ctl.sock", {"pair": handheld_bench.service.pair_command})
    await control.start()
    try:
        parser = argparse.ArgumentParser()
        register_pair_command(parser.add_subparsers())
        args = parser.parse_args(["pair", "--socket", str(control.path)])
        assert await asyncio.to_thread(cmd_pair, args) == 0
    finally:
        await control.stop()
    out = capsys.readouterr().out
    code = out.split()[2] + out.split()[3]
    assert len(code) == 8 and code.isdigit()
    assert key_fingerprint(ed25519_public_bytes(handheld_bench.identity)) in out
    await handheld_bench.handheld().pair(handheld_bench.address, code)
    assert len(handheld_bench.store.devices()) == 1
    text = format_code({"code": "12345678", "expires_at": "x", "ttl_s": 300})
    assert text.startswith("pairing code   1234 5678")


async def test_handheld_cli_plays_a_field_worker(
    handheld_bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "hh"
    authority_dir = tmp_path / "master"

    def run(*argv: str) -> dict[str, object] | list[object]:
        assert (
            handheld_cli.main(["--dir", str(directory), "--gateway", handheld_bench.address, *argv])
            == 0
        )
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    await asyncio.to_thread(
        run,
        "enroll",
        "--authority",
        str(authority_dir),
        "--operator",
        OPERATOR,
        "--name",
        "Li Wei",
        "--role",
        "meter_installer",
        "--district",
        "district-1",
        "--valid-from",
        str(T0 - 24 * HOUR),
    )
    assert stat.S_IMODE(os.stat(directory / "device.key").st_mode) == 0o600
    issued = await handheld_bench.service.issue_pairing_code()
    fingerprint = key_fingerprint(ed25519_public_bytes(handheld_bench.identity))
    pairing = await asyncio.to_thread(
        run, "pair", "--code", issued.code, "--gateway-key", fingerprint
    )
    assert pairing == {"paired": GATEWAY_ID, "gateway_key": fingerprint, "paired_at": T0 + HOUR}
    tickets = await asyncio.to_thread(run, "tickets")
    assert isinstance(tickets, list) and tickets[0]["work_order"] == WORK_ORDER  # type: ignore[index]
    started = await asyncio.to_thread(run, "unseal", "SL-0001", "--work-order", WORK_ORDER)
    assert isinstance(started, dict) and started["status"] == "pending"
    result = await asyncio.to_thread(run, "result", str(started["op_id"]))
    assert isinstance(result, dict) and result["state"] == "unsealed"
    state = await asyncio.to_thread(run, "state", "SL-0001")
    assert isinstance(state, dict) and state["state"] == "unsealed"
    code = await asyncio.to_thread(
        handheld_cli.main,
        [
            "--dir",
            str(directory),
            "--gateway",
            handheld_bench.address,
            "seal",
            "SL-0003",
            "--work-order",
            WORK_ORDER,
        ],
    )
    assert code == 1
    assert "unknown_ticket" in capsys.readouterr().err


# -- codecs (hypothesis) --------------------------------------------------------------------


def _tamper_certificate(handheld_bench: Bench) -> SimulatedHandheld:
    handheld = handheld_bench.handheld()
    doc = json.loads(handheld.identity.certificate)
    doc["body"]["roles"] = ["district_manager"]
    from firmware_sim.handheld.client import HandheldIdentity

    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    return SimulatedHandheld(HandheldIdentity(text, handheld_bench.world.handheld))


_b = st.binary
_MESSAGES = st.one_of(
    st.builds(
        PairHello,
        st.text(max_size=50),
        _b(min_size=32, max_size=32).map(lambda e: b"A" + e),
        _b(min_size=16, max_size=16),
    ),
    st.builds(
        PairChallenge,
        st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
        _b(min_size=32, max_size=32),
        _b(min_size=32, max_size=32).map(lambda e: b"B" + e),
        _b(min_size=16, max_size=16),
        _b(min_size=64, max_size=64),
    ),
    st.builds(PairProof, _b(min_size=64, max_size=64), _b(min_size=32, max_size=32)),
    st.builds(PairDone, st.integers(0, 2**53 - 1), _b(min_size=32, max_size=32)),
    st.builds(
        Record,
        st.sampled_from(RecordKind),
        st.integers(0, 2**32 - 1),
        _b(min_size=16, max_size=200),
    ),
    st.builds(
        Refusal, st.from_regex(r"[a-z][a-z0-9_]{0,47}", fullmatch=True), st.text(max_size=200)
    ),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_MESSAGES)
def test_messages_round_trip(message: Message) -> None:
    assert decode_message(encode_message(message)) == message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_decode_message_never_crashes_on_garbage(data: bytes) -> None:
    try:
        message = decode_message(data)
    except ProtocolError:
        return
    assert decode_message(encode_message(message)) == message  # accepted means well-formed


@settings(max_examples=300)
@given(_MESSAGES, st.integers(1, 7))
def test_frames_decode_whole_or_in_pieces(message: Message, step: int) -> None:
    frame = encode_frame(encode_message(message))
    buf = b""
    found = None
    for i in range(0, len(frame), step):
        buf += frame[i : i + step]
        used, payload = decode_frame(buf)
        if payload is not None:
            assert used == len(frame)
            found = payload
    assert found is not None and decode_message(found) == message
    used, payload = decode_frame(frame * 3)
    assert used == len(frame) and payload == encode_message(message)


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_decode_frame_never_crashes(data: bytes) -> None:
    try:
        used, payload = decode_frame(data)
    except ProtocolError:
        assert int.from_bytes(data[:4], "big") > MAX_FRAME
        return
    assert (payload is None and used == 0) or used == 4 + len(payload or b"")


def test_oversized_frames_are_refused() -> None:
    with pytest.raises(ProtocolError):
        decode_frame((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError):
        encode_frame(bytes(MAX_FRAME + 1))


# -- protocol versions ------------------------------------------------------------------------


async def test_an_old_version_handheld_gets_a_refusal_it_can_read(handheld_bench: Bench) -> None:
    """A version 1 handheld (HMAC-bound code) is refused in version 1's own refusal layout."""
    await handheld_bench.service.issue_pairing_code()
    host, port = handheld_bench.address.removeprefix("tcp:").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    v1_hello = {
        "v": 1,
        "type": "pair_hello",
        "cert": handheld_bench.handheld().identity.certificate,
        "eph": "A" * 43,
        "nonce": "A" * 22,
    }
    writer.write(encode_frame(json.dumps(v1_hello).encode()))
    header = await reader.readexactly(4)
    answer = json.loads(await reader.readexactly(int.from_bytes(header, "big")))
    writer.close()
    await writer.wait_closed()
    assert answer["v"] == 1 and answer["type"] == "refusal"
    assert answer["reason"] == "unsupported_version"
    assert "version 1 is not supported" in answer["detail"] and "version 2" in answer["detail"]
    assert handheld_bench.reasons("handheld.session_denied") == ["unsupported_version"]
    assert handheld_bench.store.devices() == ()


async def test_a_future_version_is_refused_in_todays_version(handheld_bench: Bench) -> None:
    stream = await connect(handheld_bench.address)
    writer = stream._writer
    writer.write(encode_frame(b'{"type":"pair_hello","v":3}'))
    answer = await stream.read()
    await stream.close()
    assert isinstance(answer, Refusal) and answer.reason == "unsupported_version"


def test_a_refusal_of_version_1_is_read_and_other_messages_are_not() -> None:
    old = decode_message(
        b'{"detail":"unsupported handheld protocol version 2","reason":"malformed","type":"refusal","v":1}'
    )
    assert old == Refusal("malformed", "unsupported handheld protocol version 2")
    with pytest.raises(ProtocolError, match="version 1 is not supported"):
        decode_message(
            b'{"ctr":0,"ct":"AAAAAAAAAAAAAAAAAAAAAA","kind":"ready","type":"record","v":1}'
        )
    assert encode_message(Refusal("unsupported_version", "x"), 1).startswith(b'{"detail"')
    with pytest.raises(ProtocolError):
        encode_message(PairDone(0, bytes(32)), 1)
