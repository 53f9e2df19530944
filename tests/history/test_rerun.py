"""Rerun and fork: a new task from a finished one's template and context, reusing outputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dagtask import (
    ArgumentError,
    Engine,
    OperationNotAllowedError,
    TaskNotFoundError,
    TemplateBuilder,
    TemplateError,
    history,
)
from tests import handlers
from tests.history import support

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "ocp"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(f"sqlite:///{tmp_path / 'rerun.db'}", workers=2) as engine:
        yield engine


def ran(task_id: int) -> list[str]:
    return [name for name, phase, _ in handlers.JOURNAL[task_id] if phase == "start"]


def test_rerun_runs_everything_again_with_the_same_context(engine: Engine) -> None:
    old = support.failed_then_retried_then_skipped(engine)
    new = history.rerun(engine, old.id, creator="erin")
    assert new.id != old.id and new.source_task_id == old.id and new.creator == "erin"
    assert new.template_id == old.template_id
    assert new.context == old.context  # fail=work: it fails again, as the old one did
    final = engine.run_task(new.id, support.WAIT)
    assert final.status.value == "FAILED" and final.subtask("work").status.value == "FAILED"
    assert sorted(ran(new.id)) == sorted(["prepare", "side", "work", "work"])
    first = history.events(engine, new.id)[0]
    assert isinstance(first, history.TaskSubmitted) and first.source_task_id == old.id


def test_rerun_from_a_subtask_reuses_the_outputs_of_what_does_not_depend_on_it(
    engine: Engine,
) -> None:
    old = engine.run(support.template(), timeout=support.WAIT)
    assert old.status.value == "SUCCESSFUL"
    new = history.rerun(engine, old.id, from_subtask="work")
    reused = {s.name for s in new.subtasks if s.status.value == "SUCCESSFUL"}
    assert reused == {"prepare", "side"}
    for name in reused:
        sub = new.subtask(name)
        assert sub.message == f"output reused from task {old.id}"
        assert sub.context == old.subtask(name).context
    final = engine.run_task(new.id, support.WAIT)
    assert final.status.value == "SUCCESSFUL"
    assert sorted(ran(new.id)) == ["finish", "work"]
    # finish saw the reused outputs of side (ran_side) and the new one of work.
    output = final.subtask("finish").context
    assert output is not None and output.string_map["ran_side"] == "yes"
    h = history.task_history(engine, new.id)
    assert {e.subtask for e in h.events if isinstance(e, history.Reused)} == {"prepare", "side"}
    assert history.replay(engine, new.id) == history.snapshot(engine, new.id)


def test_a_subtask_that_did_not_succeed_runs_again_with_what_follows(engine: Engine) -> None:
    t = TemplateBuilder("Two branches", concurrency=4)
    t.add("a", "tests.handlers.record")
    t.add("b", "tests.handlers.record")
    t.add("c", "tests.handlers.record", after=["b"])
    old = engine.run(t.build(), args={"fail": "b"}, timeout=support.WAIT)
    assert old.status.value == "FAILED"
    new = history.rerun(engine, old.id, from_subtask=old.subtask("a").id)
    # a is chosen: it runs again; b failed: it runs again, and c after it. Nothing is reused.
    assert {s.status.value for s in new.subtasks} <= {"READY", "PENDING"}


def test_refusals(engine: Engine, tmp_path: Path) -> None:
    running = engine.submit(support.template())
    with pytest.raises(OperationNotAllowedError, match="still RUNNING"):
        history.rerun(engine, running.id)
    done = engine.run_task(running.id, support.WAIT)
    with pytest.raises(TaskNotFoundError, match="no subtask 'nope'"):
        history.rerun(engine, done.id, from_subtask="nope")
    t = TemplateBuilder("Twins")
    t.add("x", "tests.handlers.record", display_name="same")
    t.add("y", "tests.handlers.record", display_name="same", after=["x"])
    twins = engine.run(t.build(), timeout=support.WAIT)
    with pytest.raises(ArgumentError, match="2 subtasks named 'same'"):
        history.rerun(engine, twins.id, from_subtask="same")
    [imported] = history.import_files(engine, [SAMPLES / "task-detail.json"])
    with pytest.raises(TemplateError, match="imported from an OCP document"):
        history.rerun(engine, imported.task_id)


def test_an_imported_task_can_be_rerun_here(engine: Engine, tmp_path: Path) -> None:
    old = engine.run(support.template(), timeout=support.WAIT)
    path = tmp_path / "old.jsonl"
    history.export_task(engine, old.id, path)
    [imported] = history.import_files(engine, [path])
    new = history.rerun(engine, imported.task_id, from_subtask="finish")
    assert new.source_task_id == imported.task_id and not new.historical
    assert engine.run_task(new.id, support.WAIT).status.value == "SUCCESSFUL"
    assert ran(new.id) == ["finish"]
