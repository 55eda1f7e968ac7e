"""`create_app`: the console's ASGI application (Starlette) and its routes.

Routes (docs/master.md, "Console", lists them with their element ids for browser tests):

    GET  /login  POST /login  POST /logout  POST /lang
    GET  /districts
    GET  /alarms?status=open|closed   GET /alarms/{id}
    POST /alarms/{id}/acknowledge     POST /alarms/{id}/close
    GET  /seals/{gateway}/{seal}
    GET  /work-orders  POST /work-orders  POST /work-orders/{ticket}/revoke
    GET  /trends  GET /api/trends?days=N  GET /api/summary
    GET  /api/alarms/stream[?after=CHANGE] (SSE; Last-Event-ID resumes)
    GET  /healthz  GET /static/...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from master_station.console import queries
from master_station.console.accounts import Accounts, LoginLimiter, Session
from master_station.console.actions import ActionError, Actions, TicketRequest, role_rules
from master_station.console.i18n import LANGUAGES
from master_station.console.web import (
    HERE,
    AlarmFeed,
    BodyLimit,
    Console,
    CsrfRefused,
    SecurityHeaders,
    login_redirect,
    resume_point,
    safe_next,
)

if TYPE_CHECKING:
    from master_station.authority import MasterAuthority
    from master_station.ledger.models import Ledger
    from master_station.listener import ListenerOptions

__all__ = ["create_app"]

CONDITIONS = ("sealed", "unsealed", "tampered", "offline", "unknown")
TREND_DAYS = (7, 30, 90)


def create_app(
    ledger: Ledger,
    *,
    authority: MasterAuthority | None = None,
    broker: ListenerOptions | None = None,
    secure_cookies: bool = True,
    tls: bool = False,
    limiter: LoginLimiter | None = None,
    accounts: Accounts | None = None,
    poll_s: float = 1.0,
    recheck_s: float = 15.0,
) -> Starlette:
    """The console over `ledger` (its own connection); sign with `authority`, send via `broker`.

    `recheck_s`: how often an open event stream checks that its session still lives.
    """
    db = ledger.db  # type: ignore[attr-defined]
    console = Console(accounts or Accounts(db), secure_cookies=secure_cookies, host_prefix=tls,
                      limiter=limiter)  # fmt: skip
    actions = Actions(ledger, authority=authority, broker=broker)
    feed = AlarmFeed(db, poll_s=poll_s, recheck_s=recheck_s)
    pages = _Pages(console, actions, feed, db)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await feed.stop()

    routes = [
        Route("/", pages.home),
        Route("/healthz", pages.healthz),
        Route("/login", pages.login_page, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/lang", pages.language, methods=["POST"]),
        Route("/districts", pages.districts),
        Route("/alarms", pages.alarms),
        Route("/alarms/{alarm_id}", pages.alarm),
        Route("/alarms/{alarm_id}/{step}", pages.alarm_step, methods=["POST"]),
        Route("/seals/{gateway}/{seal}", pages.seal),
        Route("/work-orders", pages.work_orders, methods=["GET"]),
        Route("/work-orders", pages.issue, methods=["POST"]),
        Route("/work-orders/{ticket_id}/revoke", pages.revoke, methods=["POST"]),
        Route("/trends", pages.trends),
        Route("/api/trends", pages.api_trends),
        Route("/api/summary", pages.api_summary),
        Route("/api/alarms/stream", pages.stream),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = _ConsoleApp(
        routes=routes,
        middleware=[Middleware(BodyLimit)],
        lifespan=lifespan,
    )
    app.tls = tls
    app.state.console = console
    app.state.actions = actions
    return app


class _ConsoleApp(Starlette):
    """Starlette with the security headers outside everything, its 500 answers included."""

    tls = False

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack(), tls=self.tls)


class _Pages:
    """The route handlers."""

    def __init__(self, console: Console, actions: Actions, feed: AlarmFeed, db: Any) -> None:
        self.console = console
        self.actions = actions
        self.feed = feed
        self.db = db

    # -- sign-in -----------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/districts", status_code=303)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def login_page(self, request: Request) -> Response:
        if await self.console.session(request) is not None:
            return RedirectResponse("/districts", status_code=303)
        return self._login_form(request, error="")

    def _login_form(self, request: Request, *, error: str, status_code: int = 200) -> Response:
        token = self.console.login_token(request)
        response = self.console.render(request, "login.html", {"error": error},
                                       status_code=status_code, csrf=token)  # fmt: skip
        self.console.set_login_cookie(response, token)
        return response

    async def login(self, request: Request) -> Response:
        try:
            form = await self.console.form(request, None)
        except CsrfRefused as exc:
            return self._refused(request, None, exc.reason)
        username = str(form.get("username") or "")[:64]
        password = str(form.get("password") or "")
        address = request.client.host if request.client else "?"
        t = _t(self.console, request)
        wait = self.console.limiter.attempt(address, username)
        if wait:
            response = self._login_form(request, error=t("login.limited", seconds=wait),
                                        status_code=429)  # fmt: skip
            response.headers["retry-after"] = str(wait)
            return response
        user = await run_in_threadpool(self.console.accounts.verify, username, password)
        if user is None:
            return self._login_form(request, error=t("login.failed"), status_code=401)
        self.console.limiter.succeeded(address, username)
        old = self.console.session_token(request)
        token, _session = await run_in_threadpool(
            lambda: self.console.accounts.open_session(user, replacing=old)
        )
        response = RedirectResponse("/districts", status_code=303)
        self.console.set_session_cookie(response, token)
        return response

    async def logout(self, request: Request) -> Response:
        session = await self.console.session(request)
        if session is None:
            return login_redirect()
        try:
            await self.console.form(request, session)
        except CsrfRefused as exc:
            return self._refused(request, session, exc.reason)
        await run_in_threadpool(self.console.accounts.close_session, session)
        response = login_redirect()
        self.console.clear_session_cookie(response)
        return response

    async def language(self, request: Request) -> Response:
        session = await self.console.session(request)
        try:
            form = await self.console.form(request, session)
        except CsrfRefused as exc:
            return self._refused(request, session, exc.reason)
        chosen = str(form.get("lang") or "")
        target = safe_next(form.get("next")) if session else "/login"
        response = RedirectResponse(target, status_code=303)
        if chosen in LANGUAGES:
            self.console.set_language_cookie(response, chosen)
        return response

    # -- pages ---------------------------------------------------------------------------------

    async def districts(self, request: Request) -> Response:
        session = await self.console.session(request)
        if session is None:
            return login_redirect()
        today = datetime.now(UTC).date()
        summaries = await run_in_threadpool(queries.district_summaries, self.db, session.user,
                                            today)  # fmt: skip
        return self.console.render(request, "districts.html", {
            "summaries": summaries, "targets": queries.TARGETS, "today": today.isoformat(),
            "conditions": CONDITIONS,
        }, session=session)  # fmt: skip

    async def alarms(self, request: Request) -> Response:
        session = await self.console.session(request)
        if session is None:
            return login_redirect()
        status = "closed" if request.query_params.get("status") == "closed" else "open"
        drawn_at = await run_in_threadpool(queries.newest_alarm_change, self.db)  # then the list
        found = await run_in_threadpool(queries.alarms, self.db, session.user, status=status)
        return self.console.render(request, "alarms.html", {"alarms": found, "status": status,
                                   "drawn_at": drawn_at}, session=session)  # fmt: skip

    async def alarm(self, request: Request) -> Response:
        session = await self.console.session(request)
        if session is None:
            return login_redirect()
        alarm_id = request.path_params["alarm_id"]
        try:
            found = await run_in_threadpool(queries.alarm, self.db, session.user, alarm_id)
        except queries.Forbidden as exc:
            return self._forbidden(request, session, exc.reason)
        if found is None:
            return self._not_found(request, session)
        evidence = await run_in_threadpool(queries.evidence, self.db, found)
        return self.console.render(request, "alarm.html", {"alarm": found, **evidence},
                                   session=session)  # fmt: skip

    async def alarm_step(self, request: Request) -> Response:
        session = await self.console.session(request)
        if session is None:
            return login_redirect()
        try:
            form = await self.console.form(request, session)
        except CsrfRefused as exc:
            return self._refused(request, session, exc.reason)
        alarm_id, step = request.path_params["alarm_id"], request.path_params["step"]
        note = str(form.get("note") or "")
        if step not in ("acknowledge", "close"):
            return self._not_found(request, session)
        act = self.actions.acknowledge if step == "acknowledge" else self.actions.close
        try:
            await run_in_threadpool(act, session.user, alarm_id, note)
        except queries.Forbidden as exc:
            return self._forbidden(request, session, exc.reason)
        except ActionError as exc:
            return self._bad_request(request, session, str(exc))
        return RedirectResponse(f"/alarms/{alarm_id}", status_code=303)

    async def seal(self, request: Request) -> Response:
        session = await self.console.session(request)
        if session is None:
            return login_redirect()
        gateway, seal = request.path_params["gateway"], request.path_params["seal"]
        try:
            timeline = await run_in_threadpool(queries.seal_timeline, self.db, session.user,
                                               gateway, seal)  # fmt: skip
        except queries.Forbidden as exc:
            return self._forbidden(request, session, exc.reason)
        if not timeline:
            return self._not_found(request, session)
        return self.console.render(request, "seal.html", timeline, session=session)

    async def work_orders(self, request: Request, *, result: dict[str, Any] | None = None,
                          error: str = "", status_code: int = 200) -> Response:  # fmt: skip
        session = await self.console.session(request)
        if session is None:
            return login_redirect()
        issued = await run_in_threadpool(queries.tickets, self.db, session.user)
        gateways = await run_in_threadpool(queries.visible_gateways, self.db, session.user)
        return self.console.render(request, "work_orders.html", {
            "tickets": issued, "gateways": gateways, "rules": role_rules(), "result": result,
            "error": error, "flows": sorted({r["flow"] for r in role_rules()}),
            "roles": sorted({r["role"] for r in role_rules()}),
        }, session=session, status_code=status_code)  # fmt: skip

    async def issue(self, request: Request) -> Response:
        session = await self.console.session(request)
        if session is None:
            return login_redirect()
        try:
            form = await self.console.form(request, session)
        except CsrfRefused as exc:
            return self._refused(request, session, exc.reason)
        try:
            ticket = _ticket_request(form)
            result = await run_in_threadpool(self.actions.issue_ticket, session.user, ticket)
        except queries.Forbidden as exc:
            return self._forbidden(request, session, exc.reason)
        except ActionError as exc:
            return await self.work_orders(request, error=str(exc), status_code=400)
        return await self.work_orders(request, result=result)

    async def revoke(self, request: Request) -> Response:
        session = await self.console.session(request)
        if session is None:
            return login_redirect()
        try:
            form = await self.console.form(request, session)
        except CsrfRefused as exc:
            return self._refused(request, session, exc.reason)
        ticket_id = request.path_params["ticket_id"]
        try:
            await run_in_threadpool(self.actions.revoke_ticket, session.user, ticket_id,
                                    str(form.get("note") or ""))  # fmt: skip
        except queries.Forbidden as exc:
            return self._forbidden(request, session, exc.reason)
        except ActionError as exc:
            return await self.work_orders(request, error=str(exc), status_code=400)
        return RedirectResponse("/work-orders", status_code=303)

    async def trends(self, request: Request) -> Response:
        session = await self.console.session(request)
        if session is None:
            return login_redirect()
        days = _days(request)
        return self.console.render(request, "trends.html", {"days": days, "choices": TREND_DAYS},
                                   session=session)  # fmt: skip

    # -- JSON and the stream -----------------------------------------------------------------

    async def api_trends(self, request: Request) -> Response:
        session = await self.console.session(request)
        if session is None:
            return JSONResponse({"error": "login_required"}, status_code=401)
        today = datetime.now(UTC).date()
        body = await run_in_threadpool(
            lambda: queries.trends(self.db, session.user, days=_days(request), today=today)
        )
        return JSONResponse(body)

    async def api_summary(self, request: Request) -> Response:
        session = await self.console.session(request)
        if session is None:
            return JSONResponse({"error": "login_required"}, status_code=401)
        per_district = await run_in_threadpool(queries.open_alarm_counts, self.db, session.user)
        return JSONResponse({"open_alarms": sum(per_district.values()),
                             "open_alarms_by_district": per_district})  # fmt: skip

    async def stream(self, request: Request) -> Response:
        session = await self.console.session(request)
        if session is None:
            return JSONResponse({"error": "login_required"}, status_code=401)
        stream = self.feed.open(session.user, self.console.revalidator(request),
                                resume_point(request))  # fmt: skip
        if stream is None:
            return JSONResponse({"error": "too_many_streams"}, status_code=429)
        return stream

    # -- refusals ------------------------------------------------------------------------------

    def _refused(self, request: Request, session: Session | None, reason: str) -> Response:
        t = _t(self.console, request)
        return self.console.refuse(request, session, 403, t("error.forbidden", reason=reason))

    def _forbidden(self, request: Request, session: Session, reason: str) -> Response:
        return self._refused(request, session, reason)

    def _not_found(self, request: Request, session: Session) -> Response:
        return self.console.refuse(
            request, session, 404, _t(self.console, request)("error.not_found")
        )

    def _bad_request(self, request: Request, session: Session, detail: str) -> Response:
        t = _t(self.console, request)
        return self.console.refuse(request, session, 400, t("error.bad_request", detail=detail))


def _t(console: Console, request: Request) -> Any:
    from master_station.console.i18n import translator  # noqa: PLC0415 - tiny, here for clarity

    return translator(console.language(request))


def _ticket_request(form: Any) -> TicketRequest:
    def text(name: str) -> str:
        return str(form.get(name) or "").strip()

    def number(name: str, default: int) -> int:
        try:
            return int(text(name) or default)
        except ValueError:
            raise ActionError(f"{name} is not a number") from None

    ops = tuple(str(v) for v in form.getlist("ops") if str(v))
    seals = tuple(s.strip() for s in text("seals").split(",") if s.strip())
    return TicketRequest(
        gateway=text("gateway"), work_order=text("work_order"), flow=text("flow"),
        operator=text("operator"), role=text("role"), seals=seals, ops=ops,
        valid_minutes=number("valid_minutes", 240), max_uses=number("max_uses", 4),
    )  # fmt: skip


def _days(request: Request) -> int:
    try:
        days = int(request.query_params.get("days", "30"))
    except ValueError:
        return 30
    return days if days in TREND_DAYS else 30
