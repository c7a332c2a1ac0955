r"""libpq connection strings for asyncpg, which reads only the URL form itself.

``PostgresSagaStore(dsn)`` takes either form libpq (and ``psql``) accept:

- a URL, ``postgresql://user@host:5432/db?sslmode=require``, handed to asyncpg as it is;
- ``key=value`` pairs, ``host=db port=5432 user=app dbname=app``, parsed here with libpq's
  rules and turned into ``asyncpg.connect`` keyword arguments.

libpq's rules for ``key=value``: pairs are separated by whitespace, which may also surround
``=``; a value holding spaces is written in single quotes; inside or outside quotes a
backslash takes the next character literally (``\'``, ``\\``); an empty value is
``''``. A key given twice keeps its last value.

Error messages name keys, never values: a DSN may hold a password.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlencode

__all__ = ["connect_arguments", "is_url"]

_URL_PREFIXES: Final = ("postgresql://", "postgres://")
_SECRETS: Final = frozenset({"password", "sslpassword"})
_SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SSL_NEGOTIATION: Final = {"postgres": False, "direct": True}

# asyncpg reads these only from a URL's query (or the environment), not as arguments of
# ``connect``; they are passed to it in an otherwise empty URL, ``postgresql://?...``.
_URL_QUERY_KEYS: Final = frozenset(
    {
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
    }
)


def is_url(dsn: str) -> bool:
    """Whether ``dsn`` is a connection URL (as libpq decides: by its scheme prefix)."""
    return dsn.startswith(_URL_PREFIXES)


def parse_pairs(dsn: str) -> dict[str, str]:
    """Split a libpq ``key=value`` string into its pairs (the last of a repeated key wins).

    Raises:
        ValueError: a word without ``=``, or an unterminated quote (naming the key).
    """
    pairs: dict[str, str] = {}
    previous: str | None = None
    index, end = 0, len(dsn)
    while index < end:
        if dsn[index].isspace():
            index += 1
            continue
        start = index
        while index < end and dsn[index] != "=" and not dsn[index].isspace():
            index += 1
        key = dsn[start:index]
        while index < end and dsn[index].isspace():
            index += 1
        if index == end or dsn[index] != "=":
            # The word may be half of an unquoted password: name only what came before.
            where = "at the start" if previous is None else f"after the value of '{previous}'"
            raise ValueError(
                f"dsn: expected key=value, found a word without '=' {where} (quote a value "
                "that holds spaces: key='a b')"
            )
        index += 1
        while index < end and dsn[index].isspace():
            index += 1
        value: list[str] = []
        if index < end and dsn[index] == "'":
            index += 1
            while True:
                if index == end:
                    raise ValueError(f"dsn: the quoted value of '{key}' has no closing quote")
                char = dsn[index]
                if char == "\\":
                    index += 1
                    if index < end:
                        value.append(dsn[index])
                        index += 1
                elif char == "'":
                    index += 1
                    break
                else:
                    value.append(char)
                    index += 1
        else:
            while index < end and not dsn[index].isspace():
                if dsn[index] == "\\":
                    index += 1
                    if index == end:
                        break
                value.append(dsn[index])
                index += 1
        pairs[key] = "".join(value)
        previous = key
    return pairs


def _integer(key: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"dsn: '{key}' must be an integer") from None


def _ports(value: str) -> int | list[int]:
    ports = [_integer("port", part) for part in value.split(",")]
    if not all(0 < port < 65536 for port in ports):
        raise ValueError("dsn: 'port' must be between 1 and 65535")
    return ports[0] if len(ports) == 1 else ports


def _hosts(value: str) -> str | list[str]:
    hosts = value.split(",")
    return hosts[0] if len(hosts) == 1 else hosts


def _timeout(value: str) -> float | None:
    seconds = _integer("connect_timeout", value)
    # libpq: zero or a negative value waits indefinitely.
    return float(seconds) if seconds > 0 else None


def _ssl_mode(value: str) -> str:
    if value not in _SSL_MODES:
        raise ValueError(f"dsn: 'sslmode' must be one of {', '.join(_SSL_MODES)}")
    return value


def _direct_tls(value: str) -> bool:
    if value not in _SSL_NEGOTIATION:
        raise ValueError("dsn: 'sslnegotiation' must be 'postgres' or 'direct'")
    return _SSL_NEGOTIATION[value]


def _same(value: str) -> str:
    return value


# libpq key -> (asyncpg.connect argument, how to convert the text).
_ARGUMENTS: Final[dict[str, tuple[str, Callable[[str], Any]]]] = {
    "host": ("host", _hosts),
    "port": ("port", _ports),
    "dbname": ("database", _same),
    "user": ("user", _same),
    "password": ("password", _same),
    "passfile": ("passfile", _same),
    "connect_timeout": ("timeout", _timeout),
    "sslmode": ("ssl", _ssl_mode),
    "sslnegotiation": ("direct_tls", _direct_tls),
    "target_session_attrs": ("target_session_attrs", _same),
    "krbsrvname": ("krbsrvname", _same),
    "gsslib": ("gsslib", _same),
}
_SERVER_SETTINGS: Final = ("application_name", "fallback_application_name")
SUPPORTED_KEYS: Final = frozenset(_ARGUMENTS) | _URL_QUERY_KEYS | frozenset(_SERVER_SETTINGS)
"""The libpq keys a ``key=value`` DSN may use."""


def connect_arguments(dsn: str) -> tuple[str | None, dict[str, Any]]:
    """Turn a libpq ``key=value`` string into asyncpg's ``dsn`` and keyword arguments.

    The returned ``dsn`` is ``None`` unless an SSL file option needs asyncpg's URL query.
    Empty values mean "not set", as in libpq.

    Raises:
        ValueError: malformed text, an unknown or unsupported key (named), or a value of
            the wrong form for its key (the key named, the value never quoted).
    """
    arguments: dict[str, Any] = {}
    query: dict[str, str] = {}
    settings: dict[str, str] = {}
    previous: str | None = None
    for key, value in parse_pairs(dsn).items():
        if key not in SUPPORTED_KEYS:
            if previous in _SECRETS:
                # Perhaps the rest of an unquoted secret: do not echo it.
                raise ValueError(
                    f"dsn: unsupported connection option after '{previous}' (quote a value "
                    "that holds spaces: key='a b')"
                )
            raise ValueError(
                f"dsn: unsupported connection option '{key}'; supported: "
                f"{', '.join(sorted(SUPPORTED_KEYS))} (pass other asyncpg settings with "
                "pool_options)"
            )
        previous = key
        if not value:
            continue
        if key in _URL_QUERY_KEYS:
            query[key] = value
        elif key in _SERVER_SETTINGS:
            settings[key] = value
        else:
            name, convert = _ARGUMENTS[key]
            arguments[name] = convert(value)
    hosts, ports = arguments.get("host"), arguments.get("port")
    if isinstance(ports, list) and len(ports) != (len(hosts) if isinstance(hosts, list) else 1):
        raise ValueError("dsn: 'port' must list one port, or one port per host")
    fallback = settings.pop("fallback_application_name", None)
    if fallback is not None:
        settings.setdefault("application_name", fallback)
    if settings:
        arguments["server_settings"] = settings
    return ("postgresql://?" + urlencode(query) if query else None), arguments
