"""The host stop endpoint and the task list on PostgreSQL (skipped without a server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dagtask import Engine, TemplateBuilder
from tests.api.support import ApiServer, add_users, serve, wait_for_end
from tests.api.test_hosts import assert_matches_sample

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    with Engine(pg_url, workers=2, poll_interval=0.05) as engine:
        add_users(engine)
        yield engine


@pytest.fixture
def pg_api(pg_engine: Engine) -> Iterator[ApiServer]:
    with serve(pg_engine) as api:
        yield api


def test_stop_agent_on_postgres(pg_api: ApiServer, pg_engine: Engine, tmp_path: Path) -> None:
    host = pg_engine.hosts.add(name="pg-1", inner_ip="127.0.0.1", agent_home=str(tmp_path / "a"))
    # Workers start only after the answer, so it shows the moment of submission as the sample.
    response = pg_api.client("hostman").post(f"/compute/hosts/{host.id}/agent/stop")
    assert response.status_code == 200, response.text
    assert_matches_sample(response.json(), "stop-ocp-agent.json", [host])
    pg_engine.start()
    final = wait_for_end(pg_api.client("viewer"), response.json()["data"]["id"])
    assert final["status"] == "SUCCESSFUL"
    assert final["creator"] == "hostman"


def test_paging_and_filters_on_postgres(pg_api: ApiServer, pg_engine: Engine) -> None:
    t = TemplateBuilder("pg chain")
    t.add("a", "tests.handlers.record")
    t.add("b", "tests.handlers.record", after=["a"])
    template = t.build()
    pg_engine.start()
    ids = [
        pg_engine.run(template, args={"fail": "b"} if i % 2 else {}, timeout=30).id
        for i in range(5)
    ]
    client = pg_api.client("viewer")
    page = client.get("/api/v2/tasks/instances", params={"page": 2, "size": 2}).json()["data"]
    assert page["page"] == {"number": 2, "size": 2, "totalElements": 5, "totalPages": 3}
    assert [t["id"] for t in page["contents"]] == ids[::-1][2:4]
    failed = client.get(
        "/api/v2/tasks/instances", params={"status": "FAILED", "name": "pg", "sort": "id,asc"}
    ).json()["data"]
    assert [t["id"] for t in failed["contents"]] == [ids[1], ids[3]]
    assert {t["status"] for t in failed["contents"]} == {"FAILED"}
