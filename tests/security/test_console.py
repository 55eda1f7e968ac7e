"""Attacks on the master console (docs/security.md, "Master console"): each through the real
console over HTTPS (uvicorn, a real SQLite ledger), refused with a reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from master_station.console.accounts import LoginLimiter
from master_station.console.app import create_app
from master_station.ledger.factory import open_ledger
from tests.fixtures.console import PASSWORD, ConsoleClient, add_users, district_day, serve_console


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[str, Path, Any]]:
    ledger = open_ledger(tmp_path / "ledger.db")
    add_users(ledger)
    district_day(ledger)
    app = create_app(ledger, tls=True, limiter=LoginLimiter(max_failures=3, window_s=600))
    try:
        with serve_console(app, tmp_path) as (base, cert):
            yield base, cert, ledger
    finally:
        ledger.close()


@pytest.fixture
def client(console: tuple[str, Path, Any]) -> Iterator[ConsoleClient]:
    c = ConsoleClient(console[0], console[1])
    yield c
    c.close()


def test_wrong_password_is_refused_without_a_session(client: ConsoleClient) -> None:
    answer = client.login("mgr-1", "not the password at all")
    assert answer.status_code == 401
    assert "sealgw_session" not in answer.headers.get("set-cookie", "")
    assert client.get("/districts").headers["location"] == "/login"
    assert client.login("nobody", PASSWORD).status_code == 401  # unknown user: same answer


def test_login_is_rate_limited(client: ConsoleClient) -> None:
    for _ in range(3):
        assert client.login("mgr-1", "wrong password, again").status_code == 401
    limited = client.login("mgr-1")  # the right password, too late
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    assert "sealgw_session" not in limited.headers.get("set-cookie", "")


def test_a_post_without_csrf_token_is_refused(client: ConsoleClient, console: Any) -> None:
    assert client.login("mgr-1").status_code == 303
    alarm_id = _first_alarm(client)
    refused = client.http.post(f"/alarms/{alarm_id}/close", data={"note": "forged"})
    assert refused.status_code == 403
    assert "csrf_missing_or_wrong" in refused.text
    wrong = client.http.post(f"/alarms/{alarm_id}/close", data={"note": "x", "csrf_token": "guess"})
    assert wrong.status_code == 403
    status = console[2].db.query(
        "SELECT status FROM console_alarms WHERE alarm_id = ?", (alarm_id,)
    )
    assert status[0][0] == "open"
    cross = client.submit(f"/alarms/{alarm_id}", f"/alarms/{alarm_id}/close", {"note": "x"})
    assert cross.status_code == 303  # the same form with its token is accepted


def test_a_post_from_another_origin_is_refused(client: ConsoleClient) -> None:
    assert client.login("mgr-1").status_code == 303
    alarm_id = _first_alarm(client)
    token = _token(client, f"/alarms/{alarm_id}")
    refused = client.http.post(f"/alarms/{alarm_id}/acknowledge",
                               data={"note": "x", "csrf_token": token},
                               headers={"origin": "https://evil.example"})  # fmt: skip
    assert refused.status_code == 403 and "cross_origin" in refused.text


def test_login_without_its_csrf_token_is_refused(client: ConsoleClient) -> None:
    refused = client.http.post("/login", data={"username": "admin", "password": PASSWORD})
    assert refused.status_code == 403
    assert "sealgw_session" not in refused.headers.get("set-cookie", "")


def test_a_manager_cannot_open_another_districts_seal(client: ConsoleClient, console: Any) -> None:
    assert client.login("mgr-1").status_code == 303
    assert client.get("/seals/gw-a/SL-A1").status_code == 200
    refused = client.get("/seals/gw-b/SL-B1")
    assert refused.status_code == 403 and "out_of_scope" in refused.text
    assert "seal-detail" not in refused.text and "seal-timeline" not in refused.text
    other_alarm = console[2].db.query(
        "SELECT alarm_id FROM console_alarms WHERE gateway = 'gw-b' LIMIT 1"
    )[0][0]  # an id the manager could guess or was sent
    assert client.get(f"/alarms/{other_alarm}").status_code == 403
    token = _token(client, "/districts")
    closing = client.http.post(f"/alarms/{other_alarm}/close",
                               data={"note": "not mine", "csrf_token": token})  # fmt: skip
    assert closing.status_code == 403


def test_an_auditor_cannot_post_a_ticket_or_close_an_alarm(client: ConsoleClient) -> None:
    assert client.login("auditor").status_code == 303
    page = client.get("/work-orders")
    assert page.status_code == 200 and 'data-testid="ticket-form"' not in page.text
    token = _token(client, "/work-orders")
    refused = client.http.post("/work-orders", data={
        "csrf_token": token, "gateway": "gw-a", "work_order": "WO-9", "flow": "audit",
        "operator": "op-1", "role": "auditor", "seals": "SL-A1", "ops": "read_state",
    })  # fmt: skip
    assert refused.status_code == 403 and "read_only_role" in refused.text
    alarm_id = _first_alarm(client)
    closing = client.http.post(f"/alarms/{alarm_id}/close", data={"note": "x", "csrf_token": token})
    assert closing.status_code == 403 and "read_only_role" in closing.text


def test_get_and_the_event_stream_never_change_anything(client: ConsoleClient) -> None:
    assert client.login("admin").status_code == 303
    alarm_id = _first_alarm(client)
    assert client.get(f"/alarms/{alarm_id}/close").status_code == 405
    assert client.get("/work-orders/abc/revoke").status_code == 405
    detail = client.get(f"/alarms/{alarm_id}")
    assert 'data-status="open"' in detail.text


def test_headers_and_cookies(client: ConsoleClient) -> None:
    login = client.login("admin")
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie
    page = client.get("/districts")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["strict-transport-security"].startswith("max-age=")
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text and " on" + "click=" not in page.text


def test_logout_ends_the_session(client: ConsoleClient) -> None:
    assert client.login("admin").status_code == 303
    token = _token(client, "/districts")
    saved = dict(client.http.cookies)
    assert client.http.post("/logout", data={"csrf_token": token}).status_code == 303
    client.http.cookies.update(saved)  # the old cookie, replayed after logout
    assert client.get("/districts").headers.get("location") == "/login"


def _token(client: ConsoleClient, page: str) -> str:
    from tests.fixtures.console import csrf_of

    return csrf_of(client.get(page).text)


def _first_alarm(client: ConsoleClient) -> str:
    import re

    found = re.search(r'data-alarm-id="([^"]+)"', client.get("/alarms").text)
    assert found is not None
    return found.group(1)
