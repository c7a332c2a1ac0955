"""Serving the admin with uvicorn, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Coroutine
from typing import Any

from lexigram.events.sagas.ops.web.actions import SagaControl
from lexigram.events.sagas.ops.web.app import create_app
from lexigram.events.sagas.store import SagaStore

__all__ = ["LOOPBACK_NAMES", "serve_ui", "serve_ui_async"]

logger = logging.getLogger("lexigram.events.sagas.ops.web")

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
"""The host names a browser may use for an admin bound to a loopback address."""

_MISSING = "the web admin needs the 'ui' extra: pip install 'lexigram-events[ui]'"
_SHORT_TOKEN = 16


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve_ui_async(
    store: SagaStore,
    *,
    runtime: SagaControl | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
) -> None:
    """Serve the admin on ``host:port`` in the running event loop until interrupted.

    On a loopback address the admin answers only requests addressed to a loopback name
    (``Host``), which stops DNS-rebinding pages from reading it.

    Raises:
        ImportError: uvicorn is missing (the ``ui`` extra).
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(_MISSING, name=exc.name) from exc
    loopback = _is_loopback(host)
    allowed = LOOPBACK_NAMES | {host} if loopback else None
    app = create_app(store, runtime=runtime, token=token, allowed_hosts=allowed)
    if token is not None and len(token) < _SHORT_TOKEN:
        logger.warning(
            "the web admin's token is short (%d characters): use a long random one, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe())'",
            len(token),
        )
    if not loopback:
        logger.warning(
            "the web admin listens on %s: anyone who can reach it sees the sagas%s; put it "
            "behind TLS",
            host,
            "" if token else " (it has no token)",
        )
    shown = f"[{host}]" if ":" in host else host
    logger.info(
        "web admin on http://%s:%d/ (%s)", shown, port, "read-only" if token is None else "token"
    )
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, server_header=False, lifespan="on"
    )
    await uvicorn.Server(config).serve()


def serve_ui(
    store: SagaStore,
    *,
    runtime: SagaControl | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
) -> Coroutine[Any, Any, None] | None:
    """Serve the admin with uvicorn until interrupted (Ctrl+C).

    Called without a running event loop it blocks and returns ``None``. Called from a
    coroutine (an event loop is running in this thread, e.g. where ``store`` was opened)
    it returns the coroutine of :func:`serve_ui_async` instead: await it.

    Args:
        store: Where the sagas are.
        runtime: The application's ``SagaManager``/``SagaOrchestrator`` (optional).
        host: The address to bind; 127.0.0.1 keeps the admin on this machine.
        port: The port.
        token: Allows actions after a login with it; ``None``: read-only.

    Raises:
        ImportError: the ``ui`` extra is missing.
    """
    serving = serve_ui_async(store, runtime=runtime, host=host, port=port, token=token)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(serving)
        return None
    return serving
