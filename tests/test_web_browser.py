"""The web admin in a real browser: headless Chromium, driven by Selenium, on a SQLite store.

The admin runs under uvicorn on a free localhost port (in a thread); the test opens the
list, filters it, opens a compensated saga, checks its timeline and its diagram, checks
that the page refreshes in place, and saves screenshots (``list.png``, ``saga.png``) in
its temporary directory. With ``LEXIGRAM_SCREENSHOTS_DIR`` set, it also saves
``operations-list.png`` and ``operations-saga.png`` there (for the documentation).

Skipped, with the reason, when Chromium, chromedriver or Selenium is missing, unless
``LEXIGRAM_REQUIRE_BROWSER=1``, which turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from lexigram.events.sagas import SagaBase, SagaConfig, SagaContext, SagaStepResult, saga_step
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.ops.web import create_app
from lexigram.events.sagas.sqlite import SQLiteSagaStore

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15.0
CHROME_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
FAST = SagaConfig(retry_delay_seconds=0, max_retries_per_step=0, default_timeout_seconds=7 * 86400)


class OrderSaga(SagaBase):
    name = "order_fulfillment"

    @saga_step("reserve_stock")
    async def reserve_stock(self, ctx: SagaContext) -> SagaStepResult:
        return SagaStepResult.Ok({"reservation": f"res-{ctx['order_id']}"})

    @saga_step("reserve_stock", compensation=True)
    async def release_stock(self, ctx: SagaContext) -> None:
        return None

    @saga_step("charge_card")
    async def charge_card(self, ctx: SagaContext) -> SagaStepResult:
        if ctx["total"] > 1000:
            return SagaStepResult.fail("card declined: amount above the customer's limit")
        return SagaStepResult.Ok({"payment": "pay-77"})

    @saga_step("charge_card", compensation=True)
    async def refund_card(self, ctx: SagaContext) -> None:
        return None

    @saga_step("ship")
    async def ship(self, ctx: SagaContext) -> None:
        return None


class ExpenseSaga(SagaBase):
    name = "expense_approval"

    @saga_step("submit")
    async def submit(self, ctx: SagaContext) -> None:
        return None

    @saga_step("submit", compensation=True)
    async def withdraw(self, ctx: SagaContext) -> None:
        return None

    @saga_step("approve", wait_for="manager_decision", wait_timeout=3 * 86400)
    async def approve(self, ctx: SagaContext) -> None:
        return None

    @saga_step("reimburse")
    async def reimburse(self, ctx: SagaContext) -> None:
        return None


def browser_problem() -> str | None:
    """Why the browser test cannot run here, or ``None``."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install 'lexigram-events[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(Path(path).name)):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser_ready() -> None:
    problem = browser_problem()
    if problem is None:
        return
    if os.environ.get("LEXIGRAM_REQUIRE_BROWSER", "") not in ("", "0", "false", "no"):
        pytest.fail(f"a browser is required (LEXIGRAM_REQUIRE_BROWSER=1) but {problem}")
    pytest.skip(f"browser test skipped: {problem}")


def executable(path: str) -> str:
    return path if os.path.exists(path) else shutil.which(Path(path).name) or path


async def populate(path: Path) -> None:
    """A completed order, a compensated one, and an expense parked for its approval."""
    store = SQLiteSagaStore(path)
    manager = SagaManager(store, config=FAST)
    manager.register(OrderSaga)
    manager.register(ExpenseSaga)
    await manager.execute(
        "order_fulfillment", {"order_id": 1001, "total": 80}, "order-1001", correlation_id="cart-1"
    )
    await manager.execute(
        "order_fulfillment",
        {"order_id": 1002, "total": 4200},
        "order-1002",
        correlation_id="cart-2",
    )
    await manager.start("expense_approval", {"amount": 120, "employee": "ana"}, "expense-17")
    async with asyncio.timeout(WAIT):
        while True:
            record = await manager.get("expense-17")
            if record is not None and record.waiting is not None and not record.lease_owner:
                break
            await asyncio.sleep(0.01)
    await manager.close()
    await store.close()


async def add_order(path: Path) -> None:
    """One more saga, written by another process's store while the page is open."""
    store = SQLiteSagaStore(path)
    manager = SagaManager(store, config=FAST)
    manager.register(OrderSaga)
    await manager.execute("order_fulfillment", {"order_id": 1003, "total": 15}, "order-1003")
    await manager.close()
    await store.close()


class Admin:
    """The admin served by uvicorn in a thread, on a port the OS chose."""

    def __init__(self, path: Path) -> None:
        self.store = SQLiteSagaStore(path)
        self.runtime = SagaManager(self.store, config=FAST)
        self.runtime.register(OrderSaga)
        self.runtime.register(ExpenseSaga)
        app = create_app(self.store, runtime=self.runtime, allowed_hosts={"127.0.0.1"})
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def __enter__(self) -> Admin:
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not self.server.started:
            assert self.thread.is_alive(), "the admin's server thread died"
            assert time.monotonic() < deadline, "the admin did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)
        self.socket.close()

        async def close() -> None:
            await self.runtime.close()
            await self.store.close()

        asyncio.run(close())


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = executable(CHROMIUM)
    for argument in CHROME_ARGS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}")
    options.add_argument("--window-size=1400,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def full_page_screenshot(driver: Any, path: Path) -> None:
    """Save the whole page (the window grown to the page's height)."""
    for _ in range(3):  # the window's frame takes some height: grow until nothing scrolls
        page, view = driver.execute_script(
            "return [document.documentElement.scrollHeight, window.innerHeight]"
        )
        if page <= view:
            break
        size = driver.get_window_size()
        driver.set_window_size(1400, min(size["height"] + page - view + 8, 4000))
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000


def keep_for_docs(source: Path, name: str) -> None:
    folder = os.environ.get("LEXIGRAM_SCREENSHOTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, Path(folder) / name)


def test_operators_filter_open_a_saga_and_see_its_diagram(
    browser_ready: None, chrome: Any, tmp_path: Path
) -> None:
    """List, filter by status, open the compensated saga: timeline rows and a drawn SVG."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    database = tmp_path / "sagas.db"
    asyncio.run(populate(database))
    wait = WebDriverWait(chrome, WAIT)
    with Admin(database) as admin:
        chrome.get(admin.url + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.grid tbody tr"))
        listed = [a.text for a in chrome.find_elements(By.CSS_SELECTOR, "table.grid a.mono")]
        assert set(listed) >= {"order-1001", "order-1002", "expense-17"}
        compensated = chrome.find_element(By.CSS_SELECTOR, ".counts .s-compensated")
        assert compensated.text.split() == ["compensated", "1"]
        wait.until(lambda d: d.find_element(By.ID, "live").get_attribute("data-state") == "live")
        full_page_screenshot(chrome, tmp_path / "list.png")
        keep_for_docs(tmp_path / "list.png", "operations-list.png")

        Select(chrome.find_element(By.NAME, "status")).select_by_value("compensated")
        chrome.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
        wait.until(lambda d: "status=compensated" in d.current_url)
        rows = chrome.find_elements(By.CSS_SELECTOR, "table.grid tbody tr")
        assert [row.find_element(By.CSS_SELECTOR, "a.mono").text for row in rows] == ["order-1002"]

        chrome.find_element(By.LINK_TEXT, "order-1002").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-live=timeline] tbody tr"))
        assert chrome.find_element(By.TAG_NAME, "h1").text == "order_fulfillment"
        steps = {
            row.find_element(By.CSS_SELECTOR, "td.step").text: row.find_elements(
                By.CSS_SELECTOR, ".chip"
            )[0].text
            for row in chrome.find_elements(By.CSS_SELECTOR, "[data-live=timeline] tbody tr")
        }
        assert steps == {
            "reserve_stock": "compensated",
            "charge_card": "failed",
            "ship": "not reached",
        }
        assert "card declined" in chrome.find_element(By.CSS_SELECTOR, ".callout.error").text

        diagram = chrome.find_element(By.CSS_SELECTOR, ".diagram svg")
        assert diagram.size["width"] > 200
        assert diagram.size["height"] > 200
        nodes = chrome.find_elements(By.CSS_SELECTOR, ".diagram svg g.lx-node[data-step]")
        drawn = {
            node.get_attribute("data-step"): node.get_attribute("data-status") for node in nodes
        }
        assert drawn == {
            "reserve_stock": "compensated",
            "charge_card": "failed",
            "ship": "pending",
        }
        for node in nodes:
            assert node.size["width"] > 0
            assert node.size["height"] > 0
        full_page_screenshot(chrome, tmp_path / "saga.png")
        keep_for_docs(tmp_path / "saga.png", "operations-saga.png")

        chrome.get(admin.url + "/")  # the list refreshes in place: a new saga shows up
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.grid tbody tr"))
        marker = chrome.execute_script("window.lexigramMarker = 1; return window.lexigramMarker;")
        asyncio.run(add_order(database))
        wait.until(lambda d: d.find_elements(By.LINK_TEXT, "order-1003"))
        assert chrome.execute_script("return window.lexigramMarker;") == marker  # no reload

        problems = [
            entry["message"] for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"
        ]
        assert problems == []  # no CSP violation, no script error, no failed request
