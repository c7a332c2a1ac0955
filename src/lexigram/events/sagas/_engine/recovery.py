"""Taking stored sagas over: one by id (``resume``/``cancel``), or every claimable one.

A saga resumes only under a definition that still matches its recorded progress
(``flow.check_resumable``); otherwise it is left untouched and reported as a
:class:`RecoveryProblem`. Claims retried while the store is down use the shared backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from lexigram.events.sagas._engine.backoff import CLAIM_RETRY
from lexigram.events.sagas._engine.engine import Engine
from lexigram.events.sagas._engine.flow import Flow, align_cursor, check_resumable
from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas.errors import (
    SagaDefinitionError,
    SagaError,
    SagaLeaseError,
    SagaNotFoundError,
    SagaStoreError,
    SagaStoreUnavailableError,
)
from lexigram.events.sagas.types import SagaRecord, SagaStatus

__all__ = ["CLAIM_BATCH", "Recovery", "RecoveryProblem"]

logger = logging.getLogger(__name__)

CLAIM_BATCH = 200
_CLAIM_TRIES = 6


@dataclass(frozen=True, slots=True)
class RecoveryProblem:
    """A saga ``recover()`` found but could not resume (it was left untouched).

    Attributes:
        saga_id: The saga.
        saga_name: Its recorded name.
        error: Why: ``SagaNotFoundError`` when no saga of that name is registered,
            ``SagaDefinitionError`` when the definition no longer matches its progress,
            ``CorruptRecordError`` when its row cannot be read.
    """

    saga_id: str
    saga_name: str
    error: SagaError

    @property
    def reason(self) -> str:
        """The error's message."""
        return str(self.error)


class Recovery:
    """Claims stored sagas for one engine, checking each against its registered flow."""

    def __init__(
        self, engine: Engine, flows: Mapping[str, Flow], starting: Collection[str]
    ) -> None:
        self._engine = engine
        self._flows = flows
        self._starting = starting  # ids a start() of this worker is storing right now
        self._taking: set[str] = set()  # ids take_over() is claiming right now
        # Set when a claim failed in a way that may have landed (its reply was lost):
        # only then can a saga be stranded under this worker's own lease.
        self._uncertain = False

    def note_lost_claim(self) -> None:
        """Say that a claim made outside (``serve()``) failed in a way that may have landed.

        The next :meth:`recover` then looks for sagas stranded under this worker's lease.
        """
        self._uncertain = True

    def _stranded(self, record: SagaRecord) -> bool:
        """Whether ``record`` is held under this worker's own lease but runs nowhere.

        That happens when a claim committed but its reply was lost: the claim is retried,
        yet a worker never claims what it holds itself, so without this check the saga
        would wait for a restart.
        """
        engine = self._engine
        saga_id = record.saga_id
        return (
            not record.is_terminal
            and record.lease_owner == engine.worker_id
            and record.lease_id == engine.lease_id
            and saga_id not in engine.runs
            and saga_id not in self._starting
            and saga_id not in self._taking
        )

    def resumable(self, record: SagaRecord) -> Flow:
        """Return the flow ``record`` can resume under, or raise why it cannot.

        Raises:
            SagaNotFoundError: its name is not registered here.
            SagaDefinitionError: the definition no longer matches its progress.
        """
        flow = self._flows.get(record.saga_name)
        if flow is None:
            raise SagaNotFoundError.for_name(record.saga_name)
        problem = check_resumable(flow, record)
        if problem is not None:
            raise SagaDefinitionError(
                f"saga '{record.saga_id}' cannot resume: {problem}",
                saga_name=record.saga_name,
                saga_id=record.saga_id,
            )
        return flow

    async def take_over(self, record: SagaRecord) -> tuple[SagaRecord, Flow]:
        """Check, claim and prepare one stored saga for a run in this worker.

        Raises:
            SagaLeaseError: another live worker holds it.
            SagaNotFoundError, SagaDefinitionError: see :meth:`resumable`.
        """
        self.resumable(record)  # refuse before touching the stored saga
        engine = self._engine
        self._taking.add(record.saga_id)
        try:
            claimed = await engine.store.claim(
                engine.worker_id,
                engine.lease_id,
                lease_seconds=engine.lease.seconds,
                saga_names=[record.saga_name],
                limit=1,
                saga_id=record.saga_id,
            )
        except SagaStoreUnavailableError:
            self._uncertain = True
            raise
        finally:
            self._taking.discard(record.saga_id)
        if not claimed and self._uncertain:
            fresh = await engine.store.load(record.saga_id)
            if fresh is not None and self._stranded(fresh):
                claimed = [fresh]  # an earlier claim of ours landed but its reply was lost
        if not claimed:
            raise SagaLeaseError(
                f"saga '{record.saga_id}' is held by worker '{record.lease_owner}'",
                saga_id=record.saga_id,
                owner=record.lease_owner,
            )
        try:
            flow = self.resumable(claimed[0])  # it may have moved on since it was loaded
        except SagaError:
            await engine.store.release(record.saga_id, engine.worker_id, engine.lease_id)
            raise
        align_cursor(flow, claimed[0])
        return claimed[0], flow

    async def recover(self) -> tuple[int, list[RecoveryProblem]]:
        """Claim and launch every claimable saga of a registered name.

        Returns:
            How many sagas were launched, and what was left untouched (and why).
        """
        engine = self._engine
        names = list(self._flows)
        problems: list[RecoveryProblem] = []
        refused: list[SagaRecord] = []
        resumed = 0
        while names:
            batch = await self._claim_batch(names)
            for record in batch:
                try:
                    flow = self.resumable(record)
                except SagaDefinitionError as error:
                    problems.append(RecoveryProblem(record.saga_id, record.saga_name, error))
                    refused.append(record)
                    continue
                align_cursor(flow, record)
                engine.launch(record, flow)
                resumed += 1
            if len(batch) < CLAIM_BATCH:
                break
        for record in refused:  # released only now, so the loop above cannot claim them again
            await engine.store.release(record.saga_id, engine.worker_id, engine.lease_id)
        unknown, stranded = await self._survey()
        problems += unknown
        resumed += await self._launch_stranded(stranded, problems)
        for problem in problems:
            logger.warning(
                "recover(): saga %s (%s) left untouched: %s",
                problem.saga_id,
                problem.saga_name,
                problem.reason,
                extra=log_fields(
                    saga_id=problem.saga_id,
                    saga_name=problem.saga_name,
                    worker_id=engine.worker_id,
                ),
            )
        return resumed, problems

    async def adopt_stranded(self, problems: list[RecoveryProblem]) -> int:
        """Launch the sagas a lost claim left under this worker's lease; return how many.

        Only after :meth:`note_lost_claim` (else nothing can be stranded). The sagas it
        cannot resume go to ``problems`` and are released.
        """
        if not self._uncertain:
            return 0
        _, stranded = await self._survey()
        return await self._launch_stranded(stranded, problems)

    async def _launch_stranded(
        self, candidates: list[SagaRecord], problems: list[RecoveryProblem]
    ) -> int:
        engine = self._engine
        launched = 0
        for record in await self._still_stranded(candidates):
            try:
                flow = self.resumable(record)
            except SagaError as error:
                problems.append(RecoveryProblem(record.saga_id, record.saga_name, error))
                await engine.store.release(record.saga_id, engine.worker_id, engine.lease_id)
                continue
            align_cursor(flow, record)
            engine.launch(record, flow)
            launched += 1
        return launched

    async def _still_stranded(self, candidates: list[SagaRecord]) -> list[SagaRecord]:
        """Of the sagas a listing showed under this worker's lease, those really stranded.

        Only after a claim whose reply was lost; each is read again, since a listing may be
        older than a run that finished (and cleared its lease) meanwhile.
        """
        if not candidates or not self._uncertain:
            return []
        self._uncertain = False
        stranded = []
        for candidate in candidates:
            fresh = await self._engine.store.load(candidate.saga_id)
            if fresh is not None and self._stranded(fresh):
                stranded.append(fresh)
        return stranded

    async def _claim_batch(self, names: list[str]) -> list[SagaRecord]:
        """Claim a batch, retrying while the store is unreachable (a few times)."""
        engine = self._engine
        for attempt in range(1, _CLAIM_TRIES + 1):
            try:
                return await engine.store.claim(
                    engine.worker_id,
                    engine.lease_id,
                    lease_seconds=engine.lease.seconds,
                    saga_names=names,
                    limit=CLAIM_BATCH,
                )
            except SagaStoreUnavailableError:
                self._uncertain = True  # the claim may have landed
                if attempt == _CLAIM_TRIES:
                    raise
                delay = CLAIM_RETRY.delay(attempt, engine.rand)
                logger.warning(
                    "recover(): store unavailable; retrying in %.1fs",
                    delay,
                    extra=log_fields(worker_id=engine.worker_id),
                )
                await engine.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _survey(self) -> tuple[list[RecoveryProblem], list[SagaRecord]]:
        """Look over unfinished sagas (best effort): what to report, what to resume.

        Returns sagas of names not registered here (to report) and sagas stranded under
        this worker's own lease (to resume).
        """
        found: list[RecoveryProblem] = []
        stranded: list[SagaRecord] = []
        for status in (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING):
            try:
                records = await self._engine.store.list(status=status, limit=1000)
            except SagaStoreError:
                logger.warning(
                    "recover(): could not list %s sagas to report",
                    status,
                    exc_info=True,
                    extra=log_fields(worker_id=self._engine.worker_id),
                )
                continue
            for record in records:
                if self._stranded(record):
                    stranded.append(record)
                elif record.saga_name not in self._flows:
                    found.append(
                        RecoveryProblem(
                            record.saga_id,
                            record.saga_name,
                            SagaNotFoundError.for_name(record.saga_name),
                        )
                    )
        return found, stranded
