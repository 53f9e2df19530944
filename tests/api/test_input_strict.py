"""The REST API takes only what its schema says, and answers anything else with a 400 (or a 404
for an id it does not have), never a 500 and never a task it was not asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from dagtask import Engine
from dagtask.api.schemas import MAX_ID
from tests.api.support import ApiServer

TASKS = "/api/v2/tasks/instances"
BATCHES = ("/compute/hosts/batchStopAgents", "/compute/hosts/batchRestartAgents")


def task_count(client: httpx.Client) -> int:
    listed = client.get(TASKS)
    assert listed.status_code == 200, listed.text
    return int(listed.json()["data"]["page"]["totalElements"])


def bad_request(response: httpx.Response) -> dict[str, Any]:
    """Assert a 400 in OCP's envelope with a one-line message; the error."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["successful"] is False and body["status"] == 400
    error = dict(body["error"])
    assert error["code"] == 400 and "\n" not in error["message"]
    return error


@pytest.fixture
def hosts(frozen_engine: Engine, tmp_path: Path) -> list[int]:
    """Hosts 1 and 2 (what `true` and `1.0` would name if they were taken as ids)."""
    found = [
        frozen_engine.hosts.add(f"h{i}", "127.0.0.1", str(tmp_path / f"agent-{i}")).id
        for i in (1, 2)
    ]
    assert found == [1, 2]
    return found


@pytest.mark.parametrize("path", BATCHES)
def test_true_is_not_host_1(frozen_api: ApiServer, hosts: list[int], path: str) -> None:
    client = frozen_api.client("hostman")
    error = bad_request(client.post(path, json={"hostIds": [True]}))
    assert error["target"] == "hostIds[0]"
    assert error["message"] == (
        f"invalid request: hostIds[0]: true is not a host id: give an integer from 1 to {MAX_ID}"
    )
    assert task_count(frozen_api.client("viewer")) == 0


@pytest.mark.parametrize(
    ("body", "target", "fragment"),
    [
        ({"hostIds": None, "hostids": [1]}, "body", "not both"),
        ({"hostIds": [1], "hostids": None}, "body", "not both"),
        ({"hostIds": [1], "hostids": [2]}, "body", "not both"),
        ({"hostIds": None}, "body", "hostIds is null: give the hosts as a list"),
        ({"hostids": None}, "body", "hostids is null"),
        ({"hostid": [1]}, "body", "unknown key 'hostid': did you mean 'hostids'?"),
        ({"host_ids": [1]}, "body", "unknown key 'host_ids'"),
        ({"hostIds": [1], "force": True}, "body", "unknown key 'force'"),
        ({"hostIds": ["1"]}, "hostIds[0]", '"1" is not a host id'),
        ({"hostIds": [1, False]}, "hostIds[1]", "false is not a host id"),
        ({"hostIds": [1.5]}, "hostIds[0]", "1.5 is not a host id"),
        ({"hostIds": [None]}, "hostIds[0]", "null is not a host id"),
        ({"hostIds": [[1]]}, "hostIds[0]", "[1] is not a host id"),
        ({"hostIds": [0]}, "hostIds[0]", "0 is not a host id"),
        ({"hostIds": [-1]}, "hostIds[0]", "-1 is not a host id"),
        ({"hostIds": [MAX_ID + 1]}, "hostIds[0]", f"{MAX_ID + 1} is not a host id"),
        ({"hostIds": [2**63]}, "hostIds[0]", "is not a host id"),
        ({"hostIds": [2**64 + 1]}, "hostIds[0]", "is not a host id"),
        ({"hostIds": [1e300]}, "hostIds[0]", "is not a host id"),
        ({"hostIds": [1, 2, 1]}, "body", "hostIds names host 1 more than once"),
        ({"hostIds": []}, "hostIds", "at least 1 item"),
        ({"hostIds": list(range(1, 1002))}, "hostIds", "at most 1000 items"),
        ({"hostIds": 1}, "hostIds", "valid"),
        ({"hostIds": "1,2"}, "hostIds", "valid"),
        ({}, "body", 'give the hosts as hostIds, e.g. {"hostIds": [1, 2]}'),
    ],
)
def test_a_batch_body_outside_the_schema_is_400(
    frozen_api: ApiServer, hosts: list[int], body: dict[str, Any], target: str, fragment: str
) -> None:
    client = frozen_api.client("hostman")
    for path in BATCHES:
        error = bad_request(client.post(path, json=body))
        assert error["target"] == target, error
        assert fragment in error["message"], error
    assert task_count(frozen_api.client("viewer")) == 0


@pytest.mark.parametrize(
    "raw",
    [
        b'{"hostIds": [1' + b"0" * 5000 + b"]}",  # more digits than Python's int() parses
        b'{"hostIds": [1e999]}',  # infinity
        b'{"hostIds": [NaN]}',
        b'{"hostIds": [1,]}',
        b"[1, 2]",
        b"null",
        b"",
    ],
)
def test_a_body_that_is_not_a_batch_is_400(frozen_api: ApiServer, raw: bytes) -> None:
    client = frozen_api.client("hostman")
    response = client.post(BATCHES[0], content=raw, headers={"Content-Type": "application/json"})
    bad_request(response)
    assert task_count(frozen_api.client("viewer")) == 0


@pytest.mark.parametrize("key", ["hostIds", "hostids"])
def test_either_spelling_alone_is_taken(frozen_api: ApiServer, hosts: list[int], key: str) -> None:
    client = frozen_api.client("hostman")
    response = client.post(BATCHES[0], json={key: [2, 1]})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["context"]["listMap"]["host_ids"] == ["2", "1"]


def test_a_whole_number_written_as_a_float_is_that_integer(
    frozen_api: ApiServer, hosts: list[int]
) -> None:
    # JSON Schema, which the OpenAPI schema is, counts 2.0 as the integer 2; it names host 2 only.
    client = frozen_api.client("hostman")
    response = client.post(
        BATCHES[0], content=b'{"hostIds": [2.0]}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["context"]["listMap"]["host_ids"] == ["2"]


BAD_IDS = ["0", "-1", str(MAX_ID + 1), str(2**63), str(2**64), "1" * 40, "1.5", "true", "1e3"]
ID_PATHS = [
    ("GET", TASKS + "/{id}"),
    ("POST", TASKS + "/{id}/retry"),
    ("POST", TASKS + "/{id}/rollback"),
    ("GET", TASKS + "/1/subtasks/{id}/log"),
    ("GET", TASKS + "/{id}/subtasks/1/log"),
    ("POST", TASKS + "/1/subtasks/{id}/retry"),
    ("POST", TASKS + "/{id}/subtasks/1/skip"),
    ("POST", TASKS + "/1/subtasks/{id}/cancel"),
    ("POST", "/compute/hosts/{id}/agent/stop"),
    ("POST", "/compute/hosts/{id}/agent/restart"),
]


@pytest.mark.parametrize(("method", "path"), ID_PATHS)
def test_an_id_in_a_path_is_bounded(shared_api: ApiServer, method: str, path: str) -> None:
    client = shared_api.client("admin")
    for bad in BAD_IDS:
        error = bad_request(client.request(method, path.format(id=bad)))
        assert error["target"] in ("id", "subtask_id", "hostId"), error
    # The largest id it takes reaches the store, which does not have it.
    largest = client.request(method, path.format(id=MAX_ID))
    assert largest.status_code == 404, largest.text
    assert task_count(shared_api.client("viewer")) == 0


@pytest.mark.parametrize(
    "query",
    [
        {"page": "0"},
        {"page": str(2**31)},
        {"page": str(2**63)},
        {"page": "1" * 40},
        {"page": "1.5"},
        {"page": "true"},
        {"size": "0"},
        {"size": "2001"},
        {"size": str(2**64)},
        {"hostId": "0"},
        {"hostId": str(MAX_ID + 1)},
        {"hostId": str(2**63)},
        {"hostId": "x"},
    ],
)
def test_list_queries_are_bounded(shared_api: ApiServer, query: dict[str, str]) -> None:
    error = bad_request(shared_api.client("viewer").get(TASKS, params=query))
    assert error["target"] == next(iter(query)), error


def test_list_queries_at_their_bounds_answer_an_empty_page(shared_api: ApiServer) -> None:
    client = shared_api.client("viewer")
    for query in ({"page": str(2**31 - 1), "size": "2000"}, {"hostId": str(MAX_ID)}):
        response = client.get(TASKS, params=query)
        assert response.status_code == 200, response.text
        assert response.json()["data"]["contents"] == []
