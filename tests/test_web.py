"""The web admin over HTTP (httpx against the ASGI app): pages, filters, actions, guards."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from lexigram.events.sagas import (
    InMemorySagaStore,
    SagaBase,
    SagaConfig,
    SagaContext,
    SagaStatus,
    SagaStepResult,
    SagaStoreUnavailableError,
    saga_step,
)
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.ops.web import create_app, serve_ui
from lexigram.events.sagas.ops.web.security import SESSION_COOKIE
from lexigram.events.sagas.sqlite import SQLiteSagaStore
from lexigram.events.sagas.store import SagaStore

TOKEN = "correct-horse-battery-staple"
ORIGIN = "http://testserver"
LATER = timedelta(minutes=3)  # the admin's clock runs 3 minutes after the sagas were made
FAST = SagaConfig(retry_delay_seconds=0, max_retries_per_step=0, default_timeout_seconds=86400)


class OrderSaga(SagaBase):
    name = "orders"

    @saga_step("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        return None

    @saga_step("reserve", compensation=True)
    async def release(self, ctx: SagaContext) -> None:
        return None

    @saga_step("charge")
    async def charge(self, ctx: SagaContext) -> SagaStepResult:
        if ctx.get("decline"):
            return SagaStepResult.fail('card <declined> & "refused"')
        return SagaStepResult.Ok({"receipt": "r-1"})

    @saga_step("confirm")
    async def confirm(self, ctx: SagaContext) -> None:
        return None


class ApprovalSaga(SagaBase):
    name = "approval"

    @saga_step("submit")
    async def submit(self, ctx: SagaContext) -> None:
        return None

    @saga_step("submit", compensation=True)
    async def withdraw(self, ctx: SagaContext) -> None:
        return None

    @saga_step("approve", wait_for="approval", wait_timeout=3 * 86400)
    async def approve(self, ctx: SagaContext) -> None:
        return None


class RefundSaga(SagaBase):
    name = "refund"

    @saga_step("charge")
    async def charge(self, ctx: SagaContext) -> None:
        return None

    @saga_step("charge", compensation=True)
    async def uncharge(self, ctx: SagaContext) -> None:
        raise RuntimeError("the bank is down")

    @saga_step("ship")
    async def ship(self, ctx: SagaContext) -> SagaStepResult:
        return SagaStepResult.fail("no stock")


@dataclass
class World:
    store: SagaStore
    manager: SagaManager

    def app(self, *, token: str | None = None, runtime: bool = True, **options: Any) -> Starlette:
        return create_app(
            self.store,
            runtime=self.manager if runtime else None,
            token=token,
            now=lambda: datetime.now(UTC) + LATER,
            **options,
        )


async def until_parked(manager: SagaManager, saga_id: str) -> None:
    async with asyncio.timeout(5):
        while True:
            record = await manager.get(saga_id)
            if record is not None and record.waiting is not None and not record.lease_owner:
                return
            await asyncio.sleep(0.005)


@pytest.fixture(params=["memory", "sqlite"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    """Three completed orders, a compensated one, a failed refund and a parked approval."""
    store: SagaStore = InMemorySagaStore()
    if request.param == "sqlite":
        store = SQLiteSagaStore(tmp_path / "sagas.db")
    manager = SagaManager(store, config=FAST)
    manager.register(OrderSaga)
    manager.register(ApprovalSaga)
    manager.register(RefundSaga)
    for number in range(3):
        await manager.execute("orders", {"order_id": number}, saga_id=f"order-{number}")
    declined = {"decline": True, "card": "4111-SECRET", "<img src=x onerror=alert(1)>": 1}
    await manager.execute("orders", declined, saga_id="order-declined")
    await manager.execute("refund", {}, saga_id="refund-1")
    await manager.start("approval", {"amount": 120}, "exp-1", correlation_id="batch-7")
    await until_parked(manager, "exp-1")
    yield World(store, manager)
    await manager.close()
    await store.close()


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN)


def ids_on(page: str) -> list[str]:
    """The saga ids a list page links to, in order."""
    return re.findall(r'href="/sagas/([^"]+)" title=', page)


async def login(http: httpx.AsyncClient, token: str = TOKEN) -> httpx.Response:
    form = await http.get("/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None
    data = {"token": token, "nonce": nonce.group(1), "next": "/sagas/exp-1"}
    return await http.post("/login", data=data, headers={"Origin": ORIGIN})


async def csrf_of(http: httpx.AsyncClient, saga_id: str = "exp-1") -> str:
    page = await http.get(f"/sagas/{saga_id}")
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found is not None
    return found.group(1)


@pytest.fixture
async def admin(world: World) -> AsyncIterator[httpx.AsyncClient]:
    """A client logged in to an admin started with the token."""
    async with client(world.app(token=TOKEN)) as http:
        assert (await login(http)).status_code == 303
        yield http


# --------------------------------------------------------------------------- the list


async def test_the_list_shows_every_saga_newest_first(world: World) -> None:
    """Every saga is listed, the newest first, with its status and relative times."""
    async with client(world.app()) as http:
        page = await http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    found = ids_on(page.text)
    assert found[0] == "exp-1"
    assert sorted(found) == sorted(
        ["order-0", "order-1", "order-2", "order-declined", "refund-1", "exp-1"]
    )
    assert '<span class="chip s-waiting">waiting</span>' in page.text
    assert ">3m ago</time>" in page.text
    assert re.search(
        r'<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">', page.text
    )


async def test_counts_by_status_are_chips_linking_to_the_filtered_list(world: World) -> None:
    """Each status (and ``waiting``) shows its count and links to the sagas in it."""
    async with client(world.app()) as http:
        page = (await http.get("/")).text
    for status, count in [
        ("completed", 3),
        ("compensated", 1),
        ("failed", 1),
        ("running", 1),
        ("waiting", 1),
    ]:
        assert f"{status} <b>{count}</b>" in page
    assert 'href="/?status=compensated"' in page
    assert 'href="/?waiting=1"' in page
    assert "6 sagas" in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=compensated", ["order-declined"]),
        ("status=failed", ["refund-1"]),
        ("name=refund", ["refund-1"]),
        ("correlation_id=batch-7", ["exp-1"]),
        ("waiting=1", ["exp-1"]),
        ("status=waiting", ["exp-1"]),
        ("name=orders&status=completed", ["order-2", "order-1", "order-0"]),
        ("until=1h", []),
    ],
)
async def test_filters_narrow_the_list(world: World, query: str, expected: list[str]) -> None:
    """Name, status, correlation id, waiting and creation time filter the list."""
    async with client(world.app()) as http:
        page = (await http.get(f"/?{query}")).text
    assert ids_on(page) == expected
    if not expected:
        assert "No saga matches these filters." in page


async def test_created_since_takes_a_time_or_a_duration(world: World) -> None:
    """``since`` accepts ``2h`` (ago) and ISO times; the form keeps what was typed."""
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d %H:%M")
    async with client(world.app()) as http:
        recent = (await http.get("/", params={"since": "2h"})).text
        none = (await http.get("/", params={"since": future})).text
    assert len(ids_on(recent)) == 6
    assert 'name="since" value="2h"' in recent
    assert ids_on(none) == []


async def test_unreadable_filters_are_reported_next_to_the_form(world: World) -> None:
    """A bad status, time or offset is explained; the page still lists the sagas."""
    async with client(world.app()) as http:
        page = await http.get("/", params={"status": "lost", "since": "soon", "offset": "-2"})
    assert page.status_code == 200
    assert "status: &#x27;lost&#x27; is not a saga status" in page.text
    assert "created since: &#x27;soon&#x27; is not a time" in page.text
    assert "offset: &#x27;-2&#x27; is not a count" in page.text
    assert len(ids_on(page.text)) == 6


async def test_paging_moves_through_the_list(world: World) -> None:
    """``limit`` sagas per page; Older and Newer links move by one page."""
    async with client(world.app()) as http:
        first = (await http.get("/?limit=4")).text
        second = (await http.get("/?limit=4&offset=4")).text
    assert len(ids_on(first)) == 4
    assert len(ids_on(second)) == 2
    assert set(ids_on(first)).isdisjoint(ids_on(second))
    assert 'href="/?offset=4&amp;limit=4">Older' in first
    assert '<a class="button disabled" href="/?limit=4">' in first  # no newer page
    assert 'href="/?limit=4">\u2190 Newer' in second
    assert "Showing 5\u20136" in second
    assert '<a class="button disabled" href="/?offset=8&amp;limit=4">Older' in second


async def test_the_name_filter_lists_registered_names_or_takes_text(world: World) -> None:
    """With a runtime the names are a choice; without one, free text."""
    async with client(world.app()) as http:
        with_runtime = (await http.get("/")).text
    async with client(world.app(runtime=False)) as http:
        without = (await http.get("/?name=orders")).text
    assert '<select name="name">' in with_runtime
    assert "<option>refund</option>" in with_runtime
    assert '<input name="name" value="orders"' in without
    assert ids_on(without) == ["order-declined", "order-2", "order-1", "order-0"]


async def test_the_list_fragment_is_the_refreshing_part(world: World) -> None:
    """``/fragments/list`` returns the counts and table for the same query."""
    async with client(world.app()) as http:
        fragment = await http.get("/fragments/list?status=failed")
    assert fragment.status_code == 200
    assert fragment.text.startswith('<div data-live="list">')
    assert ids_on(fragment.text) == ["refund-1"]
    assert "<html" not in fragment.text


# --------------------------------------------------------------------------- the saga page


async def test_the_saga_page_shows_header_timeline_and_diagram(world: World) -> None:
    """Status, error and failure kind, one row per step, the step never reached greyed."""
    async with client(world.app()) as http:
        page = (await http.get("/sagas/order-declined")).text
    assert '<h1>orders</h1><span class="chip s-compensated">compensated</span>' in page
    assert '<span class="kind">step_failed</span> at step <b>charge</b>' in page
    assert "card &lt;declined&gt; &amp; &quot;refused&quot;" in page
    rows = re.findall(r"<tr class='[^']*'><td class='num'>(\d+)</td><td class='step'>(\w+)", page)
    assert [name for _, name in rows] == ["reserve", "charge", "confirm"]
    assert "<tr class='upcoming'><td class='num'>3</td><td class='step'>confirm</td>" in page
    assert "card &lt;declined&gt;" in page.split("<h2>Timeline</h2>")[1]
    svg = re.search(r"<svg .*?</svg>", page, re.DOTALL)
    assert svg is not None
    root = ET.fromstring(svg.group(0))
    steps = {
        g.attrib["data-step"]: g.attrib.get("data-status")
        for g in root.iter()
        if "data-step" in g.attrib
    }
    assert steps == {"reserve": "compensated", "charge": "failed", "confirm": "pending"}
    assert "The registered definition" in page


async def test_without_its_flow_the_diagram_draws_the_recorded_steps(world: World) -> None:
    """An admin without the runtime draws the steps the saga entered."""
    async with client(world.app(runtime=False)) as http:
        page = (await http.get("/sagas/order-declined")).text
    assert "its definition is not registered here" in page
    assert 'data-step="reserve"' in page
    assert 'data-step="confirm"' not in page


async def test_data_shows_keys_until_values_are_asked_for(world: World) -> None:
    """Keys only by default; ``?data=1`` shows the values as escaped, pretty JSON."""
    async with client(world.app()) as http:
        keys = (await http.get("/sagas/order-declined")).text
        values = (await http.get("/sagas/order-declined?data=1")).text
    assert "<code>card</code>" in keys
    assert "<code>&lt;img src=x onerror=alert(1)&gt;</code>" in keys
    assert "4111-SECRET" not in keys
    assert 'href="/sagas/order-declined?data=1">Show values' in keys
    assert '"card": "4111-SECRET"' in values.replace("&quot;", '"')
    assert "<img src=x" not in values
    assert '<pre class="json">{\n  &quot;&lt;img' in values


async def test_a_parked_saga_says_what_it_waits_for(world: World) -> None:
    """The signal, the timeout and since when; the waiting step is a waiting row."""
    async with client(world.app()) as http:
        page = (await http.get("/sagas/exp-1")).text
    assert "Waits at step <b>approve</b> for the signal <code>approval</code>, timeout" in page
    assert ">in 2d</time>" in page
    assert "<td class='step'>approve</td><td><span class=\"chip s-waiting\">waiting" in page
    assert "batch-7" in page


async def test_the_saga_fragment_holds_the_live_parts(world: World) -> None:
    """``/fragments/saga/{id}`` returns header, timeline, diagram and data, no forms."""
    async with client(world.app(token=TOKEN)) as http:
        await login(http)
        fragment = (await http.get("/fragments/saga/exp-1?data=1")).text
    keys = re.findall(r'data-live="(\w+)"', fragment)
    assert keys == ["header", "timeline", "diagram", "data"]
    assert "<form" not in fragment
    assert "&quot;amount&quot;: 120" in fragment


async def test_an_unknown_saga_is_a_404_page(world: World) -> None:
    """Unknown ids and unknown addresses answer 404 with a page saying so."""
    async with client(world.app()) as http:
        saga = await http.get("/sagas/no-such-saga")
        fragment = await http.get("/fragments/saga/no-such-saga")
        other = await http.get("/nothing/here")
    assert saga.status_code == 404
    assert "No saga with id &#x27;no-such-saga&#x27;" in saga.text
    assert fragment.status_code == 404
    assert other.status_code == 404
    assert "Not found" in other.text


async def test_ids_with_slashes_and_markup_round_trip(world: World) -> None:
    """An id is percent-encoded in links and escaped in the page."""
    odd = 'a/b <i>"x"</i>'
    await world.manager.execute("orders", {}, saga_id=odd)
    async with client(world.app()) as http:
        listed = (await http.get("/")).text
        page = await http.get("/sagas/a%2Fb%20%3Ci%3E%22x%22%3C%2Fi%3E")
    assert 'href="/sagas/a%2Fb%20%3Ci%3E%22x%22%3C%2Fi%3E"' in listed
    assert "<i>" not in listed
    assert page.status_code == 200
    assert "a/b &lt;i&gt;&quot;x&quot;&lt;/i&gt;" in page.text


async def test_a_store_that_cannot_be_reached_gives_a_503_page(world: World) -> None:
    """A store outage is a clear page, not a traceback."""

    class Down(InMemorySagaStore):
        async def list(self, **filters: Any) -> list[Any]:
            raise SagaStoreUnavailableError("connection refused")

    async with client(create_app(Down())) as http:
        page = await http.get("/")
    assert page.status_code == 503
    assert "Store unavailable" in page.text
    assert "connection refused" in page.text


# --------------------------------------------------------------------------- headers, assets


async def test_every_response_carries_the_security_headers(world: World) -> None:
    """CSP without inline script or style, no framing, same-origin referrers."""
    async with client(world.app()) as http:
        responses = [await http.get(path) for path in ("/", "/sagas/exp-1", "/missing")]
    for response in responses:
        policy = response.headers["content-security-policy"]
        for directive in (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
        ):
            assert directive in policy
        assert "unsafe-inline" not in policy
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "same-origin"


async def test_pages_use_no_inline_script_or_style_and_no_network(world: World) -> None:
    """Scripts and styles come from /assets; nothing is loaded from elsewhere."""
    async with client(world.app()) as http:
        page = (await http.get("/sagas/order-declined")).text
        css = await http.get("/assets/admin.css")
        js = await http.get("/assets/admin.js")
    scripts = re.findall(r"<script[^>]*>", page)
    assert len(scripts) == 1
    assert re.fullmatch(r'<script src="/assets/admin\.js\?v=\w+" defer>', scripts[0])
    assert " style=" not in page
    assert "<style" not in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert css.headers["content-type"].startswith("text/css")
    assert js.headers["content-type"].startswith("text/javascript")
    assert "visibilitychange" in js.text


# --------------------------------------------------------------------------- read-only


async def test_read_only_hides_actions_and_refuses_posts(world: World) -> None:
    """Without a token: no forms, and every action is refused with 403."""
    async with client(world.app()) as http:
        page = (await http.get("/sagas/exp-1")).text
        posts = [
            await http.post(f"/{action}/exp-1", data={"reason": "x"}, headers={"Origin": ORIGIN})
            for action in ("cancel", "retry", "signal")
        ]
        login_post = await http.post("/login", data={"token": "x"}, headers={"Origin": ORIGIN})
        login_form = await http.get("/login")
    assert '<form method="post"' not in page
    assert "Read-only: start the admin with a token" in page
    assert [post.status_code for post in posts] == [403, 403, 403]
    assert "read-only" in posts[0].text
    assert login_post.status_code == 403
    assert login_form.status_code == 303
    record = await world.store.load("exp-1")
    assert record is not None
    assert record.cancel_requested_at is None


# --------------------------------------------------------------------------- login


async def test_with_a_token_pages_need_a_login(world: World) -> None:
    """Pages redirect to the login form; fragments answer 401."""
    async with client(world.app(token=TOKEN)) as http:
        page = await http.get("/sagas/exp-1")
        fragment = await http.get("/fragments/list")
        form = await http.get("/login")
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fsagas%2Fexp-1"
    assert fragment.status_code == 401
    assert form.status_code == 200
    assert 'type="password" name="token"' in form.text
    assert "exp-1" not in form.text


async def test_the_right_token_opens_a_strict_http_only_session(world: World) -> None:
    """The login sets an HttpOnly, SameSite=Strict cookie and goes where it was asked."""
    async with client(world.app(token=TOKEN)) as http:
        response = await login(http)
        page = await http.get("/sagas/exp-1")
    assert response.status_code == 303
    assert response.headers["location"] == "/sagas/exp-1"
    cookie = next(
        value for value in response.headers.get_list("set-cookie") if SESSION_COOKIE in value
    )
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    assert page.status_code == 200
    assert '<span class="pill admin"' in page.text
    assert 'action="/cancel/exp-1"' in page.text


async def test_a_wrong_token_is_refused(world: World) -> None:
    """A wrong token: 401 with a message, no session."""
    async with client(world.app(token=TOKEN)) as http:
        response = await login(http, "not-the-token")
        after = await http.get("/")
    assert response.status_code == 401
    assert "Wrong token." in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    assert after.status_code == 303


async def test_the_login_form_needs_its_nonce_and_the_same_origin(world: World) -> None:
    """A login posted from elsewhere, or without the form's nonce, is refused."""
    async with client(world.app(token=TOKEN)) as http:
        cross = await http.post(
            "/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"}
        )
        no_nonce = await http.post("/login", data={"token": TOKEN}, headers={"Origin": ORIGIN})
    assert cross.status_code == 403
    assert no_nonce.status_code == 403
    assert SESSION_COOKIE not in no_nonce.headers.get("set-cookie", "")


async def test_guessing_the_token_is_slowed_down(world: World) -> None:
    """After five wrong tokens in a minute, logins are refused for a while."""
    async with client(world.app(token=TOKEN)) as http:
        statuses = [(await login(http, f"guess-{n}")).status_code for n in range(5)]
        blocked = await login(http)
    assert statuses == [401] * 5
    assert blocked.status_code == 429


async def test_the_login_only_sends_back_to_this_site(world: World) -> None:
    """``next`` pointing elsewhere sends to the list instead."""
    async with client(world.app(token=TOKEN)) as http:
        form = await http.get("/login?next=//evil.example/x")
        nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
        assert nonce is not None
        data = {"token": TOKEN, "nonce": nonce.group(1), "next": "//evil.example/x"}
        response = await http.post("/login", data=data, headers={"Origin": ORIGIN})
    assert response.headers["location"] == "/"


async def test_logging_out_ends_the_session(admin: httpx.AsyncClient) -> None:
    """Log out (with the CSRF token): the cookie goes and pages ask for the login again."""
    csrf = await csrf_of(admin)
    response = await admin.post("/logout", data={"csrf": csrf}, headers={"Origin": ORIGIN})
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert (await admin.get("/")).status_code == 303


async def test_a_script_may_send_the_token_in_a_header(world: World) -> None:
    """``Authorization: Bearer`` reads pages and acts, answering JSON."""
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with client(world.app(token=TOKEN)) as http:
        page = await http.get("/", headers=bearer)
        done = await http.post(
            "/signal/exp-1", data={"name": "approval", "payload": "{}"}, headers=bearer
        )
        wrong = await http.get("/", headers={"Authorization": "Bearer nope"})
    assert page.status_code == 200
    assert done.status_code == 200
    assert done.json()["ok"] is True
    assert wrong.status_code == 303


# --------------------------------------------------------------------------- guards on actions


async def test_an_action_without_its_csrf_token_is_refused(admin: httpx.AsyncClient) -> None:
    """Missing or wrong CSRF token: 403, and nothing happens."""
    missing = await admin.post("/cancel/exp-1", data={"reason": "x"}, headers={"Origin": ORIGIN})
    wrong = await admin.post(
        "/cancel/exp-1", data={"reason": "x", "csrf": "0" * 64}, headers={"Origin": ORIGIN}
    )
    assert missing.status_code == 403
    assert wrong.status_code == 403
    assert "CSRF" in wrong.text
    page = (await admin.get("/sagas/exp-1")).text
    assert "Cancel requested" not in page


async def test_a_cross_site_action_is_refused(admin: httpx.AsyncClient) -> None:
    """A foreign Origin, a foreign Referer or neither: 403, even with the right CSRF token."""
    csrf = await csrf_of(admin)
    data = {"reason": "x", "csrf": csrf}
    foreign = await admin.post(
        "/cancel/exp-1", data=data, headers={"Origin": "https://evil.example"}
    )
    referer = await admin.post(
        "/cancel/exp-1", data=data, headers={"Referer": "https://evil.example/page"}
    )
    neither = await admin.post("/cancel/exp-1", data=data)
    assert [foreign.status_code, referer.status_code, neither.status_code] == [403, 403, 403]
    assert "Cross-site request refused" in foreign.text


async def test_a_form_must_be_url_encoded_and_small(admin: httpx.AsyncClient) -> None:
    """Other content types and oversized forms are refused."""
    csrf = await csrf_of(admin)
    as_json = await admin.post("/cancel/exp-1", json={"csrf": csrf}, headers={"Origin": ORIGIN})
    huge = await admin.post(
        "/signal/exp-1",
        data={"csrf": csrf, "name": "approval", "payload": "x" * 70_000},
        headers={"Origin": ORIGIN},
    )
    assert as_json.status_code == 415
    assert huge.status_code == 413


async def test_unknown_hosts_are_refused(world: World) -> None:
    """With allowed host names, a request addressed to another name answers 421."""
    app = world.app(allowed_hosts={"127.0.0.1", "localhost"})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8765"
    ) as http:
        good = await http.get("/")
        rebound = await http.get("/", headers={"Host": "attacker.example"})
    assert good.status_code == 200
    assert rebound.status_code == 421


# --------------------------------------------------------------------------- actions


async def act(http: httpx.AsyncClient, action: str, saga_id: str, **form: str) -> httpx.Response:
    """Post an action as the page's form does (the session's CSRF token, a same-site Referer)."""
    csrf = await csrf_of(http)
    return await http.post(
        f"/{action}/{saga_id}", data={"csrf": csrf, **form}, headers={"Referer": f"{ORIGIN}/x"}
    )


async def test_cancel_requests_the_cancel_and_says_so(
    admin: httpx.AsyncClient, world: World
) -> None:
    """Cancel a parked saga: back to its page with a message, the request is stored."""
    response = await act(admin, "cancel", "exp-1", reason="customer <withdrew>")
    assert response.status_code == 303
    assert response.headers["location"] == "/sagas/exp-1"
    page = (await admin.get("/sagas/exp-1")).text
    assert '<div class="flash good" role="status">Cancel requested' in page
    assert "Cancel requested <time" in page
    assert "customer &lt;withdrew&gt;" in page
    record = await world.store.load("exp-1")
    assert record is not None
    assert record.cancel_requested_at is not None
    assert record.cancel_reason == "customer <withdrew>"
    again = (await admin.get("/sagas/exp-1")).text
    assert "flash good" not in again  # a message is shown once


async def test_cancelling_a_finished_saga_is_refused_clearly(
    admin: httpx.AsyncClient, world: World
) -> None:
    """A finished saga has nothing to cancel; an unknown one is not found."""
    finished = await act(admin, "cancel", "order-0")
    page = (await admin.get(finished.headers["location"])).text
    assert "The saga already finished (completed): nothing to cancel." in page
    assert "flash bad" in page
    missing = await act(admin, "cancel", "no-such-saga")
    assert missing.headers["location"] == "/"
    listed = (await admin.get("/")).text
    assert "No saga with id &#x27;no-such-saga&#x27; in this store." in listed


async def test_retry_redrives_a_failed_saga(admin: httpx.AsyncClient, world: World) -> None:
    """Retry on a failed saga: it is compensating again, redrive counted."""
    page = (await admin.get("/sagas/refund-1")).text
    assert 'action="/retry/refund-1"' in page
    response = await act(admin, "retry", "refund-1")
    assert response.status_code == 303
    page = (await admin.get("/sagas/refund-1")).text
    assert "Saga redriven (redrive 1)" in page
    record = await world.store.load("refund-1")
    assert record is not None
    assert record.status is SagaStatus.COMPENSATING
    assert record.redrives == 1


async def test_retry_of_a_saga_that_did_not_fail_is_refused(admin: httpx.AsyncClient) -> None:
    """Only a failed saga can be retried; the refusal says why."""
    response = await act(admin, "retry", "order-1")
    page = (await admin.get(response.headers["location"])).text
    assert "Retry refused: saga &#x27;order-1&#x27; is completed" in page


async def test_signal_is_stored_for_the_saga(admin: httpx.AsyncClient, world: World) -> None:
    """A signal with a JSON payload is stored; the same signal id again is a duplicate."""
    form = {"name": "approval", "payload": '{"ok": true, "by": "ana"}', "signal_id": "req-1"}
    response = await act(admin, "signal", "exp-1", **form)
    assert response.status_code == 303
    page = (await admin.get("/sagas/exp-1")).text
    assert "Signal &#x27;approval&#x27; sent" in page
    stored = await world.store.next_signal("exp-1", "approval", 0)
    assert stored is not None
    assert stored.payload == {"ok": True, "by": "ana"}
    assert stored.signal_id == "req-1"
    await act(admin, "signal", "exp-1", **form)
    page = (await admin.get("/sagas/exp-1")).text
    assert "was already received (same signal id)" in page


async def test_a_bad_payload_is_explained_and_kept_in_the_form(
    admin: httpx.AsyncClient, world: World
) -> None:
    """Invalid JSON, or JSON that is not an object: a clear error, the text typed kept."""
    await act(admin, "signal", "exp-1", name="approval", payload="{ok: yes")
    page = (await admin.get("/sagas/exp-1")).text
    assert "The payload is not valid JSON: Expecting property name" in page
    assert ">{ok: yes</textarea>" in page
    await act(admin, "signal", "exp-1", name="approval", payload="[1, 2]")
    page = (await admin.get("/sagas/exp-1")).text
    assert "The payload must be a JSON object ({...}), not list." in page
    assert await world.store.next_signal("exp-1", "approval", 0) is None


async def test_a_signal_to_a_finished_saga_is_refused(admin: httpx.AsyncClient) -> None:
    """A finished saga takes no signals: the page says so."""
    response = await act(admin, "signal", "order-2", name="approval", payload="{}")
    page = (await admin.get(response.headers["location"])).text
    assert "Signal not stored: saga &#x27;order-2&#x27; is completed" in page


async def test_without_a_runtime_actions_use_a_client_of_the_store(world: World) -> None:
    """An admin given only the store can still cancel, retry and signal."""
    async with client(world.app(token=TOKEN, runtime=False)) as http:
        await login(http)
        response = await act(http, "cancel", "exp-1", reason="by hand")
    assert response.status_code == 303
    record = await world.store.load("exp-1")
    assert record is not None
    assert record.cancel_reason == "by hand"


# --------------------------------------------------------------------------- packaging


def test_importing_without_starlette_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the ``ui`` extra, the import error says what to install."""
    for name in [name for name in sys.modules if name.startswith("lexigram.events.sagas.ops.web")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "starlette", None)
    with pytest.raises(ImportError) as caught:
        importlib.import_module("lexigram.events.sagas.ops.web")
    assert str(caught.value) == (
        "the web admin needs the 'ui' extra: pip install 'lexigram-events[ui]'"
    )
    assert caught.value.name == "starlette"


async def test_serve_ui_in_a_running_loop_returns_what_to_await(world: World) -> None:
    """Called from a coroutine, ``serve_ui`` hands back the server's coroutine."""
    serving = serve_ui(world.store, runtime=world.manager, port=0)
    assert inspect.iscoroutine(serving)
    serving.close()
