"""The lease policy, in one place: how long a lease lasts and when a saga is claimable.

A worker holds each saga it runs under a lease; the holder stamps the expiry on the record
and that stamp decides (``SagaConfig.lease_seconds``). Stores apply :func:`is_claimable`
(PostgreSQL applies the same rule in SQL, with the server's clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from lexigram.events.sagas.types import TERMINAL_SAGA_STATUSES, SagaRecord, SagaStatus

__all__ = ["LeasePolicy", "is_claimable"]


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    """How long a lease lasts; stamps and clears leases on records."""

    seconds: float
    length: timedelta = field(init=False, repr=False, compare=False)
    """The lease's length as a ``timedelta`` (made once: every write stamps an expiry)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "length", timedelta(seconds=self.seconds))

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between two renewals: three renewals fit in one lease."""
        return self.seconds / 3

    def expiry(self, now: datetime) -> datetime:
        """When a lease taken or renewed at ``now`` ends."""
        return now + self.length

    def hold(self, record: SagaRecord, owner: str, lease_id: str, now: datetime) -> None:
        """Stamp ``record`` as held by ``owner``/``lease_id`` from ``now``."""
        record.lease_owner = owner
        record.lease_id = lease_id
        record.lease_expires_at = self.expiry(now)

    @staticmethod
    def clear(record: SagaRecord) -> None:
        """Remove the lease from ``record`` (a terminal saga, or a released one)."""
        record.lease_owner = record.lease_id = record.lease_expires_at = None


def is_claimable(
    status: SagaStatus,
    lease_owner: str | None,
    lease_id: str | None,
    lease_expires_at: datetime | None,
    *,
    owner: str,
    claimer_lease_id: str,
    now: datetime,
    not_before: datetime | None = None,
    cancel_requested: bool = False,
) -> bool:
    """The claim rule of the store contract, as a pure function (for stores and tests).

    Claimable: not terminal, not held under the claimer's own ``lease_id`` (a worker never
    takes over its own running sagas, even when their lease ran late), and either free
    (and due: ``not_before`` is unset or past, or it was asked to cancel, which must not
    wait for its time), expired, or held by the claimer's name under another ``lease_id``
    (an earlier incarnation of a restarted worker).
    """
    if status in TERMINAL_SAGA_STATUSES or lease_id == claimer_lease_id:
        return False
    if lease_owner is None:
        return not_before is None or not_before <= now or cancel_requested
    if lease_expires_at is None or lease_expires_at <= now:
        return True
    return lease_owner == owner and lease_id != claimer_lease_id
