"""``RedisStreamsBus`` on a real Redis server (skipped without one).

The contract (:class:`tests.support.broker.BusContract`) runs on the shared server
(``LEXIGRAM_TEST_REDIS_URL``); the restart test runs a ``redis-server`` of its own.
``LEXIGRAM_REQUIRE_REDIS=1`` turns every skip into a failure.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lexigram.events._consumer import DeliveryPolicy
from tests.support.broker import (
    BusContract,
    ParcelBooked,
    Recorder,
    RedisKit,
    eventually,
    free_port,
    is_zero,
    parcel,
    private_redis,
    publish_all,
    redis_driver_problem,
    redis_reachable,
    redis_url,
    skip_or_fail,
    started,
)


@pytest.fixture(scope="session")
def redis_driver() -> None:
    """Skip (or fail under LEXIGRAM_REQUIRE_REDIS=1) without the driver; import it now."""
    skip_or_fail("Redis", redis_driver_problem())


@pytest.fixture(scope="session")
def shared_redis() -> str:
    """The shared server's URL; skip (or fail) when it does not answer."""
    url = redis_url()
    skip_or_fail("Redis", redis_reachable(url))
    return url


@pytest.fixture
async def kit(shared_redis: str) -> AsyncIterator[RedisKit]:
    """A unique stream on the shared server, deleted afterwards."""
    made = RedisKit(shared_redis)
    try:
        yield made
    finally:
        await made.cleanup()


def test_importing_without_the_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py, the import error says which extra to install."""
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "lexigram.events.redis", raising=False)
    with pytest.raises(ImportError, match=r"lexigram-events\[redis\]"):
        importlib.import_module("lexigram.events.redis")


@pytest.mark.usefixtures("redis_driver")
async def test_start_without_a_server_raises_connection_error() -> None:
    """Redis does not answer: start() raises ConnectionError."""
    from lexigram.events.redis import RedisStreamsBus

    bus = RedisStreamsBus(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.3)
    with pytest.raises(ConnectionError, match="cannot reach Redis"):
        await bus.start()
    assert (await bus.publish(parcel("p-1"))).is_err()


class TestRedisStreamsBus(BusContract):
    """The bus contract on Redis Streams."""


async def test_names(kit: RedisKit) -> None:
    """The dead-letter stream is <stream>.dead unless named."""
    bus = kit.bus()
    assert bus.dead_letter_stream == f"{kit.name}.dead"  # type: ignore[attr-defined]


async def test_killed_connections_lose_nothing(kit: RedisKit) -> None:
    """CLIENT KILL of every connection mid-run: the bus reconnects, every event arrives."""
    import redis.asyncio

    recorder = Recorder(delay=0.01)
    sent = [parcel(f"p-{n}") for n in range(20)]
    admin = redis.asyncio.Redis.from_url(kit.url)
    try:
        async with started(kit.bus()) as bus:
            bus.subscribe(type(sent[0]), recorder)
            await publish_all(bus, sent[:10])
            await eventually(lambda: len(recorder.events) >= 3)
            await admin.client_kill_filter(_type="normal", skipme=True)
            await publish_all(bus, sent[10:])
            await eventually(lambda: len(set(recorder.ids())) == 20)
    finally:
        await admin.aclose()
    assert set(recorder.ids()) == {event.event_id for event in sent}


async def test_a_consumer_restarted_under_its_name_takes_its_entries_back(kit: RedisKit) -> None:
    """A stable consumer name re-reads its pending entries at once, not after the timeout."""
    patient = DeliveryPolicy(visibility_timeout=60.0)
    recorder = Recorder()
    event = parcel("p-1")
    async with started(kit.bus(consumer="worker-1", policy=patient)) as bus:
        await publish_all(bus, [event])
        assert await kit.steal("svc", consumer="worker-1") == 1  # then it died
    async with started(kit.bus(consumer="worker-1", policy=patient)) as bus:
        bus.subscribe(ParcelBooked, recorder)
        await eventually(lambda: recorder.ids() == [event.event_id], timeout=5.0)
        await eventually(lambda: is_zero(kit.unsettled("svc")), what="acknowledged")


@pytest.mark.slow
@pytest.mark.usefixtures("redis_driver")
async def test_a_server_restart_loses_nothing(tmp_path: Path) -> None:
    """Publish returns Err while Redis is down; an entry in hand then comes back after."""
    async with private_redis(tmp_path) as server:
        kit = RedisKit(f"redis://127.0.0.1:{server.port}/0")
        recorder = Recorder()
        gate = asyncio.Event()

        async def held(event: ParcelBooked) -> None:
            await gate.wait()
            await recorder(event)

        async with started(kit.bus()) as bus:
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
            gate.set()  # handled, but its XACK fails: it stays pending in the AOF
            await asyncio.sleep(1.5)  # past the client's own retries
            await server.start()

            after = [parcel(f"after-{n}") for n in range(5)]
            await publish_all(bus, after)
            await eventually(lambda: len(set(recorder.ids())) == 10)
            in_hand = before[4].event_id
            await eventually(lambda: recorder.attempts[in_hand] == 2, what="redelivered")
        assert set(recorder.ids()) == {event.event_id for event in before + after}
