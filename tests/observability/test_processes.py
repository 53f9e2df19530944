"""Real processes: `dagtask worker --metrics-port` and its JSON log, `dagtask serve --log-format
json`, and dagtask without the metrics extra."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from dagtask import Engine, TemplateBuilder
from dagtask.observability import METRICS_MISSING
from dagtask.observability.logfields import attempt_trace_id
from dagtask.states import TaskStatus
from tests.observability.support import (
    ROOT,
    Process,
    Samples,
    scrape,
    start_dagtask,
    stop,
    value,
)
from tests.processes import wait_until

RECORD = "tests.handlers.record"
HIDE_METRICS = "sys.modules['prometheus_client'] = None  # as if the extra were not installed\n"


def _metrics_url(worker: Process) -> str:
    match = worker.wait_for(r"worker metrics on (http://[^/\s\"]+)/metrics", "the metrics URL")
    return match.group(1)


def _worker(url: str, log: Path, *extra: str, env: dict[str, str] | None = None) -> Process:
    return start_dagtask(
        url,
        *("worker", "--name", "w", "--poll", "0.05", "--lease", "2", "--concurrency", "2"),
        *extra,
        log=log,
        env=env,
    )


def test_the_worker_serves_metrics_health_and_ready(sqlite_url: str, tmp_path: Path) -> None:
    t = TemplateBuilder("Worker metrics")
    for sub in ("a", "b", "c"):
        t.add(sub, RECORD)
    with Engine(sqlite_url, workers=0) as engine:
        worker = _worker(
            sqlite_url, tmp_path / "worker.log", "--log-format", "json", "--metrics-port", "0"
        )
        try:
            base = _metrics_url(worker)
            assert base.startswith("http://127.0.0.1:")
            with httpx.Client(base_url=base, timeout=10) as client:
                health = client.get("/health")
                assert health.status_code == 200 and health.json() == {"status": "UP"}
                ready = client.get("/ready")
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"]["schema"]["status"] == "UP"
                assert client.get("/nope").status_code == 404
                wait_until(
                    lambda: value(scrape(client), "dagtask_workers", state="alive") == 1,
                    "the worker to register",
                )
                task_id = engine.submit_id(t.build())
                assert engine.wait_status(task_id, timeout=60) is TaskStatus.SUCCESSFUL
                found: Samples = {}

                def counted() -> bool:
                    found.update(scrape(client))
                    ended = ("dagtask_attempts_ended_total", "SUCCESSFUL")
                    return value(found, ended[0], status=ended[1], handler=RECORD) == 3

                wait_until(counted, "the worker to count its three attempts")
                assert value(found, "dagtask_subtasks", status="SUCCESSFUL") == 3
                assert value(
                    found,
                    "dagtask_attempt_duration_seconds_count",
                    template="Worker metrics",
                    subtask="a",
                )
                assert value(found, "process_cpu_seconds_total") > 0
            task = engine.get(task_id)
            wait_until(
                lambda: sum("end subtask" in r["message"] for r in worker.json_lines()) == 3,
                "the three end lines",
            )
        finally:
            assert stop(worker) == 0, worker.text()
    records = worker.json_lines()
    for sub in task.subtasks:
        about = [r for r in records if r.get("subtask_id") == sub.id]
        assert {r["message"].split()[0] for r in about} == {"start", "end"}, about
        for record in about:
            assert record["task_id"] == task_id
            assert record["attempt"] == 1
            # The task's trace when a tracer recorded its submit (another test of this
            # process may have set one up), else the attempt's own id.
            assert record["trace_id"] == (task.trace_id or attempt_trace_id(sub.id, 1))
    unrelated = [r for r in records if "started" in r["message"] and "worker w" in r["message"]]
    assert unrelated and "task_id" not in unrelated[0]


def test_the_metrics_port_is_a_setting_too(sqlite_url: str, tmp_path: Path) -> None:
    Engine(sqlite_url, workers=0).close()
    worker = _worker(sqlite_url, tmp_path / "w.log", env={"DAGTASK_WORKER_METRICS_PORT": "0"})
    try:
        with httpx.Client(base_url=_metrics_url(worker), timeout=10) as client:
            assert client.get("/health").status_code == 200
            assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    finally:
        assert stop(worker) == 0, worker.text()


def test_a_port_in_use_is_one_line_and_exit_2(sqlite_url: str, tmp_path: Path) -> None:
    import socket

    Engine(sqlite_url, workers=0).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        worker = _worker(sqlite_url, tmp_path / "w.log", "--metrics-port", port)
        assert worker.process.wait(60) == 2
    lines = worker.text().strip().splitlines()
    assert lines[-1].startswith("dagtask: error: --metrics-address 127.0.0.1 --metrics-port ")
    assert "cannot listen there" in lines[-1]


def test_serve_logs_json_lines_with_the_request_trace_id(sqlite_url: str, tmp_path: Path) -> None:
    served = start_dagtask(
        sqlite_url,
        *("serve", "--port", "0", "--workers-in-process", "1", "--log-format", "json"),
        log=tmp_path / "serve.log",
    )
    try:
        base = served.wait_for(r"dagtask API on (http://\S+) ", "the API's address").group(1)
        with httpx.Client(base_url=base, timeout=10) as client:
            answer = client.get("/health", headers={"X-Trace-Id": "probe-1"})
            assert answer.status_code == 200
            assert client.get("/metrics").status_code == 200  # open by default
            refused = client.get("/api/v2/tasks/instances", headers={"X-Trace-Id": "t-2"})
            assert refused.status_code == 401

        def access_lines() -> list[dict[str, object]]:
            return [r for r in served.json_lines() if r["logger"] == "uvicorn.access"]

        wait_until(lambda: len(access_lines()) >= 3, "three access lines")
    finally:
        assert stop(served) == 0, served.text()
    health, _, tasks = access_lines()[:3]
    assert health["path"] == "/health" and health["status"] == 200 and health["method"] == "GET"
    assert "trace_id" not in health  # a probe is not an API request: no trace id
    # An API answer's trace id (the caller's X-Trace-Id, echoed) is in its access line.
    assert tasks["path"] == "/api/v2/tasks/instances" and tasks["status"] == 401
    assert tasks["trace_id"] == "t-2"
    plain = [
        line
        for line in served.text().splitlines()
        if line.strip()
        and not line.startswith("{")
        and not line.startswith(("dagtask API", "warn"))
    ]
    assert not plain, plain  # every log line is JSON; stdout has only the announcements
    assert any(r["logger"] == "uvicorn.error" for r in served.json_lines())


def test_without_the_metrics_extra_the_worker_says_what_to_install(
    sqlite_url: str, tmp_path: Path
) -> None:
    worker = start_dagtask(
        sqlite_url, "worker", "--metrics-port", "0", log=tmp_path / "w.log", prelude=HIDE_METRICS
    )
    assert worker.process.wait(60) == 2
    assert worker.text() == f"dagtask: error: {METRICS_MISSING}\n"
    assert METRICS_MISSING == "metrics need the metrics extra: pip install 'dagtask[metrics]'"


def test_without_the_metrics_extra_dagtask_still_works(sqlite_url: str) -> None:
    program = HIDE_METRICS + textwrap.dedent(
        f"""
        import httpx
        from dagtask import Engine, TemplateBuilder
        from dagtask.api import create_app
        from tests.api.support import serve_app

        t = TemplateBuilder("No metrics")
        t.add("a", "tests.handlers.record")
        with Engine({sqlite_url!r}, workers=1, poll_interval=0.05) as engine:
            assert engine.run(t.build(), timeout=30).status.value == "SUCCESSFUL"
            with serve_app(create_app(engine), engine) as api:
                missing = api.client(None).get("/metrics")
                assert missing.status_code == 501, missing.status_code
                print(missing.text.strip())
                assert api.client(None).get("/ready").status_code == 200
        import sys
        assert "prometheus_client" not in [m for m in sys.modules if sys.modules[m] is not None]
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", "import sys\n" + program],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == METRICS_MISSING


@pytest.mark.postgres
def test_the_worker_ready_is_503_while_postgres_refuses(pg_url: str, tmp_path: Path) -> None:
    import sqlalchemy as sa

    from tests.observability.support import proxy_to

    url = sa.make_url(pg_url)
    Engine(pg_url, workers=0).close()
    with proxy_to(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        worker = _worker(through, tmp_path / "w.log", "--metrics-port", "0")
        try:
            with httpx.Client(base_url=_metrics_url(worker), timeout=10) as client:
                assert client.get("/ready").status_code == 200
                proxy.refuse()
                down = client.get("/ready")
                assert down.status_code == 503, down.text
                assert down.json()["checks"]["database"]["status"] == "DOWN"
                assert client.get("/health").status_code == 200
                proxy.forward()
                wait_until(lambda: client.get("/ready").status_code == 200, "/ready again")
        finally:
            assert stop(worker) == 0, worker.text()
