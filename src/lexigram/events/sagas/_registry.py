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
        self.max_concurrency: dict[str, int] = {}
        """Per-name caps on the sagas one worker runs at once (``serve()`` reads it)."""

    def add(self, flow: Flow, source: object, max_concurrency: int | None = None) -> None:
        """Register ``flow``; registering the same source again is a no-op.

        Raises:
            SagaDefinitionError: another definition holds the name.
            ValueError: ``max_concurrency`` is not a positive int.
        """
        if max_concurrency is not None and (
            not isinstance(max_concurrency, int)
            or isinstance(max_concurrency, bool)
            or max_concurrency < 1
        ):
            raise ValueError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
        known = self._sources.get(flow.name)
        if known is not None and known is not source:
            raise SagaDefinitionError(
                f"a different saga is already registered with name '{flow.name}'",
                saga_name=flow.name,
            )
        self.flows[flow.name] = self.flows.get(flow.name, flow)
        self._sources[flow.name] = source
        if max_concurrency is not None:
            self.max_concurrency[flow.name] = max_concurrency

    def get(self, saga_name: str) -> Flow:
        """Return the flow registered under ``saga_name``.

        Raises:
            SagaNotFoundError: none is.
        """
        try:
            return self.flows[saga_name]
        except KeyError:
            raise SagaNotFoundError.for_name(saga_name) from None
