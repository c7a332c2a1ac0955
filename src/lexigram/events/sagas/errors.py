"""The saga error tree.

Every error the library raises on purpose derives from :class:`SagaError`::

    SagaError
    ├── SagaDefinitionError        (also ValueError)  a saga or flow definition is invalid
    ├── SagaNotFoundError          (also KeyError)    no saga registered under a name / no such id
    ├── SagaDataError              (also TypeError)   a value no store can hold (``rejections``)
    ├── SagaTimeoutError           (also TimeoutError) ``wait()`` timed out; a step attempt or
    │                                                  the saga's deadline timed out
    ├── NonRetryableError                              raise it (or a subclass) to skip retries
    ├── CompensationFailedError                        ``raise_for_failure()`` of a saga whose
    │                                                  compensations gave up
    ├── SagaLeaseError                                 another worker holds or took the saga
    └── SagaStoreError                                 the store failed
        ├── ConcurrencyConflictError                   stale version on save
        ├── SagaStoreUnavailableError                  the store cannot be reached (transient)
        ├── CorruptRecordError                         a stored row cannot be read as a saga
        └── SchemaVersionError                         the store's schema is of another version

Errors carry structured attributes (``saga_id``, ``step_name``, versions...) so callers can
act on them without parsing messages. Messages never contain context payloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CompensationFailedError",
    "ConcurrencyConflictError",
    "CorruptRecordError",
    "NonRetryableError",
    "Rejection",
    "SagaDataError",
    "SagaDefinitionError",
    "SagaError",
    "SagaFinishedError",
    "SagaLeaseError",
    "SagaNotFoundError",
    "SagaStoreError",
    "SagaStoreUnavailableError",
    "SagaTimeoutError",
    "SchemaVersionError",
]


class SagaError(Exception):
    """Root of every error raised by ``lexigram.events.sagas``."""

    def __init__(self, message: str, *, saga_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.saga_id = saga_id

    def __str__(self) -> str:
        # KeyError (a base of SagaNotFoundError) would otherwise quote the message.
        return self.message


class SagaDefinitionError(SagaError, ValueError):
    """A saga class or flow definition is invalid.

    Attributes:
        saga_name: The saga (or class) the problem was found in, when known.
        step_name: The step at fault, when the problem is about one step.
    """

    def __init__(
        self,
        message: str,
        *,
        saga_name: str | None = None,
        step_name: str | None = None,
        saga_id: str | None = None,
    ) -> None:
        super().__init__(message, saga_id=saga_id)
        self.saga_name = saga_name
        self.step_name = step_name


class SagaNotFoundError(SagaError, KeyError):
    """No saga is registered under a name, or no saga has an id.

    Attributes:
        saga_name: The unknown name, when looking up a definition.
        saga_id: The unknown id, when looking up an instance.
    """

    def __init__(
        self, message: str, *, saga_name: str | None = None, saga_id: str | None = None
    ) -> None:
        super().__init__(message, saga_id=saga_id)
        self.saga_name = saga_name

    @classmethod
    def for_name(cls, saga_name: str) -> SagaNotFoundError:
        """Build the error for an unknown saga name."""
        return cls(f"No saga registered with name '{saga_name}'", saga_name=saga_name)

    @classmethod
    def for_id(cls, saga_id: str) -> SagaNotFoundError:
        """Build the error for an unknown saga id."""
        return cls(f"No saga with id '{saga_id}' in the store", saga_id=saga_id)


RejectionKind = Literal["data", "metadata", "output", "error"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """One value a store cannot hold, and where it is.

    Attributes:
        kind: ``"data"`` (a top-level key of the context data), ``"metadata"`` (a key of
            the context metadata), ``"output"`` (a step's output) or ``"error"`` (a step's
            or the saga's error text; ``key`` is ``""`` for the saga's own).
        key: The data or metadata key (``""``: the whole dict was replaced by something
            that is not one), or the step name.
    """

    kind: RejectionKind
    key: str

    def __str__(self) -> str:
        if self.kind in ("data", "metadata"):
            if not self.key:
                return f"the context {self.kind} (not a JSON object)"
            return f"{self.kind} key '{self.key}'"
        if not self.key:
            return "the saga's error"
        return f"{self.kind} of step '{self.key}'"


class SagaDataError(SagaError, TypeError):
    """A value is not JSON a store can hold (context data, metadata, an output, an error).

    Attributes:
        keys: The top-level data keys whose values could not be stored (empty when the data
            as a whole is wrong, e.g. not a dict).
        rejections: Every rejected value, typed: what it is and its key (see
            :class:`Rejection`).
    """

    def __init__(
        self,
        message: str,
        *,
        keys: Sequence[str] = (),
        rejections: Sequence[Rejection] = (),
        saga_id: str | None = None,
    ) -> None:
        super().__init__(message, saga_id=saga_id)
        if not keys:
            keys = [item.key for item in rejections if item.kind == "data"]
        self.keys = tuple(keys)
        self.rejections = tuple(rejections)


class SagaFinishedError(SagaError):
    """The saga already reached a terminal status, so it refuses the request (a signal).

    Attributes:
        status: The saga's terminal status (``"completed"``, ``"compensated"``,
            ``"failed"``).
    """

    def __init__(self, message: str, *, saga_id: str | None = None, status: str = "") -> None:
        super().__init__(message, saga_id=saga_id)
        self.status = status

    @classmethod
    def for_signal(cls, saga_id: str, status: object, name: str) -> SagaFinishedError:
        """Build the error for a signal sent to a finished saga."""
        text = getattr(status, "value", str(status))
        return cls(
            f"saga '{saga_id}' is {text}: it takes no more signals (signal '{name}' was not "
            "stored)",
            saga_id=saga_id,
            status=text,
        )


class SagaTimeoutError(SagaError, TimeoutError):
    """A step attempt exceeded its timeout, a saga its deadline, or a wait its timeout.

    Attributes:
        step_name: The step whose attempt timed out, if any.
        timeout: The limit in seconds that was exceeded, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        saga_id: str | None = None,
        step_name: str | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(message, saga_id=saga_id)
        self.step_name = step_name
        self.timeout = timeout


class NonRetryableError(SagaError):
    """Raise this (or a subclass) from a step to fail it at once, without retries.

    Subclass it for business rule violations, e.g. ``class InvalidOrder(NonRetryableError)``.
    """

    def __init__(self, message: str = "non-retryable failure", *, saga_id: str | None = None):
        super().__init__(message, saga_id=saga_id)


class CompensationFailedError(SagaError):
    """One or more compensations failed after all their retries.

    Attributes:
        steps: The steps whose compensation failed, in the order they were attempted.
    """

    def __init__(self, message: str, *, saga_id: str | None = None, steps: Sequence[str] = ()):
        super().__init__(message, saga_id=saga_id)
        self.steps = tuple(steps)


class SagaLeaseError(SagaError):
    """Another worker holds the saga's lease, or took it over from this worker.

    Attributes:
        owner: The worker that holds the lease, when known.
    """

    def __init__(self, message: str, *, saga_id: str | None = None, owner: str | None = None):
        super().__init__(message, saga_id=saga_id)
        self.owner = owner


class SagaStoreError(SagaError):
    """A saga store operation failed."""


class ConcurrencyConflictError(SagaStoreError):
    """A save found a different version stored than the one the record was loaded at.

    Attributes:
        expected_version: The version the writer based its change on.
        actual_version: The version found in the store (``None`` when the saga is missing).
    """

    def __init__(
        self,
        saga_id: str,
        *,
        expected_version: int,
        actual_version: int | None,
    ) -> None:
        found = "no record" if actual_version is None else f"version {actual_version}"
        super().__init__(
            f"saga '{saga_id}' was changed concurrently: expected version "
            f"{expected_version}, found {found}",
            saga_id=saga_id,
        )
        self.expected_version = expected_version
        self.actual_version = actual_version


class SagaStoreUnavailableError(SagaStoreError):
    """The store cannot be reached right now; the operation may be retried."""


class CorruptRecordError(SagaStoreError):
    """A stored row cannot be read as a saga record (corrupt, foreign or newer schema).

    Attributes:
        field: The field that could not be read, when known.
    """

    def __init__(self, message: str, *, saga_id: str | None = None, field: str | None = None):
        where = "" if saga_id is None else f"saga '{saga_id}': "
        super().__init__(where + message, saga_id=saga_id)
        self.field = field


class SchemaVersionError(SagaStoreError):
    """The store's tables were written by a library version with another layout.

    Attributes:
        table: The saga table.
        found_version: The schema version recorded in the database.
        supported_version: The schema version this library reads and writes.
    """

    def __init__(
        self, message: str, *, table: str, found_version: str, supported_version: int
    ) -> None:
        super().__init__(message)
        self.table = table
        self.found_version = found_version
        self.supported_version = supported_version
