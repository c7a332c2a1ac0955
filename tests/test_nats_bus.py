"""``NatsJetStreamBus`` on a real NATS JetStream server (skipped without one).

The contract (:class:`tests.support.broker.BusContract`) runs on the shared server
(``LEXIGRAM_TEST_NATS_URL``); the outage test runs a ``nats-server`` of its own.
``LEXIGRAM_REQUIRE_NATS=1`` turns every skip into a failure.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lexigram.events import DomainEvent
from tests.support.broker import (
    WAIT,
    BrokerBus,
    BusContract,
    NatsKit,
    ParcelBooked,
    Recorder,
    eventually,
    free_port,
    nats_driver_problem,
    nats_reachable,
    nats_url,
    parcel,
    private_nats,
    publish_all,
    skip_or_fail,
    started,
)


@pytest.fixture(scope="session")
def nats_driver() -> None:
    """Skip (or fail under LEXIGRAM_REQUIRE_NATS=1) without the driver; import it now."""
    skip_or_fail("NATS", nats_driver_problem())


@pytest.fixture(scope="session")
def shared_nats() -> str:
    """The shared server's URL; skip (or fail) when it does not answer."""
    url = nats_url()
    skip_or_fail("NATS", nats_reachable(url))
    return url


@pytest.fixture
async def kit(shared_nats: str) -> AsyncIterator[NatsKit]:
    """A unique stream on the shared server, deleted afterwards."""
    made = NatsKit(shared_nats)
    try:
        yield made
    finally:
        await made.cleanup()


def test_importing_without_the_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nats-py, the import error says which extra to install."""
    monkeypatch.setitem(sys.modules, "nats", None)
    monkeypatch.delitem(sys.modules, "lexigram.events.nats", raising=False)
    with pytest.raises(ImportError, match=r"lexigram-events\[nats\]"):
        importlib.import_module("lexigram.events.nats")


@pytest.mark.usefixtures("nats_driver")
async def test_start_without_a_server_raises_connection_error() -> None:
    """No server answers within connect_timeout: start() raises ConnectionError."""
    from lexigram.events.nats import NatsJetStreamBus

    bus = NatsJetStreamBus(f"nats://127.0.0.1:{free_port()}", connect_timeout=0.3)
    with pytest.raises(ConnectionError, match="cannot reach NATS"):
        await bus.start()
    assert (await bus.publish(parcel("p-1"))).is_err()


class TestNatsJetStreamBus(BusContract):
    """The bus contract on NATS JetStream."""


async def test_a_republished_event_is_stored_once(kit: NatsKit) -> None:
    """Nats-Msg-Id is the event id: JetStream drops a second publish of one event."""
    recorder = Recorder()
    event = parcel("p-1")
    async with started(kit.bus()) as bus:
        bus.subscribe(type(event), recorder)
        await publish_all(bus, [event, event])
        await eventually(lambda: recorder.ids() == [event.event_id])
        await publish_all(bus, [parcel("p-2")])
        await eventually(lambda: len(recorder.events) == 2)
    assert recorder.ids()[0] == event.event_id
    assert recorder.attempts[event.event_id] == 1


async def test_subjects_and_names(kit: NatsKit) -> None:
    """Events go to <prefix>.<EventType>; dead letters to <prefix>.dead."""
    bus = kit.bus()
    assert bus.subject_for(type(parcel("p"))) == f"{kit.name}.ParcelBooked"  # type: ignore[attr-defined]
    assert bus.dead_letter_subject == f"{kit.name}.dead"  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.usefixtures("nats_driver")
async def test_a_server_restart_loses_nothing(tmp_path: Path) -> None:
    """Publish returns Err while NATS is down; a message in hand then comes back after."""
    async with private_nats(tmp_path) as server:
        kit = NatsKit(f"nats://127.0.0.1:{server.port}")
        recorder = Recorder()
        gate = asyncio.Event()

        async def held(event: ParcelBooked) -> None:
            await gate.wait()
            await recorder(event)

        options: dict[str, Any] = {"reconnect_time_wait": 0.1}
        async with started(kit.bus(connect_options=options, publish_timeout=1.0)) as bus:
            bus.subscribe(ParcelBooked, held)
            before = [parcel(f"before-{n}") for n in range(5)]
            gate.set()
            await publish_all(bus, before[:4])
            await eventually(lambda: len(recorder.events) == 4)
            gate.clear()
            await publish_all(bus, before[4:])
            await asyncio.sleep(0.3)  # the last one is in hand, unacknowledged

            await server.stop()
            assert (await bus.publish(parcel("lost"))).is_err()
            gate.set()  # handled, but its ack cannot reach the server
            await server.start()

            after = [parcel(f"after-{n}") for n in range(5)]
            await _publish_once_back(bus, after[0])
            await publish_all(bus, after[1:])
            await eventually(lambda: len(set(recorder.ids())) == 10)
            in_hand = before[4].event_id
            await eventually(lambda: recorder.attempts[in_hand] == 2, what="redelivered")
        assert set(recorder.ids()) == {event.event_id for event in before + after}


async def _publish_once_back(bus: BrokerBus, event: DomainEvent) -> None:
    """Publish ``event`` as soon as the bus has reconnected."""
    async with asyncio.timeout(WAIT):
        while (await bus.publish(event)).is_err():
            await asyncio.sleep(0.05)
