"""Configuration objects of lexigram-events (re-exports ``SagaConfig``)."""

from lexigram.events.sagas.config import SagaConfig

__all__ = ["SagaConfig"]
