"""Task and subtask endpoints over HTTP against the real store (SPEC §4, §7)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from dagtask import Engine, TaskTemplate, TemplateBuilder, fidelity
from tests.api.support import ApiServer, sample, task_over_http, until, wait_for_end
from tests.integration.test_golden_stop_agent import assert_same_shape

TASKS = "/api/v2/tasks/instances"


def chain(name: str, handler: str = "tests.handlers.record", *, steps: int = 3) -> TaskTemplate:
    """a -> b -> c ... all running ``handler``."""
    t = TemplateBuilder(name)
    previous: list[str] = []
    for step in "abcdefgh"[:steps]:
        previous = [t.add(step, handler, after=previous)]
    return t.build()


def sub(task: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in task["subtasks"] if s["name"] == name)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["successful"], body["status"]) == (False, status)
    return dict(body["error"])


# ---- reads ---------------------------------------------------------------------------------------


def test_task_detail_is_the_task_with_its_subtasks(api: ApiServer, engine: Engine) -> None:
    task = engine.run(chain("detail"), timeout=30)
    response = api.client("viewer").get(f"{TASKS}/{task.id}")
    assert response.status_code == 200
    body = response.json()
    # The envelope of OCP's task-detail sample; the task has our task object's keys.
    assert set(body) == set(sample("task-detail.json"))
    data = body["data"]
    assert (data["id"], data["name"], data["status"]) == (task.id, "detail", "SUCCESSFUL")
    assert [s["name"] for s in data["subtasks"]] == ["a", "b", "c"]
    assert all(s["status"] == "SUCCESSFUL" and "finishTime" in s for s in data["subtasks"])
    assert "finishTime" in data
    # Every key of OCP's task detail is there, at the task and at each subtask.
    reference = sample("task-detail.json")["data"]
    assert set(reference) <= set(data), sorted(set(reference) - set(data))
    for sub in data["subtasks"]:
        assert set(reference["subtasks"][0]) <= set(sub), sorted(
            set(reference["subtasks"][0]) - set(sub)
        )
    assert data["prohibitRollback"] is False and data["createTime"] <= data["startTime"]


def test_unknown_task_is_20000_in_a_404(api: ApiServer) -> None:
    client = api.client("admin")
    error = error_of(client.get(f"{TASKS}/987654"), 404)
    assert error["code"] == 20000
    for path in ("retry", "rollback", "subtasks/1/retry", "subtasks/1/skip", "subtasks/1/cancel"):
        assert error_of(client.post(f"{TASKS}/987654/{path}"), 404)["code"] == 20000
    assert error_of(client.get(f"{TASKS}/987654/subtasks/1/log"), 404)["code"] == 20000


def test_subtask_log_has_every_attempt(api: ApiServer, engine: Engine) -> None:
    task = engine.run(chain("logs", "tests.handlers.chatty", steps=1), timeout=30)
    response = api.client("viewer").get(f"{TASKS}/{task.id}/subtasks/{task.subtasks[0].id}/log")
    assert response.status_code == 200
    body = response.json()
    assert_same_shape(body, sample("subtask-log.json"))
    log = body["data"]["log"]
    assert log.startswith("############{EXECUTE}{")
    assert f"Set state for subtask: {task.subtasks[0].id}" in log
    assert log == engine.logs(task.id, task.subtasks[0].id)


def test_the_whole_task_log_download_is_a_zip_per_subtask_and_attempt(
    api: ApiServer, engine: Engine
) -> None:
    t = TemplateBuilder("download")
    t.add("wobbly", "tests.handlers.flaky", retry_count=1)
    t.add("talk", "tests.handlers.chatty", after=["wobbly"])
    task = engine.run(t.build(), args={"fail_times": "1", "api_token": "tok-zyxwv"}, timeout=30)
    wobbly, talk = task.subtask("wobbly"), task.subtask("talk")
    response = api.client("viewer").get(f"{TASKS}/{task.id}/log/download")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert f'filename="task-{task.id}-logs.zip"' in response.headers["content-disposition"]
    assert response.headers["x-trace-id"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = sorted(archive.namelist())
        assert names == sorted(
            [
                "task.json",
                "history.txt",
                f"logs/{wobbly.id}-wobbly/attempt-1.log",
                f"logs/{wobbly.id}-wobbly/attempt-2.log",
                f"logs/{talk.id}-talk/attempt-1.log",
            ]
        )
        for run_time in (1, 2):
            text = archive.read(f"logs/{wobbly.id}-wobbly/attempt-{run_time}.log").decode()
            assert text == engine.logs(task.id, wobbly.id, attempt=run_time)
        assert json.loads(archive.read("task.json"))["id"] == task.id
        everything = b"".join(archive.read(n) for n in names)
    assert b"tok-zyxwv" not in everything and b"******" in everything
    missing = api.client("viewer").get(f"{TASKS}/987654/log/download")
    assert error_of(missing, 404)["code"] == 20000
    assert api.client(None).get(f"{TASKS}/{task.id}/log/download").status_code == 401


def test_log_of_a_subtask_of_another_task_is_404(api: ApiServer, engine: Engine) -> None:
    one = engine.run(chain("one", steps=1), timeout=30)
    two = engine.run(chain("two", steps=1), timeout=30)
    response = api.client("viewer").get(f"{TASKS}/{one.id}/subtasks/{two.subtasks[0].id}/log")
    assert error_of(response, 404)["code"] == 20000


# ---- task list: paging, filters, sort ------------------------------------------------------------


@pytest.fixture
def seven_tasks(engine: Engine) -> list[int]:
    """Four SUCCESSFUL tasks "ok-0".."ok-3" and three FAILED "bad-0".."bad-2", in id order."""
    ids = []
    for i in range(7):
        good = i % 2 == 0
        name = f"ok-{i // 2}" if good else f"bad-{i // 2}"
        args = {} if good else {"fail": "b"}
        ids.append(engine.run(chain(name), args=args, timeout=30).id)
    return ids


def page_of(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get(TASKS, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json()["data"])


def test_paging_counts_from_1_newest_first(api: ApiServer, seven_tasks: list[int]) -> None:
    client = api.client("viewer")
    first = page_of(client, page=1, size=3)
    assert first["page"] == {"number": 1, "size": 3, "totalElements": 7, "totalPages": 3}
    assert [t["id"] for t in first["contents"]] == seven_tasks[::-1][:3]
    last = page_of(client, page=3, size=3)
    assert [t["id"] for t in last["contents"]] == [seven_tasks[0]]
    beyond = page_of(client, page=4, size=3)
    assert beyond["contents"] == [] and beyond["page"]["totalElements"] == 7
    default = page_of(client)
    assert default["page"]["number"] == 1 and len(default["contents"]) == 7
    # Items carry basic subtasks, as in OCP's list sample.
    item = first["contents"][0]
    assert set(item["subtasks"][0]) == {"id", "name", "description", "status", "operation"}


def test_list_sorts_by_id(api: ApiServer, seven_tasks: list[int]) -> None:
    client = api.client("viewer")
    assert [t["id"] for t in page_of(client, sort="id,asc")["contents"]] == seven_tasks
    assert [t["id"] for t in page_of(client, sort="id,desc")["contents"]] == seven_tasks[::-1]
    assert [t["id"] for t in page_of(client, sort="id")["contents"]] == seven_tasks[::-1]


def test_list_filters_by_name_status_type_and_host(
    api: ApiServer, engine: Engine, seven_tasks: list[int], tmp_path: Path
) -> None:
    client = api.client("viewer")
    bad = page_of(client, name="bad")
    assert sorted(t["name"] for t in bad["contents"]) == ["bad-0", "bad-1", "bad-2"]
    failed = page_of(client, status="FAILED")
    assert {t["status"] for t in failed["contents"]} == {"FAILED"}
    assert failed["page"]["totalElements"] == 3
    both = page_of(client, status="FAILED,SUCCESSFUL", name="ok")
    assert both["page"]["totalElements"] == 4
    assert page_of(client, status="RUNNING")["contents"] == []
    assert page_of(client, type="MANUAL")["page"]["totalElements"] == 7
    assert page_of(client, type="SCHEDULED,SYS_SCHEDULED")["page"]["totalElements"] == 0
    manual = page_of(client, type="MANUAL,SYS_ONCE", size=2, page=2, sort="id,asc")
    assert [t["id"] for t in manual["contents"]] == seven_tasks[2:4]
    assert manual["page"] == {"number": 2, "size": 2, "totalElements": 7, "totalPages": 4}

    host = engine.hosts.add(name="h", inner_ip="127.0.0.1", agent_home=str(tmp_path / "h"))
    on_host = api.client("hostman").post(f"/compute/hosts/{host.id}/agent/stop")
    wait_for_end(client, on_host.json()["data"]["id"])
    by_host = page_of(client, hostId=host.id)
    assert [t["id"] for t in by_host["contents"]] == [on_host.json()["data"]["id"]]
    assert by_host["contents"][0]["hostId"] == host.id


@pytest.mark.parametrize(
    ("params", "target"),
    [
        ({"size": 2001}, "size"),
        ({"size": 0}, "size"),
        ({"page": 0}, "page"),
        ({"page": "first"}, "page"),
        ({"status": "DONE"}, "status"),
        ({"type": "manual"}, "type"),
        ({"sort": "name,asc"}, "sort"),
        ({"hostId": -1}, "hostId"),
    ],
)
def test_bad_list_parameters_are_400_naming_the_parameter(
    shared_api: ApiServer, params: dict[str, Any], target: str
) -> None:
    error = error_of(shared_api.client("viewer").get(TASKS, params=params), 400)
    assert error["code"] == 400 and error["target"] == target
    assert [s["target"] for s in error["subErrors"]] == [target]


def test_the_largest_page_size_is_accepted(api: ApiServer, seven_tasks: list[int]) -> None:
    assert page_of(api.client("viewer"), size=2000)["page"]["totalPages"] == 1


# ---- actions -------------------------------------------------------------------------------------


def test_retry_task_runs_the_failed_subtask_again(api: ApiServer, engine: Engine) -> None:
    task = engine.run(chain("flaky", "tests.handlers.flaky", steps=1), args={"fail_times": "1"})
    assert task.status == "FAILED"
    response = api.client("manager").post(f"{TASKS}/{task.id}/retry")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == set(sample("retry-task.json"))
    # The workers may already have finished the retry by the time the answer is rendered.
    assert body["data"]["operation"] == "RETRY"
    assert body["data"]["status"] in ("RUNNING", "SUCCESSFUL")
    final = wait_for_end(api.client("viewer"), task.id)
    assert final["status"] == "SUCCESSFUL"
    assert (final["subtasks"][0]["runTime"], final["subtasks"][0]["operation"]) == (2, "RETRY")
    # The operator is the authenticated user, as the history records it.
    retried = [e for e in engine.events(task.id) if e.kind == "TASK_STATUS" and e.executor]
    assert [(e.new_status, e.executor) for e in retried] == [("RUNNING", "manager")]


def test_retry_of_a_successful_task_is_20003_in_a_409(api: ApiServer, engine: Engine) -> None:
    task = engine.run(chain("fine"), timeout=30)
    error = error_of(api.client("manager").post(f"{TASKS}/{task.id}/retry"), 409)
    assert error["code"] == 20003


def test_refusals_answer_400_as_ocp_does_with_the_switch(
    api: ApiServer, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fine = engine.run(chain("fine"), timeout=30)
    guarded = engine.run(chain("guarded", "tests.handlers.Guarded"), args={"fail": "c"})
    monkeypatch.setenv(fidelity.VARIABLE, "http_400")
    fidelity.configure(None)  # read the variable again
    try:
        manager = api.client("manager")
        assert error_of(manager.post(f"{TASKS}/{fine.id}/retry"), 400)["code"] == 20003
        assert error_of(manager.post(f"{TASKS}/{guarded.id}/rollback"), 400)["code"] == 20004
        # Only the refusals: a missing task is still 404.
        assert error_of(manager.post(f"{TASKS}/987654/retry"), 404)["code"] == 20000
    finally:
        fidelity.configure(None)
        monkeypatch.delenv(fidelity.VARIABLE)
    assert error_of(api.client("manager").post(f"{TASKS}/{fine.id}/retry"), 409)["code"] == 20003


def test_rollback_undoes_the_task(api: ApiServer, engine: Engine) -> None:
    task = engine.run(chain("undo", "tests.handlers.Undoable"), args={"fail": "c"}, timeout=30)
    assert task.status == "FAILED"
    response = api.client("manager").post(f"{TASKS}/{task.id}/rollback")
    assert response.status_code == 200, response.text
    assert response.json()["data"]["operation"] == "ROLLBACK"
    final = wait_for_end(api.client("viewer"), task.id)
    assert (final["status"], final["operation"]) == ("SUCCESSFUL", "ROLLBACK")
    assert {s["status"] for s in final["subtasks"]} == {"PENDING"}


def test_prohibited_rollback_is_20004_in_a_409(api: ApiServer, engine: Engine) -> None:
    task = engine.run(chain("guarded", "tests.handlers.Guarded"), args={"fail": "c"}, timeout=30)
    error = error_of(api.client("manager").post(f"{TASKS}/{task.id}/rollback"), 409)
    assert error["code"] == 20004


def test_subtask_retry_answers_the_subtask(api: ApiServer, engine: Engine) -> None:
    task = engine.run(chain("flaky", "tests.handlers.flaky", steps=1), args={"fail_times": "1"})
    failed = next(s for s in task.subtasks if s.status == "FAILED")
    response = api.client("manager").post(f"{TASKS}/{task.id}/subtasks/{failed.id}/retry")
    assert response.status_code == 200, response.text
    body = response.json()
    reference = sample("retry-subtask.json")
    assert set(body) == set(reference)
    data = body["data"]
    assert (data["id"], data["operation"], data["runTime"]) == (failed.id, "RETRY", 2)
    assert set(data) <= set(reference["data"]) | {"className"}
    assert wait_for_end(api.client("viewer"), task.id)["status"] == "SUCCESSFUL"


def test_subtask_skip_answers_no_data_and_the_task_goes_on(api: ApiServer, engine: Engine) -> None:
    task = engine.run(chain("skippy"), args={"fail": "b"}, timeout=30)
    b = task.subtask("b")
    response = api.client("manager").post(f"{TASKS}/{task.id}/subtasks/{b.id}/skip")
    assert response.status_code == 200, response.text
    assert set(response.json()) == set(sample("skip-subtask.json"))
    final = wait_for_end(api.client("viewer"), task.id)
    assert final["status"] == "SUCCESSFUL"
    assert (sub(final, "b")["status"], sub(final, "b")["operation"]) == ("SUCCESSFUL", "SKIP")
    assert sub(final, "c")["status"] == "SUCCESSFUL"


def test_subtask_cancel_interrupts_a_running_subtask(api: ApiServer, engine: Engine) -> None:
    task = engine.submit(
        chain("sleepy", "tests.handlers.sleep_with_token", steps=1), args={"seconds": "60"}
    )
    viewer = api.client("viewer")
    subtask_id = task.subtasks[0].id
    until(lambda: task_over_http(viewer, task.id)["subtasks"][0]["status"] == "RUNNING")
    response = api.client("manager").post(f"{TASKS}/{task.id}/subtasks/{subtask_id}/cancel")
    assert response.status_code == 200, response.text
    assert set(response.json()) == set(sample("cancel-subtask.json"))
    final = wait_for_end(viewer, task.id)
    assert final["status"] == "FAILED"
    assert (final["subtasks"][0]["status"], final["subtasks"][0]["operation"]) == (
        "FAILED",
        "CANCEL",
    )


def test_cancel_of_a_subtask_that_is_not_running_is_20003(api: ApiServer, engine: Engine) -> None:
    task = engine.run(chain("done", steps=1), timeout=30)
    path = f"{TASKS}/{task.id}/subtasks/{task.subtasks[0].id}/cancel"
    assert error_of(api.client("manager").post(path), 409)["code"] == 20003
