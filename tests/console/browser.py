"""Drive the operator console in a real browser: Debian's headless chromium under Playwright's
sync API, offline.

Playwright's own browser download cannot work here, so :func:`launch` starts the system's
``chromium`` (``apt-get install chromium``; .ci/run installs it). Its resolver maps every host but
127.0.0.1 to "not found" (IP literals and ``localhost`` too), so a page that would fetch anything
off-host (a CDN, a font service) fails visibly instead of depending on the network.
:class:`PageProblems` records that, with JavaScript errors, so a test can assert a page is clean.

The app runs in uvicorn in a background thread (:class:`ConsoleServer`, from tests/api/support.py);
Playwright's sync API runs in the test's (main) thread.
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    ViewportSize,
)
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from dagtask import Engine
from dagtask.api import RateLimit
from dagtask.api.limits import LoginBackoff
from tests.api.support import PASSWORD, ApiServer, serve

VIEWPORT: ViewportSize = {"width": 1400, "height": 900}
"""A laptop screen: every page context gets it, so screenshots have one width."""
CHROMIUM_ARGS = (
    "--no-sandbox",  # as root, in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a small /dev/shm must not crash the renderer
    # Offline: nothing but loopback resolves.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
LOOPBACK = frozenset({"127.0.0.1"})
"""The hosts a page may fetch from (the served app listens on 127.0.0.1)."""
TIMEOUT_MS = 10_000
"""Playwright's default wait for one action or navigation (its own default is 30 s)."""
SCREENSHOTS_VAR = "DAGTASK_SCREENSHOTS"

_default_screenshots: Path | None = None


def launch(p: Playwright, executable: str | None = None) -> Browser:
    """Headless chromium: Debian's binary (``executable``, default ``chromium`` on PATH)."""
    path = executable or shutil.which("chromium")
    if path is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    return p.chromium.launch(executable_path=path, headless=True, args=list(CHROMIUM_ARGS))


def new_context(browser: Browser) -> BrowserContext:
    """A fresh profile (no cookies) with the laptop viewport and the harness's timeouts."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    return context


def use_screenshot_dir(directory: Path) -> None:
    """Where :func:`screenshot` writes unless ``$DAGTASK_SCREENSHOTS`` is set (tests/console's
    conftest sets a directory under pytest's tmp dir)."""
    global _default_screenshots
    _default_screenshots = directory


def screenshot_dir() -> Path:
    """``$DAGTASK_SCREENSHOTS`` if set, else the directory of :func:`use_screenshot_dir`."""
    configured = os.environ.get(SCREENSHOTS_VAR)
    if configured:
        directory = Path(configured)
    elif _default_screenshots is not None:
        directory = _default_screenshots
    else:
        raise RuntimeError(f"no screenshot directory: set ${SCREENSHOTS_VAR}")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def screenshot(page: Page, name: str, directory: Path | None = None) -> Path:
    """Write a full-page PNG of ``page`` as ``name``(.png) to ``directory`` (default:
    :func:`screenshot_dir`); its path."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"a screenshot's name is a plain file name, not {name!r}")
    filename = name if name.endswith(".png") else f"{name}.png"
    path = (directory or screenshot_dir()) / filename
    page.screenshot(path=str(path), full_page=True, animations="disabled", caret="hide")
    return path


@dataclass
class PageProblems:
    """What went wrong while a page loaded and ran: console errors, uncaught exceptions, failed
    requests and requests to hosts other than ``hosts``. Attach to a page with :meth:`watch`.

    Requests aborted with ``net::ERR_ABORTED`` are kept apart in ``aborted``: a navigation cancels
    what the page it leaves was still loading, which is no fault of that page.
    """

    hosts: frozenset[str] = LOOPBACK
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    off_host: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> Page:
        """Record ``page``'s problems from now on; the page."""
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)
        page.on("request", self._on_request)
        page.on("requestfailed", self._on_request_failed)
        return page

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location.get("url", "")
            self.errors.append(f"console: {message.text}" + (f" ({where})" if where else ""))

    def _on_page_error(self, error: PlaywrightError) -> None:
        self.errors.append(f"uncaught: {error.name}: {error.message}")

    def _on_request(self, request: Request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in self.hosts:
            self.off_host.append(request.url)

    def _on_request_failed(self, request: Request) -> None:
        failure = request.failure or "unknown failure"
        entry = f"{request.method} {request.url}: {failure}"
        (self.aborted if "ERR_ABORTED" in failure else self.failed).append(entry)

    @property
    def clean(self) -> bool:
        return not (self.errors or self.failed or self.off_host)

    def clear(self) -> None:
        """Forget what was recorded (after a step that is meant to fail)."""
        for found in (self.errors, self.failed, self.off_host, self.aborted):
            found.clear()

    def report(self) -> str:
        lines: list[str] = []
        for title, found in (
            ("JavaScript errors", self.errors),
            ("failed requests", self.failed),
            ("off-host requests", self.off_host),
        ):
            if found:
                lines.append(f"{title}:")
                lines.extend(f"  {entry}" for entry in found)
        return "\n".join(lines) or "no problems"

    def assert_clean(self) -> None:
        """Fail unless the page had no JavaScript error and fetched everything from loopback."""
        assert self.clean, self.report()


class ConsoleServer:
    """The app of ``dagtask serve`` (the API and the console, from ``create_app``) around
    ``engine``, served by uvicorn on a free loopback port while the ``with`` block runs; the block
    gets the :class:`~tests.api.support.ApiServer` (``.url``, ``.client(user)``). Rate limits and
    login lockouts are off unless asked for."""

    def __init__(
        self,
        engine: Engine,
        *,
        server_name: str = "console-test",
        rate_limit: RateLimit | None = None,
        login_backoff: LoginBackoff | None = None,
    ) -> None:
        self.engine = engine
        self.server_name = server_name
        self.rate_limit = rate_limit
        self.login_backoff = login_backoff
        self._stack = ExitStack()

    def __enter__(self) -> ApiServer:
        return self._stack.enter_context(
            serve(
                self.engine,
                server_name=self.server_name,
                rate_limit=self.rate_limit,
                login_backoff=self.login_backoff,
            )
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()


def sign_in(
    page: Page, base_url: str, user: str, password: str = PASSWORD, *, timeout_ms: int = TIMEOUT_MS
) -> None:
    """Sign in on the console's login page, ``base_url + "/login"``: fill ``username`` and
    ``password``, submit, and wait until the browser has left the login page."""
    login = base_url.rstrip("/") + "/login"
    login_path = urlsplit(login).path
    page.goto(login)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    try:
        page.wait_for_url(lambda url: urlsplit(url).path != login_path, timeout=timeout_ms)
    except PlaywrightTimeoutError:
        shown = page.inner_text("body").strip()[:500]
        raise AssertionError(
            f"signing in as {user!r} did not leave {login_path}; the page shows:\n{shown}"
        ) from None
