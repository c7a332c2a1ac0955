"""``SagaManager``: runs sequential sagas defined as ``SagaBase`` subclasses.

It is a thin front-end: ``register`` compiles a class into a linear flow, and the shared
runtime and engine do everything else (see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from lexigram.events.sagas._runtime import RecoveryProblem, SagaRuntime
from lexigram.events.sagas.base import SagaBase, compile_saga
from lexigram.events.sagas.config import SagaConfig

__all__ = ["RecoveryProblem", "SagaManager", "SagaManagerProtocol"]

S = TypeVar("S", bound=type[SagaBase])


class SagaManager(SagaRuntime):
    """Coordinates sequential sagas: register classes, then ``start``/``execute`` them.

    Example::

        manager = SagaManager()
        manager.register(OrderFulfillmentSaga)
        saga_id = await manager.start("order_fulfillment", {"order_id": "ord-1"})
        record = await manager.wait(saga_id)

    See :class:`~lexigram.events.sagas._runtime.SagaRuntime` for the shared API
    (``start``, ``wait``, ``execute``, ``get``, ``list``, ``cancel``, ``resume``,
    ``recover``, ``cleanup``, ``start_on``, ``close``).
    """

    def register(
        self,
        saga_class: S,
        *,
        factory: Callable[[], SagaBase] | None = None,
        max_concurrency: int | None = None,
        config: SagaConfig | None = None,
    ) -> S:
        """Validate ``saga_class`` and make it startable under its ``name``.

        Args:
            saga_class: A ``SagaBase`` subclass.
            factory: Builds the instance used for one run (so a saga can receive its
                services by constructor); defaults to calling the class.
            max_concurrency: At most this many sagas of the class run at once in one
                ``serve()`` worker (no cap beyond ``concurrency`` when omitted).
            config: This saga type's own settings (deadline, retries, timeouts,
                compensation, transitions, crash-loop limit) instead of the manager's;
                worker-wide settings (leases, shutdown, cleanup) stay the manager's.

        Returns:
            The class, so ``register`` can be used as a class decorator.

        Raises:
            SagaDefinitionError: the class breaks a definition rule, or a different class
                is already registered under the same name. Registering the same class
                again is a no-op.
            ValueError: ``max_concurrency`` is not a positive int.
        """
        own = self._type_config(config)
        flow = compile_saga(saga_class, own or self.config, factory)
        self._add_flow(flow, saga_class, max_concurrency, own)
        return saga_class


SagaManagerProtocol = SagaManager
"""The name the upstream source used for the manager."""
