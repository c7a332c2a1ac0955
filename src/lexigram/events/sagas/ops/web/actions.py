"""What the admin's buttons do: cancel, retry, signal; and reading the forms they post.

Each action checks what it can before calling the runtime, and turns every refusal into
an :class:`Outcome` an operator can read (no such saga, already finished, nothing to
retry, a payload that is not a JSON object): an action never fails the request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

from starlette.requests import Request

from lexigram.events.sagas._engine.flow import Flow
from lexigram.events.sagas.errors import (
    SagaDataError,
    SagaError,
    SagaFinishedError,
    SagaNotFoundError,
)
from lexigram.events.sagas.ops.web.markup import saga_url
from lexigram.events.sagas.store import SagaStore
from lexigram.events.sagas.types import SagaRecord

__all__ = ["ACTIONS", "MAX_FORM_BYTES", "FormError", "Outcome", "SagaControl", "read_form"]

MAX_FORM_BYTES = 64 * 1024
"""The largest form accepted (a signal's payload included)."""

DEFAULT_REASON = "cancelled from the web admin"
"""The cancel reason when the operator gives none."""


class SagaControl(Protocol):
    """What the admin needs of a runtime (``SagaManager`` and ``SagaOrchestrator`` fit)."""

    @property
    def registered(self) -> tuple[str, ...]:
        """The names of the registered sagas."""
        ...

    def flow(self, saga_name: str) -> Flow:
        """The compiled definition registered under ``saga_name``."""
        ...

    async def cancel(self, saga_id: str, *, reason: str = ...) -> SagaRecord:
        """Cancel the saga from any process."""
        ...

    async def retry(self, saga_id: str) -> SagaRecord:
        """Redrive a failed saga."""
        ...

    async def signal(
        self,
        saga_id: str,
        name: str,
        payload: Mapping[str, Any] | None = None,
        *,
        signal_id: str | None = None,
    ) -> bool:
        """Send a signal; ``False`` for a duplicate ``signal_id``."""
        ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an action went, for the operator.

    Attributes:
        ok: Whether it did what was asked.
        message: What happened.
        target: The page to go back to.
        status: The HTTP status a script (token in a header) receives.
        form: The values typed into a refused form, to fill it in again.
    """

    ok: bool
    message: str
    target: str
    status: int = 200
    form: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def done(cls, message: str, target: str) -> Outcome:
        """The action did what was asked."""
        return cls(ok=True, message=message, target=target)

    @classmethod
    def refused(
        cls, message: str, target: str, status: int, form: Mapping[str, str] | None = None
    ) -> Outcome:
        """The action was refused (``status`` for scripts), with the form to fill in again."""
        return cls(ok=False, message=message, target=target, status=status, form=form or {})


class FormError(Exception):
    """A form that cannot be read; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    """Read an ``application/x-www-form-urlencoded`` body of at most ``limit`` bytes.

    Raises:
        FormError: another content type, a body too large, or text that is not UTF-8.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise FormError(415, "Send the form as application/x-www-form-urlencoded.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise FormError(413, f"The form is larger than {limit // 1024} KiB.")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise FormError(400, "The form cannot be read.") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)  # the first value of a repeated field wins
    return form


def _gone(saga_id: str) -> Outcome:
    return Outcome.refused(f"No saga with id '{saga_id}' in this store.", "/", 404)


async def cancel(
    store: SagaStore, control: SagaControl, saga_id: str, form: Mapping[str, str]
) -> Outcome:
    """Cancel a live saga (form: ``reason``)."""
    here = saga_url(saga_id)
    reason = form.get("reason", "").strip() or DEFAULT_REASON
    record = await store.load(saga_id)
    if record is None:
        return _gone(saga_id)
    if record.is_terminal:
        message = f"The saga already finished ({record.status.value}): nothing to cancel."
        return Outcome.refused(message, here, 409)
    try:
        record = await control.cancel(saga_id, reason=reason)
    except SagaNotFoundError:
        return _gone(saga_id)
    except (TypeError, ValueError) as exc:
        return Outcome.refused(f"Cancel refused: {exc}", here, 400, {"reason": reason})
    if record.is_terminal:
        return Outcome.done(f"Saga cancelled: it is now {record.status.value}.", here)
    requested = "Cancel requested: the worker holding the saga stops and compensates it."
    return Outcome.done(requested, here)


async def retry(
    store: SagaStore, control: SagaControl, saga_id: str, form: Mapping[str, str]
) -> Outcome:
    """Redrive a failed saga: its compensations that gave up run again."""
    here = saga_url(saga_id)
    try:
        record = await control.retry(saga_id)
    except SagaNotFoundError:
        return _gone(saga_id)
    except SagaError as exc:
        return Outcome.refused(f"Retry refused: {exc}", here, 409)
    return Outcome.done(
        f"Saga redriven (redrive {record.redrives}): it is compensating again; a serving "
        "worker finishes it.",
        here,
    )


async def signal(
    store: SagaStore, control: SagaControl, saga_id: str, form: Mapping[str, str]
) -> Outcome:
    """Send a signal (form: ``name``, ``payload`` as a JSON object, optional ``signal_id``)."""
    here = saga_url(saga_id)
    typed = {key: form.get(key, "") for key in ("name", "payload", "signal_id")}
    name, text, signal_id = typed["name"].strip(), typed["payload"].strip(), typed["signal_id"]

    def refused(message: str, status: int = 400) -> Outcome:
        return Outcome.refused(message, here, status, typed)

    if not name:
        return refused("Give the signal a name.")
    try:
        payload = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        return refused(
            f"The payload is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        )
    if not isinstance(payload, dict):
        return refused(
            f"The payload must be a JSON object ({{...}}), not {type(payload).__name__}."
        )
    try:
        stored = await control.signal(saga_id, name, payload, signal_id=signal_id.strip() or None)
    except SagaNotFoundError:
        return _gone(saga_id)
    except SagaFinishedError as exc:
        return refused(f"Signal not stored: {exc}", 409)
    except (SagaDataError, TypeError, ValueError) as exc:
        return refused(f"Signal refused: {exc}")
    if not stored:
        return Outcome.done(f"Signal '{name}' was already received (same signal id).", here)
    return Outcome.done(f"Signal '{name}' sent: a waiting step takes it.", here)


ActionFunction = Callable[[SagaStore, SagaControl, str, Mapping[str, str]], Awaitable[Outcome]]

ACTIONS: Mapping[str, ActionFunction] = {"cancel": cancel, "retry": retry, "signal": signal}
"""The actions by their route name (``POST /<name>/<saga id>``)."""
