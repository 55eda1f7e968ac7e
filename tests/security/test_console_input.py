"""Hostile input to the console (docs/security.md, "Master console"): script in what gateways
report, oversized and chunked bodies, too many fields, redirects off the site, error pages.
Each through the real console over HTTPS (uvicorn on a free port) and a real SQLite ledger."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
import pytest

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
from tests.fixtures.master import ChainBuilder

CONSOLE = Path(__file__).resolve().parents[2] / "master_station" / "console"
SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(2)>'
SSE_SPLIT = "\n\nevent: alarm\ndata: {}\n\n"
RAW = ("<script>alert", "<img src=x", "onerror=alert(2)>")


@pytest.fixture
def console(tmp_path: Path) -> Iterator[dict[str, Any]]:
    ledger = open_ledger(tmp_path / "ledger.db")
    add_users(ledger)
    district_day(ledger)
    try:
        with serve_console(create_app(ledger, tls=True, poll_s=0.1), tmp_path) as (base, cert):
            clients: list[ConsoleClient] = []

            def client(user: str | None = "admin") -> ConsoleClient:
                c = ConsoleClient(base, cert)
                clients.append(c)
                if user is not None:
                    assert c.login(user).status_code == 303
                return c

            yield {"ledger": ledger, "base": base, "cert": cert, "client": client}
            for c in clients:
                c.close()
    finally:
        ledger.close()


def test_script_in_what_a_gateway_reports_is_shown_as_text_everywhere(
    console: dict[str, Any],
) -> None:
    """A compromised gateway names its district, its seals and its events' details with
    markup: every page, attribute, JSON answer and live event carries it as text."""
    admin = console["client"]()
    stream = _Stream(admin)
    assert stream.opened.wait(10)
    chain = ChainBuilder("gw-x")
    chain.add("gateway.started", data={"district": "d-x" + ATTRIBUTE})
    seal = "SL-" + ATTRIBUTE  # subjects are checked ids; `data.seal` of a meter event is not
    chain.add("seal.sealed", "SL-X1", {"wire_loop": "intact", "lock_id": "00000000000000ff",
                                       "operator": SCRIPT, "work_order": ATTRIBUTE})  # fmt: skip
    chain.add("seal.tamper", "SL-X1", {"source": SCRIPT + SSE_SPLIT, "note": ATTRIBUTE})
    tamper = chain.add("theft.suspected", "m-x", {"meter": SCRIPT, "seal": seal,
                                                  "rule": SCRIPT + SSE_SPLIT})  # fmt: skip
    fold(console["ledger"], [e.payload for e in chain.events])
    assert stream.got_alarm.wait(10), "the live event did not arrive"
    pages = ["/districts", "/alarms", f"/alarms/{tamper.id}",
             f"/seals/gw-x/{quote(seal, safe='')}", "/work-orders", "/trends"]  # fmt: skip
    for page in pages:
        html = admin.get(page)
        assert html.status_code == 200, (page, html.status_code)
        for raw in RAW:
            assert raw not in html.text, (page, raw)
    alarm_page = admin.get(f"/alarms/{tamper.id}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in alarm_page
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in alarm_page  # in attributes too
    for api in ("/api/trends?days=7", "/api/summary"):
        answer = admin.get(api)
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["x-content-type-options"] == "nosniff"
    events = stream.events
    assert next(e for e in events if e["alarm_id"] == tamper.id)["seal"] == seal
    assert stream.fields <= {"retry", "id", "event", "data", ""}, stream.fields  # none injected
    assert stream.ids and all(i.strip().isdigit() for i in stream.ids), stream.ids  # change nos


def test_templates_and_scripts_carry_no_inline_code() -> None:
    """The CSP forbids inline script and style; the templates must not need them, every
    template is autoescaped, and the console's script writes text, never HTML."""
    for template in sorted((CONSOLE / "templates").glob("*.html")):
        text = template.read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name
        assert not re.search(r"\son[a-z]+\s*=", text), template.name
        assert not re.search(r"\sstyle\s*=|<style", text), template.name
        assert "|safe" not in text and "autoescape false" not in text, template.name
        assert "javascript:" not in text, template.name
    script = (CONSOLE / "static" / "console.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


def test_a_chunked_body_past_the_cap_is_refused_before_it_is_read(
    console: dict[str, Any],
) -> None:
    """The 64 KiB cap read Content-Length only: a chunked body (no length) was read into
    memory field by field, up to 64 fields of 1 MiB each per request."""
    base = console["base"]
    host, port = urlsplit(base).hostname, urlsplit(base).port
    assert host is not None and port is not None
    context = ssl.create_default_context(cafile=str(console["cert"]))
    chunk = ("note=" + "x" * 16_000 + "&").encode()
    with (
        socket.create_connection((host, port), timeout=20) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(b"POST /login HTTP/1.1\r\nHost: " + f"{host}:{port}".encode()
                    + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                    + b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        sent = 0
        try:
            for _ in range(256):  # 4 MiB offered
                tls.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
        except OSError:
            pass  # the console closed the connection: it stopped reading
        answer = tls.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]


def test_declared_oversized_bodies_and_too_many_fields_are_refused(
    console: dict[str, Any],
) -> None:
    client = console["client"]()
    token = csrf_of(client.get("/districts").text)
    big = client.http.post("/lang", data={"csrf_token": token, "lang": "en",
                                          "next": "/" + "x" * 70_000})  # fmt: skip
    assert big.status_code == 413
    many = client.http.post("/lang", data={"csrf_token": token, "lang": "en",
                                           **{f"f{i}": "1" for i in range(80)}})  # fmt: skip
    assert many.status_code == 400 and "Too many fields" in many.text


@pytest.mark.parametrize(
    "target",
    ["//evil.example/", "/\\evil.example/", "\\/evil.example", "https://evil.example/",
     "/\t/evil.example/", "/\r\n/evil.example", "javascript:alert(1)", "/%2F%2Fevil.example",
     " //evil.example"],
)  # fmt: skip
def test_the_language_switch_never_sends_the_browser_off_site(
    console: dict[str, Any], target: str
) -> None:
    client = console["client"]()
    token = csrf_of(client.get("/districts").text)
    answer = client.http.post("/lang", data={"csrf_token": token, "lang": "zh-CN",
                                             "next": target})  # fmt: skip
    assert answer.status_code == 303
    location = answer.headers["location"]
    browser_sees = re.sub(r"[\t\r\n]", "", location)  # what a browser strips before parsing
    assert (
        urlsplit(urljoin(console["base"] + "/", browser_sees)).netloc
        == urlsplit(console["base"]).netloc
    ), location


def test_a_server_error_shows_no_trace_or_query(console: dict[str, Any]) -> None:
    admin = console["client"]()
    with console["ledger"].db.transaction() as tx:
        tx.execute("DROP TABLE console_alarms")
    answer = admin.get("/alarms")
    assert answer.status_code == 500
    for leak in ("Traceback", "console_alarms", "sqlite", 'File "', "SELECT"):
        assert leak not in answer.text, leak
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")


class _Stream:
    """Reads the live stream in a thread and keeps every field it saw."""

    def __init__(self, client: ConsoleClient) -> None:
        self.opened = threading.Event()
        self.got_alarm = threading.Event()
        self.events: list[dict[str, Any]] = []
        self.fields: set[str] = set()
        self.ids: list[str] = []
        threading.Thread(target=self._run, args=(client,), daemon=True).start()

    def _run(self, client: ConsoleClient) -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            client.http.stream("GET", "/api/alarms/stream", timeout=30) as stream,
        ):
            self.opened.set()
            for line in stream.iter_lines():
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                self.fields.add(name)
                if name == "id":
                    self.ids.append(value)
                if name == "data":
                    self.events.append(json.loads(value))
                    if len(self.events) == 2:  # the tamper, then the theft
                        self.got_alarm.set()
                        return


def test_every_post_route_wants_its_csrf_token(console: dict[str, Any]) -> None:
    """The language switch and logout too: without the token nothing changes."""
    ledger = console["ledger"]
    admin = console["client"]()
    alarm_id = ledger.db.query("SELECT alarm_id FROM console_alarms LIMIT 1")[0][0]
    routes = {"/lang": {"lang": "zh-CN", "next": "/alarms"}, "/logout": {},
              f"/alarms/{alarm_id}/acknowledge": {"note": "x"},
              f"/alarms/{alarm_id}/close": {"note": "x"},
              "/work-orders": {"gateway": "gw-a", "work_order": "WO-1"},
              f"/work-orders/{'ab' * 16}/revoke": {"note": "x"}}  # fmt: skip
    for path, form in routes.items():
        for token in (None, "a-guessed-token-of-the-right-length-0123456789"):
            data = form if token is None else {**form, "csrf_token": token}
            answer = admin.http.post(path, data=data)
            assert answer.status_code == 403 and "csrf_missing_or_wrong" in answer.text, path
            assert "set-cookie" not in answer.headers, path  # no language, no logout
    assert admin.get("/districts").status_code == 200  # still signed in
    assert ledger.db.query("SELECT DISTINCT status FROM console_alarms") == [("open",)]
    anonymous = console["client"](None)
    refused = anonymous.http.post("/lang", data={"lang": "zh-CN"})
    assert refused.status_code == 403 and "set-cookie" not in refused.headers
