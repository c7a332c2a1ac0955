"""What each ``lexigram-sagas`` subcommand does, given its parsed options and a session.

Every command writes its result to stdout (human text, or one JSON document with
``--json``) and returns an exit code; when it cannot do what it was asked it raises
:class:`~lexigram.events.sagas.ops.cli_errors.CommandError`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from lexigram.events.sagas._engine.flow import Flow
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.diagram import instance_to_mermaid, to_mermaid
from lexigram.events.sagas.errors import SagaDataError, SagaError, SagaNotFoundError
from lexigram.events.sagas.ops.cli_apps import Runtime, runtime_on
from lexigram.events.sagas.ops.cli_errors import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CommandError,
)
from lexigram.events.sagas.ops.cli_session import Session
from lexigram.events.sagas.ops.cli_tables import (
    iso,
    list_json,
    list_table,
    terminal_width,
)
from lexigram.events.sagas.ops.cli_views import render_stats, render_timeline
from lexigram.events.sagas.ops.timeline import format_ago, timeline
from lexigram.events.sagas.types import SagaRecord, SagaStatus

__all__ = ["COMMANDS", "DEFAULT_CANCEL_REASON"]

logger = logging.getLogger("lexigram.events.sagas.ops.cli")

DEFAULT_CANCEL_REASON = "cancelled by an operator (lexigram-sagas)"
"""The reason ``cancel`` stores when ``--reason`` is not given."""

Command = Callable[[argparse.Namespace, Session], Awaitable[int]]


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


def _print_json(document: object) -> None:
    _print(json.dumps(document, indent=2, ensure_ascii=False))


def _now() -> datetime:
    return datetime.now(UTC)


async def _load(session: Session, saga_id: str) -> SagaRecord:
    record = await session.store.load(saga_id)
    if record is None:
        raise CommandError(f"no saga with id {saga_id!r} in {session.label}", EXIT_NOT_FOUND)
    return record


def _flow_of(session: Session, saga_name: str, *, needed_for: str) -> Flow:
    app = session.app
    if app is None:
        raise CommandError(
            f"{needed_for} needs --app module:attribute (where the saga definitions are "
            "registered)",
            EXIT_USAGE,
        )
    try:
        return app.flow(saga_name)
    except SagaNotFoundError:
        known = ", ".join(app.registered) or "none"
        raise CommandError(
            f"no saga named {saga_name!r} is registered in --app {session.app_spec} "
            f"(registered: {known})",
            EXIT_NOT_FOUND,
        ) from None


# --------------------------------------------------------------------------- reading


async def list_command(args: argparse.Namespace, session: Session) -> int:
    """``list``: sagas matching the filters, newest first."""
    records = await session.client().list(
        saga_name=args.name,
        status=None if args.status is None else SagaStatus(args.status),
        limit=args.limit,
        waiting=True if args.waiting else None,
        correlation_id=args.correlation_id,
        created_after=args.since,
        created_before=args.until,
        offset=args.offset,
    )
    if args.json:
        _print_json(
            {
                "sagas": [list_json(record) for record in records],
                "count": len(records),
                "limit": args.limit,
                "offset": args.offset,
            }
        )
        return EXIT_OK
    if not records:
        _print("no sagas match" if not args.offset else "no more sagas match")
        return EXIT_OK
    _print(list_table(records, _now()))
    if len(records) == args.limit:
        _print(f"\n({len(records)} shown; more may match: --offset {args.offset + len(records)})")
    return EXIT_OK


async def show_command(args: argparse.Namespace, session: Session) -> int:
    """``show ID``: one saga's timeline (or its instance diagram with ``--diagram``)."""
    record = await _load(session, args.saga_id)
    flow: Flow | None = None
    diagram = ""
    if args.diagram:
        flow = _flow_of(session, record.saga_name, needed_for="show --diagram")
        diagram = instance_to_mermaid(flow, record)
    elif session.app is not None and record.saga_name in session.app.registered:
        flow = session.app.flow(record.saga_name)
    line = timeline(record, flow)
    if args.json:
        document = line.to_json()
        if args.diagram:
            document["diagram"] = diagram
        _print_json(document)
    elif args.diagram:
        _print(diagram)
    else:
        _print(render_timeline(line, _now(), terminal_width()))
    return EXIT_OK


async def stats_command(args: argparse.Namespace, session: Session) -> int:
    """``stats``: sagas by status, and the parked ones."""
    counts = await session.client().counts(saga_name=args.name)
    by_status = {status.value: counts.get(status.value, 0) for status in SagaStatus}
    if args.json:
        _print_json(
            {
                "saga_name": args.name,
                "by_status": by_status,
                "waiting": counts.get("waiting", 0),
                "total": sum(by_status.values()),
            }
        )
    else:
        _print(render_stats(counts, args.name, terminal_width()))
    return EXIT_OK


async def graph_command(args: argparse.Namespace, session: Session) -> int:
    """``graph NAME``: the Mermaid flowchart of a registered definition."""
    _print(to_mermaid(_flow_of(session, args.saga_name, needed_for="graph")))
    return EXIT_OK


# --------------------------------------------------------------------------- acting


async def cancel_command(args: argparse.Namespace, session: Session) -> int:
    """``cancel ID``: store a cancel request (a worker holding the saga compensates it)."""
    before = await _load(session, args.saga_id)
    if before.is_terminal:
        raise CommandError(
            f"saga {args.saga_id!r} already ended ({before.status.value}): nothing to cancel",
            EXIT_REFUSED,
        )
    try:
        record = await session.client().cancel(args.saga_id, reason=args.reason)
    except (TypeError, ValueError) as exc:
        raise CommandError(f"--reason: {exc}", EXIT_USAGE) from None
    outcome = "already_requested" if before.cancel_requested_at is not None else "requested"
    if args.json:
        _print_json(
            {
                "saga_id": record.saga_id,
                "saga_name": record.saga_name,
                "status": record.status.value,
                "outcome": outcome,
                "cancel_requested_at": iso(record.cancel_requested_at),
                "cancel_reason": record.cancel_reason,
            }
        )
    elif outcome == "already_requested":
        _print(
            f"saga {record.saga_id} was already asked to cancel "
            f"{format_ago(record.cancel_requested_at, _now())} (the first reason is kept: "
            f"{record.cancel_reason}); nothing changed"
        )
    else:
        _print(
            f"cancel requested for saga {record.saga_id} ({record.saga_name}, "
            f"{record.status.value}). The request is stored; this command runs no saga: the "
            "worker holding it stops it and compensates, and a saga nobody holds is "
            f"compensated by the next worker serving {record.saga_name!r}. "
            f"Follow it with: lexigram-sagas show {record.saga_id}"
        )
    return EXIT_OK


async def retry_command(args: argparse.Namespace, session: Session) -> int:
    """``retry ID``: redrive a ``failed`` saga (its compensations run again)."""
    before = await _load(session, args.saga_id)
    if before.status is not SagaStatus.FAILED:
        raise CommandError(
            f"saga {args.saga_id!r} is {before.status.value}: only a failed saga can be retried",
            EXIT_REFUSED,
        )
    try:
        record = await session.client().retry(args.saga_id)
    except SagaNotFoundError:
        raise
    except SagaError as exc:
        raise CommandError(str(exc), EXIT_REFUSED) from None
    if args.json:
        _print_json(
            {
                "saga_id": record.saga_id,
                "saga_name": record.saga_name,
                "status": record.status.value,
                "redrives": record.redrives,
            }
        )
    else:
        _print(
            f"saga {record.saga_id} ({record.saga_name}) redriven (redrive {record.redrives}): "
            f"it is {record.status.value} again; a worker serving {record.saga_name!r} "
            "runs the compensations not yet done"
        )
    return EXIT_OK


def _payload(args: argparse.Namespace) -> dict[str, Any]:
    if args.payload_file is not None:
        try:
            if args.payload_file == "-":
                text = sys.stdin.read()
            else:
                with open(args.payload_file, encoding="utf-8") as source:
                    text = source.read()
        except OSError as exc:
            raise CommandError(f"--payload-file: {exc}", EXIT_USAGE) from None
        where = "--payload-file"
    else:
        text, where = args.payload or "{}", "--payload"
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{where} is not JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(payload, dict):
        raise CommandError(
            f"{where} must be a JSON object, got {type(payload).__name__}", EXIT_USAGE
        )
    return payload


async def signal_command(args: argparse.Namespace, session: Session) -> int:
    """``signal ID NAME``: send a signal to a saga (durable, deduplicated by its id)."""
    payload = _payload(args)
    signal_id = args.signal_id or uuid.uuid4().hex  # reported, so a retry can reuse it
    try:
        stored = await session.client().signal(
            args.saga_id, args.signal, payload, signal_id=signal_id
        )
    except SagaDataError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if args.json:
        _print_json(
            {
                "saga_id": args.saga_id,
                "signal": args.signal,
                "signal_id": signal_id,
                "stored": stored,
            }
        )
        return EXIT_OK
    if not stored:
        _print(
            f"saga {args.saga_id} already has the signal with id {signal_id!r}: "
            "nothing stored (a repeated send is not an error)"
        )
        return EXIT_OK
    record = await session.store.load(args.saga_id)
    wait = None if record is None else record.waiting
    if record is not None and wait is not None and wait.signal == args.signal:
        note = f"it was waiting for it: a worker serving {record.saga_name!r} resumes it now"
    else:
        note = f"it does not wait for {args.signal!r} now: the next step waiting for it takes it"
    _print(f"signal {args.signal!r} (id {signal_id}) stored for saga {args.saga_id}; {note}")
    return EXIT_OK


async def cleanup_command(args: argparse.Namespace, session: Session) -> int:
    """``cleanup``: delete finished sagas older than the configured age."""
    if args.older_than_hours is not None:
        hours = args.older_than_hours
    elif session.app is not None:
        hours = session.app.config.cleanup_completed_after_hours
    else:
        hours = SagaConfig().cleanup_completed_after_hours
    client = session.client(SagaConfig(cleanup_completed_after_hours=hours))
    deleted = await client.cleanup()
    if args.json:
        _print_json({"deleted": deleted, "older_than_hours": hours})
    elif hours == 0:
        _print("cleanup is off (cleanup_completed_after_hours = 0): nothing deleted")
    else:
        _print(
            f"deleted {deleted} finished saga{'s' if deleted != 1 else ''} "
            f"(completed more than {hours:g}h ago)"
        )
    return EXIT_OK


# --------------------------------------------------------------------------- serving


async def worker_command(args: argparse.Namespace, session: Session) -> int:
    """``worker``: run the application's sagas until SIGTERM or SIGINT."""
    if session.app is None or session.app_spec is None:
        raise CommandError("worker needs --app module:attribute (the sagas it runs)", EXIT_USAGE)
    runtime = session.adopt(runtime_on(session.app, session.store, session.app_spec, serving=True))
    if not runtime.registered:
        raise CommandError(f"--app {session.app_spec} registers no saga to run", EXIT_USAGE)
    stop = asyncio.Event()
    with _stop_on_signals(stop):
        logger.info(
            "worker %s serving %s from %s (concurrency %d); SIGTERM or Ctrl-C stops it",
            runtime.worker_id,
            ", ".join(runtime.registered),
            session.label,
            args.concurrency,
        )
        await runtime.serve(
            concurrency=args.concurrency, stop=stop, poll_interval=args.poll_interval
        )
    logger.info("worker %s stopped", runtime.worker_id)
    return EXIT_OK


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()

    def stopping(name: str) -> None:
        if stop.is_set():
            logger.info("%s again: still finishing the steps in flight", name)
        else:
            logger.info("%s: stopping (finishing the steps in flight)", name)
        stop.set()

    def from_thread(number: int, _frame: object) -> None:
        loop.call_soon_threadsafe(stopping, signal.Signals(number).name)

    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stopping, sig.name)
        except (NotImplementedError, RuntimeError):  # Windows: no loop signal handlers
            signal.signal(sig, from_thread)
        else:
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


_UI_MISSING = "the web admin needs the 'ui' extra: pip install 'lexigram-events[ui]'"


async def ui_command(args: argparse.Namespace, session: Session) -> int:
    """``ui``: the web admin (needs the ``ui`` extra)."""
    try:
        # Imported by name: the module (and starlette, uvicorn) exist only with the extra.
        web = importlib.import_module("lexigram.events.sagas.ops.web")
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in ("starlette", "uvicorn"):
            raise CommandError(_UI_MISSING, EXIT_ERROR) from None
        raise CommandError(f"the web admin cannot be loaded: {exc}", EXIT_ERROR) from None
    if session.app is not None and session.app_spec is not None:
        runtime: Runtime = session.adopt(
            runtime_on(session.app, session.store, session.app_spec, serving=False)
        )
    else:
        runtime = session.client()
    serve_ui: Callable[..., object] | None = getattr(web, "serve_ui", None)
    if not callable(serve_ui):
        raise CommandError(f"the web admin is not available: {web.__name__} has no serve_ui")
    result = serve_ui(
        session.store, runtime=runtime, host=args.host, port=args.port, token=args.token
    )
    if inspect.isawaitable(result):
        await result
    return EXIT_OK


COMMANDS: dict[str, Command] = {
    "list": list_command,
    "show": show_command,
    "stats": stats_command,
    "cancel": cancel_command,
    "retry": retry_command,
    "signal": signal_command,
    "cleanup": cleanup_command,
    "graph": graph_command,
    "worker": worker_command,
    "ui": ui_command,
}
"""The subcommands by name."""
