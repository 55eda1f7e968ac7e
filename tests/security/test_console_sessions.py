"""Attacks on console sessions (docs/security.md, "Master console"): fixation, cookies tossed by
another host, sessions that never end, event streams that outlive their session or pile up.
Each through the real console over HTTPS (uvicorn on a free port) and a real SQLite ledger."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from master_station.console.accounts import Accounts, Role, Session, User
from master_station.console.app import create_app
from master_station.ledger.factory import open_ledger
from tests.fixtures.console import (
    ConsoleClient,
    add_users,
    csrf_of,
    district_day,
    serve_console,
)


@dataclass
class _Clock:
    """The accounts' clock, moved by the test (the server's own clock is not touched)."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)


@dataclass
class _World:
    base: str
    cert: Path
    ledger: Any
    clock: _Clock
    clients: list[ConsoleClient] = field(default_factory=list)

    def client(self, user: str | None = None) -> ConsoleClient:
        c = ConsoleClient(self.base, self.cert)
        self.clients.append(c)
        if user is not None:
            assert c.login(user).status_code == 303
        return c


@contextmanager
def _world(tmp_path: Path) -> Iterator[_World]:
    clock = _Clock()
    ledger = open_ledger(tmp_path / "ledger.db")
    try:
        accounts = Accounts(ledger.db, clock=clock)
        add_users(ledger, accounts)
        district_day(ledger)
        app = create_app(ledger, tls=True, accounts=accounts, poll_s=0.1, recheck_s=0.3)
        with serve_console(app, tmp_path) as (base, cert):
            world = _World(base, cert, ledger, clock)
            try:
                yield world
            finally:
                for c in world.clients:
                    c.close()
    finally:
        ledger.close()


def test_sign_in_issues_a_new_session_never_the_one_the_browser_brought(tmp_path: Path) -> None:
    """Session fixation: a token planted in the browser before sign-in (any cookie name the
    console reads) is not what the signed-in session uses, and never becomes valid."""
    with _world(tmp_path) as world:
        browser = world.client()
        planted = "attacker-chosen-token-0123456789abcdefghij"
        for name in ("__Host-sealgw_session", "sealgw_session"):
            browser.http.cookies.set(name, planted)
        answer = browser.login("mgr-1")
        assert answer.status_code == 303
        issued = [c for c in answer.headers.get_list("set-cookie") if "sealgw_session=" in c]
        assert issued and all(planted not in c for c in issued)
        replay = world.client()
        for name in ("__Host-sealgw_session", "sealgw_session"):
            replay.http.cookies.set(name, planted)
        assert replay.get("/districts").headers.get("location") == "/login"


def test_an_idle_session_ends(tmp_path: Path) -> None:
    """Sessions lasted 12 h whatever the user did: a browser left signed in on a shared
    desk stayed usable all day."""
    with _world(tmp_path) as world:
        browser = world.client("mgr-1")
        for _ in range(3):
            world.clock.advance(29)
            assert browser.get("/districts").status_code == 200  # in use: it lives on
        world.clock.advance(31)
        assert browser.get("/districts").headers.get("location") == "/login"


def test_a_busy_session_ends_at_its_lifetime(tmp_path: Path) -> None:
    with _world(tmp_path) as world:
        browser = world.client("mgr-1")
        for _ in range(35):  # 11 h 40 min of use, a request every 20 min
            world.clock.advance(20)
            assert browser.get("/districts").status_code == 200
        world.clock.advance(20)
        assert browser.get("/districts").headers.get("location") == "/login"


def test_session_cookies_carry_the_host_prefix_so_a_tossed_cookie_is_ignored(
    tmp_path: Path,
) -> None:
    """Another host of the intranet domain could set `sealgw_session` for the whole domain
    (cookie tossing) and sign a manager's browser into the attacker's account; a `__Host-`
    cookie can only be set by the console itself, Secure, for Path=/ and no Domain."""
    with _world(tmp_path) as world:
        page = world.client()
        login_cookie = page.get("/login").headers["set-cookie"]
        assert login_cookie.startswith("__Host-sealgw_login_csrf=")
        browser = world.client()
        answer = browser.login("mgr-1")
        cookie = next(c for c in answer.headers.get_list("set-cookie")
                      if c.startswith("__Host-sealgw_session="))  # fmt: skip
        assert "Secure" in cookie and "Path=/" in cookie and "Domain" not in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        tossed = world.client()
        value = next(iter(_session_cookie(browser).values()))
        tossed.http.cookies.set("sealgw_session", value)  # the name any host may set
        assert tossed.get("/districts").headers.get("location") == "/login"


def test_the_event_stream_ends_with_its_session(tmp_path: Path) -> None:
    """The live stream kept sending a district's alarms after logout, a password change or
    the session's end, for as long as the connection stayed open."""
    with _world(tmp_path) as world:
        browser = world.client("mgr-1")
        reader = _Reader(browser)
        assert reader.opened.wait(10), "the stream did not open"
        token = csrf_of(browser.get("/districts").text)
        assert browser.http.post("/logout", data={"csrf_token": token}).status_code == 303
        assert reader.ended.wait(10), "the stream outlived its session"
        other = world.client("mgr-2")
        passwd = _Reader(other)
        assert passwd.opened.wait(10)
        Accounts(world.ledger.db).set_password("mgr-2", "a brand new password")
        assert passwd.ended.wait(10), "the stream outlived a password change"
        idle = _Reader(world.client("auditor"))
        assert idle.opened.wait(10)
        world.clock.advance(31)
        assert idle.ended.wait(10), "the stream outlived the session's idle end"


def test_event_streams_are_capped_per_user(tmp_path: Path) -> None:
    """Every tab, or a script, could open another never-ending stream: each holds a
    connection and a queue. A user holds at most 4; the fifth is refused with 429."""
    with _world(tmp_path) as world, ExitStack() as streams:
        tabs = [world.client("mgr-1") for _ in range(5)]
        for tab in tabs[:4]:
            opened = streams.enter_context(tab.http.stream("GET", "/api/alarms/stream"))
            assert opened.status_code == 200
        refused = tabs[4].get("/api/alarms/stream")
        assert refused.status_code == 429 and refused.json() == {"error": "too_many_streams"}
        other = world.client("mgr-2")
        with other.http.stream("GET", "/api/alarms/stream") as theirs:
            assert theirs.status_code == 200  # the cap is per user


def test_a_sessions_repr_holds_no_token() -> None:
    """`repr(Session)` showed the CSRF token and the session token's hash in any log line
    or traceback that printed it."""
    session = Session(User("mgr-1", Role.DISTRICT_MANAGER, ("d-1",)), "csrf-secret-value",
                      "f" * 64)  # fmt: skip
    shown = repr(session)
    assert "csrf-secret-value" not in shown and "f" * 64 not in shown
    assert "mgr-1" in shown


class _Reader:
    """Reads an event stream in a thread; `opened` once it answers, `ended` when it ends."""

    def __init__(self, client: ConsoleClient) -> None:
        self.opened = threading.Event()
        self.ended = threading.Event()
        self._client = client
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            with self._client.http.stream("GET", "/api/alarms/stream", timeout=30) as stream:
                if stream.status_code == 200:
                    self.opened.set()
                for _line in stream.iter_lines():
                    pass
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()


def _session_cookie(client: ConsoleClient) -> dict[str, str]:
    return {k: v for k, v in client.http.cookies.items() if k.endswith("sealgw_session")}
