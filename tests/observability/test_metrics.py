"""`GET /metrics` of the API around an engine that runs real tasks: the figures move as the run
does (database figures at scrape time, this process's counters and histograms)."""

from __future__ import annotations

import sqlalchemy as sa

from dagtask import Engine, TemplateBuilder
from dagtask.api import ApiSettings, RateLimit, create_app
from dagtask.api.limits import LoginBackoff
from dagtask.observability import metrics
from dagtask.states import TaskStatus
from dagtask.store import metrics_reads
from tests.api.support import CHEAP, ApiServer, serve_app
from tests.observability.support import Samples, scrape, value
from tests.processes import wait_until

RECORD = "tests.handlers.record"


def fan_of_three(name: str = "Metrics fan") -> TemplateBuilder:
    t = TemplateBuilder(name)
    for sub in ("a", "b", "c"):
        t.add(sub, RECORD)
    return t


def test_the_figures_follow_a_run(api: ApiServer, engine: Engine) -> None:
    client = api.client(None)  # /metrics needs no login by default
    before = scrape(client)
    assert value(before, "dagtask_database_up") == 1
    assert value(before, "dagtask_subtasks", status="SUCCESSFUL") == 0
    assert value(before, "dagtask_tasks", status="RUNNING") == 0
    assert value(before, "dagtask_attempts_ended_total", status="SUCCESSFUL", handler=RECORD) == 0

    # Workers stopped: the roots wait in the READY queue, and the queue's head ages.
    task_id = engine.submit_id(fan_of_three().build())
    waiting = scrape(client)
    assert value(waiting, "dagtask_ready_queue_depth") == 3
    assert value(waiting, "dagtask_subtasks", status="READY") == 3
    assert value(waiting, "dagtask_tasks", status="RUNNING") == 1
    assert value(waiting, "dagtask_workers", state="alive") == 0
    first_age = value(waiting, "dagtask_ready_queue_oldest_age_seconds")
    assert first_age >= 0
    wait_until(
        lambda: value(scrape(client), "dagtask_ready_queue_oldest_age_seconds") >= first_age + 0.3,
        "the READY head to age",
    )

    engine.start()
    assert engine.wait_status(task_id, timeout=30) is TaskStatus.SUCCESSFUL
    after: Samples = {}

    def recorded() -> bool:
        after.update(scrape(client))
        return (
            value(after, "dagtask_attempts_ended_total", status="SUCCESSFUL", handler=RECORD) >= 3
        )

    wait_until(recorded, "the three attempts to be counted")
    assert value(after, "dagtask_subtasks", status="SUCCESSFUL") == 3
    assert value(after, "dagtask_ready_queue_depth") == 0
    assert value(after, "dagtask_ready_queue_oldest_age_seconds") == 0
    assert value(after, "dagtask_tasks", status="SUCCESSFUL") == 1
    assert value(after, "dagtask_tasks", status="RUNNING") == 0
    assert value(after, "dagtask_attempts_ended_total", status="FAILED", handler=RECORD) == 0
    assert value(after, "dagtask_workers", state="alive") == 1
    assert value(after, "dagtask_worker_slots") == 2
    for sub in ("a", "b", "c"):
        labels = {"template": "Metrics fan", "subtask": sub}
        assert value(after, "dagtask_attempt_duration_seconds_count", **labels) == 1
    assert value(after, "dagtask_subtasks_claimed_total") == 3
    claims = value(after, "dagtask_claim_duration_seconds_count")
    finishes = value(after, "dagtask_finish_duration_seconds_count")
    assert claims >= 1 and finishes >= 1

    # The lease keeper renews every second (lease 3 s).
    wait_until(
        lambda: value(scrape(client), "dagtask_worker_heartbeats_total", outcome="ok") >= 1,
        "a heartbeat to be counted",
    )
    engine.stop()
    stopped = scrape(client)
    assert value(stopped, "dagtask_workers", state="stopped") == 1
    assert value(stopped, "dagtask_workers", state="alive") == 0


def test_a_timeout_and_a_failure_are_counted_by_handler(api: ApiServer, engine: Engine) -> None:
    client = api.client(None)
    t = TemplateBuilder("Metrics failures")
    t.add("slow", "tests.handlers.sleep_with_token", timeout=1)
    t.add("broken", RECORD)
    engine.start()
    task = engine.run(t.build(), args={"seconds": "30", "fail": "broken"}, timeout=30)
    assert task.status is TaskStatus.FAILED
    found: Samples = {}

    def counted() -> bool:
        found.update(scrape(client))
        return value(found, "dagtask_attempts_ended_total", status="FAILED", handler=RECORD) >= 1

    wait_until(counted, "the failed attempt to be counted")
    slow = "tests.handlers.sleep_with_token"
    assert value(found, "dagtask_attempt_timeouts_total", handler=slow) == 1
    assert value(found, "dagtask_attempts_ended_total", status="FAILED", handler=slow) == 1
    assert value(found, "dagtask_attempts_ended_total", status="SUCCESSFUL", handler=slow) == 0
    assert value(found, "dagtask_attempt_timeouts_total", handler=RECORD) == 0
    assert value(found, "dagtask_subtasks", status="FAILED") == 2
    assert value(found, "dagtask_tasks", status="FAILED") == 1
    slow_time = value(
        found, "dagtask_attempt_duration_seconds_sum", template="Metrics failures", subtask="slow"
    )
    assert 1.0 <= slow_time < 10.0


def test_two_engines_of_one_process_keep_their_own_figures(
    sqlite_url: str, tmp_path: object
) -> None:
    other_url = f"sqlite:///{tmp_path}/other.db"  # type: ignore[str-bytes-safe]
    with Engine(sqlite_url, workers=1, poll_interval=0.05) as one, Engine(other_url) as two:
        first, second = metrics.for_engine(one), metrics.for_engine(two)
        assert first is metrics.for_engine(one) and first.registry is not second.registry
        one.run(fan_of_three().build(), timeout=30)
        from tests.observability.support import parse

        mine, theirs = parse(first.exposition().decode()), parse(second.exposition().decode())
        assert value(mine, "dagtask_subtasks", status="SUCCESSFUL") == 3
        assert value(theirs, "dagtask_subtasks", status="SUCCESSFUL") == 0
        assert (
            value(theirs, "dagtask_attempts_ended_total", status="SUCCESSFUL", handler=RECORD) == 0
        )


def test_metrics_can_require_a_login(engine: Engine) -> None:
    settings = ApiSettings(
        rate_limit=RateLimit(limit=0),
        server="test-server",
        password_cost=CHEAP,
        login_backoff=LoginBackoff(account_failures=0, client_failures=0),
        metrics_login=True,
    )
    with serve_app(create_app(engine, settings), engine) as api:
        refused = api.client(None).get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == 401
        assert "WWW-Authenticate" in refused.headers
        assert api.client("hostman").get("/metrics").status_code == 403  # no TASK_VIEWER role
        assert value(scrape(api.client("viewer")), "dagtask_database_up") == 1
        # The probes stay open.
        assert api.client(None).get("/health").json() == {"status": "UP"}
        assert api.client(None).get("/ready").status_code == 200


def test_metrics_can_be_turned_off(engine: Engine) -> None:
    settings = ApiSettings(rate_limit=RateLimit(limit=0), password_cost=CHEAP, metrics=False)
    with serve_app(create_app(engine, settings), engine) as api:
        assert api.client(None).get("/metrics").status_code == 404
        assert api.client(None).get("/health").status_code == 200


def test_a_scrape_is_a_few_grouped_queries_whatever_the_size(engine: Engine) -> None:
    """One GROUP BY per table: the statement count does not grow with the subtasks."""
    t = TemplateBuilder("Metrics wide", concurrency=10)
    for n in range(200):
        t.add(f"s{n}", RECORD)
    for _ in range(5):
        engine.submit_id(t.build())
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    read_engine = engine.database.read_engine
    sa.event.listen(read_engine, "before_cursor_execute", count)
    try:
        figures = metrics_reads.read_figures(engine.database)
    finally:
        sa.event.remove(read_engine, "before_cursor_execute", count)
    assert figures.subtasks["READY"] == 50 and figures.subtasks["PENDING"] == 950
    assert figures.tasks["RUNNING"] == 5
    queries = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(queries) == 5, statements
