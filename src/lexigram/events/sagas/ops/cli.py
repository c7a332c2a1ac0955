"""``lexigram-sagas``: the operators' command (also ``python -m lexigram.events.sagas``).

Reads and acts on the sagas of a store given as a URL (``--store`` or
``LEXIGRAM_SAGAS_STORE``): ``list``, ``show``, ``stats``, ``cancel``, ``retry``,
``signal``, ``cleanup``. With ``--app module:attribute`` (or ``LEXIGRAM_SAGAS_APP``),
naming the application's ``SagaManager``/``SagaOrchestrator`` (or a function returning
one), also ``graph``, ``worker`` and ``ui``, and ``show`` lists the steps not reached yet
and draws diagrams. See ``docs/cli.md``.

Exit codes (:mod:`~lexigram.events.sagas.ops.cli_errors`):

====  ======================  ====================================================
code  constant                meaning
====  ======================  ====================================================
0     ``EXIT_OK``             done
1     ``EXIT_ERROR``          any other error
2     ``EXIT_USAGE``          bad command line, store URL, ``--app`` or payload
3     ``EXIT_NOT_FOUND``      no saga with that id (or no saga of that name)
4     ``EXIT_REFUSED``        the saga refuses the action in its state
5     ``EXIT_UNAVAILABLE``    the store cannot be reached or opened
130   ``EXIT_INTERRUPTED``    interrupted by Ctrl-C (not ``worker``: it stops with 0)
====  ======================  ====================================================

Errors are one line on stderr, ``lexigram-sagas: error: ...``; ``--debug`` adds the
traceback. Only ``worker`` creates a SQLite file that does not exist (every other command
reports it with code 5, so a mistyped path never leaves an empty database behind).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from lexigram.events.sagas.errors import SagaError, SagaStoreUnavailableError
from lexigram.events.sagas.ops.cli_apps import APP_ENV_VAR
from lexigram.events.sagas.ops.cli_commands import COMMANDS, DEFAULT_CANCEL_REASON
from lexigram.events.sagas.ops.cli_errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CommandError,
    exit_code_for,
)
from lexigram.events.sagas.ops.cli_session import open_session
from lexigram.events.sagas.ops.cli_tables import parse_when
from lexigram.events.sagas.ops.urls import ENV_VAR
from lexigram.events.sagas.types import SagaStatus

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "PROG",
    "UI_TOKEN_ENV_VAR",
    "build_parser",
    "main",
]

PROG = "lexigram-sagas"
"""The command's name in usage lines and error messages."""

UI_TOKEN_ENV_VAR = "LEXIGRAM_SAGAS_UI_TOKEN"
"""The environment variable ``ui --token`` is read from when not given."""

_STORELESS = {"graph"}  # commands that read no saga
_CREATES = {"worker"}  # commands that may create a SQLite file

_EPILOG = f"""\
store URLs: sqlite:///abs/path.db, sqlite:rel/path.db (?table=), \
postgresql://user@host:5432/db (?table=, ?schema=)
environment: {ENV_VAR} (--store), {APP_ENV_VAR} (--app), {UI_TOKEN_ENV_VAR} (ui --token)

exit codes:
  {EXIT_OK}    done
  {EXIT_ERROR}    any other error
  {EXIT_USAGE}    bad command line, store URL, --app or payload
  {EXIT_NOT_FOUND}    no saga with that id (or no saga registered under that name)
  {EXIT_REFUSED}    the saga refuses the action (retry of a saga that is not failed,
       signal or cancel of a saga that already ended)
  {EXIT_UNAVAILABLE}    the store cannot be reached or opened (or its SQLite file does not exist)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); `worker` stops gracefully and exits 0

examples:
  {PROG} --store sqlite:orders.db list --status failed
  {PROG} --store sqlite:orders.db show order-42
  {PROG} --app orders.sagas:make_manager --store postgresql://app@db/app worker
"""


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _at_least_one(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not at least 1")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _common() -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    suppress = argparse.SUPPRESS
    common.add_argument(
        "--store", default=suppress, metavar="URL", help=f"the store (default: ${ENV_VAR})"
    )
    common.add_argument(
        "--app",
        default=suppress,
        metavar="MODULE:ATTR",
        help="the application's SagaManager/SagaOrchestrator, or a function returning one "
        f"(default: ${APP_ENV_VAR})",
    )
    common.add_argument(
        "--debug", action="store_true", default=suppress, help="print tracebacks of errors"
    )
    common.add_argument(
        "--log-level",
        default=suppress,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default: INFO for worker and ui, else ERROR)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``lexigram-sagas``."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and operate the sagas of a lexigram-events store.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=text,
            description=text,
            parents=[common],
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def json_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--json", action="store_true", help="print one JSON document")

    listing = command("list", "list sagas, newest first")
    listing.add_argument("--name", help="only sagas of this name")
    listing.add_argument("--status", choices=[status.value for status in SagaStatus])
    listing.add_argument("--correlation-id", help="only sagas of this correlation id")
    listing.add_argument(
        "--since", type=parse_when, help="created at or after: an ISO time or an age (2h, 3d)"
    )
    listing.add_argument(
        "--until", type=parse_when, help="created before: an ISO time or an age (2h, 3d)"
    )
    listing.add_argument("--waiting", action="store_true", help="only parked sagas")
    listing.add_argument("--limit", type=_count, default=50, help="at most this many (50)")
    listing.add_argument("--offset", type=_count, default=0, help="skip this many matches")
    json_option(listing)

    show = command("show", "a saga's timeline: steps, attempts, times, errors, waits")
    show.add_argument("saga_id", metavar="ID")
    show.add_argument(
        "--diagram", action="store_true", help="print its Mermaid diagram (needs --app)"
    )
    json_option(show)

    stats = command("stats", "sagas by status, and the parked ones")
    stats.add_argument("--name", help="only sagas of this name")
    json_option(stats)

    cancel = command("cancel", "ask for a saga to be cancelled (compensated)")
    cancel.add_argument("saga_id", metavar="ID")
    cancel.add_argument("--reason", default=DEFAULT_CANCEL_REASON)
    json_option(cancel)

    retry = command("retry", "redrive a failed saga: run its compensations again")
    retry.add_argument("saga_id", metavar="ID")
    json_option(retry)

    sig = command("signal", "send a signal to a saga")
    sig.add_argument("saga_id", metavar="ID")
    sig.add_argument("signal", metavar="NAME")
    payload = sig.add_mutually_exclusive_group()
    payload.add_argument("--payload", metavar="JSON", help="a JSON object ({} by default)")
    payload.add_argument("--payload-file", metavar="FILE", help="read the payload ('-': stdin)")
    sig.add_argument("--signal-id", help="deduplication id (a repeated id is stored once)")
    json_option(sig)

    cleanup = command("cleanup", "delete finished sagas older than an age")
    cleanup.add_argument(
        "--older-than-hours",
        type=_positive,
        metavar="N",
        help="completed more than N hours ago (default: the app's config, else 24)",
    )
    json_option(cleanup)

    graph = command("graph", "print a saga definition as a Mermaid flowchart (needs --app)")
    graph.add_argument("saga_name", metavar="NAME")

    worker = command("worker", "run the app's sagas until SIGTERM/SIGINT (needs --app)")
    worker.add_argument(
        "--concurrency", type=_at_least_one, default=100, help="sagas at once (100)"
    )
    worker.add_argument(
        "--poll-interval", type=_positive, default=1.0, help="seconds between polls (1)"
    )

    ui = command("ui", "the web admin (needs the 'ui' extra)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    ui.add_argument("--port", type=_count, default=8765, help="port (8765)")
    ui.add_argument(
        "--token",
        default=os.environ.get(UI_TOKEN_ENV_VAR) or None,
        help=f"allow actions to holders of this token (default: ${UI_TOKEN_ENV_VAR}; "
        "read-only without)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code (usage errors included, never raising)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    serving = args.command in ("worker", "ui")
    _configure_logging(getattr(args, "log_level", "INFO" if serving else "ERROR"))
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `lexigram-sagas list | head`: the reader left, say nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:
        return _fail(exc, debug=debug)


async def _run(args: argparse.Namespace) -> int:
    async with contextlib.AsyncExitStack() as stack:
        session = await open_session(
            stack,
            url=getattr(args, "store", None) or os.environ.get(ENV_VAR) or None,
            app_spec=getattr(args, "app", None) or os.environ.get(APP_ENV_VAR) or None,
            needs_store=args.command not in _STORELESS,
            create=args.command in _CREATES,
        )
        try:
            return await COMMANDS[args.command](args, session)
        except SagaStoreUnavailableError as exc:
            raise CommandError(
                f"store unavailable ({session.label}): {exc}", EXIT_UNAVAILABLE
            ) from exc


def _fail(error: Exception, *, debug: bool) -> int:
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    if isinstance(error, CommandError | SagaError):
        message = str(error)
    else:
        message = f"{type(error).__name__}: {error}"
        if not debug:
            message += " (run with --debug for the traceback)"
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    return exit_code_for(error)


def _configure_logging(level: str) -> None:
    """Log records of ``level`` and above go to stderr, one line each.

    The process is the command's own, so it configures the root logger (as
    ``logging.basicConfig`` does: not when the application's import configured it).
    """
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
