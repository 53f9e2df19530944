"""Shared by the API tests: a real uvicorn server on loopback, users, and waiting helpers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from dagtask import Engine
from dagtask.api import ApiSettings, RateLimit, create_app
from dagtask.api.limits import LoginBackoff
from dagtask.api.server import bind
from dagtask.store.users import UserStore
from dagtask.users import Role, ScryptCost, hash_password

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "ocp"
CHEAP = ScryptCost(ln=4, r=8, p=1)
"""A fast KDF cost for test users (production uses dagtask.users.DEFAULT_COST)."""
PASSWORD = "correct horse battery"
USERS = {
    "admin": Role.ADMIN,
    "viewer": Role.TASK_VIEWER,
    "manager": Role.TASK_MANAGER,
    "hostman": Role.HOST_MANAGER,
}
"""The users every test server has, all with PASSWORD."""


def sample(name: str) -> dict[str, Any]:
    """One of OCP's published samples."""
    return dict(json.loads((SAMPLES / name).read_text(encoding="utf-8")))


def add_users(engine: Engine) -> None:
    store = UserStore(engine.database)
    for name, role in USERS.items():
        store.add(name, hash_password(PASSWORD, CHEAP), frozenset({role}))


@dataclass
class ApiServer:
    """A dagtask API served by uvicorn in a background thread of the test process."""

    engine: Engine
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, user: str | None = "admin", password: str = PASSWORD) -> httpx.Client:
        """An HTTP client of ``user`` (None: without credentials)."""
        auth = (user, password) if user is not None else None
        client = httpx.Client(base_url=self.url, auth=auth, timeout=30.0)
        self.clients.append(client)
        return client


@contextmanager
def serve(
    engine: Engine,
    *,
    rate_limit: RateLimit | None = None,
    server_name: str = "test-server",
    login_backoff: LoginBackoff | None = None,
) -> Iterator[ApiServer]:
    """Serve the API around ``engine`` on a free loopback port until the block ends (rate
    limits and login lockouts off, unless a test asks for them)."""
    settings = ApiSettings(
        rate_limit=rate_limit or RateLimit(limit=0),
        server=server_name,
        password_cost=CHEAP,
        login_backoff=login_backoff or LoginBackoff(account_failures=0, client_failures=0),
    )
    with serve_app(create_app(engine, settings), engine) as api:
        yield api


@contextmanager
def serve_app(app: Any, engine: Engine) -> Iterator[ApiServer]:
    """Serve the ASGI ``app`` with uvicorn in a thread, on a free loopback port."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", proxy_headers=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    api = ApiServer(engine, f"http://127.0.0.1:{port}", server, thread)
    try:
        until(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield api
    finally:
        for client in api.clients:
            client.close()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def until(check: Callable[[], bool], *, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def task_over_http(client: httpx.Client, task_id: int) -> dict[str, Any]:
    """GET the task; its ``data``."""
    response = client.get(f"/api/v2/tasks/instances/{task_id}")
    assert response.status_code == 200, response.text
    return dict(response.json()["data"])


def wait_for_end(client: httpx.Client, task_id: int, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the task over HTTP until it is no longer RUNNING; return it."""
    found: dict[str, Any] = {}

    def ended() -> bool:
        found.update(task_over_http(client, task_id))
        return found["status"] != "RUNNING"

    until(ended, timeout=timeout, what=f"task {task_id} to end")
    return found
