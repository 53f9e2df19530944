"""OCP task documents import as historical tasks; anything else is refused, saying what it is."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagtask import ArgumentError, Engine, OperationNotAllowedError, TaskStatus, history, views
from dagtask.history import typed

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "ocp"

NOT_TASKS = {
    "api-error-envelope-429.json": "an OCP error response (error code 0",
    "cancel-subtask.json": "without data",
    "skip-subtask.json": "without data",
    "retry-subtask.json": "a single subtask",
    "subtask-log.json": "a subtask log",
    "retry-subtask.json.txt": "line 26: not valid JSON",
}
"""Documents in OCP's samples that are not tasks, and what the refusal says."""


def task_objects(document: object) -> list[dict[str, object]]:
    """The task objects of a sample, found independently of the importer."""
    data = document.get("data", document) if isinstance(document, dict) else document
    if isinstance(data, dict) and isinstance(data.get("contents"), list):
        return list(data["contents"])
    if isinstance(data, dict) and ("subtasks" in data or "tasks" in data):
        return [data]
    return []


TASK_SAMPLES = sorted(
    p.name
    for p in SAMPLES.glob("*.json")
    if not p.name.endswith(".request.json") and p.name not in NOT_TASKS
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(f"sqlite:///{tmp_path / 'ocp.db'}", workers=0) as engine:
        yield engine


def test_the_samples_are_what_this_test_expects() -> None:
    every = {p.name for p in SAMPLES.iterdir() if p.name != "INDEX.md"}
    assert len(every) == 61
    requests = {name for name in every if name.endswith(".request.json")}
    assert every == set(TASK_SAMPLES) | set(NOT_TASKS) | requests
    assert len(TASK_SAMPLES) == 39
    objects = [task_objects(json.loads((SAMPLES / n).read_text())) for n in TASK_SAMPLES]
    assert sum(len(found) for found in objects) == 40  # query-task-list.json holds two


@pytest.mark.parametrize("name", TASK_SAMPLES)
def test_every_task_sample_imports_as_a_historical_task(engine: Engine, name: str) -> None:
    document = json.loads((SAMPLES / name).read_text())
    expected = task_objects(document)
    assert expected, f"{name} holds no task object"
    done = history.import_files(engine, [SAMPLES / name])
    assert [d.original_id for d in done] == [t["id"] for t in expected]
    for item, raw in zip(done, expected, strict=True):
        task = engine.get(item.task_id)
        assert task.historical and task.name == raw["name"]
        assert task.status.value == raw["status"]
        assert task.origin is not None and task.origin["task_id"] == raw["id"]
        raw_subs = raw.get("subtasks") or raw.get("tasks")
        assert isinstance(raw_subs, list)
        by_original = {s.original_id: s for s in task.subtasks}
        assert set(by_original) == {s["id"] for s in raw_subs}
        for raw_sub in raw_subs:
            sub = by_original[raw_sub["id"]]
            assert (sub.name, sub.status.value, sub.operation.value) == (
                raw_sub["name"],
                raw_sub["status"],
                raw_sub["operation"],
            )
            ups = {by_original[u].id for u in raw_sub.get("upstreams", [])}
            assert set(sub.upstreams) == ups
        # Shown like a native task: OCP JSON, history, replay.
        body = views.task_json(task)
        assert body["name"] == raw["name"] and len(body["subtasks"]) == len(raw_subs)
        h = history.task_history(engine, item.task_id)
        assert isinstance(h.events[0], typed.TaskSubmitted)
        assert f"OCP task {raw['id']}" in (h.events[0].message or "")
        assert history.replay(engine, item.task_id) == history.snapshot(engine, item.task_id)
    # Historical: nothing is claimable, whatever the document says.
    assert not engine.store.any_ready()
    assert engine.store.claim("worker", limit=100) == []


@pytest.mark.parametrize("name", sorted(NOT_TASKS))
def test_documents_that_are_not_tasks_are_refused(engine: Engine, name: str) -> None:
    with pytest.raises(ArgumentError) as caught:
        history.import_files(engine, [SAMPLES / name])
    message = str(caught.value)
    assert name in message and NOT_TASKS[name] in message and "nothing was imported" in message
    assert engine.list().total_elements == 0


def test_request_bodies_are_refused(engine: Engine) -> None:
    for path in sorted(SAMPLES.glob("*.request.json")):
        with pytest.raises(ArgumentError, match=r"not an OCP task document.*request body"):
            history.import_files(engine, [path])
    assert engine.list().total_elements == 0


def test_a_finished_task_keeps_its_attempts_and_cannot_be_acted_on(engine: Engine) -> None:
    [item] = history.import_files(engine, [SAMPLES / "task-detail.json"])
    raw = json.loads((SAMPLES / "task-detail.json").read_text())["data"]
    attempts = history.attempts(engine, item.task_id)
    assert len(attempts) == len(raw["subtasks"])
    assert {a.worker for a in attempts} == {s["executor"] for s in raw["subtasks"]}
    assert all(a.result is typed.Result.SUCCEEDED and a.duration is not None for a in attempts)
    task = engine.get(item.task_id)
    assert task.finish_time is not None and task.status.value == "SUCCESSFUL"
    with pytest.raises(OperationNotAllowedError, match="is a historical record"):
        engine.rollback(item.task_id, operator="mallory")
    with pytest.raises(OperationNotAllowedError, match=f"dagtask rerun {item.task_id}"):
        engine.retry(item.task_id)
    sub = engine.get(item.task_id).subtasks[0]
    with pytest.raises(OperationNotAllowedError, match="is a historical record"):
        engine.skip_subtask(item.task_id, sub.id)


def test_the_older_tasks_shape_and_its_java_context(engine: Engine) -> None:
    [item] = history.import_files(engine, [SAMPLES / "stop-ob-cluster.json"])
    task = engine.get(item.task_id)
    assert task.context.string_map["cluster_name"] == "ob_upgrade"
    assert task.context.list_map["zone_names"] == ["zone1"]
    assert task.cluster_id == 21 and task.creator == "admin"
    assert task.origin is not None and task.origin["context_text"].startswith("Context(")
    [item] = history.import_files(engine, [SAMPLES / "create-ob-cluster.json"])
    strings = engine.get(item.task_id).context.string_map
    assert strings["startup_option_string"] == "system_memory=5G"  # a value holding "="
    assert strings["primary_zone"] == ""
    running = [s for s in task.subtasks if s.status.value == "RUNNING"]
    assert len(running) == 1  # as recorded, though nothing runs it here


def test_a_finished_rollback_in_a_task_list_is_a_rollback(engine: Engine) -> None:
    done = history.import_files(engine, [SAMPLES / "query-task-list.json"])
    prepare = engine.get(done[0].task_id)
    assert (prepare.status.value, prepare.operation.value) == ("SUCCESSFUL", "ROLLBACK")


def test_a_bad_task_document_names_the_json_path(engine: Engine, tmp_path: Path) -> None:
    document = json.loads((SAMPLES / "stop-ocp-agent.json").read_text())
    document["data"]["subtasks"][1]["status"] = "DONE"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    with pytest.raises(ArgumentError, match=r"bad.json \$\.data\.subtasks\[1\]\.status: \"DONE\""):
        history.import_files(engine, [SAMPLES / "stop-ocp-agent.json", bad])
    assert engine.list().total_elements == 0
    document["data"]["subtasks"][1]["status"] = "READY"
    document["data"]["subtasks"][1]["upstreams"] = [42]
    bad.write_text(json.dumps(document))
    with pytest.raises(ArgumentError, match="upstreams names 42, which is not a subtask"):
        history.import_files(engine, [bad])


def test_all_task_samples_import_at_once_on_every_database(db_url: str) -> None:
    with Engine(db_url, workers=0) as engine:
        done = history.import_files(engine, [SAMPLES / name for name in TASK_SAMPLES])
        assert len(done) == 40
        page = engine.list(size=100)
        assert page.total_elements == 40 and all(t.historical for t in page.tasks)
        running = engine.list(size=100, statuses=[TaskStatus.RUNNING])
        assert running.total_elements == sum(1 for t in page.tasks if t.status.value == "RUNNING")
        assert engine.store.claim("worker", limit=1000) == []
        last = done[-1].task_id
        assert history.replay(engine, last) == history.snapshot(engine, last)


def test_a_document_whose_links_form_a_cycle_is_refused(engine: Engine, tmp_path: Path) -> None:
    document = json.loads((SAMPLES / "restart-ocp-agent.json").read_text())
    subs = document["data"]["subtasks"]
    root = next(s for s in subs if not s["upstreams"])
    sink = next(s for s in subs if not s["downstreams"])
    root["upstreams"] = [sink["id"]]  # the sink now also precedes the root
    bad = tmp_path / "cycle.json"
    bad.write_text(json.dumps(document))
    with pytest.raises(ArgumentError, match="links form a cycle"):
        history.import_files(engine, [bad])
    assert engine.list().total_elements == 0
