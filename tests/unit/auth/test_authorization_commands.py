"""cmd/ticket, cmd/revoke and cmd/cert: signed documents from the master station, acknowledged."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.auth.authorization import CREDENTIAL_KEY_FILE, Authorization
from gateway.auth.ticket_store import load_or_create_credential_key
from gateway.config.loader import parse_config
from gateway.errors import ConfigError
from gateway.protocol.certs import encode_certificate, encode_revocations
from gateway.protocol.clock import SystemClock
from gateway.protocol.tickets import encode_ticket
from gateway.uplink.commands import Command, CommandDispatcher
from master_station.authority import MasterAuthority

GATEWAY = "gw-0001"


def make_gateway(tmp_path: Path, authority: MasterAuthority) -> tuple[Authorization, bytes]:
    key_file = tmp_path / "master.pub"
    key_file.write_text(authority.public_key_bytes.hex())
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    table = {
        "gateway": {"id": GATEWAY, "state_dir": str(state)},
        "authorization": {"master_key_file": str(key_file)},
    }
    config = parse_config(table, base_dir=tmp_path)
    authz = Authorization(config.gateway, config.authorization, SystemClock())
    credential = load_or_create_credential_key(state / CREDENTIAL_KEY_FILE).public_key()
    return authz, credential.public_bytes(Encoding.Raw, PublicFormat.Raw)


def ticket_doc(
    authority: MasterAuthority, gateway_key: bytes, gateway: str = GATEWAY
) -> dict[str, object]:
    lock_id = bytes.fromhex("5ea1000000000001")
    authority.provision_lock(lock_id)
    now = int(time.time())
    ticket = authority.issue_ticket(
        work_order="WO-1",
        flow="meter_replace",
        operator="op-7",
        role="meter_installer",
        gateway=gateway,
        gateway_key=gateway_key,
        seals=[("SL-0001", lock_id)],
        ops=["unseal", "seal"],
        not_before=now - 60,
        not_after=now + 3600,
        max_uses=2,
    )
    return json.loads(encode_ticket(ticket))


async def send(
    dispatcher: CommandDispatcher, name: str, body: dict[str, object]
) -> dict[str, object]:
    command = Command.parse(name, json.dumps({"id": 1, "document": body}).encode())
    return dict(await dispatcher.dispatch(command))


async def test_ticket_revoke_and_cert_commands_are_acknowledged(tmp_path: Path) -> None:
    authority = MasterAuthority.create(tmp_path / "master")
    authz, gateway_key = make_gateway(tmp_path, authority)
    dispatcher = CommandDispatcher()
    authz.register(dispatcher)
    doc = ticket_doc(authority, gateway_key)
    reply = await send(dispatcher, "ticket", doc)
    assert reply["ok"] is True and reply["id"] == 1
    assert reply["result"] == {
        "stored": True,
        "detail": f"ticket {doc['body']['ticket_id']} stored",
    }  # type: ignore[index]
    again = await send(dispatcher, "ticket", doc)
    assert again["ok"] is True and again["result"]["stored"] is False  # type: ignore[index]
    assert authz.tickets.ticket(doc["body"]["ticket_id"]) is not None  # type: ignore[index]

    revocations = json.loads(
        encode_revocations(authority.revoke(tickets=[doc["body"]["ticket_id"]]))
    )  # type: ignore[index]
    reply = await send(dispatcher, "revoke", revocations)
    assert reply["ok"] is True
    assert authz.tickets.ticket(doc["body"]["ticket_id"]) is None  # type: ignore[index]

    device = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    cert = authority.enroll_operator(
        operator="op-7",
        name="Li Wei",
        roles=["meter_installer"],
        districts=["district-1"],
        device_key=device,
        not_before=int(time.time()) - 60,
        not_after=int(time.time()) + 86400,
    )
    reply = await send(dispatcher, "cert", json.loads(encode_certificate(cert)))
    assert reply["ok"] is True
    assert authz.tickets.certificate("op-7") is not None
    authz.close()


async def test_forged_and_misaddressed_tickets_are_refused_with_codes(tmp_path: Path) -> None:
    authority = MasterAuthority.create(tmp_path / "master")
    impostor = MasterAuthority.create(tmp_path / "impostor")
    authz, gateway_key = make_gateway(tmp_path, authority)
    dispatcher = CommandDispatcher()
    authz.register(dispatcher)
    forged = await send(dispatcher, "ticket", ticket_doc(impostor, gateway_key))
    assert forged["ok"] is False and forged["error"] == "bad_signature"
    elsewhere = await send(dispatcher, "ticket", ticket_doc(authority, gateway_key, "gw-other"))
    assert elsewhere["ok"] is False and elsewhere["error"] == "wrong_gateway"
    malformed = await send(dispatcher, "ticket", {"v": 1, "kind": "ticket"})
    assert malformed["ok"] is False and malformed["error"] in {"bad_request", "malformed"}
    assert authz.tickets.ticket_ids() == ()
    authz.close()


def test_missing_or_bad_master_key_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "master.pub"
    bad.write_text("not a key")
    config = parse_config(
        {
            "gateway": {"id": GATEWAY, "state_dir": str(tmp_path / "s")},
            "authorization": {"master_key_file": str(bad)},
        },
        base_dir=tmp_path,
    )
    with pytest.raises(ConfigError) as caught:
        Authorization(config.gateway, config.authorization, SystemClock())
    assert caught.value.key == "authorization.master_key_file"
