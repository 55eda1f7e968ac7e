"""Console accounts: users and roles, argon2id password hashes, sessions, login rate limiting.

Users live in the ledger's database (`console_users`), so every console over one ledger shares
them. Passwords are hashed with argon2id (argon2-cffi's defaults: 64 MiB, 3 passes). Sessions
are server-side rows keyed by the SHA-256 of a random token (the cookie holds the token), each
with its own CSRF token; closing a session deletes its row. Roles (docs/master.md, "Console"):

- admin: everything, in every district;
- district_manager: reads, acknowledges and closes alarms, issues and revokes tickets, in the
  districts listed for them only;
- auditor: reads only (every district, or the ones listed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.errors import ConfigError
from gateway.protocol.events import format_ts

if TYPE_CHECKING:
    from master_station.ledger.sql import Db

__all__ = ["Accounts", "LoginLimiter", "Role", "Session", "User"]

USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
DISTRICT = re.compile(r"^[^\s,<>&\"']{1,64}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
SESSION_TTL = timedelta(hours=12)


class Role(StrEnum):
    """What a console user may do."""

    ADMIN = "admin"
    DISTRICT_MANAGER = "district_manager"
    AUDITOR = "auditor"


@dataclass(frozen=True, slots=True)
class User:
    """A console account (never its hash)."""

    username: str
    role: Role
    districts: tuple[str, ...] = ()

    @property
    def can_act(self) -> bool:
        """Acknowledge, close, issue and revoke: admins and district managers."""
        return self.role in (Role.ADMIN, Role.DISTRICT_MANAGER)

    @property
    def scoped(self) -> bool:
        """True when the user sees only the districts listed."""
        return self.role is not Role.ADMIN and bool(self.districts)

    def sees(self, district: str | None) -> bool:
        """May this user see a gateway (and its seals, alarms, tickets) of `district`?"""
        if not self.scoped:
            return True
        return district is not None and district in self.districts


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in browser: its user and its CSRF token."""

    user: User
    csrf: str
    token_hash: str


class Accounts:
    """Users and sessions in the ledger database."""

    def __init__(self, db: Db, *, hasher: PasswordHasher | None = None) -> None:
        self.db = db
        self._hasher = hasher or PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_hex(16))  # equal work for unknown users

    # -- users -----------------------------------------------------------------------------

    def add(self, username: str, password: str, role: str, districts: Sequence[str]) -> User:
        """Create a user; ConfigError on a bad name, role, scope or password, or a taken name."""
        user = _checked_user(username, role, districts)
        _check_password(password)
        now = _now()
        with self.db.transaction() as tx:
            added = tx.execute(
                "INSERT INTO console_users (username, password_hash, role, districts, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (username) DO NOTHING",
                (username, self._hasher.hash(password), user.role.value,
                 json.dumps(list(user.districts)), now, now),
            )  # fmt: skip
        if added != 1:
            raise ConfigError("username", f"user {username!r} already exists")
        return user

    def set_password(self, username: str, password: str) -> None:
        """Replace a user's password and end their sessions."""
        _check_password(password)
        with self.db.transaction() as tx:
            changed = tx.execute(
                "UPDATE console_users SET password_hash = ?, updated_at = ? WHERE username = ?",
                (self._hasher.hash(password), _now(), username),
            )
            tx.execute("DELETE FROM console_sessions WHERE username = ?", (username,))
        if changed != 1:
            raise ConfigError("username", f"no user {username!r}")

    def users(self) -> list[User]:
        """Every user, by name."""
        rows = self.db.query(
            "SELECT username, role, districts FROM console_users ORDER BY username"
        )
        return [_user(*row) for row in rows]

    def verify(self, username: str, password: str) -> User | None:
        """The user when the password is theirs; None otherwise (same work either way)."""
        rows = self.db.query(
            "SELECT username, role, districts, password_hash FROM console_users WHERE username = ?",
            (username,),
        )
        stored = str(rows[0][3]) if rows else self._dummy
        try:
            self._hasher.verify(stored, password[:MAX_PASSWORD])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if not rows:
            return None
        if self._hasher.check_needs_rehash(stored):
            with self.db.transaction() as tx:
                tx.execute("UPDATE console_users SET password_hash = ? WHERE username = ?",
                           (self._hasher.hash(password), username))  # fmt: skip
        return _user(rows[0][0], rows[0][1], rows[0][2])

    # -- sessions --------------------------------------------------------------------------

    def open_session(self, user: User) -> tuple[str, Session]:
        """A new session for `user`: the cookie token and the session."""
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), _digest(token))
        now = datetime.now(UTC)
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM console_sessions WHERE expires_at < ?", (format_ts(now),))
            tx.execute(
                "INSERT INTO console_sessions (token_hash, username, csrf, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?)",
                (session.token_hash, user.username, session.csrf, format_ts(now),
                 format_ts(now + SESSION_TTL)),
            )  # fmt: skip
        return token, session

    def session(self, token: str) -> Session | None:
        """The live session of a cookie token, or None."""
        if not token or len(token) > 128:
            return None
        rows = self.db.query(
            "SELECT u.username, u.role, u.districts, s.csrf, s.expires_at FROM console_sessions s"
            " JOIN console_users u ON u.username = s.username WHERE s.token_hash = ?",
            (_digest(token),),
        )
        if not rows or str(rows[0][4]) < _now():
            return None
        return Session(_user(*rows[0][:3]), str(rows[0][3]), _digest(token))

    def close_session(self, session: Session) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM console_sessions WHERE token_hash = ?", (session.token_hash,))


class LoginLimiter:
    """At most `max_failures` failed logins per client address and per user name in a window."""

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str, username: str) -> int:
        """Seconds until another attempt is allowed (0: allowed now)."""
        now = self._clock()
        with self._lock:
            waits = [self._wait(key, now) for key in _keys(address, username)]
        return max(waits)

    def failed(self, address: str, username: str) -> None:
        now = self._clock()
        with self._lock:
            for key in _keys(address, username):
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, address: str, username: str) -> None:
        with self._lock:
            for key in _keys(address, username):
                self._failures.pop(key, None)

    def _wait(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        if not times:
            return 0
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if len(times) < self.max_failures:
            return 0
        return max(1, int(self.window_s - (now - times[0])) + 1)


def csrf_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison of CSRF tokens."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


# -- helpers -----------------------------------------------------------------------------------


def _keys(address: str, username: str) -> tuple[str, str]:
    return f"addr:{address}", f"user:{username.lower()[:64]}"


def _checked_user(username: str, role: str, districts: Sequence[str]) -> User:
    if not USERNAME.match(username):
        raise ConfigError("username", f"{username!r}: 1-64 of A-Z a-z 0-9 _ . @ -")
    try:
        parsed = Role(role)
    except ValueError:
        raise ConfigError("role", f"{role!r}: one of {', '.join(r.value for r in Role)}") from None
    scope = tuple(sorted({d.strip() for d in districts if d.strip()}))
    for district in scope:
        if not DISTRICT.match(district):
            raise ConfigError("district", f"{district!r} is not a district name")
    if parsed is Role.DISTRICT_MANAGER and not scope:
        raise ConfigError("district", "a district manager needs at least one --district")
    if parsed is Role.ADMIN and scope:
        raise ConfigError("district", "an admin sees every district; give no --district")
    return User(username, parsed, scope)


def _check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ConfigError("password", f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")


def _user(username: object, role: object, districts: object) -> User:
    try:
        scope = json.loads(str(districts))
    except ValueError:
        scope = []
    return User(str(username), Role(str(role)), tuple(str(d) for d in scope))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return format_ts(datetime.now(UTC))
