"""PostgreSQL going away while sagas run or recover (RELIABILITY 11 and 12).

- The server is restarted while 30 sagas are mid-run (stopped, kept down until the sagas'
  writes are seen failing, started again): every saga still ends as an uninterrupted run
  does (none stranded, none ``FAILED`` because the store was down), and no step runs twice
  unless its run gave up and had to be recovered.
- The store's connections are terminated by the server while saves are in flight: the
  same.
- ``recover()`` is called while the server is down: it waits for it (or reports the
  outage), and every saga a killed worker left behind is then finished.

The restart tests drive the local cluster with ``pg_ctlcluster`` (they are skipped when the
DSN is not a local Debian-style cluster) and always leave the server running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from lexigram.events.sagas import (
    SagaConfig,
    SagaManager,
    SagaRecord,
    SagaStoreUnavailableError,
)
from tests.conftest import postgres_required
from tests.support.crash_support import (
    Reference,
    Target,
    Workers,
    calls,
    drop_pg_table,
    entries_of,
    outcome,
    pg_table,
    read_log,
    reference_run,
    sample_data,
    wait_for_log,
)
from tests.support.crash_worker import SAGA_NAME, CrashSaga, InstrumentedStore, Probe, SideEffectLog

try:
    import asyncpg

    from lexigram.events.sagas.postgres import PostgresSagaStore
except ImportError:  # pragma: no cover - the postgres extra is a dev dependency
    if postgres_required():
        raise
    pytest.skip("asyncpg is not installed (the 'postgres' extra)", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class Cluster:
    """The local PostgreSQL cluster behind the test DSN, driven with ``pg_ctlcluster``."""

    dsn: str
    version: str
    name: str

    async def _ctl(self, action: str, *options: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            *options,
            self.version,
            self.name,
            action,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        if action != "status" and proc.returncode != 0:
            raise AssertionError(f"pg_ctlcluster {action} failed: {out.decode()} {err.decode()}")
        assert proc.returncode is not None
        return proc.returncode

    async def restart(self) -> None:
        """Restart the server (fast shutdown: every connection is cut)."""
        await self._ctl("restart", "--mode", "fast")

    async def stop(self) -> None:
        """Stop the server (fast shutdown)."""
        await self._ctl("stop", "--mode", "fast")

    async def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        await self._ctl("start")
        await self.wait_connectable()

    async def running(self) -> bool:
        """Whether the server is running."""
        return await self._ctl("status") == 0

    async def ensure_running(self) -> None:
        """Start the server if it is down; return once it accepts connections."""
        if not await self.running():
            await self._ctl("start")
        await self.wait_connectable()

    async def wait_connectable(self, timeout: float = 60.0) -> None:
        """Poll until a connection succeeds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)
            else:
                await conn.close()
                return


def find_cluster(dsn: str) -> tuple[str, str] | str:
    """The ``(version, name)`` of the local cluster serving ``dsn``, or why there is none."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return "pg_ctlcluster is not installed"
    parsed = urlparse(dsn)
    if (parsed.hostname or "127.0.0.1") not in LOCAL_HOSTS:
        return f"the PostgreSQL server {parsed.hostname} is not local"
    port = parsed.port or 5432
    listing = subprocess.run(
        ["pg_lsclusters", "-h"], capture_output=True, text=True, check=False, timeout=30
    )
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == str(port):
            return fields[0], fields[1]
    return f"no local cluster listens on port {port}"


@pytest.fixture
async def cluster(pg_dsn: str) -> AsyncIterator[Cluster]:
    """The local cluster (skip without one); running again when the test ends."""
    found = find_cluster(pg_dsn)
    if isinstance(found, str):
        pytest.skip(f"cannot restart PostgreSQL: {found}")
    version, name = found
    controlled = Cluster(pg_dsn, version, name)
    await controlled.ensure_running()
    try:
        yield controlled
    finally:
        await controlled.ensure_running()


class Warnings(logging.Handler):
    """Collects the messages the library logs at WARNING and above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the message."""
        self.messages.append(record.getMessage())

    def count(self, text: str) -> int:
        """How many messages contain ``text``."""
        return sum(text in message for message in self.messages)


@contextlib.contextmanager
def library_warnings() -> Iterator[Warnings]:
    """Collect what ``lexigram.events.sagas`` logs at WARNING and above."""
    handler = Warnings()
    logger = logging.getLogger("lexigram.events.sagas")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def wait_until(condition: Callable[[], bool], *, what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@dataclass
class Worker:
    """One manager in this process, on its own store instance, logging to the shared log."""

    manager: SagaManager
    store: InstrumentedStore
    log: SideEffectLog

    @classmethod
    def make(
        cls,
        dsn: str,
        table: str,
        log: Path,
        worker: str,
        *,
        delay: float = 0.0,
        application_name: str | None = None,
    ) -> Worker:
        """A manager named ``worker`` running :class:`CrashSaga` on ``table``."""
        options: dict[str, Any] = {}
        if application_name is not None:
            options["server_settings"] = {"application_name": application_name}
        side_effects = SideEffectLog(log, worker=worker)
        store = InstrumentedStore(
            PostgresSagaStore(dsn, table=table, pool_options=options), side_effects
        )
        config = SagaConfig(lease_seconds=30.0, retry_delay_seconds=0.0)
        manager = SagaManager(store, config=config, worker_id=worker)
        probe = Probe(log=side_effects, delay=delay)
        manager.register(CrashSaga, factory=lambda: CrashSaga(probe))
        return cls(manager, store, side_effects)

    async def close(self) -> None:
        """Stop the manager, close the store and the log."""
        await self.manager.close()
        await self.store.close()
        self.log.close()


def all_entered(point: str, saga_ids: list[str]) -> Callable[[list[dict[str, Any]]], bool]:
    """A log predicate: every saga entered ``point``."""
    return lambda entries: all(point in calls(entries, saga_id) for saga_id in saga_ids)


async def settle(
    worker: Worker, rescuer: Worker, saga_ids: list[str], *, timeout: float = 120.0
) -> tuple[dict[str, SagaRecord], set[str]]:
    """Wait until every saga is terminal; recover, as a restarted worker, any run gave up on.

    The rescuer has the worker's name (a restarted incarnation takes its sagas at once), so
    it recovers only once the worker runs nothing any more. Returns the final records and
    the ids the rescuer had to resume.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    recovered: set[str] = set()
    while True:
        assert loop.time() < deadline, "the sagas did not settle"
        try:
            records = {saga_id: await worker.store.load(saga_id) for saga_id in saga_ids}
        except SagaStoreUnavailableError:
            await asyncio.sleep(0.1)
            continue
        live = [i for i, record in records.items() if record is None or not record.is_terminal]
        if not live and not rescuer.manager.running():
            return {i: r for i, r in records.items() if r is not None}, recovered
        if live and not worker.manager.running() and not rescuer.manager.running():
            with contextlib.suppress(SagaStoreUnavailableError):
                if await rescuer.manager.recover():
                    recovered.update(live)
        await asyncio.sleep(0.05)


def check_outcomes(
    log: Path,
    finals: dict[str, SagaRecord],
    references: dict[str, Reference],
    recovered: set[str],
    in_flight: dict[str, str] | None = None,
) -> None:
    """Every saga ended as an uninterrupted run did; steps ran once (twice if resumed)."""
    entries = read_log(log)
    for saga_id, reference in references.items():
        final = finals[saga_id]
        assert outcome(final) == outcome(reference.record), saga_id
        claims = len(entries_of(entries, saga_id, "claim"))
        points = calls(entries, saga_id)
        expected = list(reference.points)
        if in_flight is not None:
            index = expected.index(in_flight[saga_id])
            expected = expected[: index + 1] + expected[index:]
        if saga_id in recovered:
            # Resumed after its run gave up: the in-flight point may have run once more.
            assert set(points) == set(expected), saga_id
            assert all(points.count(p) <= expected.count(p) + 1 for p in points), points
        else:
            assert points == expected, saga_id
        # One version per write: the run's writes plus one per takeover and release (inv. 6).
        releases = sum(e["held"] for e in entries_of(entries, saga_id, "release"))
        assert final.version == reference.record.version + claims + releases, saga_id


async def test_sagas_survive_a_postgres_restart(
    pg_dsn: str, cluster: Cluster, tmp_path: Path
) -> None:
    """PostgreSQL stops while 30 sagas run and comes back: all finish, none FAILED."""
    log = tmp_path / "side-effects.log"
    table = pg_table()
    worker = Worker.make(pg_dsn, table, log, "w-restart", delay=0.4)
    rescuer = Worker.make(pg_dsn, table, log, "w-restart")
    sagas = [(f"restart-{i:02d}", sample_data(i, fail=i % 2 == 1)) for i in range(30)]
    references = {saga_id: await reference_run(saga_id, data) for saga_id, data in sagas}
    ids = [saga_id for saga_id, _ in sagas]
    try:
        for saga_id, data in sagas:
            await worker.manager.start(SAGA_NAME, data, saga_id=saga_id)
        await wait_for_log(log, all_entered("step:1", ids), what="every saga in step 1")
        with library_warnings() as seen:
            await cluster.stop()
            try:
                # Deterministic: the step-1 completions must meet the outage (the engine
                # retries them, or gives the run up to a later recover()).
                await wait_until(
                    lambda: seen.count("store unavailable") + seen.count("could not continue") >= 5,
                    what="writes failing",
                )
            finally:
                await cluster.start()
            finals, recovered = await settle(worker, rescuer, ids)
    finally:
        await cluster.ensure_running()
        await worker.close()
        await rescuer.close()
        await drop_pg_table(pg_dsn, table)
    # A run may give up while the store is down, as long as recover() then finishes it.
    check_outcomes(log, finals, references, recovered)


async def test_sagas_survive_connections_terminated_mid_write(pg_dsn: str, tmp_path: Path) -> None:
    """The server kills the store's connections while saves are in flight: all sagas finish.

    The saga rows are locked from another session while every saga is in step 1, so their
    step-1 saves wait inside the server; then every connection of the store is terminated
    (the waiting saves fail for sure, not committed) and the lock is released.
    """
    log = tmp_path / "side-effects.log"
    table = pg_table()
    application = f"lexigram_crash_{uuid.uuid4().hex[:8]}"
    worker = Worker.make(pg_dsn, table, log, "w-cut", delay=0.2, application_name=application)
    rescuer = Worker.make(pg_dsn, table, log, "w-cut")
    sagas = [(f"cut-{i:02d}", sample_data(i, fail=i % 3 == 0)) for i in range(20)]
    references = {saga_id: await reference_run(saga_id, data) for saga_id, data in sagas}
    ids = [saga_id for saga_id, _ in sagas]
    admin = await asyncpg.connect(pg_dsn)  # holds the row locks
    monitor = await asyncpg.connect(pg_dsn)  # pg_stat_activity is frozen inside a transaction
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
        "AND wait_event_type = 'Lock'"
    )
    try:
        for saga_id, data in sagas:
            await worker.manager.start(SAGA_NAME, data, saga_id=saga_id)
        with library_warnings() as seen:
            async with admin.transaction():
                await admin.execute(
                    f'SELECT 1 FROM "{table}" WHERE saga_id = ANY($1::text[]) FOR UPDATE', ids
                )
                await wait_for_log(log, all_entered("step:1", ids), what="every saga in step 1")
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while await monitor.fetchval(waiting, application) < 5:
                    assert loop.time() < deadline, "the saves never blocked on the lock"
                    await asyncio.sleep(0.02)
                killed = await monitor.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    application,
                )
            finals, recovered = await settle(worker, rescuer, ids)
    finally:
        await admin.close()
        await monitor.close()
        await worker.close()
        await rescuer.close()
        await drop_pg_table(pg_dsn, table)
    assert len(killed) >= 5
    assert seen.count("store unavailable") + seen.count("could not continue") >= 1
    check_outcomes(log, finals, references, recovered)


async def test_recover_while_postgres_is_down(
    pg_dsn: str, cluster: Cluster, tmp_path: Path
) -> None:
    """recover() started during an outage drops no saga: once the server is back, all finish.

    A killed worker left 20 sagas mid-step and mid-compensation; its restarted incarnation
    calls ``recover()`` while PostgreSQL is stopped (RELIABILITY 12).
    """
    log = tmp_path / "side-effects.log"
    target = Target("postgres", pg_dsn, pg_table())
    hang = {
        f"down-{i:02d}": ("step:2", False) if i % 2 else ("compensation:1", True) for i in range(20)
    }
    sagas = [
        (saga_id, sample_data(i, fail=fail, hang=point))
        for i, (saga_id, (point, fail)) in enumerate(hang.items())
    ]
    references = {saga_id: await reference_run(saga_id, data) for saga_id, data in sagas}
    workers = Workers(log)
    worker: Worker | None = None
    try:
        doomed = await workers.run(
            "run",
            target,
            "--worker",
            "w-dead",
            "--sagas",
            json.dumps(sagas),
            "--hang-from-data",
            "--kill-when-hanging",
            str(len(sagas)),
        )
        assert doomed.killed, doomed.describe()
        await cluster.stop()
        try:
            worker = Worker.make(pg_dsn, target.table, log, "w-dead")
            with library_warnings() as seen:
                recovering = asyncio.create_task(worker.manager.recover())
                await wait_until(
                    lambda: seen.count("recover(): store unavailable") >= 1 or recovering.done(),
                    what="recover() meeting the outage",
                )
                assert not recovering.done(), "recover() ended while the server was down"
        finally:
            await cluster.start()
        try:
            resumed = await recovering
        except SagaStoreUnavailableError:
            resumed = await worker.manager.recover()  # reported, not swallowed: retry
        assert resumed == len(sagas)
        finals = {saga_id: await worker.manager.wait(saga_id, timeout=60) for saga_id, _ in sagas}
    finally:
        await cluster.ensure_running()
        await workers.close()
        if worker is not None:
            await worker.close()
        await drop_pg_table(pg_dsn, target.table)
    check_outcomes(
        log, finals, references, set(), in_flight={i: point for i, (point, _) in hang.items()}
    )
    entries = read_log(log)
    for saga_id in hang:
        (claim,) = entries_of(entries, saga_id, "claim")
        assert claim["previous"] == "w-dead"


async def test_a_serving_worker_lives_through_a_postgres_restart(
    pg_dsn: str, cluster: Cluster
) -> None:
    """``serve()`` keeps claiming after the server restarts under it (RELIABILITY 11).

    Sagas enqueued before the restart and after it all complete; the worker's loop and its
    listener come back without anyone restarting the worker.
    """
    from lexigram.events.sagas import SagaBase, SagaContext, saga_step

    class Quick(SagaBase):
        name = "quick"

        @saga_step("one")
        async def one(self, ctx: SagaContext) -> None:
            ctx["one"] = True

        @saga_step("two")
        async def two(self, ctx: SagaContext) -> None:
            await asyncio.sleep(0.05)

    table = pg_table()
    config = SagaConfig(retry_delay_seconds=0, lease_seconds=5, shutdown_timeout=2)
    worker_store = PostgresSagaStore(pg_dsn, table=table)
    client_store = PostgresSagaStore(pg_dsn, table=table)
    worker = SagaManager(worker_store, config=config, worker_id="server")
    worker.register(Quick)
    client = SagaManager(client_store, config=config)
    client.register(Quick)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(concurrency=8, stop=stop, poll_interval=0.2))
    try:
        before = [await client.enqueue("quick", {"n": n}) for n in range(20)]
        await cluster.restart()
        await cluster.wait_connectable()
        after: list[str] = []
        for n in range(20):
            while True:
                try:
                    after.append(await client.enqueue("quick", {"n": 100 + n}))
                    break
                except SagaStoreUnavailableError:  # the client's pool meets the dead connections
                    await asyncio.sleep(0.1)
        finals = [await client.wait(saga_id, timeout=60) for saga_id in before + after]
        assert not serving.done(), "serve() ended during the restart"
    finally:
        stop.set()
        await asyncio.wait_for(serving, timeout=30)
        await cluster.ensure_running()
        await worker.close()
        await client.close()
        await worker_store.close()
        await client_store.close()
        await drop_pg_table(pg_dsn, table)
    assert {record.status.value for record in finals} == {"completed"}
