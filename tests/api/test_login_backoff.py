"""Failed logins back off over real HTTP: per account and per client address, 429 with
Retry-After, the right password refused during a lockout, and X-Forwarded-For believed only
from the proxies the operator trusts."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from dagtask import Engine
from dagtask.api import ApiSettings, create_app, limits
from dagtask.api.auth import Authenticator
from dagtask.api.errors import install_error_handlers
from dagtask.api.limits import LoginBackoff, RateLimit, RateLimiter
from dagtask.api.routes import create_router
from dagtask.api.server import bind, uvicorn_config
from dagtask.errors import ArgumentError
from dagtask.store.users import UserStore
from tests.api.support import CHEAP, PASSWORD, ApiServer, until

TASKS = "/api/v2/tasks/instances"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backoff_app(engine: Engine, backoff: LoginBackoff, clock: Clock) -> FastAPI:
    """The API with this back-off and clock (what create_app builds, with both injected)."""
    authenticator = Authenticator(
        UserStore(engine.database),
        RateLimiter(RateLimit(limit=0)),
        unknown_user_cost=CHEAP,
        backoff=backoff,
        clock=clock,
    )
    app = FastAPI()
    app.include_router(create_router(engine, authenticator, server="test-server"))
    install_error_handlers(app, "test-server")
    return app


@contextmanager
def serve_with(
    app: Any, engine: Engine, trusted_proxies: Sequence[str] = ()
) -> Iterator[ApiServer]:
    """Serve ``app`` under the uvicorn configuration `dagtask serve` uses (so X-Forwarded-For
    is believed only from ``trusted_proxies``), on a free loopback port."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn_config(app, port=port, trusted_proxies=trusted_proxies, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    api = ApiServer(engine, f"http://127.0.0.1:{port}", server, thread)
    try:
        until(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield api
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve_backoff(
    engine: Engine,
    backoff: LoginBackoff,
    clock: Clock,
    *,
    trusted_proxies: Sequence[str] = (),
) -> AbstractContextManager[ApiServer]:
    """The API with this back-off and clock, served as `dagtask serve` serves it."""
    return serve_with(backoff_app(engine, backoff, clock), engine, trusted_proxies)


def login(api: ApiServer, user: str, password: str, **headers: str) -> httpx.Response:
    with httpx.Client(base_url=api.url, auth=(user, password), timeout=30.0) as client:
        return client.get(TASKS, headers=headers)


def assert_locked(response: httpx.Response, retry_after: int, who: str) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["Retry-After"] == str(retry_after)
    body = response.json()
    assert body["successful"] is False
    assert body["error"]["code"] == 429
    message = body["error"]["message"]
    assert f"too many failed logins {who}: try again in {retry_after} s" in message
    assert "\n" not in message


@pytest.fixture
def clock() -> Clock:
    return Clock()


ACCOUNT = LoginBackoff(account_failures=5, client_failures=1000, lockout=30, max_lockout=3600)


def test_five_failures_lock_the_account_even_against_the_right_password(
    frozen_engine: Engine, clock: Clock
) -> None:
    with serve_backoff(frozen_engine, ACCOUNT, clock) as api:
        for _ in range(5):
            assert login(api, "viewer", "wrong").status_code == 401
        # Locked: the right password is refused too, or guessing would go on unhindered.
        assert_locked(login(api, "viewer", PASSWORD), 30, "for this user")
        assert_locked(login(api, "VIEWER", "wrong"), 30, "for this user")  # names fold case
        # Only that account: another user of the same client still gets in.
        assert login(api, "admin", PASSWORD).status_code == 200
        clock.now += 29
        assert_locked(login(api, "viewer", PASSWORD), 1, "for this user")
        clock.now += 1
        assert login(api, "viewer", PASSWORD).status_code == 200


def test_each_further_failure_doubles_the_lockout_until_a_success_resets_it(
    frozen_engine: Engine, clock: Clock
) -> None:
    with serve_backoff(frozen_engine, ACCOUNT, clock) as api:
        for _ in range(5):
            assert login(api, "nobody", "wrong").status_code == 401  # unknown names count too
            assert login(api, "viewer", "wrong").status_code == 401
        assert_locked(login(api, "nobody", PASSWORD), 30, "for this user")
        for lockout in (30, 60, 120):
            assert_locked(login(api, "viewer", "wrong"), lockout, "for this user")
            clock.now += lockout
            assert login(api, "viewer", "wrong").status_code == 401
        assert_locked(login(api, "viewer", PASSWORD), 240, "for this user")
        clock.now += 240
        assert login(api, "viewer", PASSWORD).status_code == 200
        # The success cleared the count: four more failures are plain 401s.
        for _ in range(4):
            assert login(api, "viewer", "wrong").status_code == 401
        assert login(api, "viewer", PASSWORD).status_code == 200


def test_failures_further_apart_than_the_window_do_not_add_up(
    frozen_engine: Engine, clock: Clock
) -> None:
    backoff = LoginBackoff(account_failures=3, client_failures=0, window=60, lockout=30)
    with serve_backoff(frozen_engine, backoff, clock) as api:
        for _ in range(6):
            assert login(api, "viewer", "wrong").status_code == 401
            clock.now += 61
        assert login(api, "viewer", PASSWORD).status_code == 200


CLIENT = LoginBackoff(account_failures=1000, client_failures=8, lockout=30)


def test_one_client_guessing_many_names_is_locked_out_by_its_address(
    frozen_engine: Engine, clock: Clock
) -> None:
    with serve_backoff(frozen_engine, CLIENT, clock) as api:
        for number in range(8):
            assert login(api, f"guess{number}", "wrong").status_code == 401
        assert_locked(login(api, "admin", PASSWORD), 30, "from this address")
        # Rotating X-Forwarded-For does not make it someone else: no proxy is trusted.
        for number in range(5):
            forwarded = f"203.0.113.{number + 1}"
            response = login(api, "admin", PASSWORD, **{"X-Forwarded-For": forwarded})
            assert_locked(response, 30, "from this address")
        clock.now += 30
        assert login(api, "admin", PASSWORD).status_code == 200
        # A success does not clear the address's count (an attacker's own account would).
        assert login(api, "guess9", "wrong").status_code == 401
        assert_locked(login(api, "admin", PASSWORD), 60, "from this address")


def test_behind_a_trusted_proxy_each_forwarded_client_counts_on_its_own(
    frozen_engine: Engine, clock: Clock
) -> None:
    with serve_backoff(frozen_engine, CLIENT, clock, trusted_proxies=["127.0.0.1"]) as api:
        guesser = {"X-Forwarded-For": "203.0.113.7"}
        for number in range(8):
            assert login(api, f"guess{number}", "wrong", **guesser).status_code == 401
        assert_locked(login(api, "admin", PASSWORD, **guesser), 30, "from this address")
        # Another client behind the same proxy is not punished for the guesser.
        other = {"X-Forwarded-For": "203.0.113.8"}
        assert login(api, "admin", PASSWORD, **other).status_code == 200


def test_thresholds_come_from_the_environment_in_create_app(
    frozen_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(limits.ENV_ACCOUNT_FAILURES, "2")
    monkeypatch.setenv(limits.ENV_LOCKOUT, "300")
    settings = ApiSettings(rate_limit=RateLimit(limit=0), password_cost=CHEAP)
    with serve_with(create_app(frozen_engine, settings), frozen_engine) as api:
        assert login(api, "viewer", "wrong").status_code == 401
        assert login(api, "viewer", "wrong").status_code == 401
        response = login(api, "viewer", PASSWORD)
        assert response.status_code == 429, response.text
        assert 299 <= int(response.headers["Retry-After"]) <= 300


@pytest.mark.parametrize(
    ("name", "value"),
    [(limits.ENV_ACCOUNT_FAILURES, "five"), (limits.ENV_WINDOW, "-1"), (limits.ENV_LOCKOUT, "nan")],
)
def test_a_bad_threshold_in_the_environment_is_one_clear_error(name: str, value: str) -> None:
    with pytest.raises(ArgumentError) as caught:
        LoginBackoff.from_env({name: value})
    assert str(caught.value).startswith(f"{name}={value!r} is not valid: set it to ")


def test_a_trusted_proxy_that_is_not_an_address_is_refused() -> None:
    with pytest.raises(ArgumentError, match=r"'proxy\.example' is not an IP address or network"):
        uvicorn_config(None, trusted_proxies=["proxy.example"])
    config: Any = uvicorn_config(None, trusted_proxies=["10.0.0.0/8", " 192.0.2.1 "])
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == ["10.0.0.0/8", "192.0.2.1"]
    assert uvicorn_config(None).proxy_headers is False
