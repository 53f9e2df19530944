"""`dagtask serve` as a real process, and the API mounted inside a host application."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from dagtask import Engine
from dagtask.api import ApiSettings, RateLimit, create_api_router, create_app
from dagtask.cli import main
from dagtask.hosts.connector import connector_for
from tests.api.support import CHEAP, PASSWORD, serve_app, wait_for_end


def dagtask(db: str, *args: str, stdin: str = "", cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dagtask", "--db", db, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "DAGTASK_DB_URL"},
    )


class Served:
    """A `dagtask serve --port 0` process and the address it announced."""

    def __init__(self, process: subprocess.Popen[str], url: str, banner: str) -> None:
        self.process, self.url, self.banner = process, url, banner


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[object]:
    started: list[subprocess.Popen[str]] = []

    def start(db: str, *options: str) -> Served:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagtask", "--db", db, "serve", "--port", "0", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        started.append(process)
        banner = []
        assert process.stdout is not None
        for line in process.stdout:  # ends at the banner, or when the process dies
            banner.append(line)
            if line.startswith("dagtask API on "):
                url = line.split()[3]
                return Served(process, url, "".join(banner))
        raise AssertionError("dagtask serve exited:\n" + "".join(banner))

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def stop_agents(db: str) -> None:
    """Kill the agent processes a failed test may have left running."""
    with Engine(db, workers=0) as engine:
        for host in engine.hosts.list():
            for process in connector_for(host).agent_processes(host):
                if process.alive:
                    os.kill(process.pid, signal.SIGKILL)


def test_dagtask_serve_runs_the_api_and_its_workers(
    tmp_path: Path, start_serve: object, sqlite_url: str, request: pytest.FixtureRequest
) -> None:
    added = dagtask(
        sqlite_url,
        "users",
        "add",
        "ops",
        "--role",
        "HOST_MANAGER,TASK_VIEWER",
        "--password-stdin",
        stdin="ops password\n",
        cwd=tmp_path,
    )
    assert added.returncode == 0, added.stderr
    host = dagtask(
        sqlite_url,
        "hosts",
        "add",
        "--name",
        "web-1",
        "--ip",
        "127.0.0.1",
        "--agent-home",
        str(tmp_path / "agent"),
        "--start-agent",
        cwd=tmp_path,
    )
    assert host.returncode == 0, host.stderr

    request.addfinalizer(lambda: stop_agents(sqlite_url))
    served = start_serve(sqlite_url, "--workers-in-process", "2")  # type: ignore[operator]
    assert "workers in this process: 2" in served.banner
    with httpx.Client(base_url=served.url, auth=("ops", "ops password"), timeout=30) as client:
        response = client.post("/compute/hosts/1/agent/stop")
        assert response.status_code == 200, response.text
        assert response.json()["data"]["creator"] == "ops"
        final = wait_for_end(client, response.json()["data"]["id"])
        assert final["status"] == "SUCCESSFUL"
        schema = client.get("/openapi.json").json()
        assert "/compute/hosts/{hostId}/agent/stop" in schema["paths"]

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=30) == 0
    with Engine(sqlite_url, workers=0) as engine:
        host_info = engine.hosts.get(1)
        assert not [p for p in connector_for(host_info).agent_processes(host_info) if p.alive]


def test_serve_without_users_warns_and_lets_nobody_in(
    tmp_path: Path, start_serve: object, sqlite_url: str
) -> None:
    served = start_serve(sqlite_url, "--workers-in-process", "0")  # type: ignore[operator]
    assert "there are no users yet" in served.banner
    assert "workers in this process: 0" in served.banner
    with httpx.Client(base_url=served.url, auth=("admin", "admin"), timeout=30) as client:
        assert client.get("/api/v2/tasks/instances").status_code == 401


@pytest.mark.parametrize(
    "option", [("--port", "70000"), ("--workers-in-process", "-1"), ("--rate-limit", "lots")]
)
def test_serve_refuses_bad_options(
    sqlite_url: str, option: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["--db", sqlite_url, "serve", *option])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    assert code == 2
    assert "error" in capsys.readouterr().err


@pytest.fixture
def quiet_engine(sqlite_url: str) -> Iterator[Engine]:
    from tests.api.support import add_users

    with Engine(sqlite_url, workers=0) as engine:
        add_users(engine)
        yield engine


def host_app_settings() -> ApiSettings:
    return ApiSettings(rate_limit=RateLimit(limit=0), server="host-app", password_cost=CHEAP)


def test_the_api_mounts_inside_a_host_application(quiet_engine: Engine) -> None:
    host_app = FastAPI()

    @host_app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "up"}

    host_app.mount("/dagtask", create_app(quiet_engine, host_app_settings()))
    with serve_app(host_app, quiet_engine) as api:
        client = api.client("viewer")
        assert client.get("/health").json() == {"status": "up"}
        listed = client.get("/dagtask/api/v2/tasks/instances")
        assert listed.status_code == 200 and listed.json()["server"] == "host-app"
        missing = client.get("/dagtask/no/such/path")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
        assert api.client(None).get("/dagtask/api/v2/tasks/instances").status_code == 401


def test_the_router_includes_into_a_host_application(quiet_engine: Engine) -> None:
    host_app = FastAPI()
    host_app.include_router(create_api_router(quiet_engine, host_app_settings()), prefix="/ops")
    with serve_app(host_app, quiet_engine) as api:
        client = api.client("viewer")
        assert client.get("/ops/api/v2/tasks/instances").json()["successful"] is True
        # The endpoints answer in OCP's envelope even though the host app has no handlers.
        bad = client.get("/ops/api/v2/tasks/instances", params={"size": 5000})
        assert bad.status_code == 400 and bad.json()["error"]["target"] == "size"
        refused = api.client(None).get("/ops/api/v2/tasks/instances/1")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == 401
        missing = client.get("/ops/api/v2/tasks/instances/77")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == 20000
        assert PASSWORD  # the users of add_users
