"""The browser harness itself: headless chromium reaches the served app on loopback and nothing
else, sees what goes wrong in a page, takes screenshots and signs in through a login form."""

from __future__ import annotations

import html
import struct
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page

from dagtask import Engine
from tests.api.support import PASSWORD, ApiServer, serve_app
from tests.console.browser import VIEWPORT, PageProblems, screenshot, sign_in


def test_swagger_ui_renders_offline(console: ApiServer, page: Page, problems: PageProblems) -> None:
    page.goto(f"{console.url}/docs")
    page.wait_for_selector(".opblock-summary-path")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any(path.startswith("/api/v2/tasks") for path in paths), paths
    problems.assert_clean()


def test_nothing_but_loopback_resolves(page: Page, problems: PageProblems) -> None:
    for url in ("https://example.com/", "http://192.0.2.1:8080/", "http://localhost:8080/"):
        with pytest.raises(PlaywrightError, match="ERR_NAME_NOT_RESOLVED"):
            page.goto(url, timeout=5_000)
    # A page that loads a script from a CDN and throws: the problems name both. Chromium may
    # still be committing its error page for the last refused address, which destroys the
    # document set_content writes into ("Execution context was destroyed"): then it waits for
    # that navigation to settle and writes the page again.
    for attempt in range(3):
        problems.clear()
        try:
            page.set_content(
                '<script src="https://cdn.example.com/lib.js"></script>'
                '<script>throw new Error("broken page")</script>'
            )
            break
        except PlaywrightError as exc:
            if "Execution context was destroyed" not in str(exc) or attempt == 2:
                raise
            page.wait_for_load_state()
    assert problems.off_host == ["https://cdn.example.com/lib.js"]
    assert any("cdn.example.com" in entry for entry in problems.failed), problems.report()
    assert any("broken page" in entry for entry in problems.errors), problems.report()
    assert not problems.clean


def test_screenshot_is_a_png_of_the_viewport_width(
    console: ApiServer, page: Page, screenshots: Path
) -> None:
    page.goto(f"{console.url}/docs")
    page.wait_for_selector(".opblock-summary-path")
    path = screenshot(page, "harness-swagger-ui")
    assert path == screenshots / "harness-swagger-ui.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width == VIEWPORT["width"]
    assert height >= VIEWPORT["height"]  # the full page, at least the screen


def login_stub() -> FastAPI:
    """A login form to the contract sign_in expects of the console's (until that one exists)."""
    app = FastAPI()
    form = (
        "<!doctype html><title>Sign in</title><p>{message}</p>"
        '<form method="post" action="/login"><input name="username">'
        '<input name="password" type="password"><button type="submit">Sign in</button></form>'
    )

    @app.get("/login", response_class=HTMLResponse)
    def show() -> str:
        return form.format(message="")

    @app.post("/login")
    async def submit(request: Request) -> Response:
        fields = parse_qs((await request.body()).decode())
        user = fields.get("username", [""])[0]
        if fields.get("password", [""])[0] != PASSWORD:
            return HTMLResponse(form.format(message="Wrong user name or password."), 401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie("user", user)
        return response

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request) -> str:
        return f"<h1>Signed in as {html.escape(request.cookies.get('user', ''))}</h1>"

    return app


def test_sign_in_follows_the_login_contract(console_engine: Engine, page: Page) -> None:
    with serve_app(login_stub(), console_engine) as stub:
        with pytest.raises(AssertionError, match="Wrong user name or password"):
            sign_in(page, stub.url, "viewer", "not the password", timeout_ms=1_500)
        sign_in(page, stub.url, "viewer")
        assert page.url == f"{stub.url}/"
        assert page.inner_text("h1") == "Signed in as viewer"
