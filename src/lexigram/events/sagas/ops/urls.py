"""Opening a store from a URL, as the command and the web admin take it.

- ``sqlite:///absolute/path.db`` or ``sqlite:relative/path.db`` (``sqlite://`` followed by
  a path); ``?table=name`` chooses the saga table;
- ``postgresql://user@host:port/db`` (or ``postgres://``), with libpq's query options;
  ``?table=`` and ``?schema=`` choose the table (they are taken out of the DSN).

A bad URL raises :class:`StoreURLError` with a one-line message saying what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from lexigram.events.sagas.store import SagaStore

__all__ = ["ENV_VAR", "StoreURLError", "describe_url", "open_store"]

ENV_VAR = "LEXIGRAM_SAGAS_STORE"
"""The environment variable the command reads the store URL from (``--store`` wins)."""

_SQLITE = "sqlite"
_POSTGRES = ("postgresql", "postgres")
_OUR_OPTIONS = {"table", "schema"}


class StoreURLError(ValueError):
    """A store URL that names no store this library can open; the message says why."""


def open_store(url: str) -> SagaStore:
    """Return a store (not yet opened) for ``url``.

    Raises:
        StoreURLError: the URL is empty, has an unknown scheme, no path or database, or
            options this library does not know.
        ImportError: the store's driver is missing (``asyncpg`` for PostgreSQL), with the
            extra to install.
    """
    if not isinstance(url, str) or not url.strip():
        raise StoreURLError(
            f"no store given: pass --store or set {ENV_VAR} "
            "(sqlite:///path/to/sagas.db or postgresql://user@host/db)"
        )
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == _SQLITE:
        return _sqlite(url)
    if scheme in _POSTGRES:
        return _postgres(url)
    raise StoreURLError(
        f"unknown store URL {_safe(url)!r}: it must start with sqlite:// or postgresql://"
    )


def describe_url(url: str) -> str:
    """``url`` without its password, for messages and page titles."""
    return _safe(url)


def _sqlite(url: str) -> SagaStore:
    rest = url.split(":", 1)[1]
    rest, _, query = rest.partition("?")
    if rest.startswith("//"):
        rest = rest[2:]  # sqlite:///abs -> /abs ; sqlite://rel -> rel
    path = unquote(rest)
    if not path:
        raise StoreURLError(f"store URL {url!r} names no file: use sqlite:///path/to/sagas.db")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - {"table"}
    if unknown:
        raise StoreURLError(
            f"store URL {url!r}: unknown option(s) {', '.join(sorted(unknown))} "
            "(SQLite takes ?table=)"
        )
    if Path(path).is_dir():
        raise StoreURLError(f"store URL {url!r} names a directory, not a database file")
    from lexigram.events.sagas.sqlite import SQLiteSagaStore

    try:
        return SQLiteSagaStore(path, table=options.get("table", "lexigram_sagas"))
    except (TypeError, ValueError) as exc:
        raise StoreURLError(f"store URL {url!r}: {exc}") from None


def _postgres(url: str) -> SagaStore:
    parts = urlsplit(url)
    if not parts.path.strip("/"):
        raise StoreURLError(
            f"store URL {_safe(url)!r} names no database: use postgresql://user@host/dbname"
        )
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    ours = {key: value for key, value in pairs if key in _OUR_OPTIONS}
    theirs = [(key, value) for key, value in pairs if key not in _OUR_OPTIONS]
    dsn = urlunsplit(parts._replace(query=urlencode(theirs)))
    from lexigram.events.sagas.postgres import PostgresSagaStore

    try:
        return PostgresSagaStore(
            dsn, table=ours.get("table", "lexigram_sagas"), schema=ours.get("schema", "public")
        )
    except (TypeError, ValueError) as exc:
        raise StoreURLError(f"store URL {_safe(url)!r}: {exc}") from None


def _safe(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
