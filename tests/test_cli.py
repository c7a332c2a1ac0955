"""``lexigram-sagas``, run as a subprocess against SQLite and PostgreSQL stores.

The sagas are made in the test process with the application of
``tests/support/cli_app.py`` on the same store: completed, compensated, failed, parked
(``wait_for``), running (stopped in a step) and pending (enqueued). The read-only world
is seeded once per store kind; the acting commands work on a second store ("scratch")
seeded with sagas of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from lexigram.events.sagas import SagaConfig, SagaManager, SagaStatus
from lexigram.events.sagas.ops.urls import open_store
from tests.support import cli_app

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.support.cli_app:manager"
FACTORY = "tests.support.cli_app:make_manager"
PROG = "lexigram-sagas"
_FAST = SagaConfig(max_retries_per_step=0, retry_delay_seconds=0, shutdown_timeout=0.05)


# --------------------------------------------------------------------------- running it


def environment(**extra: str) -> dict[str, str]:
    """The test's environment without the command's own variables (and wide output)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("LEXIGRAM_SAGAS_") and key != "PYTHONASYNCIODEBUG"
    }
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    stdin: str | None = None,
    code: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m lexigram.events.sagas ARGS`` (or ``python -c CODE ARGS``)."""
    command = (
        [sys.executable, "-c", code] if code else [sys.executable, "-m", "lexigram.events.sagas"]
    )
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=environment() if env is None else env,
        cwd=cwd,
        input=stdin,
        timeout=30,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """Assert the command succeeded quietly; return its stdout."""
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """Assert the command succeeded; return its stdout parsed as one JSON document."""
    return json.loads(ok(result))


def failed(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Assert the command failed with ``code`` and one error line naming ``fragments``."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{PROG}: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# --------------------------------------------------------------------------- the stores


@dataclass(frozen=True)
class World:
    """Two seeded stores of one kind: ``url`` read-only, ``scratch`` for acting commands."""

    kind: str
    url: str
    scratch: str


def with_table(dsn: str, table: str) -> str:
    """``dsn`` with ``?table=table``."""
    parts = urlsplit(dsn)
    query = [*parse_qsl(parts.query), ("table", table)]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def wait_until(manager: SagaManager, saga_id: str, check: Any) -> None:
    for _ in range(500):
        record = await manager.get(saga_id)
        if record is not None and check(record):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"saga {saga_id} never got there")


async def seed_world(url: str) -> None:
    """ord-done, ord-comp (cart-7), ord-fail, exp-wait (parked), ord-run, ord-queued."""
    store = open_store(url)
    manager = cli_app.make_manager(store, _FAST)
    try:
        await manager.execute("order", {}, "ord-done", correlation_id="cart-7")
        await manager.execute("order", {"fail_at": "charge"}, "ord-comp", correlation_id="cart-7")
        await manager.execute("order", {"fail_at": "charge", "undo_fails": True}, "ord-fail")
        await manager.start("expense", {"amount": 30}, "exp-wait")
        await manager.start("order", {"hold": 3600}, "ord-run")
        await manager.enqueue("order", {}, "ord-queued")
        await wait_until(manager, "exp-wait", lambda r: r.waiting is not None)
        await wait_until(manager, "ord-run", lambda r: r.current_step == "ship")
    finally:
        await manager.close()  # stops ord-run in its step: it stays running, unleased
        await store.close()


async def seed_scratch(url: str) -> None:
    """exp-cancel, exp-signal (parked), ord-retry (failed), old-done (48 hours old), new-done."""
    store = open_store(url)
    old = SagaManager(store, config=_FAST, clock=lambda: datetime.now(UTC) - timedelta(hours=48))
    old.register(cli_app.OrderSaga)
    manager = cli_app.make_manager(store, _FAST)
    try:
        await old.execute("order", {}, "old-done")
        await manager.execute("order", {}, "new-done")
        await manager.execute("order", {"fail_at": "charge", "undo_fails": True}, "ord-retry")
        for saga_id in ("exp-cancel", "exp-signal"):
            await manager.start("expense", {"amount": 5}, saga_id)
            await wait_until(manager, saga_id, lambda r: r.waiting is not None)
    finally:
        await old.close()
        await manager.close()
        await store.close()


async def drop_tables(dsn: str, tables: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for table in tables:
            await conn.execute(
                f'DROP TABLE IF EXISTS "{table}_signals", "{table}_meta", "{table}" CASCADE'
            )
    finally:
        await conn.close()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """The seeded stores of one kind (PostgreSQL tables are dropped afterwards)."""
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("cli")
        made = World(
            "sqlite", f"sqlite:///{folder / 'world.db'}", f"sqlite:///{folder / 'scratch.db'}"
        )
        tables: list[str] = []
    else:
        dsn = request.getfixturevalue("pg_dsn")
        tables = [f"cli_{uuid.uuid4().hex[:12]}" for _ in range(2)]
        made = World("postgres", with_table(dsn, tables[0]), with_table(dsn, tables[1]))
    asyncio.run(seed_world(made.url))
    asyncio.run(seed_scratch(made.scratch))
    yield made
    if tables:
        asyncio.run(drop_tables(request.getfixturevalue("pg_dsn"), tables))


@pytest.fixture(scope="module")
def sqlite_world(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A seeded SQLite store, for what does not depend on the kind of store."""
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'world.db'}"
    asyncio.run(seed_world(url))
    return url


@pytest.fixture
def fresh(request: pytest.FixtureRequest, world: World, tmp_path: Path) -> Iterator[str]:
    """An empty store of the world's kind (a file not yet created, or a new table)."""
    if world.kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    dsn = request.getfixturevalue("pg_dsn")
    table = f"cli_{uuid.uuid4().hex[:12]}"
    yield with_table(dsn, table)
    asyncio.run(drop_tables(dsn, [table]))


async def load(url: str, saga_id: str) -> Any:
    store = open_store(url)
    try:
        return await store.load(saga_id)
    finally:
        await store.close()


# --------------------------------------------------------------------------- list


def test_list_shows_every_saga_newest_first(world: World) -> None:
    """``list`` prints a table with one saga a line, newest first."""
    lines = ok(cli("--store", world.url, "list")).splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "STEP", "CREATED", "UPDATED", "DETAIL"]
    ids = [line.split()[0] for line in lines[1:]]
    assert ids == ["ord-queued", "ord-run", "exp-wait", "ord-fail", "ord-comp", "ord-done"]
    row = next(line for line in lines if line.startswith("exp-wait"))
    assert "waits for signal 'approval'" in row


def test_list_json_filters_by_name_and_status(world: World) -> None:
    """``--name``/``--status`` filter; ``--json`` is one document with ISO times."""
    doc = as_json(
        cli("list", "--store", world.url, "--name", "order", "--status", "failed", "--json")
    )
    assert [saga["saga_id"] for saga in doc["sagas"]] == ["ord-fail"]
    saga = doc["sagas"][0]
    assert saga["failure_kind"] == "compensation_failed"
    assert datetime.fromisoformat(saga["completed_at"]).tzinfo is not None
    assert doc["count"] == 1


def test_list_by_correlation_id_and_creation_time(world: World) -> None:
    """``--correlation-id`` and ``--since`` (an age) keep the matching sagas."""
    doc = as_json(
        cli("--store", world.url, "list", "--correlation-id", "cart-7", "--since", "1h", "--json")
    )
    assert [saga["saga_id"] for saga in doc["sagas"]] == ["ord-comp", "ord-done"]


def test_list_until_an_iso_time_before_every_saga_is_empty(world: World) -> None:
    """``--until`` an ISO time before the sagas were made finds none."""
    assert ok(cli("--store", world.url, "list", "--until", "2000-01-01")) == "no sagas match\n"


def test_list_waiting_keeps_the_parked_sagas(world: World) -> None:
    """``--waiting`` lists the parked saga with what it waits for."""
    doc = as_json(cli("--store", world.url, "list", "--waiting", "--json"))
    assert [saga["saga_id"] for saga in doc["sagas"]] == ["exp-wait"]
    assert doc["sagas"][0]["waiting"]["signal"] == "approval"


def test_list_pages_with_limit_and_offset(world: World) -> None:
    """``--limit``/``--offset`` page through the sagas, newest first."""
    everything = as_json(cli("--store", world.url, "list", "--json"))["sagas"]
    page = as_json(cli("--store", world.url, "list", "--limit", "2", "--offset", "2", "--json"))
    assert [s["saga_id"] for s in page["sagas"]] == [s["saga_id"] for s in everything[2:4]]


def test_list_fits_the_terminal_width(sqlite_world: str) -> None:
    """Every line fits ``COLUMNS``; cut cells end with an ellipsis."""
    output = ok(cli("--store", sqlite_world, "list", env=environment(COLUMNS="60")))
    assert all(len(line) <= 60 for line in output.splitlines())
    assert "…" in output


# --------------------------------------------------------------------------- show


def test_show_prints_the_timeline_of_a_failed_saga(world: World) -> None:
    """``show`` gives the header, the steps and the compensation that failed."""
    output = ok(cli("--store", world.url, "show", "ord-fail"))
    assert "status       failed" in output
    assert "failure      compensation_failed at step 'reserve'" in output
    assert "NonRetryableError: card declined" in output
    assert "RuntimeError: inventory service unreachable" in output
    assert "STEP" in output
    assert "COMPENSATION" in output


def test_show_json_of_a_parked_saga_says_what_it_waits_for(world: World) -> None:
    """``show --json`` is the timeline, with the wait and the waiting step."""
    doc = as_json(cli("--store", world.url, "show", "exp-wait", "--json"))
    assert doc["status"] == "running"
    assert doc["waiting"]["kind"] == "signal"
    assert doc["waiting"]["signal"] == "approval"
    assert [(s["name"], s["status"]) for s in doc["steps"]] == [
        ("submit", "completed"),
        ("approve", "waiting"),
    ]
    datetime.fromisoformat(doc["created_at"])


def test_show_with_the_app_lists_the_steps_not_reached(world: World) -> None:
    """With ``--app`` the timeline ends with the steps the saga has not entered."""
    output = ok(cli("--store", world.url, "--app", APP, "show", "ord-run"))
    assert "status       running" in output
    assert "lease        none (no worker holds it)" in output
    assert "not reached: ship" in output


def test_show_diagram_prints_the_instance_in_mermaid(world: World) -> None:
    """``show --diagram`` draws the saga, its waiting step marked."""
    output = ok(cli("--store", world.url, "show", "exp-wait", "--diagram", "--app", APP))
    assert "flowchart TD" in output
    assert "class s1 waiting" in output


def test_show_diagram_needs_the_app(world: World) -> None:
    """Without ``--app`` there is no definition to draw: a usage error."""
    failed(cli("--store", world.url, "show", "exp-wait", "--diagram"), 2, "needs --app")


def test_show_of_an_unknown_id_exits_3(world: World) -> None:
    """An unknown saga id is reported with exit code 3."""
    failed(cli("--store", world.url, "show", "no-such-saga"), 3, "no saga with id 'no-such-saga'")


# --------------------------------------------------------------------------- stats


def test_stats_counts_the_sagas_by_status(world: World) -> None:
    """``stats`` prints a count per status, the total and the parked ones."""
    output = ok(cli("--store", world.url, "stats"))
    counts = dict(line.split() for line in output.splitlines()[1:8])
    assert counts == {
        "pending": "1",
        "running": "2",
        "completed": "1",
        "compensating": "0",
        "compensated": "1",
        "failed": "1",
        "total": "6",
    }
    assert "1 parked" in output


def test_stats_json_for_one_name(world: World) -> None:
    """``stats --name --json`` counts the sagas of that name only."""
    doc = as_json(cli("--store", world.url, "stats", "--name", "expense", "--json"))
    assert doc["by_status"]["running"] == 1
    assert doc["total"] == 1
    assert doc["waiting"] == 1


# --------------------------------------------------------------------------- acting


def test_cancel_stores_a_request_and_says_nobody_runs_it_here(world: World) -> None:
    """``cancel`` stores the request (this command runs no saga); a second one keeps it."""
    output = ok(cli("--store", world.scratch, "cancel", "exp-cancel", "--reason", "withdrawn"))
    assert "request is stored" in output
    assert "runs no saga" in output
    again = as_json(cli("--store", world.scratch, "cancel", "exp-cancel", "--json"))
    assert again["outcome"] == "already_requested"
    assert again["cancel_reason"] == "withdrawn"
    record = asyncio.run(load(world.scratch, "exp-cancel"))
    assert record.cancel_requested_at is not None


def test_cancel_of_a_finished_saga_is_refused(world: World) -> None:
    """A saga that ended cannot be cancelled: exit code 4."""
    failed(cli("--store", world.url, "cancel", "ord-done"), 4, "already ended (completed)")


def test_retry_redrives_a_failed_saga_once(world: World) -> None:
    """``retry`` puts a failed saga back to compensating; a second retry is refused."""
    doc = as_json(cli("--store", world.scratch, "retry", "ord-retry", "--json"))
    assert doc == {
        "saga_id": "ord-retry",
        "saga_name": "order",
        "status": "compensating",
        "redrives": 1,
    }
    failed(cli("--store", world.scratch, "retry", "ord-retry"), 4, "only a failed saga")


def test_retry_of_a_completed_or_unknown_saga(world: World) -> None:
    """``retry`` refuses a completed saga (4) and reports an unknown one (3)."""
    failed(cli("--store", world.url, "retry", "ord-done"), 4, "is completed")
    failed(cli("--store", world.url, "retry", "nope"), 3, "no saga with id 'nope'")


def test_signal_is_stored_once_per_signal_id(world: World) -> None:
    """``signal`` stores the payload; the same ``--signal-id`` again stores nothing."""
    args = ("--store", world.scratch, "signal", "exp-signal", "approval", "--signal-id", "s-1")
    doc = as_json(cli(*args, "--payload", '{"ok": true, "by": "maria"}', "--json"))
    assert doc == {
        "saga_id": "exp-signal",
        "signal": "approval",
        "signal_id": "s-1",
        "stored": True,
    }
    assert "nothing stored" in ok(cli(*args))


def test_signal_payload_from_stdin(world: World) -> None:
    """``--payload-file -`` reads the payload from stdin."""
    output = ok(
        cli(
            "--store",
            world.scratch,
            "signal",
            "exp-signal",
            "nudge",
            "--payload-file",
            "-",
            stdin='{"note": "hello"}',
        )
    )
    assert "stored for saga exp-signal" in output
    assert "does not wait for 'nudge'" in output


def test_signal_to_a_finished_saga_is_refused(world: World) -> None:
    """A saga that ended takes no signal: exit code 4."""
    failed(cli("--store", world.url, "signal", "ord-done", "approval"), 4, "takes no more signals")


def test_signal_payload_must_be_a_json_object(world: World) -> None:
    """A payload that is not a JSON object is a usage error."""
    result = cli("--store", world.url, "signal", "exp-wait", "approval", "--payload", "[1, 2]")
    failed(result, 2, "must be a JSON object")


def test_cleanup_deletes_the_finished_sagas_older_than_the_age(world: World) -> None:
    """``cleanup`` (24 hours by default) deletes only the old finished saga."""
    doc = as_json(cli("--store", world.scratch, "cleanup", "--json"))
    assert doc == {"deleted": 1, "older_than_hours": 24.0}
    assert asyncio.run(load(world.scratch, "old-done")) is None
    assert asyncio.run(load(world.scratch, "new-done")) is not None


# --------------------------------------------------------------------------- worker


def enqueue(url: str, saga_id: str) -> None:
    async def run() -> None:
        store = open_store(url)
        client = cli_app.make_manager(store)
        try:
            await client.enqueue("order", {}, saga_id)
        finally:
            await client.close()
            await store.close()

    asyncio.run(run())


def wait_for_status(url: str, saga_id: str, timeout: float = 15.0) -> SagaStatus:
    async def run() -> SagaStatus:
        store = open_store(url)
        client = SagaManager(store)
        try:
            return (await client.wait(saga_id, timeout=timeout)).status
        finally:
            await client.close()
            await store.close()

    return asyncio.run(run())


def run_worker(url: str, app: str, stop: signal.Signals) -> str:
    """Start ``worker``, run an enqueued saga, stop it with ``stop``; return its stderr."""
    command = [sys.executable, "-m", "lexigram.events.sagas", "--store", url, "--app", app]
    worker = subprocess.Popen(
        [*command, "worker", "--poll-interval", "0.1", "--concurrency", "4"],
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        enqueue(url, "work-1")
        assert wait_for_status(url, "work-1") is SagaStatus.COMPLETED
        worker.send_signal(stop)
        _stdout, stderr = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, stderr
    assert "serving order, expense" in stderr
    assert f"{stop.name}: stopping" in stderr
    assert "stopped" in stderr.splitlines()[-1]
    return stderr


def test_worker_runs_an_enqueued_saga_and_stops_on_sigterm(fresh: str) -> None:
    """``worker`` serves the app's sagas on the store, then exits 0 on SIGTERM."""
    stderr = run_worker(fresh, FACTORY, signal.SIGTERM)
    assert "not carried over" not in stderr  # the factory built the manager on the store


def test_worker_serves_a_copy_of_a_ready_made_manager(tmp_path: Path) -> None:
    """A manager with a store of its own is copied onto ``--store``; SIGINT stops it."""
    stderr = run_worker(f"sqlite:///{tmp_path / 'sagas.db'}", APP, signal.SIGINT)
    assert "not carried over" in stderr


def test_worker_needs_the_app(world: World) -> None:
    """``worker`` without ``--app`` has nothing to run: a usage error."""
    failed(cli("--store", world.url, "worker"), 2, "worker needs --app")


# --------------------------------------------------------------------------- no store


def test_unreachable_postgres_exits_5_quickly() -> None:
    """A closed port is reported at once as an unavailable store (exit code 5)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://postgres:secret@127.0.0.1:{port}/test"
    started = time.monotonic()
    for args in (["list"], ["show", "x"], ["cancel", "x"]):
        line = failed(cli("--store", url, *args), 5, "store unavailable", f"127.0.0.1:{port}")
        assert "secret" not in line
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    "args",
    [["list"], ["cancel", "x"], ["signal", "x", "go"], ["cleanup"], ["ui"]],
    ids=lambda args: args[0],
)
def test_a_missing_sqlite_file_is_reported_not_created(tmp_path: Path, args: list[str]) -> None:
    """Commands other than ``worker`` never create a SQLite file: exit code 5."""
    path = tmp_path / "typo.db"
    failed(cli("--store", f"sqlite:///{path}", *args), 5, "no SQLite database at")
    assert not path.exists()


def test_no_store_given_is_a_usage_error() -> None:
    """Without ``--store`` nor ``LEXIGRAM_SAGAS_STORE`` the command says how to give one."""
    failed(cli("list"), 2, "no store given", "--store", "LEXIGRAM_SAGAS_STORE")


def test_the_store_url_may_come_from_the_environment(sqlite_world: str) -> None:
    """``LEXIGRAM_SAGAS_STORE`` stands for ``--store``."""
    output = ok(cli("show", "ord-done", env=environment(LEXIGRAM_SAGAS_STORE=sqlite_world)))
    assert "status       completed" in output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/sagas", "must start with sqlite:// or postgresql://"),
        ("sqlite://", "names no file"),
        ("postgresql://127.0.0.1:5432", "names no database"),
    ],
)
def test_bad_store_urls_are_usage_errors(url: str, message: str) -> None:
    """A URL with an unknown scheme, no path or no database: exit code 2."""
    failed(cli("--store", url, "list"), 2, message)


# --------------------------------------------------------------------------- the app


def test_graph_prints_the_definition_in_mermaid() -> None:
    """``graph NAME`` needs no store: the definition comes from ``--app``."""
    output = ok(cli("--app", APP, "graph", "order"))
    assert output.startswith("flowchart TD")
    assert 's0["reserve"]' in output


def test_graph_of_an_orchestrated_flow_shows_its_branches() -> None:
    """An orchestrator's flow is drawn with its decision node."""
    output = ok(cli("graph", "refund", "--app", "tests.support.cli_app:orchestrator"))
    assert '-->|"escalate"|' in output


def test_graph_of_an_unknown_name_exits_3() -> None:
    """A name the app does not register is not found (exit 3), naming those it does."""
    failed(cli("--app", APP, "graph", "nope"), 3, "registered: order, expense")


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        ("no_colon", 2, "must be module:attribute"),
        ("no_such_module_xyz:app", 2, "no module named 'no_such_module_xyz'"),
        ("tests.support.cli_app:missing", 2, "has no attribute 'missing'"),
        ("tests.support.cli_app:not_a_manager", 2, "is a str, not a SagaManager"),
        ("broken_app:manager", 1, "importing broken_app failed: RuntimeError: boom"),
    ],
)
def test_bad_apps_are_reported_in_one_line(
    tmp_path: Path, spec: str, code: int, message: str
) -> None:
    """A bad ``--app`` spec, module, attribute or type is one clear line."""
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('boom')\n")
    env = environment(PYTHONPATH=str(ROOT))
    failed(cli("--app", spec, "graph", "order", cwd=tmp_path, env=env), code, message)


def test_the_app_is_imported_from_the_current_directory(tmp_path: Path) -> None:
    """``--app`` finds a module of the current directory (and ``LEXIGRAM_SAGAS_APP`` works)."""
    (tmp_path / "my_sagas.py").write_text("from tests.support.cli_app import orchestrator\n")
    env = environment(PYTHONPATH=str(ROOT), LEXIGRAM_SAGAS_APP="my_sagas:orchestrator")
    assert ok(cli("graph", "refund", cwd=tmp_path, env=env)).startswith("flowchart TD")


# --------------------------------------------------------------------------- ui


_FAKE_WEB = """
import json, sys, types
async def serve_ui(store, *, runtime, host, port, token):
    print(json.dumps({"store": type(store).__name__, "runtime": type(runtime).__name__,
                      "registered": list(runtime.registered), "host": host, "port": port,
                      "token": token}))
sys.modules["lexigram.events.sagas.ops.web"] = types.SimpleNamespace(serve_ui=serve_ui)
from lexigram.events.sagas.ops.cli import main
sys.exit(main(sys.argv[1:]))
"""

_NO_STARLETTE = """
import sys
class Finder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "lexigram.events.sagas.ops.web":
            raise ModuleNotFoundError("No module named 'starlette'", name="starlette")
        return None
sys.meta_path.insert(0, Finder)
from lexigram.events.sagas.ops.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ui_calls_the_web_admin_with_the_store_and_the_app(sqlite_world: str) -> None:
    """``ui`` hands the web admin the store, a manager with the app's sagas, and options."""
    env = environment(LEXIGRAM_SAGAS_UI_TOKEN="t0ken")
    result = cli(
        "--store", sqlite_world, "--app", FACTORY, "ui", "--port", "9000", code=_FAKE_WEB, env=env
    )
    assert json.loads(ok(result)) == {
        "store": "SQLiteSagaStore",
        "runtime": "SagaManager",
        "registered": ["order", "expense"],
        "host": "127.0.0.1",
        "port": 9000,
        "token": "t0ken",
    }


def test_ui_without_the_extra_says_what_to_install(sqlite_world: str) -> None:
    """Without starlette/uvicorn, ``ui`` names the extra to install."""
    result = cli("--store", sqlite_world, "ui", code=_NO_STARLETTE)
    failed(result, 1, "pip install 'lexigram-events[ui]'")


# --------------------------------------------------------------------------- the command line


def test_help_documents_the_exit_codes() -> None:
    """``--help`` lists the subcommands and the exit codes."""
    output = ok(cli("--help"))
    for word in ("stats", "cancel", "retry", "signal", "cleanup", "graph", "worker", "ui"):
        assert word in output
    assert "exit codes:" in output
    assert "the store cannot be reached or opened" in output


def test_usage_errors_exit_2() -> None:
    """Argparse's usage errors keep their code 2."""
    result = cli("list", "--limit", "-1", "--store", "sqlite:///x.db")
    assert result.returncode == 2
    assert "--limit" in result.stderr


def test_debug_adds_the_traceback() -> None:
    """``--debug`` prints the traceback before the error line."""
    result = cli("--debug", "--app", "tests.support.cli_app:not_a_manager", "graph", "order")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"{PROG}: error: ")
