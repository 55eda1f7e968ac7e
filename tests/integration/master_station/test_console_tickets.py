"""Work orders from the console to a gateway's real authorization over real Mosquitto: the
ticket is signed with the master's key, the gateway stores it (accepted), and a revocation
follows it. A ticket whose role may not do the operations is refused before signing. A ticket
the gateway refuses shows the gateway's reason code, on the answer and in the listing."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.auth.authorization import Authorization
from gateway.auth.config import AuthorizationSection
from gateway.protocol.clock import SystemClock
from gateway.protocol.tickets import x25519_public_bytes
from gateway.uplink.commands import CommandDispatcher
from master_station.authority import MasterAuthority
from master_station.console.app import create_app
from master_station.ledger.factory import open_ledger
from master_station.listener import ListenerOptions
from tests.fixtures.console import ConsoleClient, add_users, district_day, serve_console
from tests.fixtures.fake_buffer import FakeEventBuffer
from tests.fixtures.mosquitto import Broker
from tests.fixtures.uplink import make_uplink, running


@dataclass(frozen=True)
class _Identity:
    id: str
    district: str
    state_dir: Path


async def test_a_ticket_issued_in_the_console_is_accepted_by_the_gateway(
    mosquitto: Broker, tmp_path: Path
) -> None:
    authority = MasterAuthority.create(tmp_path / "master")
    authority.provision_lock(bytes.fromhex("0000000000000001"))
    key_file = tmp_path / "ms.pub"
    key_file.write_text(authority.public_key_bytes.hex())
    state = tmp_path / "gw-state"
    state.mkdir()
    gateway = Authorization(_Identity("gw-a", "d-1", state),
                            AuthorizationSection(master_key_file=key_file), SystemClock())  # fmt: skip
    credential = X25519PrivateKey.from_private_bytes((state / "credential.key").read_bytes())
    authority.set_gateway_credential("gw-a", x25519_public_bytes(credential))
    dispatcher = CommandDispatcher()
    gateway.register(dispatcher)
    ledger = open_ledger(tmp_path / "ledger.db")
    add_users(ledger)
    district_day(ledger)
    broker = ListenerOptions(broker_url=mosquitto.url)
    app = create_app(ledger, authority=authority, broker=broker, tls=True)
    uplink = make_uplink(mosquitto.url, FakeEventBuffer("gw-a"), dispatcher=dispatcher,
                         gateway="gw-a")  # fmt: skip
    try:
        async with running(uplink, commands_from=mosquitto):
            with serve_console(app, tmp_path) as (base, cert):
                client = ConsoleClient(base, cert)
                try:
                    await asyncio.to_thread(client.login, "mgr-1")
                    form = {"gateway": "gw-a", "work_order": "WO-77", "flow": "meter_replace",
                            "operator": "op-1", "role": "meter_installer", "seals": "SL-A1",
                            "ops": ["unseal", "seal"], "valid_minutes": "60", "max_uses": "2"}  # fmt: skip
                    page = await asyncio.to_thread(client.submit, "/work-orders", "/work-orders",
                                                   form)  # fmt: skip
                    assert page.status_code == 200, page.text
                    found = re.search(r'data-ticket-id="([0-9a-f]{32})" data-status="(\w+)"',
                                      page.text)  # fmt: skip
                    assert found is not None and found.group(2) == "accepted", page.text
                    ticket_id = found.group(1)
                    assert gateway.tickets.ticket(ticket_id) is not None
                    wrong = {**form, "role": "auditor", "work_order": "WO-78"}
                    refused = await asyncio.to_thread(client.submit, "/work-orders",
                                                      "/work-orders", wrong)  # fmt: skip
                    assert refused.status_code == 400 and "role rules" in refused.text
                    revoked = await asyncio.to_thread(
                        client.submit, "/work-orders", f"/work-orders/{ticket_id}/revoke",
                        {"note": "work order cancelled"})  # fmt: skip
                    assert revoked.status_code == 303
                    listing = (await asyncio.to_thread(client.get, "/work-orders")).text
                    assert f'data-ticket-id="{ticket_id}" data-status="revoked"' in listing
                finally:
                    client.close()
    finally:
        gateway.close()
        ledger.close()
    audit = open_ledger(tmp_path / "ledger.db")
    try:
        actions = [r[0] for r in audit.db.query(
            "SELECT action FROM console_audit WHERE target = ? ORDER BY at",
            (f"ticket:{ticket_id}",))]  # fmt: skip
        assert actions == ["ticket_issued", "ticket_revoked"]
    finally:
        audit.close()


async def test_a_ticket_the_gateway_refuses_shows_its_reason(
    mosquitto: Broker, tmp_path: Path
) -> None:
    authority = MasterAuthority.create(tmp_path / "master")
    authority.provision_lock(bytes.fromhex("0000000000000001"))
    key_file = tmp_path / "ms.pub"
    key_file.write_text(authority.public_key_bytes.hex())
    state = tmp_path / "gw-state"
    state.mkdir()
    gateway = Authorization(_Identity("gw-a", "d-1", state),
                            AuthorizationSection(master_key_file=key_file), SystemClock())  # fmt: skip
    stale = X25519PrivateKey.generate()  # the gateway made a new credential key since
    authority.set_gateway_credential("gw-a", x25519_public_bytes(stale))
    dispatcher = CommandDispatcher()
    gateway.register(dispatcher)
    ledger = open_ledger(tmp_path / "ledger.db")
    add_users(ledger)
    district_day(ledger)
    app = create_app(ledger, authority=authority, broker=ListenerOptions(broker_url=mosquitto.url),
                     tls=True)  # fmt: skip
    uplink = make_uplink(mosquitto.url, FakeEventBuffer("gw-a"), dispatcher=dispatcher,
                         gateway="gw-a")  # fmt: skip
    try:
        async with running(uplink, commands_from=mosquitto):
            with serve_console(app, tmp_path) as (base, cert):
                client = ConsoleClient(base, cert)
                try:
                    await asyncio.to_thread(client.login, "mgr-1")
                    form = {"gateway": "gw-a", "work_order": "WO-79", "flow": "meter_replace",
                            "operator": "op-1", "role": "meter_installer", "seals": "SL-A1",
                            "ops": ["unseal", "seal"], "valid_minutes": "60", "max_uses": "2"}  # fmt: skip
                    page = await asyncio.to_thread(client.submit, "/work-orders", "/work-orders",
                                                   form)  # fmt: skip
                    answer = re.search(r'data-testid="ticket-result" data-ticket-id="(\w+)"'
                                       r' data-status="(\w+)" data-reason="(\w+)"', page.text)  # fmt: skip
                    assert answer is not None, page.text
                    ticket_id, status, reason = answer.groups()
                    assert (status, reason) == ("refused", "wrong_recipient")
                    assert "encrypted to another credential key" in page.text
                    listing = (await asyncio.to_thread(client.get, "/work-orders")).text
                    row = re.search(rf'data-ticket-id="{ticket_id}".*?</tr>', listing, re.S)
                    assert row is not None and 'data-status="refused"' in row.group(0)
                    shown = re.search(r'data-testid="ticket-answer" data-reason="(\w+)">(.*?)</td>',
                                      row.group(0), re.S)  # fmt: skip
                    assert shown is not None and shown.group(1) == "wrong_recipient"
                    assert "encrypted to another credential key" in shown.group(2)
                    assert gateway.tickets.ticket(ticket_id) is None
                finally:
                    client.close()
    finally:
        gateway.close()
        ledger.close()
