"""The console's web plumbing: security headers, sessions and CSRF, rendering, the live feed.

Pages (master_station/console/pages.py) use `Console` for everything that is not their own
content. Rules kept here, once:

- every response carries a CSP without inline scripts or styles, nosniff, no framing, no
  referrer outside the origin, and `Cache-Control: no-store` (pages hold district data);
- the session cookie is HttpOnly, SameSite=Strict and Secure (unless `secure_cookies` is off
  for plain HTTP), under HTTPS named with the `__Host-` prefix so no other host of the domain
  can set or shadow it, and its token is stored hashed (accounts.py);
- no request body past `MAX_FORM_BYTES` is read, declared or chunked (`BodyLimit`: 413);
- every POST must carry the session's CSRF token (or, for the login form, the pre-login token
  of its cookie) and, when the browser sends one, an Origin of this console; GET and the event
  stream never change anything;
- a user holds at most `MAX_STREAMS_PER_USER` event streams (`MAX_STREAMS` in all), and each
  ends when its session does (logout, password change, idle or lifetime), checked every
  `recheck_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from master_station.console.accounts import Accounts, LoginLimiter, Session, User, csrf_matches
from master_station.console.i18n import choose_language, translator
from master_station.console.queries import Alarm, alarms_since, newest_alarm_change

__all__ = [
    "AlarmFeed",
    "BodyLimit",
    "Console",
    "CsrfRefused",
    "EventStream",
    "SecurityHeaders",
    "login_redirect",
    "resume_point",
    "safe_next",
    "sse_alarm",
]

_log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "sealgw_session"
LOGIN_COOKIE = "sealgw_login_csrf"
LANG_COOKIE = "sealgw_lang"
HOST_PREFIX = "__Host-"  # Secure, Path=/, no Domain: only this host may set it
MAX_FORM_BYTES = 64 * 1024
MAX_STREAMS_PER_USER = 4
MAX_STREAMS = 200
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Pure ASGI middleware: the security headers on every HTTP response."""

    def __init__(self, app: ASGIApp, *, tls: bool) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", CSP.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"same-origin"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]
        if tls:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += self.headers
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Pure ASGI middleware: read at most `max_bytes` of a request body (else 413), then pass it
    on whole; a chunked body is counted as it arrives, so no header can talk past the cap."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_FORM_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in BODYLESS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.max_bytes:
                await _too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _too_large(send: Send) -> None:
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"request body too large\n"})


@dataclass(slots=True, eq=False)
class _Subscriber:
    user: User
    after: int | None = None  # the last change it was sent; None once it is at the feed's head
    queue: asyncio.Queue[Alarm | None] = field(default_factory=lambda: asyncio.Queue(256))


Revalidate = Callable[[], Awaitable[User | None]]


def resume_point(request: Request) -> int | None:
    """Where a stream resumes: the browser's `Last-Event-ID` on a reconnect, else `?after=`
    (the change number the page was drawn at), else None (from now on)."""
    for value in (request.headers.get("last-event-id"), request.query_params.get("after")):
        if value is not None and value.isdigit() and len(value) <= 18:
            return int(value)
    return None


class EventStream(StreamingResponse):
    """A server-sent event stream that gives its place in the feed back however it ends."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"x-accel-buffering": "no"})  # fmt: skip
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class AlarmFeed:
    """One poller of `console_alarms.change_seq` (commit order, indexed) for every open event
    stream. Each event carries its change number as its SSE `id`, so a browser that reconnects
    (`Last-Event-ID`) is sent every change it missed, oldest first."""

    def __init__(
        self,
        db: Any,
        *,
        poll_s: float = 1.0,
        recheck_s: float = 15.0,
        per_user: int = MAX_STREAMS_PER_USER,
        total: int = MAX_STREAMS,
    ) -> None:
        self.db = db
        self.poll_s = poll_s
        self.recheck_s = recheck_s
        self.per_user = per_user
        self.total = total
        self._subscribers: set[_Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._cursor = 0

    async def stop(self) -> None:
        self._stopping.set()
        for subscriber in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def open(
        self, user: User, revalidate: Revalidate, after: int | None = None
    ) -> EventStream | None:
        """The user's event stream (after change `after` when given, else from now on), or None
        when they (or everyone) hold the most allowed."""
        mine = sum(1 for s in self._subscribers if s.user.username == user.username)
        if mine >= self.per_user or len(self._subscribers) >= self.total:
            return None
        subscriber = _Subscriber(user, after)
        self._subscribers.add(subscriber)
        if self._task is None:
            self._task = asyncio.create_task(self._poll())
        return EventStream(self._events(subscriber, revalidate),
                           lambda: self._subscribers.discard(subscriber))  # fmt: skip

    async def _events(self, subscriber: _Subscriber, revalidate: Revalidate) -> AsyncIterator[str]:
        """Server-sent events: `alarm` (JSON of the alarm, `id` its change number) for every
        change the user may see, until the session ends (checked every `recheck_s`, and before
        an alarm after that)."""
        yield "retry: 2000\n\n"
        checked = time.monotonic()
        while not self._stopping.is_set():
            try:
                item = await asyncio.wait_for(subscriber.queue.get(), self.recheck_s)
            except TimeoutError:
                item = _KEEPALIVE
            if item is None:
                return
            if item is _KEEPALIVE or time.monotonic() - checked >= self.recheck_s:
                user = await revalidate()
                if user is None:
                    return
                subscriber.user, checked = user, time.monotonic()
            if item is _KEEPALIVE:
                yield ": keepalive\n\n"
            elif subscriber.user.sees(_district(item)):
                yield sse_alarm(item)

    async def _poll(self) -> None:
        self._cursor = await run_in_threadpool(newest_alarm_change, self.db)
        while not self._stopping.is_set():
            await asyncio.sleep(self.poll_s)
            if not self._subscribers:
                continue
            try:
                await self._deliver()
            except Exception:  # noqa: BLE001 - the feed outlives a failed read
                _log.exception("alarm feed: read failed")

    async def _deliver(self) -> None:
        """The changes past the head to every stream at the head; a stream resumed from further
        back is sent its own next page of changes (one indexed read each) until it catches up."""
        start = self._cursor
        head = await run_in_threadpool(alarms_since, self.db, start)
        if head:
            self._cursor = head[-1].change_seq
        for subscriber in list(self._subscribers):
            after = subscriber.after
            if after is None or after >= start:
                items = [i for i in head if after is None or i.change_seq > after]
            else:
                items = await run_in_threadpool(alarms_since, self.db, after)
            if items:
                subscriber.after = items[-1].change_seq
            if subscriber.after is not None and subscriber.after >= self._cursor:
                subscriber.after = None
            self._send(subscriber, items)

    def _send(self, subscriber: _Subscriber, items: list[Alarm]) -> None:
        """Queue what the user may see; a stream that stopped reading is ended instead (its
        browser reconnects with the last id it got and is sent the rest from the ledger)."""
        for item in items:
            if not subscriber.user.sees(_district(item)):
                continue
            try:
                subscriber.queue.put_nowait(item)
            except asyncio.QueueFull:
                self._subscribers.discard(subscriber)
                while not subscriber.queue.empty():
                    subscriber.queue.get_nowait()
                subscriber.queue.put_nowait(None)
                return


def sse_alarm(item: Alarm) -> str:
    """One server-sent event: the alarm's change number, its type, the alarm as JSON."""
    body = json.dumps(item.to_json(), sort_keys=True)
    return f"id: {item.change_seq}\nevent: alarm\ndata: {body}\n\n"


_KEEPALIVE: Any = object()


def _district(item: Alarm) -> str | None:
    return None if item.district == "unknown" else item.district


class Console:
    """Sessions, CSRF, language and rendering for the pages."""

    def __init__(
        self,
        accounts: Accounts,
        *,
        secure_cookies: bool = True,
        host_prefix: bool = False,
        limiter: LoginLimiter | None = None,
    ) -> None:
        self.accounts = accounts
        self.secure_cookies = secure_cookies
        self.limiter = limiter or LoginLimiter()
        prefix = HOST_PREFIX if secure_cookies and host_prefix else ""
        self.session_cookie = prefix + SESSION_COOKIE
        self.login_cookie = prefix + LOGIN_COOKIE
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.env.filters["pct"] = _pct

    # -- sessions ------------------------------------------------------------------------------

    async def session(self, request: Request) -> Session | None:
        """The request's live session (a request by its user: the idle deadline moves)."""
        token = self.session_token(request)
        if not token:
            return None
        return await run_in_threadpool(self.accounts.session, token)

    def session_token(self, request: Request) -> str:
        return request.cookies.get(self.session_cookie, "")

    def revalidator(self, request: Request) -> Callable[[], Awaitable[User | None]]:
        """For a long request (the event stream): the session's user now, or None once it ended."""
        token = self.session_token(request)

        async def still() -> User | None:
            found = await run_in_threadpool(lambda: self.accounts.session(token, touch=False))
            return None if found is None else found.user

        return still

    async def form(self, request: Request, session: Session | None) -> FormData:
        """The POSTed form, refused (CsrfRefused) without this session's CSRF token."""
        _check_origin(request)
        if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
            raise CsrfRefused("form_too_large")
        form = await request.form(max_files=0, max_fields=64)
        given = form.get("csrf_token")
        expected = session.csrf if session else request.cookies.get(self.login_cookie, "")
        if not expected or not csrf_matches(expected, given if isinstance(given, str) else None):
            raise CsrfRefused("csrf_missing_or_wrong")
        return form

    def set_session_cookie(self, response: Response, token: str) -> None:
        response.set_cookie(self.session_cookie, token, httponly=True,
                            secure=self.secure_cookies, samesite="strict", path="/")  # fmt: skip
        response.delete_cookie(self.login_cookie, path="/", secure=self.secure_cookies,
                               httponly=True, samesite="strict")  # fmt: skip

    def clear_session_cookie(self, response: Response) -> None:
        response.delete_cookie(self.session_cookie, path="/", secure=self.secure_cookies,
                               httponly=True, samesite="strict")  # fmt: skip

    def login_token(self, request: Request) -> str:
        existing = request.cookies.get(self.login_cookie, "")
        return existing if 20 <= len(existing) <= 64 else secrets.token_urlsafe(32)

    def set_login_cookie(self, response: Response, token: str) -> None:
        response.set_cookie(self.login_cookie, token, httponly=True, secure=self.secure_cookies,
                            samesite="strict", path="/", max_age=3600)  # fmt: skip

    def set_language_cookie(self, response: Response, language: str) -> None:
        response.set_cookie(LANG_COOKIE, language, httponly=True, secure=self.secure_cookies,
                            samesite="strict", path="/", max_age=365 * 86400)  # fmt: skip

    # -- rendering -----------------------------------------------------------------------------

    def language(self, request: Request) -> str:
        return choose_language(request.cookies.get(LANG_COOKIE),
                               request.headers.get("accept-language"))  # fmt: skip

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        *,
        session: Session | None = None,
        status_code: int = 200,
        csrf: str | None = None,
    ) -> HTMLResponse:
        language = self.language(request)
        page = self.env.get_template(template).render(
            request=request,
            t=translator(language),
            lang=language,
            user=session.user if session else None,
            csrf=csrf if csrf is not None else (session.csrf if session else ""),
            path=request.url.path,
            **context,
        )
        return HTMLResponse(page, status_code=status_code)

    def refuse(
        self, request: Request, session: Session | None, status_code: int, message: str
    ) -> HTMLResponse:
        return self.render(request, "error.html", {"message": message}, session=session,
                           status_code=status_code)  # fmt: skip


class CsrfRefused(Exception):  # noqa: N818 - the refusal, with its reason code
    """A POST without a valid CSRF token, or from another origin."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def login_redirect() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


def safe_next(value: object) -> str:
    """A local path to go back to (never another site)."""
    text = value if isinstance(value, str) else ""
    ok = text.startswith("/") and not text.startswith(("//", "/\\")) and len(text) < 512
    return text if ok else "/districts"


def _check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is None:  # not every client sends one; the CSRF token is the check that counts
        return
    parts = urlsplit(origin)
    if parts.netloc != request.headers.get("host", ""):
        raise CsrfRefused("cross_origin")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


Handler = Callable[[Request], Awaitable[Response]]
