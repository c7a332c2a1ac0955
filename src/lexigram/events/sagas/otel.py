"""OpenTelemetry traces and metrics for sagas (extra ``otel``: ``opentelemetry-api`` only).

::

    from lexigram.events.sagas.otel import instrument

    manager = SagaManager(store)
    instrument(manager)  # the global tracer and meter providers, unless given

What it records, through the OpenTelemetry API (the application installs and configures
the SDK and its exporters):

- **Traces**: a span ``saga <name>`` per run of a saga in a worker, with a child span
  ``step <name>`` per step attempt and ``compensate <name>`` per compensation attempt,
  current while the user code runs (so its own spans are children). Attributes: on the
  run's span ``saga.id``, ``saga.name``, ``saga.worker``, ``saga.outcome``; on an
  attempt's ``saga.step``, ``saga.attempt``, ``saga.outcome``. A failed attempt or a saga
  that did not complete gets status ``ERROR``.
- **Propagation**: ``start()``/``enqueue()`` store the caller's trace context in the
  saga's metadata (``metadata["trace"]``, W3C ``traceparent``/``tracestate`` through the
  configured propagator), and the worker's run span continues it: an HTTP request that
  enqueued a saga and the worker that ran it are one trace.
- **Metrics**: counters ``sagas.started``, ``sagas.completed``, ``sagas.compensated``,
  ``sagas.failed`` (by ``saga.name``); histograms ``sagas.duration`` (stored to terminal),
  ``sagas.step.duration`` (per attempt, by name, step and outcome) and
  ``sagas.pickup_latency`` (stored to its first run: the queueing delay of enqueued
  sagas); up-down counters ``sagas.in_flight`` (observed: runs in this worker) and ``sagas.parked``
  (parks minus resumes: summed over workers, the sagas waiting).

Importing ``lexigram.events.sagas`` never imports this module nor OpenTelemetry; a manager
that is not instrumented pays nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextvars import Token
from datetime import UTC, datetime
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Span, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "lexigram.events.sagas.otel needs OpenTelemetry: pip install 'lexigram-events[otel]'"
    ) from exc

from lexigram.events.sagas._engine.rules import AttemptOutcome
from lexigram.events.sagas._engine.run import SagaRun
from lexigram.events.sagas._runtime import SagaRuntime
from lexigram.events.sagas.types import SagaStatus

__all__ = ["SCOPE", "SagaTelemetry", "instrument", "uninstrument"]

logger = logging.getLogger(__name__)

SCOPE = "lexigram.events.sagas"
"""The instrumentation scope name of every span and metric."""

_TRACE_KEY = "trace"
_UNFINISHED = {"completed": False, "compensated": True, "failed": True}


class SagaTelemetry:
    """The engine hooks that record spans and metrics (see the module docstring).

    Args:
        worker_id: The worker's id, put on every span.
        tracer_provider: Where spans go (the global provider when omitted).
        meter_provider: Where metrics go (the global provider when omitted).
    """

    def __init__(
        self,
        worker_id: str,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self._started = meter.create_counter(
            "sagas.started", "{saga}", "Sagas whose first run began"
        )
        self._ended = {
            status: meter.create_counter(f"sagas.{status}", "{saga}", f"Sagas that ended {status}")
            for status in ("completed", "compensated", "failed")
        }
        self._duration = meter.create_histogram(
            "sagas.duration", "s", "From a saga's storing to its terminal status"
        )
        self._step_duration = meter.create_histogram(
            "sagas.step.duration", "s", "One attempt of a step or a compensation"
        )
        self._pickup = meter.create_histogram(
            "sagas.pickup_latency", "s", "From a saga's storing to its first run"
        )
        # Bounded caches: one entry per saga name, step and outcome of the registered flows.
        self._labels: dict[tuple[str, str], str] = {}
        self._names: dict[str, dict[str, str]] = {}
        self._step_attributes: dict[tuple[str, str, str], dict[str, str]] = {}
        self._running: dict[str, int] = {}
        self._in_flight = meter.create_observable_up_down_counter(
            "sagas.in_flight", [self._observe_running], "{saga}", "Sagas running in this worker"
        )
        self._parked = meter.create_up_down_counter(
            "sagas.parked", "{saga}", "Sagas parked minus parked sagas resumed"
        )

    # ------------------------------------------------------------------ EngineHooks

    def stamp(self, metadata: dict[str, Any]) -> None:
        """Store the caller's trace context with a saga about to be stored."""
        try:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            if carrier:
                metadata[_TRACE_KEY] = carrier
        except Exception:  # an observer never fails a saga
            logger.debug("could not store the trace context", exc_info=True)

    def run_begins(self, run: SagaRun) -> None:
        """Open the run's span (continuing the stored trace) and count the run."""
        try:
            record = run.record
            name = record.saga_name
            carrier = record.metadata.get(_TRACE_KEY)
            parent = propagate.extract(carrier) if isinstance(carrier, dict) else None
            span = self.tracer.start_span(
                self._label("saga", name),
                context=parent,
                attributes={
                    "saga.id": record.saga_id,
                    "saga.name": name,
                    "saga.worker": self.worker_id,
                },
            )
            # The span, and the context its attempts' spans start in (made once a run).
            run.observed = (span, trace.set_span_in_context(span))
            self._running[name] = self._running.get(name, 0) + 1
            by_name = self._by_name(name)
            if record.status is SagaStatus.PENDING and record.previous_owner is None:
                self._started.add(1, by_name)
                if record.created_at is not None:
                    self._pickup.record(_since(record.created_at), by_name)
            if run.resumed is not None:
                self._parked.add(-1, by_name)
        except Exception:
            logger.debug("could not record a run's start", exc_info=True)

    def run_ends(self, run: SagaRun, outcome: str) -> None:
        """Close the run's span with its outcome; count how the saga ended."""
        try:
            record = run.record
            name = record.saga_name
            left = self._running.get(name, 1) - 1
            if left > 0:
                self._running[name] = left
            else:
                self._running.pop(name, None)
            if outcome == "parked":
                self._parked.add(1, self._by_name(name))
            elif outcome in self._ended:
                self._ended[outcome].add(1, self._by_name(name))
                if record.created_at is not None and record.completed_at is not None:
                    seconds = (record.completed_at - record.created_at).total_seconds()
                    attributes = {"saga.name": name, "saga.outcome": outcome}
                    self._duration.record(max(seconds, 0.0), attributes)
            observed = run.observed
            if isinstance(observed, tuple):
                span: Span = observed[0]
                span.set_attribute("saga.outcome", outcome)
                if _UNFINISHED.get(outcome):
                    span.set_status(Status(StatusCode.ERROR, record.error or outcome))
                span.end()
            run.observed = None
        except Exception:
            logger.debug("could not record a run's end", exc_info=True)

    def attempt_begins(
        self, run: SagaRun, step: str, attempt: int, *, compensation: bool
    ) -> object:
        """Open the attempt's span as a child of the run's, current while user code runs.

        The attempt's span names the step and attempt; the saga's id, name and worker are
        on its parent, the run's span.
        """
        try:
            observed = run.observed
            context = observed[1] if isinstance(observed, tuple) else None
            attributes: dict[str, Any] = {"saga.step": step, "saga.attempt": attempt}
            if compensation:
                attributes["saga.compensation"] = True
            verb = "compensate" if compensation else "step"
            span = self.tracer.start_span(
                self._label(verb, step), context=context, attributes=attributes
            )
            token = otel_context.attach(trace.set_span_in_context(span))
        except Exception:
            logger.debug("could not record an attempt's start", exc_info=True)
            return None
        return _Attempt(span, token, time.perf_counter(), run.record.saga_name, step)

    def attempt_ends(self, token: object, outcome: AttemptOutcome | None) -> None:
        """Close the attempt's span with its outcome and record its duration."""
        if not isinstance(token, _Attempt):
            return
        try:
            otel_context.detach(token.token)
            span = token.span
            if outcome is None:
                result = "interrupted"
            elif outcome.ok:
                result = "ok"
            elif outcome.poll is not None:
                result = "poll"
            else:
                result = "failed"
                span.set_status(Status(StatusCode.ERROR, outcome.error))
            span.set_attribute("saga.outcome", result)
            span.end()
            key = (token.saga_name, token.step, result)
            attributes = self._step_attributes.get(key)
            if attributes is None:
                attributes = self._step_attributes.setdefault(
                    key, {"saga.name": key[0], "saga.step": key[1], "saga.outcome": result}
                )
            self._step_duration.record(time.perf_counter() - token.started, attributes)
        except Exception:
            logger.debug("could not record an attempt's end", exc_info=True)

    def _label(self, verb: str, name: str) -> str:
        """``"saga order"``, ``"step charge"``: span names, made once each."""
        key = (verb, name)
        label = self._labels.get(key)
        if label is None:
            label = self._labels.setdefault(key, f"{verb} {name}")
        return label

    def _by_name(self, name: str) -> dict[str, str]:
        """The metric attributes of one saga name, made once (never changed)."""
        attributes = self._names.get(name)
        if attributes is None:
            attributes = self._names.setdefault(name, {"saga.name": name})
        return attributes

    def _observe_running(self, _options: CallbackOptions) -> Iterable[Observation]:
        """``sagas.in_flight``: the runs of this worker, by saga name, when collected."""
        return [Observation(count, self._by_name(name)) for name, count in self._running.items()]


class _Attempt:
    """What ``attempt_begins`` hands to ``attempt_ends``."""

    __slots__ = ("saga_name", "span", "started", "step", "token")

    def __init__(
        self, span: Span, token: Token[Context], started: float, saga_name: str, step: str
    ) -> None:
        self.span = span
        self.token = token
        self.started = started
        self.saga_name = saga_name
        self.step = step


def _since(moment: datetime) -> float:
    return max((datetime.now(UTC) - moment).total_seconds(), 0.0)


def instrument(
    runtime: SagaRuntime,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> SagaTelemetry:
    """Record traces and metrics of every saga ``runtime`` stores or runs.

    Args:
        runtime: A ``SagaManager`` or ``SagaOrchestrator``.
        tracer_provider: Where spans go (the global provider when omitted).
        meter_provider: Where metrics go (the global provider when omitted).

    Returns:
        The hooks now installed (``uninstrument`` removes them).
    """
    telemetry = SagaTelemetry(
        runtime.worker_id, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    runtime._engine.hooks = telemetry
    return telemetry


def uninstrument(runtime: SagaRuntime) -> None:
    """Stop recording traces and metrics for ``runtime``."""
    runtime._engine.hooks = None
