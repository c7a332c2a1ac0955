"""The exit codes of ``lexigram-sagas`` and the error its commands raise to end with one.

A command that cannot do what it was asked raises :class:`CommandError` with the exit code
and a one-line message; :func:`~lexigram.events.sagas.ops.cli.main` prints
``lexigram-sagas: error: <message>`` to stderr and exits with the code. Errors of the
library are mapped to codes in one place, :func:`exit_code_for`.
"""

from __future__ import annotations

from lexigram.events.sagas.errors import (
    SagaFinishedError,
    SagaNotFoundError,
    SagaStoreUnavailableError,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CommandError",
    "exit_code_for",
]

EXIT_OK = 0
"""The command did what it was asked."""

EXIT_ERROR = 1
"""Any other error (a bug, a corrupt row, a schema of another version...)."""

EXIT_USAGE = 2
"""The command line is wrong: an unknown option, a bad store URL, a bad ``--app``, no store
given, a payload that is not a JSON object (argparse's own code for usage errors)."""

EXIT_NOT_FOUND = 3
"""No saga has the id given (or no saga is registered under the name given)."""

EXIT_REFUSED = 4
"""The saga refuses the action in its state: ``retry`` of a saga that is not ``failed``,
``signal`` or ``cancel`` of a saga that already ended."""

EXIT_UNAVAILABLE = 5
"""The store cannot be reached or opened: connection refused, unknown host or database,
authentication failed, or a SQLite file that does not exist."""

EXIT_INTERRUPTED = 130
"""Interrupted by Ctrl-C (``SIGINT``) outside ``worker``, which stops gracefully with 0."""


class CommandError(Exception):
    """A command cannot do what it was asked; ends the command with ``code``.

    Attributes:
        message: One line for the operator.
        code: The exit code (one of the ``EXIT_*`` constants).
    """

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def exit_code_for(error: BaseException) -> int:
    """The exit code an error ends the command with."""
    if isinstance(error, CommandError):
        return error.code
    if isinstance(error, SagaNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, SagaFinishedError):
        return EXIT_REFUSED
    if isinstance(error, SagaStoreUnavailableError | ConnectionError):
        return EXIT_UNAVAILABLE
    return EXIT_ERROR
