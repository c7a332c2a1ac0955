"""What the store conformance suite stores, and the shapes of the fixtures it needs.

Record builders (:func:`make_record`, :func:`full_record`), the comparison that ignores
the version a store bumps (:func:`same_fields`), the suite's fixed time (:data:`BASE_TIME`),
and the types of the ``expire_leases`` and ``corrupt_row`` fixtures a store's test module
provides.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from hypothesis import strategies as st

from lexigram.events.sagas import SagaRecord, SagaStatus, SagaStepRecord, SagaStepStatus, SagaStore

ExpireLeases = Callable[[SagaStore, list[str]], Awaitable[None]]

Fault = Literal["garbage", "foreign_name", "foreign_id"]
"""How a row made by the ``corrupt_row`` fixture is unreadable.

- ``"garbage"``: its document is not a saga record (not JSON, or JSON of another shape);
- ``"foreign_name"``: a valid document of a saga named ``"other"`` in a row whose indexed
  name is ``"orders"`` (a row edited by hand, or copied from another table);
- ``"foreign_id"``: a valid document of another saga id than the row's key.

A store that keeps no separate columns or key (the in-memory store) cannot hold the last
two; its fixture stores a ``"garbage"`` row for them.
"""


class CorruptRow(Protocol):
    """The ``corrupt_row`` fixture: store an unreadable row under ``saga_id``.

    The row has the saga name ``"orders"``, status ``running``, no lease, and
    ``created_at`` :data:`BASE_TIME`, in whatever columns the store filters and orders by.
    """

    def __call__(
        self, store: SagaStore, saga_id: str, *, fault: Fault = "garbage"
    ) -> Awaitable[None]:
        """Store the row."""
        ...


FAULTS: tuple[Fault, ...] = ("garbage", "foreign_name", "foreign_id")

BASE_TIME = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def make_record(
    saga_id: str,
    *,
    saga_name: str = "orders",
    status: SagaStatus = SagaStatus.RUNNING,
    created_at: datetime = BASE_TIME,
    owner: str | None = None,
    lease_id: str | None = None,
    lease_expires_at: datetime | None = None,
    data: dict[str, Any] | None = None,
) -> SagaRecord:
    """Build a record as the engine would store it."""
    return SagaRecord(
        saga_id=saga_id,
        saga_name=saga_name,
        status=status,
        data={"order_id": saga_id} if data is None else data,
        created_at=created_at,
        updated_at=created_at,
        completed_at=created_at if status.is_terminal else None,
        metadata={"correlation_id": f"corr-{saga_id}"},
        deadline_at=created_at + timedelta(minutes=5),
        current_step="reserve",
        lease_owner=owner,
        lease_id=lease_id,
        lease_expires_at=lease_expires_at,
    )


def full_record(saga_id: str) -> SagaRecord:
    """A record with every field set, for round-trip checks."""
    record = make_record(saga_id, data={"text": "naïve ✓ \u0000 \U0001f600", "n": 2**65})
    record.steps["reserve"] = SagaStepRecord(
        step_name="reserve",
        status=SagaStepStatus.COMPENSATED,
        started_at=BASE_TIME,
        completed_at=BASE_TIME + timedelta(seconds=1),
        output={"reservation": "r-1", "items": [1, 2.5, None, True]},
        error=None,
        attempts=2,
        attempt_errors=["OSError: flaky"],
        compensation_attempts=1,
        compensation_error=None,
        compensated_at=BASE_TIME + timedelta(seconds=3),
        completion_seq=1,
        visits=1,
        parent=None,
    )
    record.steps["charge"] = SagaStepRecord(
        step_name="charge",
        status=SagaStepStatus.FAILED,
        started_at=BASE_TIME + timedelta(seconds=1),
        completed_at=BASE_TIME + timedelta(seconds=2),
        error="declined",
        attempts=1,
        attempt_errors=["declined"],
        visits=1,
        parent="payments",
    )
    record.status = SagaStatus.COMPENSATING
    record.error = "step 'charge' failed: declined"
    record.transitions = 2
    record.previous_owner = "w0"
    record.recovery_attempts = 3
    record.not_before = BASE_TIME + timedelta(seconds=7)
    record.cancel_requested_at = BASE_TIME + timedelta(seconds=8)  # an insert stores it
    record.cancel_reason = "customer asked ✓"
    record.redrives = 2
    return record


def same_fields(a: SagaRecord, b: SagaRecord) -> bool:
    """Compare every field but ``version`` (which the store bumps)."""
    left = {name: getattr(a, name) for name in SagaRecord.__slots__ if name != "version"}
    right = {name: getattr(b, name) for name in SagaRecord.__slots__ if name != "version"}
    return left == right
