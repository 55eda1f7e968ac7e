"""Attacks on the console's sign-in (docs/security.md, "Master console"): password guessing
around the rate limit, memory exhaustion through the password hash, and what is stored. Each
through the real console over HTTPS (uvicorn on a free port) and a real SQLite ledger."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.low_level import Type

from master_station.console.accounts import Accounts, LoginLimiter
from master_station.console.app import create_app
from master_station.ledger.factory import open_ledger
from tests.fixtures.console import PASSWORD, ConsoleClient, add_users, csrf_of, serve_console

# Slow enough (about 0.4 s a check) that requests sent together are all in flight at once;
# small in memory, so eight of them at once fit on a test machine.
SLOW = {"time_cost": 60, "memory_cost": 8192, "parallelism": 1}


@contextmanager
def _console(
    tmp_path: Path,
    *,
    limiter: LoginLimiter,
    hasher: PasswordHasher | None = None,
    **options: Any,
) -> Iterator[tuple[str, Path, Any]]:
    ledger = open_ledger(tmp_path / "ledger.db")
    try:
        accounts = Accounts(ledger.db, hasher=hasher, **options)
        add_users(ledger, accounts)
        app = create_app(ledger, tls=True, accounts=accounts, limiter=limiter)
        with serve_console(app, tmp_path) as (base, cert):
            yield base, cert, ledger
    finally:
        ledger.close()


def _together(base: str, cert: Path, users: list[str], password: str) -> list[int]:
    """Sign-ins sent at once, each on its own connection, with one browser's login cookie."""
    first = ConsoleClient(base, cert)
    token = csrf_of(first.get("/login").text)
    cookies = dict(first.http.cookies)
    first.close()
    start = threading.Barrier(len(users))

    def one(username: str) -> int:
        client = ConsoleClient(base, cert)
        client.http.cookies.update(cookies)
        try:
            start.wait(10)
            answer = client.http.post("/login", data={
                "username": username, "password": password, "csrf_token": token})  # fmt: skip
            return answer.status_code
        finally:
            client.close()

    with ThreadPoolExecutor(len(users)) as pool:
        return list(pool.map(one, users))


def test_wrong_passwords_sent_together_get_no_more_tries_than_the_limit(tmp_path: Path) -> None:
    """The limit was checked before the hash and counted after it: eight guesses sent at once
    all passed the check while the first were hashing."""
    limiter = LoginLimiter(max_failures=2, window_s=600)
    with _console(tmp_path, limiter=limiter, hasher=PasswordHasher(**SLOW)) as (base, cert, _):
        codes = _together(base, cert, ["mgr-1"] * 8, "a wrong guess, one of many")
    assert sorted(codes) == [401, 401, 429, 429, 429, 429, 429, 429], codes


def test_a_sign_in_of_ones_own_does_not_reset_the_address_count(tmp_path: Path) -> None:
    """An insider with an account guessed at others' passwords and signed in as themselves
    between guesses: the success cleared the address's failures."""
    with _console(tmp_path, limiter=LoginLimiter(max_failures=3, window_s=600)) as (base, cert, _):
        client = ConsoleClient(base, cert)
        try:
            assert client.login("mgr-1", "guess one for mgr-1").status_code == 401
            assert client.login("mgr-2", "guess one for mgr-2").status_code == 401
            assert client.login("auditor").status_code == 303  # the insider's own account
            client.http.cookies.clear()  # signed out again, same address
            assert client.login("admin", "guess one for admin").status_code == 401
            limited = client.login("mgr-2", "guess two for mgr-2")
            assert limited.status_code == 429, limited.status_code
        finally:
            client.close()


def test_spoofed_forwarding_headers_and_name_case_do_not_reset_the_count(tmp_path: Path) -> None:
    """Each guess claims another client address (X-Forwarded-For, Forwarded, X-Real-IP) and
    spells the name differently; the console believes the connection's address only (no
    proxy headers, as `sealgw master serve` runs uvicorn) and folds the name's case."""
    with _console(tmp_path, limiter=LoginLimiter(max_failures=3, window_s=600)) as (base, cert, _):
        client = ConsoleClient(base, cert)
        try:
            token = csrf_of(client.get("/login").text)
            for n, name in enumerate(("mgr-1", "MGR-1", "Mgr-1")):
                spoof = f"10.9.8.{n}"
                answer = client.http.post(
                    "/login",
                    data={"username": name, "password": f"guess {n}", "csrf_token": token},
                    headers={
                        "x-forwarded-for": spoof,
                        "x-real-ip": spoof,
                        "forwarded": f"for={spoof}",
                    },
                )
                assert answer.status_code == 401
            right = client.http.post(
                "/login",
                data={"username": "mgr-1", "password": PASSWORD, "csrf_token": token},
                headers={"x-forwarded-for": "10.9.8.200"},
            )
            assert right.status_code == 429  # even the right password, from a "new" address
        finally:
            client.close()


def test_password_checks_run_a_few_at_a_time(tmp_path: Path) -> None:
    """Every check takes the hash's memory (64 MiB by default): forty sign-ins at once took
    2.5 GiB. At most `max_hashing` run together; the rest wait their turn."""
    hasher = _CountingHasher(**SLOW)
    limiter = LoginLimiter(max_failures=100)
    with _console(tmp_path, limiter=limiter, hasher=hasher, max_hashing=2) as (base, cert, _):
        codes = _together(base, cert, ["mgr-1", "mgr-2", "admin", "auditor", "x", "y"], "nope!")
    assert codes == [401] * 6
    assert hasher.most == 2, hasher.most


def test_an_overlong_password_is_refused_not_cut_to_length(tmp_path: Path) -> None:
    """`verify` cut the password to 1,024 characters: with a 1,024-character password, any
    text after it signed in too."""
    longest = "p" * 1024
    ledger = open_ledger(tmp_path / "ledger.db")
    try:
        accounts = Accounts(ledger.db)
        accounts.add("long", longest, "admin", [])
        assert accounts.verify("long", longest) is not None
        assert accounts.verify("long", longest + "anything at all") is None
    finally:
        ledger.close()


def test_passwords_are_stored_as_argon2id_with_memory_hard_parameters(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "ledger.db")
    try:
        add_users(ledger)
        (stored,) = ledger.db.query(
            "SELECT password_hash FROM console_users WHERE username = 'admin'"
        )[0]
    finally:
        ledger.close()
    assert str(stored).startswith("$argon2id$v=19$m=65536,t=3,p=4$"), stored
    assert PASSWORD not in str(stored) and PasswordHasher().type is Type.ID


class _CountingHasher(PasswordHasher):
    """The real hasher, counting how many checks run at once (a spy, not a stand-in)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.now = 0
        self.most = 0
        self._lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return super().verify(hash, password)
        finally:
            with self._lock:
                self.now -= 1
