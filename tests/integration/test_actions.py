"""Operator actions against the real store: retry, rollback, skip, cancel (SPEC §4)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dagtask import (
    Engine,
    Operation,
    OperationNotAllowedError,
    RollbackProhibitedError,
    SubtaskStatus,
    TaskInfo,
    TaskStatus,
    TemplateBuilder,
)
from tests import handlers

UNDO = "tests.handlers.Undoable"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(f"sqlite:///{tmp_path}/a.db", workers=3, poll_interval=0.05) as eng:
        eng.start()
        yield eng


def diamond(prohibit: str | None = None, handler: str = UNDO) -> object:
    t = TemplateBuilder("diamond")
    t.add("a", handler)
    t.add("b", "tests.handlers.Guarded" if prohibit == "b" else handler, after=["a"])
    t.add("c", handler, after=["a"])
    t.add("d", handler, after=["b", "c"])
    return t.build()


def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def statuses(task: TaskInfo) -> dict[str, tuple[SubtaskStatus, Operation]]:
    return {s.name: (s.status, s.operation) for s in task.subtasks}


def test_retry_task_runs_failed_subtasks_again(engine: Engine) -> None:
    task = engine.run(diamond(), args={"fail": "c"}, timeout=20)
    assert task.status is TaskStatus.FAILED
    with pytest.raises(OperationNotAllowedError, match="20003"):
        engine.retry_subtask(task.id, task.subtask("a").id)  # SUCCESSFUL: not retryable
    # The failure was an input problem; the operator fixes nothing here, so it fails again...
    again = engine.retry(task.id)
    assert again.operation is Operation.RETRY  # (it may already have failed again)
    task_changes = [
        (e.old_status, e.new_status, e.new_operation)
        for e in engine.events(task.id)
        if e.subtask_id is None
    ]
    assert ("FAILED", "RUNNING", "RETRY") in task_changes
    done = engine.wait(task.id, timeout=20)
    assert done.status is TaskStatus.FAILED
    c = done.subtask("c")
    assert (c.run_time, c.operation) == (2, Operation.RETRY)
    # ...then skipping it lets the rest finish.
    engine.skip_subtask(task.id, c.id)
    done = engine.wait(task.id, timeout=20)
    assert done.status is TaskStatus.SUCCESSFUL
    assert done.subtask("c").operation is Operation.SKIP
    assert done.subtask("d").status is SubtaskStatus.SUCCESSFUL


def test_retry_is_refused_unless_failed(engine: Engine) -> None:
    task = engine.run(diamond(), timeout=20)
    with pytest.raises(OperationNotAllowedError, match=r"20003.*SUCCESSFUL"):
        engine.retry(task.id)
    with pytest.raises(OperationNotAllowedError, match="20003"):
        engine.rollback(task.id)


def test_rollback_runs_in_reverse_topological_order(engine: Engine) -> None:
    task = engine.run(diamond(), args={"fail": "d"}, timeout=20)
    plan = engine.rollback_plan(task.id)
    assert plan.allowed and plan.refusals == []
    assert [[s.name for s in wave] for wave in plan.waves] == [["d"], ["b", "c"], ["a"]]
    engine.rollback(task.id)
    done = engine.wait(task.id, timeout=20)
    assert (done.status, done.operation) == (TaskStatus.SUCCESSFUL, Operation.ROLLBACK)
    assert all(s == (SubtaskStatus.PENDING, Operation.ROLLBACK) for s in statuses(done).values())
    order = handlers.ROLLED_BACK.pop(task.id)
    assert order[0] == "d" and order[-1] == "a" and set(order[1:3]) == {"b", "c"}


def test_a_failed_rollback_step_can_be_rolled_back_again_or_skipped(engine: Engine) -> None:
    task = engine.run(diamond(), args={"fail": "d", "fail_rollback": "b"}, timeout=20)
    engine.rollback(task.id)
    done = engine.wait(task.id, timeout=20)
    assert (done.status, done.operation) == (TaskStatus.FAILED, Operation.ROLLBACK)
    b = done.subtask("b")
    assert (b.status, b.operation) == (SubtaskStatus.FAILED, Operation.ROLLBACK)
    assert done.subtask("a").status is SubtaskStatus.SUCCESSFUL  # waits for b
    with pytest.raises(OperationNotAllowedError, match="roll the task back again"):
        engine.retry(task.id)
    with pytest.raises(OperationNotAllowedError, match="roll the task back again"):
        engine.retry_subtask(task.id, b.id)
    engine.rollback(task.id)  # tries b's rollback again, and fails again
    done = engine.wait(task.id, timeout=20)
    assert done.subtask("b").run_time == 2 and done.status is TaskStatus.FAILED
    engine.skip_subtask(task.id, b.id)
    done = engine.wait(task.id, timeout=20)
    assert (done.status, done.operation) == (TaskStatus.SUCCESSFUL, Operation.ROLLBACK)
    assert done.subtask("b").operation is Operation.ROLLBACK_SKIP
    assert done.subtask("a").status is SubtaskStatus.PENDING


def test_prohibit_rollback_task_flag_is_20004(engine: Engine) -> None:
    task = engine.run(diamond(), args={"fail": "d", "prohibit_rollback": "true"}, timeout=20)
    plan = engine.rollback_plan(task.id)
    assert not plan.allowed and "prohibit_rollback" in plan.refusals[0]
    with pytest.raises(RollbackProhibitedError, match="20004"):
        engine.rollback(task.id)
    assert engine.get(task.id).status is TaskStatus.FAILED  # nothing changed


def test_prohibit_rollback_subtask_flag_counts_once_it_ran(engine: Engine) -> None:
    ran = engine.run(diamond(prohibit="b"), args={"fail": "d"}, timeout=20)
    with pytest.raises(RollbackProhibitedError, match=r"subtask \d+ \('b'\)"):
        engine.rollback(ran.id)
    not_ran = engine.run(diamond(prohibit="b"), args={"fail": "a"}, timeout=20)
    engine.rollback(not_ran.id)  # b never ran, so its flag does not matter
    assert engine.wait(not_ran.id, timeout=20).status is TaskStatus.SUCCESSFUL


def test_cancel_subtask_terminates_its_child_process(engine: Engine, tmp_path: Path) -> None:
    t = TemplateBuilder("child")
    t.add("spawn", "tests.handlers.run_child", retry_count=3)
    pid_file = tmp_path / "child.pid"
    task = engine.submit(t.build(), args={"pid_file": str(pid_file)})
    until(lambda: pid_file.exists() and pid_file.read_text() != "")
    pid = int(pid_file.read_text())
    sub = task.subtask("spawn")
    began = time.monotonic()
    assert engine.cancel_subtask(task.id, sub.id).status is SubtaskStatus.CANCELING
    done = engine.wait(task.id, timeout=10)
    assert time.monotonic() - began < 3
    s = done.subtask("spawn")
    assert (s.status, s.operation, s.run_time) == (SubtaskStatus.FAILED, Operation.CANCEL, 1)
    assert done.status is TaskStatus.FAILED
    until(lambda: not _alive(pid))
    log = engine.logs(task.id, s.id)
    assert "child started" in log and "cancelled by the operator" in log
    with pytest.raises(OperationNotAllowedError, match="only a RUNNING subtask"):
        engine.cancel_subtask(task.id, s.id)


def test_cancel_of_a_handler_that_ignores_it_ends_in_bounded_time(engine: Engine) -> None:
    t = TemplateBuilder("deaf")
    t.add("deaf", "tests.handlers.sleep_ignoring_token")
    task = engine.submit(t.build(), args={"seconds": "7"})
    until(lambda: engine.get(task.id).subtask("deaf").status is SubtaskStatus.RUNNING)
    engine.cancel_subtask(task.id, task.subtask("deaf").id)
    done = engine.wait(task.id, timeout=15)
    s = done.subtask("deaf")
    assert (s.status, s.operation) == (SubtaskStatus.FAILED, Operation.CANCEL)


def test_cancel_task_stops_everything_then_retry_finishes(engine: Engine) -> None:
    t = TemplateBuilder("long", concurrency=2)
    for i in range(4):
        t.add(f"s{i}", "tests.handlers.sleep_with_token")
    t.add("end", UNDO, after=[f"s{i}" for i in range(4)])
    task = engine.submit(t.build(), args={"seconds": "30"})
    until(lambda: sum(s.status is SubtaskStatus.RUNNING for s in engine.get(task.id).subtasks) == 2)
    engine.cancel(task.id)
    done = engine.wait(task.id, timeout=10)
    assert done.status is TaskStatus.FAILED
    counts = [s.status for s in done.subtasks]
    assert counts.count(SubtaskStatus.FAILED) == 2 and counts.count(SubtaskStatus.PENDING) == 3
    assert all(
        s.operation is Operation.CANCEL for s in done.subtasks if s.status is SubtaskStatus.FAILED
    )
    with pytest.raises(OperationNotAllowedError, match="only a RUNNING task"):
        engine.cancel(task.id)
    engine.rollback(task.id)
    rolled = engine.wait(task.id, timeout=10)
    assert (rolled.status, rolled.operation) == (TaskStatus.SUCCESSFUL, Operation.ROLLBACK)


def test_unknown_ids_are_20000(engine: Engine) -> None:
    from dagtask import TaskNotFoundError

    with pytest.raises(TaskNotFoundError, match="20000"):
        engine.retry(999999)
    task = engine.run(diamond(), timeout=20)
    with pytest.raises(TaskNotFoundError, match="has no subtask"):
        engine.skip_subtask(task.id, 999999)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
    finally:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
