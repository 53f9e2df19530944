"""`/health` and `/ready`: ready when the database answers in time with the schema this dagtask
needs; 503 naming what is wrong otherwise, on time even when the database hangs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from dagtask import Engine
from dagtask.observability import health
from dagtask.store.db import SCHEMA_HEAD, Database
from tests.api.support import ApiServer, add_users, serve
from tests.faults import Faults
from tests.observability.support import Proxy, proxy_to, scrape, value
from tests.processes import wait_until

LIMIT = health.READY_TIMEOUT_SECONDS + 1.5
"""How long a /ready answer may take at most, a stalled database included."""


def timed_ready(client: httpx.Client) -> tuple[int, dict[str, object], float]:
    started = time.monotonic()
    answer = client.get("/ready")
    took = time.monotonic() - started
    return answer.status_code, answer.json(), took


def test_health_and_ready_answer_without_a_login(api: ApiServer) -> None:
    client = api.client(None)
    answer = client.get("/health")
    assert answer.status_code == 200 and answer.json() == {"status": "UP"}
    status, body, _ = timed_ready(client)
    assert status == 200, body
    assert body["status"] == "UP"
    assert body["checks"] == {
        "database": {"status": "UP"},
        "schema": {"status": "UP", "revision": SCHEMA_HEAD, "expected": SCHEMA_HEAD},
    }
    # Probes are for machines: not in the API's description.
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/health", "/ready", "/metrics"} & set(paths)


def test_ready_is_503_during_an_outage_and_200_after(api: ApiServer, engine: Engine) -> None:
    client = api.client(None)
    with Faults(engine.database) as faults:
        with faults.outage():
            status, body, took = timed_ready(client)
            assert status == 503, body
            assert body["status"] == "DOWN"
            database = body["checks"]["database"]  # type: ignore[index]
            assert database["status"] == "DOWN" and "database" in database["error"]
            assert took < LIMIT
            # The scrape still answers, saying the database did not.
            during = scrape(client)
            assert value(during, "dagtask_database_up") == 0
            assert ("dagtask_subtasks", frozenset({("status", "READY")})) not in during
            assert client.get("/health").status_code == 200
        assert timed_ready(client)[0] == 200
        assert value(scrape(client), "dagtask_database_up") == 1

        # A database that hangs: /ready answers 503 on time, and again while it still hangs.
        stall = faults.stall("alembic_version", seconds=30)
        for _ in range(2):
            status, body, took = timed_ready(client)
            assert status == 503, body
            assert "did not answer" in body["checks"]["database"]["error"]  # type: ignore[index]
            assert took < LIMIT
        stall.remove()
        wait_until(lambda: timed_ready(client)[0] == 200, "/ready to be 200 again")


def test_ready_names_a_missing_or_outdated_schema(tmp_path: object) -> None:
    empty = Database(f"sqlite:///{tmp_path}/empty.db")  # type: ignore[str-bytes-safe]
    try:
        ready, body = health.Readiness(empty).check()
    finally:
        empty.dispose()
    assert not ready
    assert body["checks"]["database"] == {"status": "UP"}
    assert "no dagtask schema" in body["checks"]["schema"]["error"]

    url = f"sqlite:///{tmp_path}/old.db"  # type: ignore[str-bytes-safe]
    with Engine(url, workers=0) as engine:
        with engine.database.engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0005'"))
        ready, body = health.Readiness(engine.database).check()
        assert not ready
        schema = body["checks"]["schema"]
        assert schema["status"] == "DOWN" and schema["revision"] == "0005"
        assert "dagtask db upgrade" in schema["error"]


def test_ready_is_503_at_once_when_postgres_refuses_connections() -> None:
    db = Database("postgresql+psycopg://postgres@127.0.0.1:1/test")
    try:
        started = time.monotonic()
        ready, body = health.Readiness(db).check()
        took = time.monotonic() - started
    finally:
        db.dispose()
    assert not ready
    assert body["status"] == "DOWN"
    assert body["checks"]["database"]["status"] == "DOWN"
    assert "127.0.0.1:1" in body["checks"]["database"]["error"]
    assert took < LIMIT


def test_a_bounded_call_has_one_in_flight_at_a_time() -> None:
    release = threading.Event()
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        release.wait(10)
        return len(calls)

    bounded = health.Bounded(slow, 0.2, "test-bounded")
    for _ in range(3):
        with pytest.raises(TimeoutError):
            bounded()
    assert len(calls) == 1  # the later calls waited on the first
    release.set()
    wait_until(lambda: bounded() == 1, "the first call to finish")
    assert bounded() == 2  # a new call once the first one ended


# ---- PostgreSQL behind a proxy that can refuse or stall --------------------------------------


@pytest.fixture
def proxied_pg(pg_url: str) -> Iterator[tuple[Engine, Proxy]]:
    url = sa.make_url(pg_url)
    Engine(pg_url, workers=0).close()  # the schema, created directly
    with proxy_to(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port)
        with Engine(through.render_as_string(hide_password=False), workers=0) as engine:
            add_users(engine)
            yield engine, proxy


@pytest.mark.postgres
def test_ready_on_postgres_that_refuses_then_stalls(proxied_pg: tuple[Engine, Proxy]) -> None:
    engine, proxy = proxied_pg
    with serve(engine) as api:
        client = api.client(None)
        assert timed_ready(client)[0] == 200

        proxy.refuse()
        status, body, took = timed_ready(client)
        assert status == 503, body
        assert body["checks"]["database"]["status"] == "DOWN"  # type: ignore[index]
        assert took < LIMIT
        proxy.forward()
        wait_until(lambda: timed_ready(client)[0] == 200, "/ready after the server is back")

        proxy.stall()
        for _ in range(2):
            status, body, took = timed_ready(client)
            assert status == 503, body
            assert "did not answer" in body["checks"]["database"]["error"]  # type: ignore[index]
            assert took < LIMIT
        during = scrape(client)
        assert value(during, "dagtask_database_up") == 0
        proxy.forward()
        wait_until(lambda: timed_ready(client)[0] == 200, "/ready after the stall")
        assert value(scrape(client), "dagtask_database_up") == 1
