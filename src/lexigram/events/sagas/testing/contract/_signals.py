"""Conformance: durable waits (SPEC section 11, "Durable waits, signals and timers").

Signals are stored apart from the record, in arrival order, deduplicated by id, deleted
with their saga; a signal makes a saga parked for it due at once; ``wake`` makes a free
saga due; parked sagas are listed with ``waiting=True`` and their wait round-trips.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from lexigram.events.sagas import SagaRecord, SagaStatus, SagaStore
from lexigram.events.sagas.errors import SagaDataError, SagaFinishedError, SagaNotFoundError
from lexigram.events.sagas.testing.contract._records import BASE_TIME, make_record
from lexigram.events.sagas.types import SagaStepRecord, SagaStepStatus, SagaWait, WaitKind

_FAR = datetime(9999, 1, 1, tzinfo=UTC)


def parked(
    saga_id: str, *, signal: str | None = "approval", until: datetime | None = None
) -> SagaRecord:
    """A saga parked (free, ``waiting`` set, due at ``until`` or never) as the engine stores it."""
    record = make_record(saga_id, status=SagaStatus.RUNNING)
    kind: WaitKind = "signal" if signal is not None else "delay"
    record.waiting = SagaWait("approve", kind, signal, until, BASE_TIME)
    record.not_before = until if until is not None else _FAR
    record.current_step = "approve"
    return record


async def _claim(store: SagaStore, owner: str = "w1", lease_id: str = "l1") -> list[SagaRecord]:
    return await store.claim(owner, lease_id, lease_seconds=30, saga_names=["orders"])


class SignalContract:
    """``send_signal``, ``next_signal``, ``wake``, ``list(waiting=)`` and the stored wait."""

    # ------------------------------------------------------------------ storing signals

    async def test_a_signal_is_stored_and_read_back(self, store: SagaStore) -> None:
        """The first signal gets ``seq`` 1, its payload and the store's time."""
        await store.save(make_record("s-1"))
        before = datetime.now(UTC) - timedelta(minutes=5)
        assert await store.send_signal("s-1", "approval", {"ok": True, "by": "ann"}, "sig-1")
        signal = await store.next_signal("s-1", "approval", 0)
        assert signal is not None
        assert (signal.seq, signal.name, signal.signal_id) == (1, "approval", "sig-1")
        assert signal.payload == {"ok": True, "by": "ann"}
        assert signal.sent_at.tzinfo is not None
        assert signal.sent_at > before
        assert await store.next_signal("s-1", "approval", 1) is None
        assert await store.next_signal("s-1", "other", 0) is None

    async def test_signals_come_in_arrival_order_per_name(self, store: SagaStore) -> None:
        """``seq`` counts every signal of the saga; ``next_signal`` skips other names."""
        await store.save(make_record("s-1"))
        await store.send_signal("s-1", "approval", {"n": 1}, "a")
        await store.send_signal("s-1", "reminder", {"n": 2}, "b")
        await store.send_signal("s-1", "approval", {"n": 3}, "c")
        first = await store.next_signal("s-1", "approval", 0)
        assert first is not None
        assert (first.seq, first.payload) == (1, {"n": 1})
        second = await store.next_signal("s-1", "approval", first.seq)
        assert second is not None
        assert (second.seq, second.payload) == (3, {"n": 3})
        other = await store.next_signal("s-1", "reminder", 0)
        assert other is not None
        assert other.seq == 2

    async def test_a_duplicate_signal_id_is_dropped(self, store: SagaStore) -> None:
        """A second signal with the same id returns ``False`` and stores nothing."""
        await store.save(make_record("s-1"))
        assert await store.send_signal("s-1", "approval", {"n": 1}, "same") is True
        assert await store.send_signal("s-1", "approval", {"n": 2}, "same") is False
        assert await store.send_signal("s-1", "other", {"n": 3}, "same") is False
        signal = await store.next_signal("s-1", "approval", 0)
        assert signal is not None
        assert signal.payload == {"n": 1}
        assert await store.next_signal("s-1", "approval", signal.seq) is None
        assert await store.next_signal("s-1", "other", 0) is None

    async def test_signal_ids_are_per_saga(self, store: SagaStore) -> None:
        """The same id sent to two sagas is two signals."""
        await store.save(make_record("s-1"))
        await store.save(make_record("s-2"))
        assert await store.send_signal("s-1", "approval", {}, "id")
        assert await store.send_signal("s-2", "approval", {}, "id")

    async def test_a_signal_to_an_unknown_saga_is_refused(self, store: SagaStore) -> None:
        """No saga, no signal: ``SagaNotFoundError`` naming it."""
        with pytest.raises(SagaNotFoundError, match="nope"):
            await store.send_signal("nope", "approval", {}, "sig-1")

    async def test_a_signal_to_a_finished_saga_is_refused(self, store: SagaStore) -> None:
        """A terminal saga takes no signal; a duplicate of one it took is still ``False``."""
        await store.save(make_record("s-1"))
        assert await store.send_signal("s-1", "approval", {}, "early")
        record = await store.load("s-1")
        assert record is not None
        record.status = SagaStatus.COMPLETED
        record.completed_at = BASE_TIME
        await store.save(record)
        with pytest.raises(SagaFinishedError, match="completed") as caught:
            await store.send_signal("s-1", "approval", {}, "late")
        assert caught.value.status == "completed"
        assert await store.send_signal("s-1", "approval", {}, "early") is False
        first = await store.next_signal("s-1", "approval", 0)
        assert first is not None
        assert await store.next_signal("s-1", "approval", first.seq) is None

    async def test_an_unstorable_payload_is_refused(self, store: SagaStore) -> None:
        """A payload no store can hold raises ``SagaDataError`` and stores nothing."""
        await store.save(make_record("s-1"))
        with pytest.raises(SagaDataError):
            await store.send_signal("s-1", "approval", {"when": object()}, "bad")
        assert await store.next_signal("s-1", "approval", 0) is None
        assert await store.send_signal("s-1", "approval", {}, "bad") is True

    async def test_a_read_signal_is_a_copy(self, store: SagaStore) -> None:
        """Changing a payload read back changes nothing stored."""
        await store.save(make_record("s-1"))
        payload = {"items": [1, 2]}
        await store.send_signal("s-1", "approval", payload, "sig")
        payload["items"].append(3)
        first = await store.next_signal("s-1", "approval", 0)
        assert first is not None
        first.payload["items"].append(4)
        again = await store.next_signal("s-1", "approval", 0)
        assert again is not None
        assert again.payload == {"items": [1, 2]}

    async def test_concurrent_signals_get_distinct_seqs(self, store: SagaStore) -> None:
        """Signals sent at once are all stored, with ``seq`` 1..n."""
        await store.save(make_record("s-1"))
        sent = await asyncio.gather(
            *(store.send_signal("s-1", "approval", {"n": n}, f"sig-{n}") for n in range(12))
        )
        assert all(sent)
        seqs: list[int] = []
        after = 0
        while (signal := await store.next_signal("s-1", "approval", after)) is not None:
            seqs.append(signal.seq)
            after = signal.seq
        assert seqs == list(range(1, 13))

    # ------------------------------------------------------------------ the holder's writes

    async def test_a_signal_leaves_version_and_lease_alone(self, store: SagaStore) -> None:
        """The holder's next save lands after a signal; its ``not_before`` is untouched."""
        await store.save(make_record("s-1"))
        (held,) = await _claim(store)
        await store.send_signal("s-1", "approval", {}, "sig")
        stored = await store.load("s-1")
        assert stored is not None
        assert (stored.version, stored.lease_owner, stored.not_before) == (2, "w1", None)
        held.data["progress"] = 1
        await store.save(held)
        assert held.version == 3

    # ------------------------------------------------------------------ parked sagas

    async def test_a_parked_wait_round_trips(self, store: SagaStore) -> None:
        """``waiting`` and a step's ``signal_seq``/``signal_visit`` are stored as given."""
        record = parked("s-1", until=BASE_TIME + timedelta(days=3))
        record.steps["approve"] = make_step("approve", signal_seq=4, signal_visit=2)
        await store.save(record)
        loaded = await store.load("s-1")
        assert loaded is not None
        assert loaded.waiting == record.waiting
        assert loaded.not_before == BASE_TIME + timedelta(days=3)
        step = loaded.steps["approve"]
        assert (step.signal_seq, step.signal_visit) == (4, 2)
        loaded.waiting = None
        await store.save(loaded)
        again = await store.load("s-1")
        assert again is not None
        assert again.waiting is None

    async def test_a_parked_saga_is_not_claimed_before_its_time(self, store: SagaStore) -> None:
        """Parked without a signal or a due time, nothing claims it."""
        await store.save(parked("s-1"))
        assert await _claim(store) == []

    async def test_its_signal_makes_a_parked_saga_due(self, store: SagaStore) -> None:
        """The signal it waits for makes it claimable at once; version stays."""
        await store.save(parked("s-1"))
        assert await store.send_signal("s-1", "approval", {"ok": True}, "sig")
        (claimed,) = await _claim(store)
        assert claimed.saga_id == "s-1"
        assert claimed.waiting is not None
        assert claimed.waiting.signal == "approval"

    async def test_another_signal_leaves_a_parked_saga_asleep(self, store: SagaStore) -> None:
        """A signal of another name is stored, but the saga stays parked."""
        await store.save(parked("s-1"))
        assert await store.send_signal("s-1", "reminder", {}, "sig")
        assert await _claim(store) == []
        assert await store.next_signal("s-1", "reminder", 0) is not None

    async def test_a_parked_saga_becomes_due_at_its_time(self, store: SagaStore) -> None:
        """A parked saga whose ``not_before`` passed is claimable (a timeout or a timer)."""
        await store.save(parked("s-1", until=BASE_TIME))
        (claimed,) = await _claim(store)
        assert claimed.saga_id == "s-1"

    async def test_a_signal_wakes_a_waiting_worker(self, store: SagaStore) -> None:
        """Signalling a parked saga wakes ``wait_for_work``."""
        await store.save(parked("s-1"))
        waiter = asyncio.ensure_future(store.wait_for_work(30))
        await asyncio.sleep(0.05)
        await store.send_signal("s-1", "approval", {}, "sig")
        assert await asyncio.wait_for(waiter, timeout=5) is True

    async def test_a_parked_saga_asked_to_cancel_is_claimable(self, store: SagaStore) -> None:
        """Cancel applies while parked: the request makes it claimable."""
        await store.save(parked("s-1"))
        await store.request_cancel("s-1", "withdrawn")
        (claimed,) = await _claim(store)
        assert claimed.cancel_reason == "withdrawn"

    async def test_wake_makes_a_free_saga_due(self, store: SagaStore) -> None:
        """``wake`` makes a free live saga claimable; not a held, finished or unknown one."""
        await store.save(parked("s-1"))
        assert await store.wake("s-1") is True
        (claimed,) = await _claim(store)
        assert claimed.saga_id == "s-1"
        assert claimed.version == 2
        assert await store.wake("s-1") is False  # held now
        assert await store.wake("unknown") is False
        await store.save(make_record("done", status=SagaStatus.COMPLETED))
        assert await store.wake("done") is False

    async def test_wake_wakes_a_waiting_worker(self, store: SagaStore) -> None:
        """``wake`` is work for someone: it wakes ``wait_for_work``."""
        await store.save(parked("s-1"))
        waiter = asyncio.ensure_future(store.wait_for_work(30))
        await asyncio.sleep(0.05)
        assert await store.wake("s-1")
        assert await asyncio.wait_for(waiter, timeout=5) is True

    # ------------------------------------------------------------------ listing, deleting

    async def test_list_filters_parked_sagas(self, store: SagaStore) -> None:
        """``waiting=True`` lists parked sagas, ``False`` the others, ``None`` all."""
        await store.save(parked("p-1"))
        await store.save(make_record("r-1", created_at=BASE_TIME + timedelta(seconds=1)))
        waiting = await store.list(waiting=True)
        assert [r.saga_id for r in waiting] == ["p-1"]
        assert waiting[0].waiting is not None
        assert [r.saga_id for r in await store.list(waiting=False)] == ["r-1"]
        assert {r.saga_id for r in await store.list()} == {"p-1", "r-1"}
        named = await store.list(saga_name="orders", status=SagaStatus.RUNNING, waiting=True)
        assert [r.saga_id for r in named] == ["p-1"]

    async def test_deleting_a_saga_deletes_its_signals(self, store: SagaStore) -> None:
        """A saga stored again under a deleted one's id sees none of its signals."""
        await store.save(make_record("s-1"))
        await store.send_signal("s-1", "approval", {}, "sig")
        assert await store.delete("s-1")
        await store.save(make_record("s-1"))
        assert await store.next_signal("s-1", "approval", 0) is None
        assert await store.send_signal("s-1", "approval", {}, "sig") is True

    async def test_cleanup_deletes_finished_sagas_signals(self, store: SagaStore) -> None:
        """``delete_terminal`` removes the signals of the sagas it deletes."""
        record = make_record("s-1")
        await store.save(record)
        await store.send_signal("s-1", "approval", {}, "sig")
        record.status = SagaStatus.COMPLETED
        record.completed_at = BASE_TIME
        await store.save(record)
        assert await store.delete_terminal(before=BASE_TIME + timedelta(days=1)) == 1
        await store.save(make_record("s-1"))
        assert await store.next_signal("s-1", "approval", 0) is None


def make_step(name: str, *, signal_seq: int, signal_visit: int) -> SagaStepRecord:
    """A running step record that took signal ``signal_seq`` in visit ``signal_visit``."""
    return SagaStepRecord(
        name,
        status=SagaStepStatus.RUNNING,
        started_at=BASE_TIME,
        visits=signal_visit,
        signal_seq=signal_seq,
        signal_visit=signal_visit,
    )
