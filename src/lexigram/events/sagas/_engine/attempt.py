"""One attempt of a step or compensation: await the user code, classify what came of it.

This is the hot path: the user's coroutine is awaited right here (no task, no wrapper
coroutine), registered on the run so that ``SagaRun.stop`` can interrupt it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lexigram.events.sagas._engine.flow import RetryPolicy, StepCallable
from lexigram.events.sagas._engine.rules import AttemptOutcome, describe_error, interpret_result
from lexigram.events.sagas._engine.run import Interrupted, SagaRun, StopReason
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.errors import SagaTimeoutError

__all__ = ["attempt_once"]


async def attempt_once(
    run: SagaRun,
    func: StepCallable,
    ctx: SagaContext,
    policy: RetryPolicy,
    task: asyncio.Task[Any],
    non_retryable: tuple[type[BaseException], ...],
    *,
    forward: bool,
) -> AttemptOutcome:
    """Run one attempt of ``func`` (a step, or a compensation with ``forward=False``).

    Raises:
        Interrupted: the run was stopped while the user code ran (the attempt does not
            count).
    """
    run.checkpoint(forward=forward)
    timeout = policy.timeout
    in_user_code = run.in_user_code
    in_user_code[task] = forward
    try:
        if timeout is None:
            raw = await func(run.instance, ctx)
        else:
            async with asyncio.timeout(timeout):
                try:
                    raw = await func(run.instance, ctx)
                except TimeoutError as own:  # raised by the step, not by our timeout
                    raise _StepTimeoutError(describe_error(own)) from own
    except asyncio.CancelledError:
        if run.owns_cancel(task):
            raise Interrupted(run.stop_reason or StopReason.SHUTDOWN) from None
        raise
    except _StepTimeoutError as exc:
        return AttemptOutcome.failure(str(exc), "step_error", retryable=True)
    except TimeoutError as exc:
        if timeout is None:  # the step's own TimeoutError: a transient failure
            return AttemptOutcome.failure(describe_error(exc), "step_error", retryable=True)
        expired = SagaTimeoutError(
            f"step '{ctx.step_name}' attempt timed out after {timeout:g}s",
            saga_id=run.record.saga_id,
            step_name=ctx.step_name,
            timeout=timeout,
        )
        return AttemptOutcome.failure(describe_error(expired), "timeout", retryable=True)
    except Exception as exc:
        retryable = not isinstance(exc, non_retryable)
        return AttemptOutcome.failure(describe_error(exc), "step_error", retryable=retryable)
    finally:
        del in_user_code[task]
    if run.cancelled_tasks and task in run.cancelled_tasks:
        await run.absorb_late_cancel(task)
    return interpret_result(raw, ctx.step_name or "")


class _StepTimeoutError(TimeoutError):
    """A ``TimeoutError`` raised by the step itself (not by its attempt timeout)."""
