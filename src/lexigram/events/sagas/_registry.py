"""The saga definitions one manager has registered, by name."""

from __future__ import annotations

from lexigram.events.sagas._engine.flow import Flow
from lexigram.events.sagas.errors import SagaDefinitionError, SagaNotFoundError

__all__ = ["Registry"]


class Registry:
    """Compiled flows by saga name, and what each was compiled from."""

    def __init__(self) -> None:
        self.flows: dict[str, Flow] = {}
        """The compiled flows by name (recovery reads it)."""
        self._sources: dict[str, object] = {}

    def add(self, flow: Flow, source: object) -> None:
        """Register ``flow``; registering the same source again is a no-op.

        Raises:
            SagaDefinitionError: another definition holds the name.
        """
        known = self._sources.get(flow.name)
        if known is not None:
            if known is source:
                return
            raise SagaDefinitionError(
                f"a different saga is already registered with name '{flow.name}'",
                saga_name=flow.name,
            )
        self.flows[flow.name] = flow
        self._sources[flow.name] = source

    def get(self, saga_name: str) -> Flow:
        """Return the flow registered under ``saga_name``.

        Raises:
            SagaNotFoundError: none is.
        """
        try:
            return self.flows[saga_name]
        except KeyError:
            raise SagaNotFoundError.for_name(saga_name) from None
