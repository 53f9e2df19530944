"""The template compatibility check: what a new template version means for a recorded task."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dagtask import Engine, TaskInfo, TaskTemplate, TemplateBuilder, history
from dagtask.history import IssueKind
from tests.history import support

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "ocp"
H = "tests.handlers.Undoable"


def variant(**changes: object) -> TaskTemplate:
    """support.template() with some specs changed: name -> None (removed) or a dict of fields."""
    base = support.template(retries=0)
    specs = []
    for spec in base.subtasks:
        data = spec.model_dump()
        change = changes.get(spec.name, {})
        if change is None:
            continue
        assert isinstance(change, dict)
        data.update(change)
        specs.append(data)
    specs.extend(changes.get("_added", []))  # type: ignore[arg-type]
    return TaskTemplate.parse({**base.definition(), "subtasks": specs})


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(f"sqlite:///{tmp_path / 'compat.db'}", workers=2) as engine:
        yield engine


@pytest.fixture
def failed(engine: Engine) -> TaskInfo:
    """A task of support.template(retries=0) whose ``finish`` failed (the others succeeded)."""
    task = engine.run(support.template(retries=0), args={"fail": "finish"}, timeout=support.WAIT)
    assert task.status.value == "FAILED"
    return task


def kinds(report: history.CompatReport) -> set[tuple[IssueKind, str]]:
    return {(i.kind, i.subtask) for i in report.issues}


def test_the_same_template_fits(engine: Engine, failed: TaskInfo) -> None:
    report = history.check_compat(engine, failed.id, support.template(retries=0))
    assert report.compatible and report.issues == [] and report.first_misfit_step is None
    assert report.recorded_template == "History demo v1"


def test_a_renamed_subtask_blocks_retry_and_rollback(engine: Engine, failed: TaskInfo) -> None:
    report = history.check_compat(engine, failed.id, variant(finish={"name": "finalise"}))
    assert kinds(report) == {(IssueKind.RENAMED, "finish")}
    assert not report.retry_ok and not report.rollback_ok


def test_a_removed_subtask_that_ran_blocks_rollback_only(engine: Engine, failed: TaskInfo) -> None:
    candidate = variant(side=None, finish={"upstreams": ["work"]})
    report = history.check_compat(engine, failed.id, candidate)
    assert kinds(report) == {(IssueKind.REMOVED, "side"), (IssueKind.LINKS_CHANGED, "finish")}
    removed = next(i for i in report.issues if i.kind is IssueKind.REMOVED)
    assert removed.blocks_rollback and not removed.blocks_retry  # side succeeded: no retry
    assert not report.retry_ok  # finish is retried, and its links changed


def test_a_changed_handler_of_a_successful_subtask_blocks_rollback(
    engine: Engine, failed: TaskInfo
) -> None:
    report = history.check_compat(engine, failed.id, variant(prepare={"handler": "x.y.Prepare"}))
    assert kinds(report) == {(IssueKind.HANDLER_CHANGED, "prepare")}
    assert report.retry_ok and not report.rollback_ok
    # Replaying the history: the very first attempt ran prepare's old handler.
    first = next(e for e in history.events(engine, failed.id) if e.kind == "attempt_started")
    assert report.first_misfit_step == first.step


def test_additions_and_settings_are_informational(engine: Engine, failed: TaskInfo) -> None:
    added = {"name": "audit", "handler": H, "upstreams": ["finish"]}
    report = history.check_compat(engine, failed.id, variant(work={"timeout": 99}, _added=[added]))
    assert kinds(report) == {(IssueKind.ADDED, "audit"), (IssueKind.SETTINGS_CHANGED, "work")}
    assert report.compatible


def test_an_ocp_task_is_checked_by_subtask_names(engine: Engine) -> None:
    [item] = history.import_files(engine, [SAMPLES / "task-detail.json"])
    task = engine.get(item.task_id)
    names = {s.id: s.name for s in task.subtasks}
    t = TemplateBuilder("Reinstall OCP agent")
    for sub in task.subtasks:  # the same DAG, with handlers of our own
        t.add(sub.name, "mypkg.Step", after=[names[u] for u in sub.upstreams])
    report = history.check_compat(engine, item.task_id, t.build())
    # The document records no className: every handler is reported as changed.
    assert {i.kind for i in report.issues} == {IssueKind.HANDLER_CHANGED}
    assert report.retry_ok and not report.rollback_ok  # all SUCCESSFUL, all ran
