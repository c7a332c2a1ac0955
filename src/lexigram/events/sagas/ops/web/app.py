"""The Starlette application: routes, login, the guards around every action.

Routes (``{id}`` is the percent-encoded saga id):

================================  ==========================================================
``GET /``                         the list: filters, counts by status, paging
``GET /sagas/{id}``               one saga (``?data=1`` shows its data's values)
``GET /fragments/list?...``       the list's refreshing part (HTML)
``GET /fragments/saga/{id}``      the saga page's refreshing parts (HTML)
``POST /cancel/{id}``             cancel (form: ``reason``)
``POST /retry/{id}``              redrive a failed saga
``POST /signal/{id}``             send a signal (form: ``name``, ``payload``, ``signal_id``)
``GET|POST /login``, ``POST /logout``  the operator's session (only with a token)
``GET /assets/{name}``            the stylesheet, the script, the icon
================================  ==========================================================

Without a token the admin is read-only: no login, and every ``POST`` is refused (403).
With one, every page needs a session (the login form sets an ``HttpOnly``,
``SameSite=Strict`` cookie) or ``Authorization: Bearer <token>``; an action also needs
its ``Origin`` (or ``Referer``) to be the admin itself and, from a session, the
session's CSRF token in the form.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Collection
from datetime import UTC, datetime
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lexigram.events.sagas.errors import (
    CorruptRecordError,
    SagaNotFoundError,
    SagaStoreError,
    SagaStoreUnavailableError,
)
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.ops.svg import flow_svg, record_svg
from lexigram.events.sagas.ops.timeline import Timeline, timeline
from lexigram.events.sagas.ops.web.actions import (
    ACTIONS,
    FormError,
    Outcome,
    SagaControl,
    read_form,
)
from lexigram.events.sagas.ops.web.assets import ASSETS
from lexigram.events.sagas.ops.web.filters import ListQuery, parse_list_query
from lexigram.events.sagas.ops.web.pages import (
    Chrome,
    list_fragment,
    list_page,
    login_page,
    message_page,
)
from lexigram.events.sagas.ops.web.saga_page import Diagram, saga_fragment, saga_page
from lexigram.events.sagas.ops.web.security import (
    SECURITY_HEADERS,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Flash,
    Guard,
    Session,
    host_allowed,
    same_origin,
)
from lexigram.events.sagas.store import SagaStore
from lexigram.events.sagas.types import SagaRecord

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_LOGIN_COOKIE = "lexigram_admin_login"
_HTML_HEADERS = {"Cache-Control": "no-store"}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Caller:
    """Who sent a request: a session, a script with the token, or nobody known."""

    def __init__(self, session: Session | None, *, bearer: bool) -> None:
        self.session = session
        self.bearer = bearer

    @property
    def known(self) -> bool:
        return self.session is not None or self.bearer


class _Headers:
    """ASGI middleware: security headers on every response; unknown ``Host`` refused."""

    def __init__(self, app: ASGIApp, allowed_hosts: Collection[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.lower().encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        if not host_allowed(host, self.allowed):
            response = Response("unknown host", status_code=421, media_type="text/plain")
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


class _Admin:
    """The state behind the routes: the store, the runtime, the guard, the clock."""

    def __init__(
        self,
        store: SagaStore,
        runtime: SagaControl | None,
        guard: Guard,
        now: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.guard = guard
        self.now = now
        self._own: SagaManager | None = None  # a client of the store, for the first action

    def control(self) -> SagaControl:
        """Who carries out actions: the runtime given, or a client of the same store."""
        if self.runtime is not None:
            return self.runtime
        if self._own is None:
            self._own = SagaManager(self.store)
        return self._own

    async def close(self) -> None:
        """Close the client this admin made for itself, if any."""
        if self._own is not None:
            await self._own.close()

    # ------------------------------------------------------------------ who is asking

    def caller(self, request: Request) -> _Caller:
        if self.guard.read_only:
            return _Caller(None, bearer=False)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given and self.guard.check_token(given.strip()):
            return _Caller(None, bearer=True)
        return _Caller(self.guard.session(request.cookies.get(SESSION_COOKIE)), bearer=False)

    def chrome(self, caller: _Caller) -> Chrome:
        session = caller.session
        return Chrome(
            now=self.now(),
            actions=caller.known,
            token_mode=not self.guard.read_only,
            csrf=None if session is None else self.guard.csrf_token(session),
            flashes=() if session is None else session.pop_flashes(),
        )

    def login_redirect(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)

    # ------------------------------------------------------------------ pages

    async def list_page(self, request: Request) -> Response:
        caller = self.caller(request)
        if not self.guard.read_only and not caller.known:
            return self.login_redirect(request)
        chrome = self.chrome(caller)
        query, records, counts, more = await self._list(request, chrome.now)
        names = tuple(getattr(self.runtime, "registered", ()) or ())
        body = list_page(query, records, counts, chrome, names=names, has_more=more)
        return HTMLResponse(body, headers=_HTML_HEADERS)

    async def list_fragment(self, request: Request) -> Response:
        if not self.guard.read_only and not self.caller(request).known:
            return Response("log in again", status_code=401, media_type="text/plain")
        now = self.now()
        query, records, counts, more = await self._list(request, now)
        body = list_fragment(query, records, counts, now, has_more=more)
        return HTMLResponse(body, headers=_HTML_HEADERS)

    async def _list(
        self, request: Request, now: datetime
    ) -> tuple[ListQuery, list[SagaRecord], dict[str, int], bool]:
        query = parse_list_query(request.query_params, now)
        found = await self.store.list(limit=query.limit + 1, **query.store_filters())
        counts = await self.store.counts(saga_name=query.name)
        return query, found[: query.limit], counts, len(found) > query.limit

    async def saga_page(self, request: Request) -> Response:
        caller = self.caller(request)
        if not self.guard.read_only and not caller.known:
            return self.login_redirect(request)
        chrome = self.chrome(caller)
        saga_id = request.path_params["saga_id"]
        record = await self.store.load(saga_id)
        if record is None:
            return self._not_found(saga_id, chrome)
        line, diagram = self._drawn(record)
        form = next((dict(f.form) for f in chrome.flashes if f.form), {})
        show = request.query_params.get("data") == "1"
        body = saga_page(line, record, diagram, chrome, show_data=show, form=form)
        return HTMLResponse(body, headers=_HTML_HEADERS)

    async def saga_fragment(self, request: Request) -> Response:
        if not self.guard.read_only and not self.caller(request).known:
            return Response("log in again", status_code=401, media_type="text/plain")
        saga_id = request.path_params["saga_id"]
        record = await self.store.load(saga_id)
        if record is None:
            return Response("no such saga", status_code=404, media_type="text/plain")
        line, diagram = self._drawn(record)
        show = request.query_params.get("data") == "1"
        body = saga_fragment(line, record, diagram, self.now(), show_data=show)
        return HTMLResponse(body, headers=_HTML_HEADERS)

    def _drawn(self, record: SagaRecord) -> tuple[Timeline, Diagram]:
        flow = None
        runtime = self.runtime
        if runtime is not None and record.saga_name in runtime.registered:
            with contextlib.suppress(SagaNotFoundError):
                flow = runtime.flow(record.saga_name)
        try:
            svg = record_svg(record) if flow is None else flow_svg(flow, record)
        except Exception:  # a drawing bug must not hide the rest of the page
            logger.exception("cannot draw the diagram of saga %s", record.saga_id)
            svg = None
        return timeline(record, flow), Diagram(svg, from_flow=flow is not None)

    def _not_found(self, saga_id: str, chrome: Chrome) -> Response:
        body = message_page("Saga not found", f"No saga with id '{saga_id}' in this store.", chrome)
        return HTMLResponse(body, status_code=404, headers=_HTML_HEADERS)

    # ------------------------------------------------------------------ actions

    def _refuse(self, request: Request, status: int, message: str) -> Response:
        chrome = self.chrome(self.caller(request))
        body = message_page("Refused", message, chrome)
        return HTMLResponse(body, status_code=status, headers=_HTML_HEADERS)

    async def action(self, name: str, request: Request) -> Response:
        if self.guard.read_only:
            return self._refuse(request, 403, "This admin is read-only: start it with a token.")
        caller = self.caller(request)
        if not caller.known:
            return self._refuse(request, 403, "Log in first: actions need the token.")
        if not same_origin(request.headers, request.url.scheme, required=not caller.bearer):
            return self._refuse(request, 403, "Cross-site request refused (Origin/Referer).")
        try:
            form = await read_form(request)
        except FormError as exc:
            return self._refuse(request, exc.status, exc.message)
        session = caller.session
        if not caller.bearer and (
            session is None or not self.guard.check_csrf(session, form.get("csrf"))
        ):
            return self._refuse(request, 403, "Missing or wrong CSRF token: reload the page.")
        saga_id = request.path_params["saga_id"]
        outcome = await ACTIONS[name](self.store, self.control(), saga_id, form)
        return self._answer(caller, outcome)

    def _answer(self, caller: _Caller, outcome: Outcome) -> Response:
        if caller.session is None:  # a script with the token: JSON
            content = {"ok": outcome.ok, "message": outcome.message}
            return JSONResponse(content, status_code=outcome.status)
        caller.session.flashes.append(Flash(outcome.ok, outcome.message, outcome.form))
        return RedirectResponse(outcome.target, status_code=303)

    # ------------------------------------------------------------------ login

    async def login_form(self, request: Request) -> Response:
        if self.guard.read_only:
            return RedirectResponse("/", status_code=303)
        target = _safe_target(request.query_params.get("next"))
        if self.caller(request).known:
            return RedirectResponse(target, status_code=303)
        return self._login(request, target, None, 200)

    def _login(self, request: Request, target: str, error: str | None, status: int) -> Response:
        nonce = self.guard.login_nonce()
        chrome = Chrome(now=self.now(), token_mode=True)
        body = login_page(chrome, nonce=nonce, target=target, error=error)
        response = HTMLResponse(body, status_code=status, headers=_HTML_HEADERS)
        response.set_cookie(
            _LOGIN_COOKIE,
            nonce,
            max_age=900,
            path="/login",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def login(self, request: Request) -> Response:
        if self.guard.read_only:
            return self._refuse(request, 403, "This admin is read-only: there is no login.")
        if not same_origin(request.headers, request.url.scheme):
            return self._refuse(request, 403, "Cross-site request refused (Origin/Referer).")
        try:
            form = await read_form(request)
        except FormError as exc:
            return self._refuse(request, exc.status, exc.message)
        target = _safe_target(form.get("next"))
        nonce = request.cookies.get(_LOGIN_COOKIE)
        if not nonce or form.get("nonce") != nonce:
            return self._login(request, target, "The form expired: log in again.", 403)
        if self.guard.throttled():
            return self._login(request, target, "Too many wrong tokens: wait a minute.", 429)
        if not self.guard.check_token(form.get("token", "")):
            self.guard.failed_login()
            logger.warning("web admin: wrong token from %s", _client(request))
            return self._login(request, target, "Wrong token.", 401)
        session = self.guard.login()
        logger.info("web admin: login from %s", _client(request))
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session.session_id,
            max_age=SESSION_SECONDS,
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(_LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: Request) -> Response:
        caller = self.caller(request)
        session = caller.session
        if session is None:
            return RedirectResponse("/login", status_code=303)
        if not same_origin(request.headers, request.url.scheme):
            return self._refuse(request, 403, "Cross-site request refused (Origin/Referer).")
        try:
            form = await read_form(request)
        except FormError as exc:
            return self._refuse(request, exc.status, exc.message)
        if not self.guard.check_csrf(session, form.get("csrf")):
            return self._refuse(request, 403, "Missing or wrong CSRF token: reload the page.")
        self.guard.logout(session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # ------------------------------------------------------------------ the rest

    async def asset(self, request: Request) -> Response:
        asset = ASSETS.get(request.path_params["name"])
        if asset is None:
            return Response("not found", status_code=404, media_type="text/plain")
        headers = {"Cache-Control": "public, max-age=86400", "ETag": f'"{asset.version}"'}
        if request.headers.get("if-none-match") == f'"{asset.version}"':
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        chrome = Chrome(now=self.now(), token_mode=not self.guard.read_only)
        if status == 404:
            body = message_page("Not found", "There is no page at this address.", chrome)
        else:
            detail = exc.detail if isinstance(exc, HTTPException) else "error"
            body = message_page(f"Error {status}", str(detail), chrome)
        return HTMLResponse(body, status_code=status, headers=_HTML_HEADERS)

    async def store_error(self, request: Request, exc: Exception) -> Response:
        chrome = Chrome(now=self.now(), token_mode=not self.guard.read_only)
        if isinstance(exc, CorruptRecordError):
            title, status = "Unreadable saga", 500
        else:
            title, status = "Store unavailable", 503
        logger.warning("web admin: %s: %s", title.lower(), exc)
        body = message_page(title, str(exc), chrome)
        return HTMLResponse(body, status_code=status, headers=_HTML_HEADERS)


def _safe_target(value: str | None) -> str:
    """Where to go after the login: a path of this admin, never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def create_app(
    store: SagaStore,
    *,
    runtime: SagaControl | None = None,
    token: str | None = None,
    now: Callable[[], datetime] = _utc_now,
    allowed_hosts: Collection[str] | None = None,
) -> Starlette:
    """Build the web admin for ``store``.

    Args:
        store: Where the sagas are (opened or not; the admin never closes it).
        runtime: A ``SagaManager``/``SagaOrchestrator`` with the application's definitions:
            its registered names fill the name filter and its flows draw whole diagrams.
            Without one, diagrams show the steps each saga entered, and actions (with a
            token) go through a client-only ``SagaManager`` of the same store.
        token: Allows actions to whoever logs in with it; ``None``: read-only.
        now: The clock relative times are measured from.
        allowed_hosts: Host names the admin answers to (any port); ``None``: any.
            ``serve_ui`` passes the loopback names when it binds a loopback address.

    Returns:
        A Starlette application (serve it with any ASGI server).
    """
    admin = _Admin(store, runtime, Guard(token), now)

    routes = [
        Route("/", admin.list_page, methods=["GET"]),
        Route("/sagas/{saga_id:path}", admin.saga_page, methods=["GET"]),
        Route("/fragments/list", admin.list_fragment, methods=["GET"]),
        Route("/fragments/saga/{saga_id:path}", admin.saga_fragment, methods=["GET"]),
        *(
            Route(
                f"/{name}/{{saga_id:path}}", functools.partial(admin.action, name), methods=["POST"]
            )
            for name in ACTIONS
        ),
        Route("/login", admin.login_form, methods=["GET"]),
        Route("/login", admin.login, methods=["POST"]),
        Route("/logout", admin.logout, methods=["POST"]),
        Route("/assets/{name:str}", admin.asset, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await admin.close()

    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: admin.http_error,
            SagaStoreUnavailableError: admin.store_error,
            SagaStoreError: admin.store_error,
        },
        lifespan=lifespan,
    )
    app.add_middleware(_Headers, allowed_hosts=allowed_hosts)
    return app
