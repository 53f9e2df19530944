"""Fixtures of the console tests: headless chromium (tests/console/browser.py) and the app of
``dagtask serve`` around a real engine.

Playwright and the browser start once for the tests of this package, not once per session:
while Playwright's sync API is running, it marks its event loop as the main thread's running loop
(between its calls too), so anything later in the same thread calling ``asyncio.run()`` would fail
with "cannot be called from a running event loop". Package scope stops it after the last console
test, before the tests of other folders run. For the same reason a console test must not call
``asyncio.run()`` itself, and Playwright refuses to start inside a running loop (an async test).

Without chromium the browser tests skip, unless ``DAGTASK_REQUIRE_SERVERS=1`` (CI), where they
fail. Screenshots go to ``$DAGTASK_SCREENSHOTS`` if set, else to pytest's tmp dir; a test that
fails leaves a screenshot of its page there (``failed-<test>.png``).
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from dagtask import Engine
from tests.api.support import ApiServer, add_users
from tests.conftest import require_tool
from tests.console.browser import (
    ConsoleServer,
    PageProblems,
    launch,
    new_context,
    screenshot,
    screenshot_dir,
    use_screenshot_dir,
)

FAILED_CALL = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Note on the test whether its call failed, for the ``page`` fixture's teardown."""
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED_CALL] = True
    return report


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    """Playwright's sync API, started once for the console tests."""
    p = sync_playwright().start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's headless chromium (skips without it, unless DAGTASK_REQUIRE_SERVERS=1)."""
    chromium = require_tool("chromium")
    browser = launch(playwright, chromium)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="package", autouse=True)
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where :func:`~tests.console.browser.screenshot` writes (``$DAGTASK_SCREENSHOTS``, else a
    directory under pytest's tmp dir)."""
    use_screenshot_dir(tmp_path_factory.mktemp("screenshots"))
    return screenshot_dir()


@pytest.fixture
def problems() -> PageProblems:
    """The JavaScript errors and failed or off-host requests of ``page``."""
    return PageProblems()


@pytest.fixture
def page(
    browser: Browser, problems: PageProblems, request: pytest.FixtureRequest
) -> Iterator[Page]:
    """A page in a fresh browser context (no cookies), watched by ``problems``."""
    context = new_context(browser)
    try:
        page = problems.watch(context.new_page())
        yield page
        if request.node.stash.get(FAILED_CALL, False) and not page.is_closed():
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-.")
            try:
                path = screenshot(page, f"failed-{name}")
                shown = f"screenshot of the failed test's page: {path}"
            except PlaywrightError as exc:
                shown = f"no screenshot of the failed test's page: {exc}"
            print(f"{shown}\n{problems.report()}")
    finally:
        context.close()


@pytest.fixture
def console_engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh SQLite file with running workers and the test users
    (tests/api/support.py: admin, viewer, manager, hostman, all with PASSWORD)."""
    with Engine(f"sqlite:///{tmp_path}/console.db", workers=4, poll_interval=0.02) as engine:
        add_users(engine)
        engine.start()
        yield engine


@pytest.fixture
def console(console_engine: Engine) -> Iterator[ApiServer]:
    """The app of ``dagtask serve`` around ``console_engine``, on a free loopback port."""
    with ConsoleServer(console_engine) as server:
        yield server
