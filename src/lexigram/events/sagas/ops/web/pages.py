"""The page frame, the list of sagas, the login form and the error pages, as HTML text.

Every value goes through :func:`~lexigram.events.sagas.ops.web.markup.html`, which
escapes it. The parts that refresh in place carry ``data-live="<key>"``: the fragment
routes return the same elements, and the script swaps each for its fresh copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from lexigram.events.sagas.ops.timeline import timeline
from lexigram.events.sagas.ops.web.assets import asset_url
from lexigram.events.sagas.ops.web.filters import ListQuery
from lexigram.events.sagas.ops.web.markup import (
    STATUSES,
    Html,
    chip,
    duration,
    esc,
    html,
    join,
    mono,
    saga_url,
    when,
)
from lexigram.events.sagas.ops.web.security import Flash
from lexigram.events.sagas.types import SagaRecord, SagaStatus

__all__ = [
    "Chrome",
    "list_fragment",
    "list_page",
    "login_page",
    "message_page",
    "page",
]

REFRESH_SECONDS = 5
"""How often the pages refresh in place."""


@dataclass(frozen=True, slots=True)
class Chrome:
    """What every page shows around its content: who is looking, and what happened.

    Attributes:
        now: The time pages measure ``3m ago`` from.
        actions: Whether this visitor may act (a token was given and they logged in).
        token_mode: Whether the admin was started with a token.
        csrf: This session's CSRF token, for the forms.
        flashes: Messages to show once (outcomes of actions).
    """

    now: datetime
    actions: bool = False
    token_mode: bool = False
    csrf: str | None = None
    flashes: Sequence[Flash] = field(default_factory=tuple)


def csrf_field(chrome: Chrome) -> Html:
    """The hidden CSRF input every form of a session carries."""
    return html('<input type="hidden" name="csrf" value="{token}">', token=chrome.csrf or "")


def page(title: str, body: Html, chrome: Chrome, *, live: bool = False) -> Html:
    """A whole page: head, top bar, flashes, ``body``."""
    mode = Html('<span class="pill" title="start with a token to act">read-only</span>')
    if chrome.actions:
        mode = Html('<span class="pill admin" title="actions allowed">admin</span>')
    elif chrome.token_mode:  # not logged in yet
        mode = Html("")
    logout = Html("")
    if chrome.token_mode and chrome.csrf:
        logout = html(
            '<form method="post" action="/logout">{csrf}'
            '<button class="quiet" type="submit">Log out</button></form>',
            csrf=csrf_field(chrome),
        )
    badge = Html("")
    if live:
        badge = Html(
            '<span id="live" class="live" data-state="off" title="refreshes every '
            f'{REFRESH_SECONDS}s"><span class="dot"></span><span class="text">static</span>'
            '</span><button id="live-toggle" class="quiet" type="button" hidden>Pause</button>'
        )
    flashes = join(
        html('<div class="flash {kind}" role="status">{text}</div>', kind=kind, text=f.message)
        for f in chrome.flashes
        for kind in ("good" if f.ok else "bad",)
    )
    return html(
        """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} \u00b7 Sagas</title>
<link rel="icon" href="{icon}" type="image/svg+xml">
<link rel="stylesheet" href="{css}">
<script src="{js}" defer></script>
</head>
<body>
<header class="topbar"><div class="wrap inner">
<a class="brand" href="/"><img class="logo" src="{icon}" alt=""> Sagas</a>
<span class="spacer"></span>{badge}{mode}{logout}
</div></header>
<main class="wrap">
{flashes}{body}
</main>
</body>
</html>
""",
        title=title,
        icon=asset_url("icon.svg"),
        css=asset_url("admin.css"),
        js=asset_url("admin.js"),
        badge=badge,
        mode=mode,
        logout=logout,
        flashes=flashes,
        body=body,
    )


# --------------------------------------------------------------------------- the list


def _filters(query: ListQuery, names: Sequence[str]) -> Html:
    if names:
        options = [html('<option value="">any name</option>')]
        for name in sorted({*names, *([query.name] if query.name else [])}):
            selected = " selected" if name == query.name else ""
            options.append(html("<option{s}>{name}</option>", s=Html(selected), name=name))
        name_field = html('<select name="name">{options}</select>', options=join(options))
    else:
        name_field = html(
            '<input name="name" value="{value}" placeholder="any name" size="16">',
            value=query.name or "",
        )
    statuses = [html('<option value="">any status</option>')]
    for status in SagaStatus:
        selected = " selected" if query.status is status else ""
        statuses.append(
            html('<option value="{v}"{s}>{v}</option>', v=status.value, s=Html(selected))
        )
    return html(
        """<form class="filters" method="get" action="/">
<label class="field">Name {name}</label>
<label class="field">Status <select name="status">{statuses}</select></label>
<label class="field">Correlation id
<input name="correlation_id" value="{correlation}" placeholder="any" size="18"></label>
<label class="field">Created since
<input name="since" value="{since}" placeholder="2h or 2024-05-01" size="16"></label>
<label class="field">Created until
<input name="until" value="{until}" placeholder="UTC" size="16"></label>
<label class="check"><input type="checkbox" name="waiting" value="1"{waiting}> waiting only</label>
<input type="hidden" name="limit" value="{limit}">
<button class="primary" type="submit">Apply</button>
<a class="button" href="/">Reset</a>
</form>""",
        name=name_field,
        statuses=join(statuses),
        correlation=query.correlation_id or "",
        since=query.since_text,
        until=query.until_text,
        waiting=Html(" checked" if query.waiting else ""),
        limit=query.limit,
    )


def _counts(query: ListQuery, counts: Mapping[str, int]) -> Html:
    total = sum(counts.get(status.value, 0) for status in SagaStatus)
    chips = [html('<span class="total">{total} sagas</span>', total=f"{total:,}")]
    for status in STATUSES:
        if status == "waiting":
            target = query.query_string(status=None, waiting=True, offset=0)
            active = query.waiting and query.status is None
        else:
            target = query.query_string(status=SagaStatus(status), waiting=False, offset=0)
            active = query.status is not None and query.status.value == status
        label = html("{name} <b>{count}</b>", name=status, count=f"{counts.get(status, 0):,}")
        extra = "active" if active else "" if counts.get(status, 0) else "zero"
        chips.append(chip(status, label, href="/" + target, extra=extra))
    return html('<div class="counts">{chips}</div>', chips=join(chips))


def _where(record: SagaRecord, now: datetime) -> Html:
    wait = record.waiting
    if wait is not None and not record.is_terminal:
        what = f"signal {wait.signal}" if wait.kind == "signal" else wait.kind
        label = ", timeout " if wait.kind == "signal" else ", runs "
        until = html("{label}{t}", label=label, t=when(wait.until, now)) if wait.until else ""
        template = "{step} <span class='muted'>\u00b7 {what}{until}</span>"
        return html(template, step=wait.step, what=what, until=until)
    if record.is_terminal:
        failure = record.failure
        return esc(failure.step if failure is not None and failure.step else "\u2014")
    return esc(record.current_step or "\u2014")


def _row(record: SagaRecord, query: ListQuery, now: datetime) -> Html:
    line = timeline(record)
    status = chip(record.status.value)
    if record.waiting is not None and not record.is_terminal:  # parked: waiting says more
        status = html(
            '<span title="{s}, parked">{chip}</span>', s=record.status.value, chip=chip("waiting")
        )
    correlation = Html('<span class="muted">\u2014</span>')
    if line.correlation_id != record.saga_id:
        target = "/" + query.query_string(correlation_id=line.correlation_id, offset=0)
        correlation = mono(line.correlation_id, href=target)
    error = Html("")
    if record.error:
        kind = html("<b>{k}</b> ", k=line.failure_kind) if line.failure_kind else Html("")
        error = html(
            '<span class="error-text clip" title="{full}">{kind}{text}</span>',
            full=record.error,
            kind=kind,
            text=record.error,
        )
    return html(
        "<tr><td class='nowrap'>{status}</td><td>{saga}</td><td>{name}</td><td>{corr}</td>"
        "<td class='where'>{where}</td><td class='nowrap'>{created}</td>"
        "<td class='nowrap hide-narrow'>{updated}</td><td class='num'>{took}</td>"
        "<td>{error}</td></tr>",
        status=status,
        saga=mono(record.saga_id, href=saga_url(record.saga_id)),
        name=html(
            '<a href="{href}">{name}</a>',
            href="/" + query.query_string(name=record.saga_name, offset=0),
            name=record.saga_name,
        ),
        corr=correlation,
        where=_where(record, now),
        created=when(record.created_at, now),
        updated=when(record.updated_at, now),
        took=duration(line.duration),
        error=error,
    )


def list_fragment(
    query: ListQuery,
    records: Sequence[SagaRecord],
    counts: Mapping[str, int],
    now: datetime,
    *,
    has_more: bool,
) -> Html:
    """The part of the list page that refreshes: counts, table and pager."""
    if records:
        rows = join(_row(record, query, now) for record in records)
        table = html(
            '<div class="table-scroll"><table class="grid"><thead><tr><th>Status</th>'
            "<th>Saga</th><th>Name</th><th>Correlation</th><th>Step</th><th>Created</th>"
            '<th class="hide-narrow">Updated</th><th class="num">Duration</th><th>Error</th>'
            "</tr></thead><tbody>{rows}</tbody></table></div>",
            rows=rows,
        )
    else:
        text = "No saga matches these filters." if query.filtered else "No saga is stored yet."
        if query.offset:
            text = "No more sagas on this page."
        table = html('<div class="empty">{text}</div>', text=text)
    first = query.offset + 1 if records else query.offset
    previous = query.query_string(offset=max(query.offset - query.limit, 0))
    following = query.query_string(offset=query.offset + query.limit)
    pager = html(
        '<div class="pager"><span>Showing {first}\u2013{last}</span><span class="spacer">'
        '</span><a class="button{p_off}" href="/{previous}">\u2190 Newer</a>'
        '<a class="button{n_off}" href="/{following}">Older \u2192</a></div>',
        first=first,
        last=query.offset + len(records),
        p_off=Html("" if query.offset else " disabled"),
        n_off=Html("" if has_more else " disabled"),
        previous=previous,
        following=following,
    )
    return html(
        '<div data-live="list">{counts}<section class="card flush">{table}{pager}</section></div>',
        counts=_counts(query, counts),
        table=table,
        pager=pager,
    )


def list_page(
    query: ListQuery,
    records: Sequence[SagaRecord],
    counts: Mapping[str, int],
    chrome: Chrome,
    *,
    names: Sequence[str],
    has_more: bool,
) -> Html:
    """The list of sagas with its filters, counts by status and paging."""
    errors = Html("")
    if query.errors:
        items = join(html("<li>{e}</li>", e=error) for error in query.errors)
        errors = html('<div class="errors" role="alert"><ul>{items}</ul></div>', items=items)
    body = html(
        '<div class="head"><h1>Sagas</h1></div>'
        '<section class="card">{filters}</section>{errors}'
        '<div data-refresh="/fragments/list{qs}" data-every="{every}">{fragment}</div>',
        filters=_filters(query, names),
        errors=errors,
        qs=query.query_string(),
        every=REFRESH_SECONDS,
        fragment=list_fragment(query, records, counts, chrome.now, has_more=has_more),
    )
    return page("Sagas", body, chrome, live=True)


# --------------------------------------------------------------------------- other pages


def login_page(chrome: Chrome, *, nonce: str, target: str, error: str | None = None) -> Html:
    """The form asking for the operator's token."""
    problem = Html("") if error is None else html('<div class="flash bad">{e}</div>', e=error)
    body = html(
        """<section class="card login"><h1>Log in</h1>
<p class="muted">This admin was started with a token: enter it to see and act on sagas.</p>
{problem}<form method="post" action="/login">
<input type="hidden" name="nonce" value="{nonce}"><input type="hidden" name="next" value="{target}">
<label class="field">Token <input type="password" name="token" autocomplete="current-password"
 autofocus required></label>
<button class="primary" type="submit">Log in</button></form></section>""",
        problem=problem,
        nonce=nonce,
        target=target,
    )
    return page("Log in", body, chrome)


def message_page(title: str, message: str, chrome: Chrome, *, back: bool = True) -> Html:
    """A page saying what went wrong (not found, refused, unavailable)."""
    link = Html('<p><a class="button" href="/">\u2190 All sagas</a></p>') if back else Html("")
    body = html(
        '<section class="card notfound"><h1>{title}</h1><p class="muted">{message}</p>{link}'
        "</section>",
        title=title,
        message=message,
        link=link,
    )
    return page(title, body, chrome)
