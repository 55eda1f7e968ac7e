"""Console accounts: users and roles, argon2id password hashes, sessions, login rate limiting.

Users live in the ledger's database (`console_users`), so every console over one ledger shares
them. Passwords are hashed with argon2id (argon2-cffi's RFC 9106 profile: 64 MiB, 3 passes,
4 lanes), at most `max_hashing` at once (each takes 64 MiB). Sessions are server-side rows
keyed by the SHA-256 of a random token (the cookie holds the token), each with its own CSRF
token; a session ends after `idle` without a request or `lifetime` after sign-in, whichever
comes first, and closing one deletes its row. Roles (docs/master.md, "Console"):

- admin: everything, in every district;
- district_manager: reads, acknowledges and closes alarms, issues and revokes tickets, in the
  districts listed for them only (none listed: none seen);
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
from dataclasses import dataclass, field
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
SESSION_IDLE = timedelta(minutes=30)
TOUCH_AFTER = timedelta(minutes=1)  # a session's idle deadline moves at most once a minute
MAX_HASHING = 4


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
        """True when the user sees only the districts listed (a district manager always does)."""
        return self.role is Role.DISTRICT_MANAGER or (
            self.role is not Role.ADMIN and bool(self.districts)
        )

    def sees(self, district: str | None) -> bool:
        """May this user see a gateway (and its seals, alarms, tickets) of `district`?"""
        if not self.scoped:
            return True
        return district is not None and district in self.districts


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in browser: its user and its CSRF token (neither token in the repr)."""

    user: User
    csrf: str = field(repr=False)
    token_hash: str = field(repr=False)


class Accounts:
    """Users and sessions in the ledger database."""

    def __init__(
        self,
        db: Db,
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], datetime] | None = None,
        idle: timedelta = SESSION_IDLE,
        lifetime: timedelta = SESSION_TTL,
        max_hashing: int = MAX_HASHING,
    ) -> None:
        self.db = db
        self.idle = idle
        self.lifetime = lifetime
        self._hasher = hasher or PasswordHasher()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._hashing = threading.BoundedSemaphore(max_hashing)
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
        """The user when the password is theirs; None otherwise (same work either way).

        A password longer than any that can be set is refused whole, never cut to length.
        """
        rows = self.db.query(
            "SELECT username, role, districts, password_hash FROM console_users WHERE username = ?",
            (username,),
        )
        overlong = len(password) > MAX_PASSWORD
        stored = str(rows[0][3]) if rows and not overlong else self._dummy
        try:
            with self._hashing:
                self._hasher.verify(stored, "" if overlong else password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if not rows or overlong:
            return None
        if self._hasher.check_needs_rehash(stored):
            with self._hashing:
                rehashed = self._hasher.hash(password)
            with self.db.transaction() as tx:
                tx.execute("UPDATE console_users SET password_hash = ? WHERE username = ?",
                           (rehashed, username))  # fmt: skip
        return _user(rows[0][0], rows[0][1], rows[0][2])

    # -- sessions --------------------------------------------------------------------------

    def open_session(self, user: User, *, replacing: str = "") -> tuple[str, Session]:
        """A new session for `user` (a new token, never one the browser brought): the cookie
        token and the session. The session of `replacing` (the browser's old cookie) ends."""
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), _digest(token))
        now = self._clock()
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM console_sessions WHERE expires_at < ?", (format_ts(now),))
            if replacing:
                tx.execute("DELETE FROM console_sessions WHERE token_hash = ?",
                           (_digest(replacing),))  # fmt: skip
            tx.execute(
                "INSERT INTO console_sessions (token_hash, username, csrf, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?)",
                (session.token_hash, user.username, session.csrf, format_ts(now),
                 format_ts(self._deadline(now, now))),
            )  # fmt: skip
        return token, session

    def session(self, token: str, *, touch: bool = True) -> Session | None:
        """The live session of a cookie token, or None. `touch` (a request by the user) moves
        its idle deadline; the event stream's checks do not."""
        if not token or len(token) > 128:
            return None
        digest = _digest(token)
        rows = self.db.query(
            "SELECT u.username, u.role, u.districts, s.csrf, s.created_at, s.expires_at"
            " FROM console_sessions s JOIN console_users u ON u.username = s.username"
            " WHERE s.token_hash = ?",
            (digest,),
        )
        if not rows:
            return None
        now = self._clock()
        created, expires = _parse_ts(rows[0][4]), _parse_ts(rows[0][5])
        if created is None or expires is None or now >= expires:
            return None
        if now >= created + self.lifetime:
            return None
        deadline = self._deadline(created, now)
        if touch and deadline - expires >= TOUCH_AFTER:
            with self.db.transaction() as tx:
                tx.execute("UPDATE console_sessions SET expires_at = ? WHERE token_hash = ?",
                           (format_ts(deadline), digest))  # fmt: skip
        return Session(_user(*rows[0][:3]), str(rows[0][3]), digest)

    def close_session(self, session: Session) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM console_sessions WHERE token_hash = ?", (session.token_hash,))

    def _deadline(self, created: datetime, now: datetime) -> datetime:
        """When a session used at `now` ends: idle time from now, capped by its lifetime."""
        return min(now + self.idle, created + self.lifetime)


class LoginLimiter:
    """At most `max_failures` failed logins per client address and per user name in a window.

    `attempt` counts an attempt before its password is checked, under one lock, so requests
    sent together cannot all pass the check while the first ones are still hashing; a success
    takes back its own attempt and clears the user name's failures, never the address's (an
    account of one's own must not reset the count of guesses at others). At most `max_keys`
    addresses and names are remembered; the oldest are forgotten first.
    """

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window_s: float = 300.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def attempt(self, address: str, username: str) -> int:
        """Count an attempt and return 0, or return the seconds to wait (nothing counted)."""
        now = self._clock()
        keys = _keys(address, username)
        with self._lock:
            wait = max(self._wait(key, now) for key in keys)
            if wait:
                return wait
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)
            self._forget_oldest(now)
        return 0

    def succeeded(self, address: str, username: str) -> None:
        """The attempt was right: drop it from the address, clear the user name."""
        address_key, user_key = _keys(address, username)
        with self._lock:
            self._failures.pop(user_key, None)
            times = self._failures.get(address_key)
            if times:
                times.pop()
                if not times:
                    del self._failures[address_key]

    def remembered(self) -> int:
        """How many addresses and user names are being counted (for tests and metrics)."""
        with self._lock:
            return len(self._failures)

    def _wait(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        if not times:
            return 0
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if len(times) < self.max_failures:
            return 0
        return max(1, int(self.window_s - (now - times[0])) + 1)

    def _forget_oldest(self, now: float) -> None:
        if len(self._failures) <= self.max_keys:
            return
        for key in [k for k, t in self._failures.items() if not t or now - t[-1] >= self.window_s]:
            del self._failures[key]
        while len(self._failures) > self.max_keys:  # insertion order: the oldest first
            del self._failures[next(iter(self._failures))]


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


def _parse_ts(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
