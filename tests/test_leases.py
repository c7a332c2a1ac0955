"""The lease policy: one length, one way to stamp and clear leases (SPEC section 7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lexigram.events.sagas._leases import LeasePolicy
from lexigram.events.sagas.types import SagaRecord

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_expiry_is_now_plus_the_lease() -> None:
    """A lease taken at ``now`` ends ``seconds`` later."""
    assert LeasePolicy(30).expiry(NOW) == NOW + timedelta(seconds=30)


def test_three_renewals_fit_in_one_lease() -> None:
    """The heartbeat renews every third of the lease."""
    assert LeasePolicy(30).heartbeat_interval == 10


def test_hold_stamps_owner_lease_and_expiry() -> None:
    """``hold`` marks a record as held by one worker incarnation until the expiry."""
    record = SagaRecord("s", "n")
    LeasePolicy(12).hold(record, "w-1", "lease-1", NOW)
    assert (record.lease_owner, record.lease_id) == ("w-1", "lease-1")
    assert record.lease_expires_at == NOW + timedelta(seconds=12)


def test_clear_drops_the_lease() -> None:
    """``clear`` leaves a record held by no one."""
    record = SagaRecord("s", "n")
    LeasePolicy(12).hold(record, "w-1", "lease-1", NOW)
    LeasePolicy.clear(record)
    assert (record.lease_owner, record.lease_id, record.lease_expires_at) == (None, None, None)
