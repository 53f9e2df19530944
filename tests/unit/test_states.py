"""The transition table and the planner's pure decisions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagtask import planner, states
from dagtask.planner import AttemptResult
from dagtask.states import Operation, SubtaskStatus, TaskStatus

subtask_statuses = st.sampled_from(list(SubtaskStatus))
task_statuses = st.sampled_from(list(TaskStatus))
operations = st.sampled_from(list(Operation))


@given(subtask_statuses, subtask_statuses)
def test_subtask_transition_is_refused_exactly_when_not_in_the_table(
    old: SubtaskStatus, new: SubtaskStatus
) -> None:
    if (old, new) in states.SUBTASK_TRANSITIONS:
        states.check_subtask_transition(old, new)
    else:
        with pytest.raises(states.IllegalTransitionError, match=f"{old} -> {new}"):
            states.check_subtask_transition(old, new)


@given(task_statuses, task_statuses)
def test_task_transition_is_refused_exactly_when_not_in_the_table(
    old: TaskStatus, new: TaskStatus
) -> None:
    if old == new or (old, new) in states.TASK_TRANSITIONS:
        states.check_task_transition(old, new)
    else:
        with pytest.raises(states.IllegalTransitionError):
            states.check_task_transition(old, new)


def test_a_finished_task_never_goes_back_to_running_except_from_failed() -> None:
    with pytest.raises(states.IllegalTransitionError):
        states.check_task_transition(TaskStatus.SUCCESSFUL, TaskStatus.RUNNING)
    states.check_task_transition(TaskStatus.FAILED, TaskStatus.RUNNING)


def test_there_is_no_cancelled_status() -> None:
    assert "CANCELLED" not in {s.value for s in SubtaskStatus}


@given(
    operation=operations,
    run_time=st.integers(1, 10),
    retry_count=st.integers(0, 10),
    ok=st.booleans(),
    cancelled=st.booleans(),
)
def test_after_attempt_follows_the_spec(
    operation: Operation, run_time: int, retry_count: int, ok: bool, cancelled: bool
) -> None:
    result = AttemptResult(ok=ok, message=None if ok else "boom", cancelled=cancelled and not ok)
    steps = planner.after_attempt(operation, run_time, retry_count, result)
    # Every step is a legal change starting from RUNNING.
    previous = SubtaskStatus.RUNNING
    for step in steps:
        states.check_subtask_transition(previous, step.status)
        previous = step.status
    final = steps[-1]
    if ok:
        backward = operation in (Operation.ROLLBACK, Operation.ROLLBACK_SKIP)
        assert final.status is (SubtaskStatus.PENDING if backward else SubtaskStatus.SUCCESSFUL)
        assert final.run_time == run_time
    elif result.cancelled:
        assert final == planner.Step(SubtaskStatus.FAILED, Operation.CANCEL, run_time)
    elif operation in (Operation.EXECUTE, Operation.RETRY) and run_time <= retry_count:
        assert steps == [
            planner.Step(SubtaskStatus.FAILED, operation, run_time),
            planner.Step(SubtaskStatus.READY, Operation.RETRY, run_time + 1, ocp_retry=True),
        ]
    else:
        assert steps == [planner.Step(SubtaskStatus.FAILED, operation, run_time)]


@given(concurrency=st.integers(1, 50), active=st.integers(0, 60))
def test_promotion_never_exceeds_concurrency(concurrency: int, active: int) -> None:
    room = planner.promotable(concurrency, active)
    assert room >= 0
    assert active + room <= max(concurrency, active)


@pytest.mark.parametrize(
    ("failed", "pending", "successful", "rollback", "expected"),
    [
        (False, False, True, False, TaskStatus.SUCCESSFUL),
        (True, False, True, False, TaskStatus.FAILED),
        (True, True, False, False, TaskStatus.FAILED),
        (False, True, True, False, TaskStatus.FAILED),
        (False, True, False, True, TaskStatus.SUCCESSFUL),
        (False, True, True, True, TaskStatus.FAILED),  # a cancelled rollback left work undone
        (True, True, False, True, TaskStatus.FAILED),
    ],
)
def test_task_status_when_idle(
    failed: bool, pending: bool, successful: bool, rollback: bool, expected: TaskStatus
) -> None:
    got = planner.task_status_when_idle(
        any_failed=failed, any_pending=pending, any_successful=successful, rollback=rollback
    )
    assert got is expected
