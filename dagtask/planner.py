"""Pure decisions of the task engine (SPEC §3): no I/O, only statuses in and actions out.

The store asks the planner what an attempt's result means for the subtask, how many waiting
subtasks may become READY, and what the task's status is once nothing is active; it then applies
the answer in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagtask.states import Operation, SubtaskStatus, TaskStatus


@dataclass(frozen=True)
class AttemptResult:
    """How one run of a handler ended."""

    ok: bool
    message: str | None = None
    cancelled: bool = False
    """The operator cancelled it: the subtask ends FAILED with op CANCEL and is never retried."""


@dataclass(frozen=True)
class Step:
    """One status change to apply to a subtask, in order."""

    status: SubtaskStatus
    operation: Operation
    run_time: int


FORWARD_OPERATIONS = frozenset({Operation.EXECUTE, Operation.RETRY})
BACKWARD_OPERATIONS = frozenset({Operation.ROLLBACK, Operation.ROLLBACK_SKIP})


def after_attempt(
    operation: Operation, run_time: int, retry_count: int, result: AttemptResult
) -> list[Step]:
    """The status changes that follow a finished attempt of a RUNNING subtask.

    Success of a forward operation (or a skip) → SUCCESSFUL; success of a rollback (or a
    rollback-skip) → PENDING. Failure → FAILED, then, if the operation was EXECUTE or RETRY, it
    was not cancelled and ``run_time <= retry_count``, straight back to READY as RETRY with
    ``run_time + 1``.
    """
    if result.ok:
        done = (
            SubtaskStatus.PENDING if operation in BACKWARD_OPERATIONS else SubtaskStatus.SUCCESSFUL
        )
        return [Step(done, operation, run_time)]
    if result.cancelled:
        return [Step(SubtaskStatus.FAILED, Operation.CANCEL, run_time)]
    failed = Step(SubtaskStatus.FAILED, operation, run_time)
    if operation in FORWARD_OPERATIONS and run_time <= retry_count:
        return [failed, Step(SubtaskStatus.READY, Operation.RETRY, run_time + 1)]
    return [failed]


def promotable(concurrency: int, active: int) -> int:
    """How many runnable PENDING subtasks may become READY with ``active`` already active."""
    return max(0, concurrency - active)


def task_status_when_idle(*, any_failed: bool, any_pending: bool, rollback: bool) -> TaskStatus:
    """The task's status once none of its subtasks is READY, RUNNING or CANCELING.

    Forward: SUCCESSFUL if every subtask succeeded, else FAILED (a failure left work undone).
    Rollback: SUCCESSFUL once every subtask is back to PENDING, else FAILED.
    """
    if any_failed:
        return TaskStatus.FAILED
    if rollback:
        return TaskStatus.SUCCESSFUL
    return TaskStatus.FAILED if any_pending else TaskStatus.SUCCESSFUL
