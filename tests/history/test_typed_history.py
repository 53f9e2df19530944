"""The typed history: submission and template version, attempts, automatic retries and operator
actions (who, when, from which state), as a user of ``history.task_history`` sees them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dagtask import Engine, history
from dagtask.history import typed
from tests.history import support


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    with Engine(db_url, workers=2) as engine:
        yield engine


def test_a_task_with_failures_and_operator_actions(engine: Engine) -> None:
    task = support.failed_then_retried_then_skipped(engine)
    h = history.task_history(engine, task.id)
    raw = engine.events(task.id)
    assert [e.step for e in h.events] == list(range(1, len(raw) + 1))
    first = h.events[0]
    assert isinstance(first, typed.TaskSubmitted) and first.creator == "carol"
    assert h.template is not None and (h.template.name, h.template.version) == (
        "History demo",
        1,
    )
    # work: EXECUTE fails, automatic RETRY fails, alice's RETRY fails, bob's SKIP succeeds.
    work = [a for a in h.attempts if a.subtask == "work"]
    assert [(a.run_time, a.operation.value, a.result.value) for a in work] == [
        (1, "EXECUTE", "FAILED"),
        (2, "RETRY", "FAILED"),
        (3, "RETRY", "FAILED"),
        (4, "SKIP", "SUCCEEDED"),
    ]
    assert [a.retried_automatically for a in work] == [True, False, False, False]
    assert all("injected failure in work" in (a.error or "") for a in work[:3])
    assert all(a.worker == engine.name for a in h.attempts)
    assert all(a.duration is not None and a.end is not None for a in h.attempts)
    assert {a.subtask for a in h.attempts} == {"prepare", "work", "side", "finish"}
    # The operator actions, with the state they acted from.
    assert [
        (a.action, a.operator, a.task_status_before, a.task_operation_before) for a in h.actions
    ] == [
        (typed.Action.RETRY_TASK, "alice", "FAILED", "EXECUTE"),
        (typed.Action.SKIP_SUBTASK, "bob", "FAILED", "RETRY"),
    ]
    skip = h.actions[1]
    change = next(c for c in skip.changes if c.subtask == "work")
    assert (change.old_status, change.new_status, change.new_operation) == (
        "FAILED",
        "READY",
        "SKIP",
    )
    kinds = [e.kind for e in h.events]
    assert kinds.count("auto_retry") == 1 and kinds[-1] == "task_status"
    assert history.replay(engine, task.id) == history.snapshot(engine, task.id)


def test_a_rollback_and_replay_at_earlier_steps(engine: Engine) -> None:
    task = support.failed_then_rolled_back(engine)
    h = history.task_history(engine, task.id)
    [rollback] = h.actions
    assert (rollback.action, rollback.operator, rollback.task_status_before) == (
        typed.Action.ROLLBACK_TASK,
        "dave",
        "FAILED",
    )
    undone = [a.subtask for a in h.attempts if a.operation.value == "ROLLBACK"]
    assert undone[0] == "finish" and undone[-1] == "prepare" and len(undone) == 4
    # Just before the rollback, the task was FAILED with finish FAILED.
    before = history.replay(engine, task.id, step=rollback.steps[0] - 1)
    assert before.status is not None and before.status.value == "FAILED"
    finish = next(s for s in before.subtasks if s.name == "finish")
    assert finish.status.value == "FAILED" and "injected failure" in (finish.message or "")
    assert history.replay(engine, task.id, step=0).status is None
    at = history.replay(engine, task.id, at=h.attempts[0].start)
    assert at.step >= 1 and at.time == h.attempts[0].start


def test_unknown_task_and_bad_step(engine: Engine, tmp_path: Path) -> None:
    from dagtask import ArgumentError, TaskNotFoundError

    with pytest.raises(TaskNotFoundError):
        history.task_history(engine, 424242)
    task = engine.submit(support.template())
    with pytest.raises(ArgumentError, match="--step must be between 0 and"):
        history.replay(engine, task.id, step=10_000)


def test_an_attempt_whose_worker_was_lost(engine: Engine) -> None:
    """A worker that stops without finishing hands its attempts back: RETRY runs them again,
    FAIL ends them FAILED; the history says so and replays to what is stored."""
    from dagtask import TemplateBuilder

    t = TemplateBuilder("Lost worker", concurrency=2)
    t.add("again", "tests.handlers.record", on_worker_lost="RETRY")
    t.add("stop", "tests.handlers.record", on_worker_lost="FAIL")
    task = engine.submit(t.build())
    claims = engine.store.claim("gone-worker", limit=2, task_id=task.id)
    assert len(claims) == 2
    assert engine.store.hand_back("gone-worker", "worker gone-worker stopped") == 2
    h = history.task_history(engine, task.id)
    results = {a.subtask: a.result for a in h.attempts}
    assert results == {"again": typed.Result.LOST, "stop": typed.Result.FAILED}
    assert all("gone-worker" in (a.error or "") for a in h.attempts)
    assert history.replay(engine, task.id) == history.snapshot(engine, task.id)
