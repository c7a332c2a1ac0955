"""Who may act, and whether a request really comes from the admin's own pages.

Pure Python (no Starlette), so each rule can be tested on its own:

- :class:`Guard` checks the operator's token (``hmac.compare_digest`` of HMACs, so neither
  the token's content nor its length leaks through timing), keeps the sessions a login
  opens (random ids, in this process's memory: a restart logs everyone out), derives each
  session's CSRF token (an HMAC of the session id under a per-process key) and slows down
  token guessing;
- :func:`same_origin` is the Origin/Referer check against the request's own origin;
- :func:`host_allowed` refuses requests addressed to another host name (DNS rebinding);
- :data:`SECURITY_HEADERS` go on every response.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "SECURITY_HEADERS",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "Flash",
    "Guard",
    "Session",
    "host_allowed",
    "same_origin",
]

SESSION_COOKIE = "lexigram_admin_session"
"""The cookie holding the session id (``HttpOnly``, ``SameSite=Strict``)."""

SESSION_SECONDS = 12 * 3600
"""How long a login lasts."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
"""Scripts and styles only from ``/assets/``: no inline script, no inline style."""

SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}
"""Headers every response carries."""

_MAX_SESSIONS = 1000
_FAILURES_ALLOWED = 5  # wrong tokens per minute before logins are refused for a while
_FAILURE_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class Flash:
    """A message shown once, on the next page: the outcome of an action.

    Attributes:
        ok: Whether the action did what was asked (green) or not (red).
        message: What happened, for people.
        form: What the operator typed into the failed form, to fill it in again.
    """

    ok: bool
    message: str
    form: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Session:
    """One operator's login."""

    session_id: str
    expires: float
    flashes: list[Flash] = field(default_factory=list)

    def pop_flashes(self) -> list[Flash]:
        """The messages waiting to be shown; they are shown once."""
        flashes, self.flashes = self.flashes, []
        return flashes


class Guard:
    """The token, the sessions and their CSRF tokens of one admin process.

    Args:
        token: The operator's token; ``None`` makes the admin read-only (no login at all).
        clock: Monotonic seconds (injected in tests).
    """

    def __init__(self, token: str | None, *, clock: Callable[[], float] = time.monotonic):
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty str (or None for read-only)")
        self._key = secrets.token_bytes(32)
        self._token = None if token is None else self._mac(b"token", token)
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._failures: deque[float] = deque()

    @property
    def read_only(self) -> bool:
        """Whether no token was given: nobody may act."""
        return self._token is None

    def _mac(self, purpose: bytes, text: str) -> bytes:
        return hmac.new(self._key, purpose + b"\0" + text.encode("utf-8"), hashlib.sha256).digest()

    def check_token(self, given: str) -> bool:
        """Whether ``given`` is the token (always ``False`` when read-only)."""
        if self._token is None:
            return False
        return hmac.compare_digest(self._mac(b"token", given), self._token)

    def throttled(self) -> bool:
        """Whether too many wrong tokens were tried in the last minute."""
        now = self._clock()
        while self._failures and self._failures[0] <= now - _FAILURE_WINDOW:
            self._failures.popleft()
        return len(self._failures) >= _FAILURES_ALLOWED

    def failed_login(self) -> None:
        """Count a wrong token."""
        self._failures.append(self._clock())

    def login(self) -> Session:
        """Open a session (after the token was checked)."""
        now = self._clock()
        for session_id, session in list(self._sessions.items()):
            if session.expires <= now:
                del self._sessions[session_id]
        while len(self._sessions) >= _MAX_SESSIONS:  # the oldest login goes first
            del self._sessions[next(iter(self._sessions))]
        session = Session(secrets.token_urlsafe(32), now + SESSION_SECONDS)
        self._sessions[session.session_id] = session
        return session

    def session(self, session_id: str | None) -> Session | None:
        """The live session with this id (from the cookie), or ``None``."""
        if not session_id or self._token is None:
            return None
        session = self._sessions.get(session_id)
        if session is None or session.expires <= self._clock():
            return None
        return session

    def logout(self, session: Session) -> None:
        """Close a session."""
        self._sessions.pop(session.session_id, None)

    def csrf_token(self, session: Session) -> str:
        """The token every form of this session carries."""
        return self._mac(b"csrf", session.session_id).hex()

    def check_csrf(self, session: Session, given: str | None) -> bool:
        """Whether ``given`` is this session's CSRF token."""
        if not given:
            return False
        return hmac.compare_digest(given.encode("utf-8"), self.csrf_token(session).encode())

    def login_nonce(self) -> str:
        """A fresh value for the login form and its cookie (double submit)."""
        return secrets.token_urlsafe(24)


def same_origin(headers: Mapping[str, str], scheme: str, *, required: bool = True) -> bool:
    """Whether a request's ``Origin`` (else ``Referer``) is the admin's own origin.

    The admin's origin is ``scheme://<Host header>``. A request with neither header
    passes only when not ``required`` (a script sending the token in a header, which a
    browser cannot do across sites).
    """
    host = headers.get("host", "").lower()
    expected = f"{scheme}://{host}"
    origin = headers.get("origin")
    if origin is not None:
        return bool(host) and origin.lower() == expected
    referer = headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        return bool(host) and f"{parts.scheme}://{parts.netloc}".lower() == expected
    return not required


def host_allowed(host_header: str, allowed: Collection[str] | None) -> bool:
    """Whether the ``Host`` header names one of the ``allowed`` host names (any port).

    ``None`` allows every host. Checking it stops DNS rebinding: a page of another site
    whose name was pointed at 127.0.0.1 sends its own name as ``Host``.
    """
    if allowed is None:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8765
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in allowed
