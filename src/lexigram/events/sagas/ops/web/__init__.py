"""The web admin (``lexigram-sagas ui``): sagas, their timelines and diagrams, in a browser.

Needs the ``ui`` extra (Starlette and uvicorn)::

    pip install 'lexigram-events[ui]'

:func:`create_app` builds the ASGI application for a store; :func:`serve_ui` serves it
with uvicorn on 127.0.0.1:8765. Read-only unless given a token; see ``docs/web-admin.md``.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401 - only to fail early with the extra to install
except ImportError as exc:
    raise ImportError(
        "the web admin needs the 'ui' extra: pip install 'lexigram-events[ui]'", name=exc.name
    ) from exc

from lexigram.events.sagas.ops.web.actions import SagaControl
from lexigram.events.sagas.ops.web.app import create_app
from lexigram.events.sagas.ops.web.serve import serve_ui, serve_ui_async

__all__ = ["SagaControl", "create_app", "serve_ui", "serve_ui_async"]
