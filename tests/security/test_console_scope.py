"""District scope and read-only roles on every console route (docs/security.md, "Master
console"): a manager reaching into another district by URL, by form or through the live stream,
a ticket naming another district's seal, an auditor posting anything. Each through the real
console over HTTPS (uvicorn on a free port), a real SQLite ledger and a real master directory."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.protocol.tickets import x25519_public_bytes
from master_station.authority import MasterAuthority
from master_station.console.app import create_app
from master_station.ledger.factory import open_ledger
from tests.fixtures.console import (
    ConsoleClient,
    add_users,
    csrf_of,
    district_day,
    fold,
    serve_console,
)

TICKET = {"flow": "meter_replace", "operator": "op-1", "role": "meter_installer",
          "ops": ["unseal", "seal"], "valid_minutes": "60", "max_uses": "2"}  # fmt: skip


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    authority = MasterAuthority.create(tmp_path / "master")
    stock = {"SL-A1": "0000000000000001", "SL-B1": "00000000000000b1", "SL-NEW": "00000000000000c1"}
    for lock in stock.values():
        authority.provision_lock(bytes.fromhex(lock))
    (tmp_path / "master" / "seals.json").write_text(json.dumps(stock))  # provision-lock --seal
    for gateway in ("gw-a", "gw-b"):
        key = x25519_public_bytes(X25519PrivateKey.generate())
        authority.set_gateway_credential(gateway, key)
    ledger = open_ledger(tmp_path / "ledger.db")
    add_users(ledger)
    chains = district_day(ledger)
    app = create_app(ledger, authority=authority, tls=True, poll_s=0.1)
    clients: list[ConsoleClient] = []
    try:
        with serve_console(app, tmp_path) as (base, cert):

            def login(user: str) -> ConsoleClient:
                client = ConsoleClient(base, cert)
                clients.append(client)
                assert client.login(user).status_code == 303
                return client

            yield {"ledger": ledger, "chains": chains, "login": login}
            for client in clients:
                client.close()
    finally:
        ledger.close()


def test_a_manager_cannot_put_another_districts_seal_on_a_ticket(world: dict[str, Any]) -> None:
    """The scope was checked on the ticket's gateway only, and the seal's lock came from the
    master's whole stock: a manager of d-1 got a credential for d-2's lock, on their own
    gateway, by typing its seal id."""
    manager = world["login"]("mgr-1")
    for seal in ("SL-B1", "SL-NEW"):  # another district's seal; one no gateway reported yet
        refused = _issue(manager, {**TICKET, "gateway": "gw-a", "work_order": "WO-X",
                                   "seals": f"SL-A1,{seal}"})  # fmt: skip
        assert refused.status_code == 403 and "seal_out_of_scope" in refused.text, seal
    assert world["ledger"].db.query("SELECT COUNT(*) FROM console_tickets") == [(0,)]
    own = _issue(manager, {**TICKET, "gateway": "gw-a", "work_order": "WO-A", "seals": "SL-A1"})
    assert own.status_code == 200 and 'data-testid="ticket-result"' in own.text
    admin = world["login"]("admin")  # an admin may name a provisioned seal not yet reported
    new = _issue(admin, {**TICKET, "gateway": "gw-a", "work_order": "WO-N", "seals": "SL-NEW"})
    assert new.status_code == 200 and 'data-testid="ticket-result"' in new.text


def test_every_route_keeps_a_manager_in_their_district(world: dict[str, Any]) -> None:
    ledger, chains = world["ledger"], world["chains"]
    owner = world["login"]("mgr-1")
    issued = _issue(owner, {**TICKET, "gateway": "gw-a", "work_order": "WO-A", "seals": "SL-A1"})
    found = re.search(r'data-ticket-id="([0-9a-f]{32})"', issued.text)
    assert found is not None
    ticket_a = found.group(1)
    alarm_a = next(e for e in chains["gw-a"].events if e.type == "seal.tamper").id
    other = world["login"]("mgr-2")
    stream = _FirstAlarm(other)
    assert stream.opened.wait(10)
    for path in ("/seals/gw-a/SL-A1", f"/alarms/{alarm_a}"):
        answer = other.get(path)
        assert answer.status_code == 403 and "out_of_scope" in answer.text, path
    token = csrf_of(other.get("/districts").text)
    posts = {f"/alarms/{alarm_a}/acknowledge": {"note": "x"},
             f"/alarms/{alarm_a}/close": {"note": "x"},
             f"/work-orders/{ticket_a}/revoke": {"note": "x"},
             "/work-orders": {**TICKET, "gateway": "gw-a", "work_order": "WO-Y",
                              "seals": "SL-A1"}}  # fmt: skip
    for path, form in posts.items():
        answer = other.http.post(path, data={**form, "csrf_token": token})
        assert answer.status_code == 403 and "out_of_scope" in answer.text, path
    for page in ("/districts", "/alarms", "/alarms?status=closed", "/work-orders", "/trends"):
        text = other.get(page).text
        assert "gw-a" not in text and "d-1" not in text and "SL-A" not in text, page
    assert other.get("/api/summary").json()["open_alarms_by_district"] == {"d-2": 2}
    assert set(other.get("/api/trends?days=90").json()["districts"]) == {"d-2"}
    fold(ledger, [chains["gw-a"].add("seal.tamper", "SL-A3", {}).payload])
    theirs = chains["gw-b"].add("seal.tamper", "SL-B3", {})
    fold(ledger, [theirs.payload])
    assert stream.alarm.wait(10)
    assert stream.first is not None and stream.first["alarm_id"] == theirs.id  # never gw-a's
    statuses = ledger.db.query("SELECT status FROM console_alarms WHERE alarm_id = ?", (alarm_a,))
    assert statuses == [("open",)]
    tickets = ledger.db.query("SELECT status FROM console_tickets WHERE ticket_id = ?", (ticket_a,))
    assert tickets != [("revoked",)]


def test_an_auditor_changes_nothing_anywhere(world: dict[str, Any]) -> None:
    ledger, chains = world["ledger"], world["chains"]
    auditor = world["login"]("auditor")
    alarm_a = next(e for e in chains["gw-a"].events if e.type == "seal.tamper").id
    token = csrf_of(auditor.get("/districts").text)
    posts = {f"/alarms/{alarm_a}/acknowledge": {"note": "x"},
             f"/alarms/{alarm_a}/close": {"note": "x"},
             f"/work-orders/{'ab' * 16}/revoke": {"note": "x"},
             "/work-orders": {**TICKET, "gateway": "gw-a", "work_order": "WO-Z",
                              "seals": "SL-A1"}}  # fmt: skip
    for path, form in posts.items():
        answer = auditor.http.post(path, data={**form, "csrf_token": token})
        assert answer.status_code == 403 and "read_only_role" in answer.text, path
    page = auditor.get(f"/alarms/{alarm_a}").text
    assert "ack-form" not in page and "close-form" not in page
    assert ledger.db.query("SELECT COUNT(*) FROM console_audit") == [(0,)]
    assert ledger.db.query("SELECT COUNT(*) FROM console_tickets") == [(0,)]
    assert ledger.db.query("SELECT DISTINCT status FROM console_alarms") == [("open",)]


def test_a_district_manager_without_districts_sees_nothing(world: dict[str, Any]) -> None:
    """A district manager's row whose district list is empty (edited, or written by an older
    tool) was treated as unscoped and saw every district."""
    ledger = world["ledger"]
    with ledger.db.transaction() as tx:
        tx.execute("UPDATE console_users SET districts = '[]' WHERE username = 'mgr-1'")
    manager = world["login"]("mgr-1")
    assert 'data-testid="district-card"' not in manager.get("/districts").text
    assert manager.get("/api/summary").json() == {"open_alarms": 0, "open_alarms_by_district": {}}
    assert manager.get("/seals/gw-a/SL-A1").status_code == 403
    assert 'data-testid="alarm-row"' not in manager.get("/alarms").text


def _issue(client: ConsoleClient, form: dict[str, Any]) -> httpx.Response:
    return client.submit("/work-orders", "/work-orders", form)


class _FirstAlarm:
    """The first alarm a user's live stream delivers."""

    def __init__(self, client: ConsoleClient) -> None:
        self.opened = threading.Event()
        self.alarm = threading.Event()
        self.first: dict[str, Any] | None = None
        threading.Thread(target=self._run, args=(client,), daemon=True).start()

    def _run(self, client: ConsoleClient) -> None:
        try:
            with client.http.stream("GET", "/api/alarms/stream", timeout=30) as stream:
                self.opened.set()
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        self.first = json.loads(line[6:])
                        self.alarm.set()
                        return
        except httpx.HTTPError:
            pass
