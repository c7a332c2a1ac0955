"""Orchestrated sagas for asyncio.

Define a sequential saga by subclassing :class:`SagaBase` and decorating async methods
with :func:`saga_step`; register it on a :class:`SagaManager` and ``await
manager.start(...)``. For parallel branches, conditional transitions and failure jumps,
define a flow of :class:`OrchestratedStep` on a :class:`SagaOrchestrator`. Both run on one
engine. State lives in a :class:`SagaStore`: ``InMemorySagaStore``, ``SQLiteSagaStore``
or ``PostgresSagaStore``. A step may wait durably for a signal (``wait_for=``,
``manager.signal``), a delay or its next poll, holding no worker while it waits.
:func:`to_mermaid` draws any definition.
"""

import logging
from typing import TYPE_CHECKING, Any

from lexigram.events.sagas._engine.flow import Flow
from lexigram.events.sagas._runtime import RecoveryProblem
from lexigram.events.sagas.base import SagaBase, saga_step
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import Err, Ok, Result, SagaContext, SagaStepResult
from lexigram.events.sagas.diagram import instance_to_mermaid, to_mermaid
from lexigram.events.sagas.errors import (
    CompensationFailedError,
    ConcurrencyConflictError,
    CorruptRecordError,
    NonRetryableError,
    Rejection,
    SagaDataError,
    SagaDefinitionError,
    SagaError,
    SagaFinishedError,
    SagaLeaseError,
    SagaNotFoundError,
    SagaStoreError,
    SagaStoreUnavailableError,
    SagaTimeoutError,
    SchemaVersionError,
)
from lexigram.events.sagas.events import (
    SagaCancelRequested,
    SagaCompensated,
    SagaCompensating,
    SagaCompleted,
    SagaEvent,
    SagaFailed,
    SagaResumed,
    SagaStarted,
    SagaStepCompensated,
    SagaStepCompleted,
    SagaStepFailed,
    SagaStepStarted,
    SagaWaiting,
)
from lexigram.events.sagas.manager import SagaManager, SagaManagerProtocol
from lexigram.events.sagas.orchestrator import (
    ConditionalTransition,
    OrchestratedStep,
    SagaAction,
    SagaOrchestrator,
    transition,
)
from lexigram.events.sagas.store import InMemorySagaStore, SagaStore, is_claimable
from lexigram.events.sagas.types import (
    FAILURE_KINDS,
    TERMINAL_SAGA_STATUSES,
    FailureKind,
    SagaFailure,
    SagaRecord,
    SagaSignal,
    SagaStatus,
    SagaStepRecord,
    SagaStepStatus,
    SagaWait,
    can_transition_saga,
    can_transition_step,
)

if TYPE_CHECKING:
    from lexigram.events.sagas.postgres import PostgresSagaStore
    from lexigram.events.sagas.sqlite import SQLiteSagaStore

logging.getLogger(__name__).addHandler(logging.NullHandler())

# The durable stores are imported on first use, so that importing the package needs
# neither asyncpg nor a Python built with sqlite3.
_LAZY = {
    "PostgresSagaStore": "lexigram.events.sagas.postgres",
    "SQLiteSagaStore": "lexigram.events.sagas.sqlite",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


__all__ = [
    "FAILURE_KINDS",
    "TERMINAL_SAGA_STATUSES",
    "CompensationFailedError",
    "ConcurrencyConflictError",
    "ConditionalTransition",
    "CorruptRecordError",
    "Err",
    "FailureKind",
    "Flow",
    "InMemorySagaStore",
    "NonRetryableError",
    "Ok",
    "OrchestratedStep",
    "PostgresSagaStore",
    "RecoveryProblem",
    "Rejection",
    "Result",
    "SQLiteSagaStore",
    "SagaAction",
    "SagaBase",
    "SagaCancelRequested",
    "SagaCompensated",
    "SagaCompensating",
    "SagaCompleted",
    "SagaConfig",
    "SagaContext",
    "SagaDataError",
    "SagaDefinitionError",
    "SagaError",
    "SagaEvent",
    "SagaFailed",
    "SagaFailure",
    "SagaFinishedError",
    "SagaLeaseError",
    "SagaManager",
    "SagaManagerProtocol",
    "SagaNotFoundError",
    "SagaOrchestrator",
    "SagaRecord",
    "SagaResumed",
    "SagaSignal",
    "SagaStarted",
    "SagaStatus",
    "SagaStepCompensated",
    "SagaStepCompleted",
    "SagaStepFailed",
    "SagaStepRecord",
    "SagaStepResult",
    "SagaStepStarted",
    "SagaStepStatus",
    "SagaStore",
    "SagaStoreError",
    "SagaStoreUnavailableError",
    "SagaTimeoutError",
    "SagaWait",
    "SagaWaiting",
    "SchemaVersionError",
    "can_transition_saga",
    "can_transition_step",
    "instance_to_mermaid",
    "is_claimable",
    "saga_step",
    "to_mermaid",
    "transition",
]
