"""Who may call what: HTTP Basic users, roles, rate limits, and errors that never leak."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from dagtask import Engine
from dagtask.api import RateLimit
from dagtask.api.limits import RateLimiter
from dagtask.errors import ArgumentError
from dagtask.store.schema import user as user_table
from dagtask.store.users import UserStore
from dagtask.users import Role, hash_password
from tests.api.support import CHEAP, PASSWORD, ApiServer, add_users, sample, serve

TASKS = "/api/v2/tasks/instances"

# (method, path, the role it needs, a user without that role, JSON body)
ENDPOINTS: list[tuple[str, str, str, str, Any]] = [
    ("GET", TASKS, "TASK_VIEWER", "hostman", None),
    ("GET", f"{TASKS}/1", "TASK_VIEWER", "manager", None),
    ("GET", f"{TASKS}/1/subtasks/2/log", "TASK_VIEWER", "hostman", None),
    ("POST", f"{TASKS}/1/retry", "TASK_MANAGER", "viewer", None),
    ("POST", f"{TASKS}/1/rollback", "TASK_MANAGER", "hostman", None),
    ("POST", f"{TASKS}/1/subtasks/2/retry", "TASK_MANAGER", "viewer", None),
    ("POST", f"{TASKS}/1/subtasks/2/skip", "TASK_MANAGER", "viewer", None),
    ("POST", f"{TASKS}/1/subtasks/2/cancel", "TASK_MANAGER", "hostman", None),
    ("POST", "/compute/hosts/1/agent/stop", "HOST_MANAGER", "manager", None),
    ("POST", "/compute/hosts/1/agent/restart", "HOST_MANAGER", "viewer", None),
    ("POST", "/compute/hosts/batchStopAgents", "HOST_MANAGER", "manager", {"hostIds": [1]}),
    ("POST", "/compute/hosts/batchRestartAgents", "HOST_MANAGER", "viewer", {"hostids": [1]}),
]
IDS = [f"{method} {path}" for method, path, *_ in ENDPOINTS]


@pytest.fixture
def host_and_task(frozen_engine: Engine, tmp_path: Path) -> int:
    """Host 1 and task 1 (a Stop OCP agent task on it, so host 1 is busy)."""
    return _host_and_task(frozen_engine, tmp_path)


def _host_and_task(engine: Engine, folder: Path) -> int:
    host = engine.hosts.add(name="h1", inner_ip="127.0.0.1", agent_home=str(folder))
    assert host.id == 1
    return engine.submit("Stop OCP agent", args={"host_id": "1"}).id


@pytest.fixture(scope="module")
def matrix_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One server for the endpoint x caller matrix: host 1 busy with task 1, no workers, so no
    request in the matrix changes anything (actions are refused by state, 409 / 404)."""
    folder = tmp_path_factory.mktemp("matrix")
    with Engine(f"sqlite:///{folder / 'm.db'}", workers=0) as engine:
        add_users(engine)
        _host_and_task(engine, folder)
        with serve(engine) as api:
            yield api


def call(client: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    return (
        client.request(method, path, json=body)
        if body is not None
        else client.request(method, path)
    )


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """An OCP error envelope with this status, without a stack trace."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {
        "duration",
        "error",
        "server",
        "status",
        "successful",
        "timestamp",
        "traceId",
    }
    assert (body["successful"], body["status"]) == (False, status)
    assert set(body["error"]) == {"code", "message", "target", "subErrors"}
    assert "Traceback" not in response.text
    assert response.headers["content-type"] == "application/json"
    return dict(body["error"])


@pytest.mark.parametrize(("method", "path", "role", "other", "body"), ENDPOINTS, ids=IDS)
def test_every_endpoint_refuses_a_caller_without_credentials(
    matrix_api: ApiServer,
    method: str,
    path: str,
    role: str,
    other: str,
    body: Any,
) -> None:
    response = call(matrix_api.client(None), method, path, body)
    error = assert_error(response, 401)
    assert error["code"] == 401
    assert "authentication required" in error["message"]
    assert response.headers["WWW-Authenticate"].startswith("Basic ")


@pytest.mark.parametrize(("method", "path", "role", "other", "body"), ENDPOINTS, ids=IDS)
def test_every_endpoint_refuses_a_wrong_password(
    matrix_api: ApiServer, method: str, path: str, role: str, other: str, body: Any
) -> None:
    response = call(matrix_api.client("admin", "not the password"), method, path, body)
    assert "invalid user name or password" in assert_error(response, 401)["message"]


@pytest.mark.parametrize(("method", "path", "role", "other", "body"), ENDPOINTS, ids=IDS)
def test_every_endpoint_refuses_the_wrong_role_naming_the_role_needed(
    matrix_api: ApiServer,
    method: str,
    path: str,
    role: str,
    other: str,
    body: Any,
) -> None:
    error = assert_error(call(matrix_api.client(other), method, path, body), 403)
    assert (error["code"], error["target"]) == (403, role)
    assert f"needs the {role} role" in error["message"]


@pytest.mark.parametrize(("method", "path", "role", "other", "body"), ENDPOINTS, ids=IDS)
def test_every_endpoint_lets_the_right_role_and_admin_in(
    matrix_api: ApiServer,
    method: str,
    path: str,
    role: str,
    other: str,
    body: Any,
) -> None:
    user = {"TASK_VIEWER": "viewer", "TASK_MANAGER": "manager", "HOST_MANAGER": "hostman"}[role]
    for name in (user, "admin"):
        response = call(matrix_api.client(name), method, path, body)
        # In: whatever the answer, it is not an authentication or permission refusal (the task
        # is RUNNING and host 1 busy, so actions may be refused with 20003 / 409 / 404).
        assert response.status_code not in (401, 403), response.text
        assert response.status_code in (200, 404, 409), response.text


def test_refused_callers_change_nothing(
    frozen_api: ApiServer, frozen_engine: Engine, tmp_path: Path
) -> None:
    host = frozen_engine.hosts.add(name="h", inner_ip="127.0.0.1", agent_home=str(tmp_path))
    for client in (
        frozen_api.client(None),
        frozen_api.client("viewer"),
        frozen_api.client("hostman", "wrong"),
    ):
        assert client.post(f"/compute/hosts/{host.id}/agent/stop").status_code in (401, 403)
    assert frozen_engine.list().total_elements == 0


def test_a_disabled_user_and_a_changed_password_take_effect_at_once(
    frozen_api: ApiServer, frozen_engine: Engine
) -> None:
    users = UserStore(frozen_engine.database)
    client = frozen_api.client("viewer")
    assert client.get(TASKS).status_code == 200
    users.set_enabled("viewer", False)
    assert_error(client.get(TASKS), 401)
    users.set_enabled("viewer", True)
    assert client.get(TASKS).status_code == 200
    users.set_password("viewer", hash_password("a new password", CHEAP))
    assert_error(client.get(TASKS), 401)
    assert frozen_api.client("viewer", "a new password").get(TASKS).status_code == 200


def test_malformed_basic_credentials_are_401(frozen_api: ApiServer) -> None:
    client = frozen_api.client(None)
    response = client.get(TASKS, headers={"Authorization": "Basic %%%not-base64"})
    assert "malformed" in assert_error(response, 401)["message"]
    response = client.get(TASKS, headers={"Authorization": "Bearer abc"})
    assert_error(response, 401)


def test_a_non_ascii_password_works(frozen_api: ApiServer, frozen_engine: Engine) -> None:
    UserStore(frozen_engine.database).add(
        "juergen", hash_password("pässwörd ünicode", CHEAP), frozenset({Role.TASK_VIEWER})
    )
    token = base64.b64encode("juergen:pässwörd ünicode".encode()).decode()
    response = frozen_api.client(None).get(TASKS, headers={"Authorization": f"Basic {token}"})
    assert response.status_code == 200, response.text


def test_passwords_are_stored_as_kdf_hashes_and_never_logged(
    frozen_api: ApiServer, frozen_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    frozen_api.client("admin").get(TASKS)
    frozen_api.client("admin", "a wrong guess").get(TASKS)
    with frozen_engine.database.read() as conn:
        stored = conn.execute(sa.select(user_table.c.password_hash)).scalars().all()
    assert stored and all(h.startswith("scrypt$") for h in stored)
    assert not any(PASSWORD in h for h in stored)
    assert PASSWORD not in caplog.text and "a wrong guess" not in caplog.text


# ---- rate limiting -------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_ratelimit_headers(frozen_engine: Engine) -> None:
    with serve(frozen_engine, rate_limit=RateLimit(limit=3, window=60)) as api:
        client = api.client("viewer")
        remaining = []
        for _ in range(3):
            response = client.get(TASKS)
            assert response.status_code == 200
            assert response.headers["RateLimit-Limit"] == "3"
            remaining.append(int(response.headers["RateLimit-Remaining"]))
            assert 0 < int(response.headers["RateLimit-Reset"]) <= 60
        assert remaining == [2, 1, 0]
        refused = client.get(TASKS)
        error = assert_error(refused, 429)
        assert error["code"] == 429
        assert error["message"].startswith("Excessive number of requests.")
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert int(refused.headers["Retry-After"]) > 0
        # OCP's own 429 envelope has these members (ours adds target and subErrors).
        assert set(sample("api-error-envelope-429.json")) == set(refused.json())
        assert set(sample("api-error-envelope-429.json")["error"]) <= set(error)
        # Limits are per user: another user still gets in.
        assert api.client("admin").get(TASKS).status_code == 200


def test_rate_limit_reset_never_exceeds_the_window() -> None:
    # (start + 60) - now is 60.000000000007 for this clock value: the reset must still be 60.
    limiter = RateLimiter(RateLimit(limit=2, window=60), clock=lambda: 65483.98140820866)
    quota = limiter.hit("a")
    assert quota is not None and quota.reset == 60


def test_rate_limit_window_starts_over() -> None:
    now = [0.0]
    limiter = RateLimiter(RateLimit(limit=2, window=10), clock=lambda: now[0])
    assert [q.allowed for q in (limiter.hit("a"), limiter.hit("a"), limiter.hit("a"))] == [
        True,
        True,
        False,
    ]
    quota = limiter.hit("b")
    assert quota is not None and quota.allowed
    now[0] = 9.5
    quota = limiter.hit("a")
    assert quota is not None and (quota.allowed, quota.reset) == (False, 1)
    now[0] = 10.0
    quota = limiter.hit("a")
    assert quota is not None and (quota.allowed, quota.remaining, quota.reset) == (True, 1, 10)
    assert RateLimiter(RateLimit(limit=0)).hit("a") is None


@pytest.mark.parametrize(
    ("text", "limit", "window"),
    [
        ("600/min", 600, 60),
        ("10/s", 10, 1),
        ("100/30s", 100, 30),
        ("5000/hour", 5000, 3600),
        ("off", 0, 60),
    ],
)
def test_rate_limit_parses(text: str, limit: int, window: float) -> None:
    rate = RateLimit.parse(text)
    assert (rate.limit, rate.window) == (limit, window)


@pytest.mark.parametrize("text", ["600", "10/fortnight", "x/min", "0/min", "10/0s"])
def test_a_bad_rate_limit_is_refused(text: str) -> None:
    with pytest.raises(ArgumentError, match=r"not a rate|at least 1"):
        RateLimit.parse(text)


def test_repeated_failed_logins_are_throttled(frozen_engine: Engine) -> None:
    with serve(frozen_engine, rate_limit=RateLimit(limit=2, window=60)) as api:
        guesser = api.client("admin", "guess")
        assert [guesser.get(TASKS).status_code for _ in range(3)] == [401, 401, 429]


# ---- envelopes of every error --------------------------------------------------------------------


def test_trace_id_of_the_caller_is_honoured(frozen_api: ApiServer) -> None:
    client = frozen_api.client("viewer")
    response = client.get(TASKS, headers={"X-Trace-Id": "caller-trace-1"})
    assert response.json()["traceId"] == "caller-trace-1"
    assert response.headers["X-Trace-Id"] == "caller-trace-1"
    refused = frozen_api.client(None).get(TASKS, headers={"X-Trace-Id": "caller-trace-2"})
    assert refused.json()["traceId"] == "caller-trace-2"
    odd = client.get(TASKS, headers={"X-Trace-Id": "two words"})
    assert odd.json()["traceId"] != "two words" and len(odd.json()["traceId"]) == 16


def test_unknown_paths_and_methods_answer_in_the_envelope(frozen_api: ApiServer) -> None:
    client = frozen_api.client("viewer")
    assert assert_error(client.get("/api/v2/nothing"), 404)["code"] == 404
    wrong = client.delete(TASKS)
    assert assert_error(wrong, 405)["code"] == 405
    assert "GET" in wrong.headers["Allow"]
    error = assert_error(client.get(f"{TASKS}/abc"), 400)
    assert error["target"] == "id"
    bad_json = frozen_api.client("hostman").post(
        "/compute/hosts/batchStopAgents",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert "not valid JSON" in assert_error(bad_json, 400)["message"]


def test_an_unexpected_error_is_500_without_details_unless_asked(
    frozen_api: ApiServer, host_and_task: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(task_id: int) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(frozen_api.engine, "get", broken)
    client = frozen_api.client("viewer")
    response = client.get(f"{TASKS}/{host_and_task}")
    error = assert_error(response, 500)
    assert error["code"] == 500 and "secret internals" not in response.text
    assert response.json()["traceId"] in error["message"]

    debug = client.get(f"{TASKS}/{host_and_task}", headers={"X-Debug": "true"})
    assert debug.status_code == 500
    (trace,) = debug.json()["error"]["subErrors"]
    assert trace["target"] == "stackTrace"
    assert "RuntimeError: secret internals" in trace["message"]


def test_no_stack_trace_for_a_caller_who_is_not_authenticated(
    frozen_api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: UserStore, name: str) -> None:
        raise RuntimeError("database exploded")

    monkeypatch.setattr(UserStore, "credentials", broken)
    response = frozen_api.client("viewer").get(TASKS, headers={"X-Debug": "true"})
    error = assert_error(response, 500)
    assert error["subErrors"] == [] and "exploded" not in response.text
