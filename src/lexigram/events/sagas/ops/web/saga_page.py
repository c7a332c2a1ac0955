"""The page of one saga: its header, actions, timeline, instance diagram and data.

Built from :func:`~lexigram.events.sagas.ops.timeline.timeline` (the same account as the
command's ``show``). The header, timeline, diagram and data carry ``data-live`` and are
what :func:`saga_fragment` returns for the in-place refresh; the action forms do not, so
a refresh never wipes what an operator is typing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from lexigram.events.sagas.ops.svg import PALETTE
from lexigram.events.sagas.ops.timeline import NOT_REACHED, WAITING, StepLine, Timeline
from lexigram.events.sagas.ops.web.markup import (
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
from lexigram.events.sagas.ops.web.pages import REFRESH_SECONDS, Chrome, csrf_field, page
from lexigram.events.sagas.types import SagaRecord, SagaStatus, SagaWait

__all__ = ["Diagram", "saga_fragment", "saga_page"]

_DASH = Html('<span class="muted">\u2014</span>')


@dataclass(frozen=True, slots=True)
class Diagram:
    """The instance diagram as drawn, and what it was drawn from.

    Attributes:
        svg: The SVG text, or ``None`` when it could not be drawn.
        from_flow: Whether the registered flow was known (else: the recorded steps only).
    """

    svg: str | None
    from_flow: bool


def _fact(label: str, value: Html) -> Html:
    return html("<div><dt>{label}</dt><dd>{value}</dd></div>", label=label, value=value)


def _wait_text(wait: SagaWait, now: datetime) -> Html:
    step = html("<b>{name}</b>", name=wait.step)
    end = when(wait.until, now)
    if wait.kind == "signal":
        template = "Waits at step {step} for the signal <code>{signal}</code>"
        what = html(template, step=step, signal=wait.signal or "")
        until = html(", timeout {end}", end=end) if wait.until else Html(" (no timeout)")
    elif wait.kind == "delay":
        what, until = html("Step {step} is delayed: it runs {end}", step=step, end=end), Html("")
    else:
        what, until = html("Step {step} polls: it runs again {end}", step=step, end=end), Html("")
    return html(
        "{what}{until} <span class='muted'>(since {since})</span>",
        what=what,
        until=until,
        since=when(wait.since, now),
    )


def _header(line: Timeline, record: SagaRecord, now: datetime) -> Html:
    chips = [chip(line.status)]
    if line.waiting is not None and not record.is_terminal:
        chips.append(chip(WAITING))
    lease = _DASH
    if line.lease_owner:
        lease = html(
            "{owner} <span class='muted'>(lease ends {t})</span>",
            owner=line.lease_owner,
            t=when(line.lease_expires_at, now),
        )
    facts = [
        _fact("Saga id", mono(line.saga_id, wide=True)),
        _fact("Correlation id", mono(line.correlation_id, wide=True)),
        _fact("Created", when(line.created_at, now)),
        _fact("Updated", when(line.updated_at, now)),
        _fact("Completed", when(line.completed_at, now)),
        _fact("Duration", duration(line.duration)),
        _fact("Next step", esc(line.current_step) if line.current_step else _DASH),
        _fact("Lease owner", lease),
        _fact("Deadline", when(line.deadline_at, now)),
    ]
    if line.redrives:
        facts.append(_fact("Redrives", esc(line.redrives)))
    if line.recovery_attempts:
        facts.append(_fact("Takeovers after crashes", esc(line.recovery_attempts)))
    callouts: list[Html] = []
    if line.error:
        kind = html('<span class="kind">{k}</span>', k=line.failure_kind or "error")
        where = html(" at step <b>{s}</b>", s=line.failure_step) if line.failure_step else ""
        callouts.append(
            html(
                '<div class="callout error">{kind}{where}: {text}</div>',
                kind=kind,
                where=where,
                text=line.error,
            )
        )
    if line.waiting is not None and not record.is_terminal:
        text = _wait_text(line.waiting, now)
        callouts.append(html('<div class="callout wait">{text}</div>', text=text))
    if line.cancel_requested_at is not None:
        callouts.append(
            html(
                '<div class="callout cancel">Cancel requested {t}: {reason}</div>',
                t=when(line.cancel_requested_at, now),
                reason=line.cancel_reason or "",
            )
        )
    return html(
        '<section class="card" data-live="header"><div class="head"><h1>{name}</h1>{chips}'
        '</div><dl class="facts">{facts}</dl>{callouts}</section>',
        name=line.saga_name,
        chips=join(chips, " "),
        facts=join(facts),
        callouts=join(callouts),
    )


def _step_row(number: int, step: StepLine, now: datetime, depth: int) -> Html:
    error = Html("")
    if step.error:
        error = html('<div class="error-text">{e}</div>', e=step.error)
    if len(step.attempt_errors) > 1:
        items = join(html("<li>{e}</li>", e=text) for text in step.attempt_errors)
        error = html(
            '{error}<details data-key="errors-{name}"><summary>{n} failed attempts</summary>'
            "<ol>{items}</ol></details>",
            error=error,
            name=step.name,
            n=len(step.attempt_errors),
            items=items,
        )
    compensation = _DASH
    if step.compensation is not None:
        tries = step.compensation_attempts
        compensation = html(
            "{chip} <span class='muted'>{tries}</span>{error}",
            chip=chip("compensated" if step.compensation == "compensated" else step.compensation),
            tries=f"{tries} attempt{'s' if tries != 1 else ''}" if tries else "",
            error=html('<div class="error-text">{e}</div>', e=step.compensation_error)
            if step.compensation_error
            else "",
        )
    attempts = str(step.attempts) + (f" (visit {step.visits})" if step.visits > 1 else "")
    return html(
        "<tr class='{kind}'><td class='num'>{n}</td><td class='step'>{name}</td>"
        "<td>{status}</td><td class='num'>{attempts}</td><td class='nowrap'>{started}</td>"
        "<td class='num'>{took}</td><td>{error}</td><td>{compensation}</td></tr>",
        kind=f"child d{min(depth, 3)}" if depth else "",
        n=number,
        name=step.name,
        status=chip(step.status),
        attempts=attempts,
        started=when(step.started_at, now),
        took=duration(step.duration),
        error=error or _DASH,
        compensation=compensation,
    )


def _timeline(line: Timeline, record: SagaRecord, now: datetime) -> Html:
    parents = {step.name: step.parent for step in line.steps}

    def depth(name: str | None) -> int:
        levels = 0
        while levels < 10 and (name := parents.get(name or "")) is not None:
            levels += 1
        return levels

    rows = [
        _step_row(number, step, now, depth(step.name)) for number, step in enumerate(line.steps, 1)
    ]
    for number, name in enumerate(line.upcoming, len(line.steps) + 1):
        upcoming = record.current_step == name and not record.is_terminal
        label = "next" if upcoming else NOT_REACHED
        rows.append(
            html(
                "<tr class='upcoming'><td class='num'>{n}</td><td class='step'>{name}</td>"
                "<td>{status}</td><td></td><td></td><td></td><td></td><td></td></tr>",
                n=number,
                name=name,
                status=chip("pending", label),
            )
        )
    if not rows:
        rows.append(Html('<tr><td colspan="8" class="empty">No step has started yet.</td></tr>'))
    return html(
        '<section class="card flush" data-live="timeline"><h2>Timeline</h2>'
        '<div class="table-scroll"><table class="grid"><thead><tr><th class="num">#</th>'
        '<th>Step</th><th>Status</th><th class="num">Attempts</th><th>Started</th>'
        '<th class="num">Duration</th><th>Error</th><th>Compensation</th></tr></thead>'
        "<tbody>{rows}</tbody></table></div></section>",
        rows=join(rows),
    )


def _diagram(diagram: Diagram) -> Html:
    if diagram.svg is None:
        body = Html('<p class="muted">The diagram could not be drawn (see the log).</p>')
    else:
        body = html('<div class="diagram">{svg}</div>', svg=Html(diagram.svg))
    note = (
        "The registered definition, each step coloured by its status; hover a step for details."
        if diagram.from_flow
        else "The steps this saga entered, in order (its definition is not registered here: "
        "start the admin with --app to draw the whole flow)."
    )
    legend = join(chip(status) for status in PALETTE)
    return html(
        '<section class="card" data-live="diagram"><h2>Diagram</h2><p class="muted">{note}</p>'
        '{body}<div class="legend">{legend}</div></section>',
        note=note,
        body=body,
        legend=legend,
    )


def _data(record: SagaRecord, *, show: bool) -> Html:
    keys = sorted(str(key) for key in record.data)
    if not keys:
        return Html(
            '<section class="card" data-live="data"><h2>Data</h2>'
            '<p class="muted">No context data.</p></section>'
        )
    here = saga_url(record.saga_id)
    if show:
        text = json.dumps(record.data, indent=2, ensure_ascii=False, sort_keys=True, default=str)
        body = html(
            '<p><a href="{href}">Hide values</a></p><pre class="json">{text}</pre>',
            href=here,
            text=text,
        )
    else:
        chips = join(html("<code>{key}</code>", key=key) for key in keys)
        body = html(
            '<div class="keys">{chips}</div><p><a href="{href}?data=1">Show values</a>'
            ' <span class="muted">(they may hold personal data)</span></p>',
            chips=chips,
            href=here,
        )
    return html(
        '<section class="card" data-live="data"><h2>Data <span class="muted">({n} keys)</span>'
        "</h2>{body}</section>",
        n=len(keys),
        body=body,
    )


def _actions(record: SagaRecord, chrome: Chrome, form: Mapping[str, str]) -> Html:
    if not chrome.actions:
        return Html(
            '<p class="muted">Read-only: start the admin with a token (<code>--token</code>) '
            "to cancel, retry or signal sagas.</p>"
        )
    csrf = csrf_field(chrome)
    forms: list[Html] = []
    if not record.is_terminal:
        forms.append(
            html(
                '<form method="post" action="{action}">{csrf}<h3>Cancel</h3><p>Stops it and '
                "compensates what it did.</p><div class='row'><input name='reason' "
                "placeholder='reason' maxlength='2000' value='{reason}'>"
                '<button class="danger" type="submit">Cancel saga</button></div></form>',
                action=saga_url(record.saga_id, "/cancel/"),
                csrf=csrf,
                reason=form.get("reason", ""),
            )
        )
        wait = record.waiting
        default = wait.signal if wait is not None and wait.signal else ""
        forms.append(
            html(
                '<form method="post" action="{action}">{csrf}<h3>Signal</h3>'
                "<div class='row'><input name='name' placeholder='signal name' required "
                "value='{name}'><input name='signal_id' placeholder='signal id (optional)' "
                "value='{signal_id}'></div><textarea name='payload' placeholder='{{}}' "
                "aria-label='payload (a JSON object)'>{payload}</textarea>"
                '<button type="submit">Send signal</button></form>',
                action=saga_url(record.saga_id, "/signal/"),
                csrf=csrf,
                name=form.get("name", default),
                signal_id=form.get("signal_id", ""),
                payload=form.get("payload", "{}"),
            )
        )
    if record.status is SagaStatus.FAILED:
        forms.append(
            html(
                '<form method="post" action="{action}">{csrf}<h3>Retry</h3><p>Runs the '
                "compensations that gave up again (after you fixed their cause).</p>"
                '<div><button class="primary" type="submit">Retry compensation</button></div>'
                "</form>",
                action=saga_url(record.saga_id, "/retry/"),
                csrf=csrf,
            )
        )
    if not forms:
        return Html('<p class="muted">This saga has finished: there is nothing to do.</p>')
    return html(
        '<section class="card"><h2>Actions</h2><div class="actions">{forms}</div></section>',
        forms=join(forms),
    )


def saga_fragment(
    line: Timeline, record: SagaRecord, diagram: Diagram, now: datetime, *, show_data: bool
) -> Html:
    """Every part of the saga page that refreshes in place."""
    return join(
        [
            _header(line, record, now),
            _timeline(line, record, now),
            _diagram(diagram),
            _data(record, show=show_data),
        ]
    )


def saga_page(
    line: Timeline,
    record: SagaRecord,
    diagram: Diagram,
    chrome: Chrome,
    *,
    show_data: bool,
    form: Mapping[str, str],
) -> Html:
    """The whole saga page."""
    now = chrome.now
    refresh = saga_url(record.saga_id, "/fragments/saga/") + ("?data=1" if show_data else "")
    body = html(
        '<div class="crumbs"><a href="/">Sagas</a> / <a href="/?name={q}">{name}</a> / '
        '<span class="mono">{saga_id}</span></div>'
        '<div data-refresh="{refresh}" data-every="{every}">{header}{actions}{timeline}'
        "{diagram}{data}</div>",
        q=quote(record.saga_name, safe=""),
        name=record.saga_name,
        saga_id=record.saga_id,
        refresh=refresh,
        every=REFRESH_SECONDS,
        header=_header(line, record, now),
        actions=_actions(record, chrome, form),
        timeline=_timeline(line, record, now),
        diagram=_diagram(diagram),
        data=_data(record, show=show_data),
    )
    return page(f"{record.saga_name} {record.saga_id}", body, chrome, live=True)
