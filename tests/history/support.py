"""Shared by the history tests: tasks with a rich history (failures, retries, operator actions)."""

from __future__ import annotations

import json
from typing import Any

from dagtask import Engine, TaskInfo, TaskTemplate, TemplateBuilder

WAIT = 60.0
"""Seconds a task may take to end in these tests."""


def template(name: str = "History demo", *, retries: int = 1) -> TaskTemplate:
    """prepare -> (work, side) -> finish; ``work`` is retried ``retries`` times automatically."""
    t = TemplateBuilder(name, concurrency=2)
    t.add("prepare", "tests.handlers.Undoable")
    t.add("work", "tests.handlers.Undoable", after=["prepare"], retry_count=retries)
    t.add("side", "tests.handlers.Undoable", after=["prepare"])
    t.add("finish", "tests.handlers.Undoable", after=["work", "side"])
    return t.build()


def failed_then_retried_then_skipped(engine: Engine) -> TaskInfo:
    """A task whose ``work`` fails (twice: one automatic retry), that alice retries (it fails
    again) and bob skips; it then ends SUCCESSFUL."""
    task = engine.submit(template(), args={"fail": "work"}, creator="carol")
    assert engine.run_task(task.id, WAIT).status.value == "FAILED"
    engine.retry(task.id, operator="alice")
    assert engine.run_task(task.id, WAIT).status.value == "FAILED"
    work = engine.get(task.id).subtask("work")
    engine.skip_subtask(task.id, work.id, operator="bob")
    final = engine.run_task(task.id, WAIT)
    assert final.status.value == "SUCCESSFUL"
    return final


def failed_then_rolled_back(engine: Engine) -> TaskInfo:
    """A task whose ``finish`` fails; dave rolls it back; it ends SUCCESSFUL / ROLLBACK."""
    task = engine.submit(template(retries=0), args={"fail": "finish"})
    assert engine.run_task(task.id, WAIT).status.value == "FAILED"
    engine.rollback(task.id, operator="dave")
    final = engine.run_task(task.id, WAIT)
    assert (final.status.value, final.operation.value) == ("SUCCESSFUL", "ROLLBACK")
    return final


def normalise(text: str) -> list[Any]:
    """An export's lines as JSON with every id replaced by its position of first appearance, so
    two exports of the same task from different databases compare equal (log texts are copied
    as they are, ids in them included)."""
    seen: dict[tuple[str, int], int] = {}

    def ref(kind: str, value: Any) -> Any:
        if not isinstance(value, int):
            return value
        return f"{kind}#{seen.setdefault((kind, value), len(seen))}"

    out = []
    for line in text.splitlines():
        data = json.loads(line)
        kind = data["record"]
        if kind in ("header", "end"):
            data["task_id"] = ref("task", data["task_id"])
        if kind == "task":
            data["id"] = ref("task", data["id"])
        if kind == "subtask":
            data["id"] = ref("subtask", data["id"])
        if kind == "edge":
            data["upstream_id"] = ref("subtask", data["upstream_id"])
            data["downstream_id"] = ref("subtask", data["downstream_id"])
        if kind == "event":
            data["id"] = ref("event", data["id"])
            data["subtask_id"] = ref("subtask", data["subtask_id"])
        if kind == "log":
            data["subtask_id"] = ref("subtask", data["subtask_id"])
        out.append(data)
    return out
