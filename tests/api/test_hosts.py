"""Host operations over HTTP: the new task in the shape of OCP's samples; real agents stop."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagtask import Engine
from dagtask.hosts.connector import connector_for
from dagtask.models import HostInfo
from tests.api.support import ApiServer, sample, wait_for_end
from tests.integration.test_builtin_templates import (
    ISO_MS,
    TASK_OWN,
    assert_links_consistent,
    chain,
    names_by_id,
    signature,
)
from tests.integration.test_golden_stop_agent import assert_same_shape


def add_host(engine: Engine, tmp_path: Path, name: str = "web-1") -> HostInfo:
    return engine.hosts.add(name=name, inner_ip="127.0.0.1", agent_home=str(tmp_path / name))


def alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def agent_host(engine: Engine, tmp_path: Path) -> Iterator[HostInfo]:
    """A host whose OCP agent processes (the local stub) are running."""
    host = add_host(engine, tmp_path)
    pids = connector_for(host).start_agent(host, log=logging.getLogger("test"))
    yield host
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def assert_matches_sample(ours: dict[str, Any], sample_name: str, hosts: list[HostInfo]) -> None:
    """The envelope and its task match OCP's sample key for key, type for type, and value for
    value apart from what is ours by nature (ids, times, executor, className, hosts)."""
    reference = sample(sample_name)
    ours = json.loads(json.dumps(ours))
    assert_same_shape(ours, reference)
    assert (ours["status"], ours["successful"]) == (200, True)
    assert ISO_MS.match(ours["timestamp"]), ours["timestamp"]
    task, ref = ours["data"], reference["data"]
    for key in set(ref) - TASK_OWN:
        assert task[key] == ref[key], key
    context = ref["context"]
    if "hostId" in ref:
        assert task["hostId"] == hosts[0].id
        expected = {**context, "stringMap": {**context["stringMap"], "host_id": str(hosts[0].id)}}
    else:
        assert "hostId" not in task
        expected = {**context, "listMap": {"host_ids": [str(h.id) for h in hosts]}}
    assert task["context"] == expected
    our_names, ref_names = names_by_id(task), names_by_id(ref)
    assert Counter(signature(s, our_names) for s in task["subtasks"]) == Counter(
        signature(s, ref_names) for s in ref["subtasks"]
    )
    assert chain(task) == chain(ref)
    assert_links_consistent(task)
    for sub in task["subtasks"]:
        ocp_class = {s["name"]: s["className"] for s in ref["subtasks"]}[sub["name"]]
        assert sub["className"].endswith("." + ocp_class.rsplit(".", 1)[1]), sub["className"]


def test_stop_agent_answers_the_task_exactly_as_ocps_sample(
    frozen_api: ApiServer, frozen_engine: Engine, tmp_path: Path
) -> None:
    host = add_host(frozen_engine, tmp_path)
    response = frozen_api.client("hostman").post(f"/compute/hosts/{host.id}/agent/stop")
    assert response.status_code == 200, response.text
    body = response.json()
    assert_matches_sample(body, "stop-ocp-agent.json", [host])
    task = body["data"]
    # The golden sample's own values: the moment of submission, seriesId as in OCP.
    reference = sample("stop-ocp-agent.json")["data"]
    assert {s["name"]: (s["status"], s["seriesId"]) for s in task["subtasks"]} == {
        s["name"]: (s["status"], s["seriesId"]) for s in reference["subtasks"]
    }
    assert task["creator"] == "hostman"
    assert ISO_MS.match(task["startTime"])
    assert body["server"] == "test-server"


@pytest.mark.parametrize(
    ("path", "sample_name"),
    [
        ("/agent/restart", "restart-ocp-agent.json"),
        ("batchStopAgents", "stop-ocp-agents-batch.json"),
        ("batchRestartAgents", "restart-ocp-agents-batch.json"),
    ],
)
def test_other_host_operations_answer_in_the_shape_of_their_samples(
    frozen_api: ApiServer, frozen_engine: Engine, tmp_path: Path, path: str, sample_name: str
) -> None:
    host = add_host(frozen_engine, tmp_path)
    client = frozen_api.client("hostman")
    if path.startswith("/"):
        response = client.post(f"/compute/hosts/{host.id}{path}")
    else:
        # The request body of OCP's sample, with our host id (batch restart spells it hostids).
        request = sample(sample_name.replace(".json", ".request.json"))
        (key,) = request
        response = client.post(f"/compute/hosts/{path}", json={key: [host.id]})
    assert response.status_code == 200, response.text
    assert_matches_sample(response.json(), sample_name, [host])
    assert response.json()["data"]["creator"] == "hostman"


def test_batch_stop_acts_on_every_host(
    frozen_api: ApiServer, frozen_engine: Engine, tmp_path: Path
) -> None:
    hosts = [add_host(frozen_engine, tmp_path, f"h{i}") for i in range(3)]
    response = frozen_api.client("hostman").post(
        "/compute/hosts/batchStopAgents", json={"hostIds": [h.id for h in hosts]}
    )
    assert response.status_code == 200, response.text
    task = response.json()["data"]
    assert task["name"] == "Batch stop OCP agent"
    assert task["context"]["listMap"] == {"host_ids": [str(h.id) for h in hosts]}
    stops = [s for s in task["subtasks"] if s["name"] == "Stop all OCP agent processes"]
    assert sorted(s["parallelIdx"] for s in stops) == [0, 1, 2]


def test_stop_agent_over_http_stops_the_real_processes(
    api: ApiServer, agent_host: HostInfo
) -> None:
    pids = [p.pid for p in connector_for(agent_host).agent_processes(agent_host)]
    assert pids and all(alive(p) for p in pids)
    response = api.client("hostman").post(f"/compute/hosts/{agent_host.id}/agent/stop")
    assert response.status_code == 200, response.text
    task_id = response.json()["data"]["id"]

    viewer = api.client("viewer")
    final = wait_for_end(viewer, task_id)
    assert final["status"] == "SUCCESSFUL"
    assert [s["status"] for s in final["subtasks"]] == ["SUCCESSFUL"] * 3
    assert not any(alive(p) for p in pids)
    stop = next(s for s in final["subtasks"] if s["name"] == "Stop all OCP agent processes")
    log = viewer.get(f"/api/v2/tasks/instances/{task_id}/subtasks/{stop['id']}/log")
    assert log.status_code == 200
    assert "SIGTERM" in log.json()["data"]["log"]
    assert log.json()["data"]["log"].startswith("############{EXECUTE}{")


def test_unknown_host_is_404_and_no_task_is_made(frozen_api: ApiServer) -> None:
    client = frozen_api.client("hostman")
    response = client.post("/compute/hosts/4242/agent/stop")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == 404 and "host 4242 does not exist" in error["message"]
    batch = client.post("/compute/hosts/batchRestartAgents", json={"hostIds": [4242, 4243]})
    assert batch.status_code == 404
    assert "4242" in batch.json()["error"]["message"]
    listed = frozen_api.client("viewer").get("/api/v2/tasks/instances")
    assert listed.json()["data"]["page"]["totalElements"] == 0


def test_a_busy_host_is_409(frozen_api: ApiServer, frozen_engine: Engine, tmp_path: Path) -> None:
    host = add_host(frozen_engine, tmp_path)
    client = frozen_api.client("hostman")
    first = client.post(f"/compute/hosts/{host.id}/agent/stop")
    assert first.status_code == 200
    again = client.post(f"/compute/hosts/{host.id}/agent/restart")
    assert again.status_code == 409
    body = again.json()
    assert body["successful"] is False and body["status"] == 409
    assert body["error"]["target"] == f"hostId={host.id}"
    assert f"task {first.json()['data']['id']}" in body["error"]["message"]
    batch = client.post("/compute/hosts/batchStopAgents", json={"hostIds": [host.id]})
    assert batch.status_code == 409


@pytest.mark.parametrize(
    ("body", "target"),
    [
        ({}, "body"),
        ({"hostIds": []}, "hostIds"),
        ({"hostIds": [1, 1]}, "body"),
        ({"hostIds": [1], "hostids": [2, 2]}, "body"),
        ({"hostIds": ["one"]}, "hostIds[0]"),
        ({"hostIds": [0]}, "hostIds[0]"),
        ([1, 2], "body"),
    ],
)
def test_a_bad_batch_body_is_400_naming_the_field(
    shared_api: ApiServer, body: object, target: str
) -> None:
    response = shared_api.client("hostman").post("/compute/hosts/batchStopAgents", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 400
    assert target in [sub["target"] for sub in error["subErrors"]], error
