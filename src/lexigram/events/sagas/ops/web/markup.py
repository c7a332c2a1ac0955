"""Building HTML safely from string templates, and the small pieces every page uses.

:func:`html` fills a ``str.format`` template, escaping every value that is not already
:class:`Html`; so a saga name, an error or a payload can never become markup, while
pieces built by this module nest without being escaped twice.
"""

from __future__ import annotations

import html as _html
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import quote

from lexigram.events.sagas.ops.timeline import format_ago, format_duration

__all__ = [
    "STATUSES",
    "Html",
    "absolute",
    "chip",
    "duration",
    "esc",
    "html",
    "join",
    "mono",
    "saga_url",
    "when",
]

STATUSES = (
    "pending",
    "running",
    "waiting",
    "compensating",
    "completed",
    "compensated",
    "failed",
)
"""Every status a chip can show, in the order the counts list them."""


class Html(str):
    """Text that is already HTML: :func:`html` inserts it as it is."""

    __slots__ = ()


def esc(value: object) -> Html:
    """``value`` as HTML text: escaped, unless it is :class:`Html` already."""
    if isinstance(value, Html):
        return value
    return Html(_html.escape("" if value is None else str(value), quote=True))


def html(template: str, /, **values: object) -> Html:
    """Fill ``template`` (``{name}`` placeholders) with escaped ``values``."""
    return Html(template.format_map({name: esc(value) for name, value in values.items()}))


def join(parts: Iterable[Html], separator: str = "") -> Html:
    """Concatenate pieces of HTML."""
    return Html(separator.join(parts))


def saga_url(saga_id: str, prefix: str = "/sagas/") -> str:
    """The path of a saga's page (or of another per-saga route, by ``prefix``)."""
    return prefix + quote(saga_id, safe="")


def chip(status: str, label: object = None, *, href: str | None = None, extra: str = "") -> Html:
    """A coloured status chip (a link when ``href`` is given), with ``extra`` classes."""
    kind = f"chip s-{status if status in STATUSES else 'other'} {extra}".strip()
    text = status if label is None else label
    if href is None:
        return html('<span class="{kind}">{text}</span>', kind=kind, text=text)
    return html('<a class="{kind}" href="{href}">{text}</a>', kind=kind, text=text, href=href)


def mono(text: str, *, href: str | None = None, wide: bool = False) -> Html:
    """An id in monospace, cut short on screen, whole in its tooltip (and when copied)."""
    size = "mono wide" if wide else "mono"
    if href is None:
        return html('<span class="{size}" title="{text}">{text}</span>', size=size, text=text)
    return html(
        '<a class="{size}" href="{href}" title="{text}">{text}</a>', size=size, text=text, href=href
    )


def absolute(moment: datetime) -> str:
    """``2024-05-01 12:30:05 UTC``."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def when(moment: datetime | None, now: datetime, *, empty: str = "\u2014") -> Html:
    """A time as ``3m ago`` (or ``in 2h``), the exact time in its tooltip."""
    if moment is None:
        return html('<span class="muted">{empty}</span>', empty=empty)
    return html(
        '<time datetime="{iso}" title="{exact}">{ago}</time>',
        iso=moment.isoformat(),
        exact=absolute(moment),
        ago=format_ago(moment, now),
    )


def duration(seconds: float | None) -> Html:
    """A duration (``1m 15s``), or a dash when unknown."""
    if seconds is None:
        return Html('<span class="muted">\u2014</span>')
    return esc(format_duration(seconds))
