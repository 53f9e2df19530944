"""Pure decisions of the task engine (docs/actions.md): no I/O, only statuses in and actions out.

The store asks the planner what an attempt's result means for the subtask, how many waiting
subtasks may become READY, and what the task's status is once nothing is active; it then applies
the answer in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagtask import graph
from dagtask.models import PlannedStep, RollbackPlan, TaskInfo
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
    ocp_retry: bool = False
    """A new attempt that OCP numbers too (an automatic retry, a task retry): OCP's runTime
    count goes up by 1 with it (:mod:`dagtask.fidelity`)."""


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
        return [failed, Step(SubtaskStatus.READY, Operation.RETRY, run_time + 1, ocp_retry=True)]
    return [failed]


MAX_LOST_RETRIES = 3
"""Attempts of one subtask that RETRY recovery re-runs after losing their worker; the next loss
fails it (a handler that kills its worker every time must not loop forever)."""


def after_lost(
    status: SubtaskStatus, operation: Operation, run_time: int, policy: str, lost_count: int
) -> list[Step]:
    """The status change for an attempt whose worker was lost (or stopped before it ended).

    A CANCELING attempt ends as the cancel it was (FAILED / CANCEL). A RUNNING one runs again as
    a new attempt (same operation, ``run_time + 1``, READY) under the RETRY policy, unless it has
    already lost :data:`MAX_LOST_RETRIES` workers; otherwise (FAIL, the default, as in OCP) it
    ends FAILED and the operator decides. No automatic retry follows: the handler may have done
    part of its work.
    """
    if status is SubtaskStatus.CANCELING:
        return [Step(SubtaskStatus.FAILED, Operation.CANCEL, run_time)]
    if policy == "RETRY" and lost_count < MAX_LOST_RETRIES:
        return [Step(SubtaskStatus.READY, operation, run_time + 1, ocp_retry=True)]
    return [Step(SubtaskStatus.FAILED, operation, run_time)]


def promotable(concurrency: int, active: int) -> int:
    """How many runnable PENDING subtasks may become READY with ``active`` already active."""
    return max(0, concurrency - active)


def task_status_when_idle(
    *, any_failed: bool, any_pending: bool, any_successful: bool, rollback: bool
) -> TaskStatus:
    """The task's status once none of its subtasks is READY, RUNNING or CANCELING.

    Forward: SUCCESSFUL if every subtask succeeded, else FAILED (a failure left work undone).
    Rollback: SUCCESSFUL once every subtask is back to PENDING, else FAILED.
    """
    if any_failed:
        return TaskStatus.FAILED
    if rollback:
        return TaskStatus.FAILED if any_successful else TaskStatus.SUCCESSFUL
    return TaskStatus.FAILED if any_pending else TaskStatus.SUCCESSFUL


# ---- operator actions (docs/actions.md): when each is allowed ------------------------------------
#
# Each function returns None when the action is allowed, else the reason it is refused; the store
# turns a reason into OperationNotAllowedError (20003) or RollbackProhibitedError (20004).


def retry_task_refusal(status: TaskStatus, operation: Operation) -> str | None:
    """Retry of a whole task: only a FAILED task that is not rolling back."""
    if status is not TaskStatus.FAILED:
        return f"it is {status}; only a FAILED task can be retried"
    if operation is Operation.ROLLBACK:
        return "its rollback failed; roll the task back again or skip the failed rollback step"
    return None


def rollback_refusal(status: TaskStatus) -> str | None:
    """Rollback of a whole task (state part; prohibit_rollback is checked separately)."""
    if status is not TaskStatus.FAILED:
        return f"it is {status}; only a FAILED task can be rolled back"
    return None


def rollback_blockers(
    task_prohibits: bool, subtasks: list[tuple[int, str, SubtaskStatus, bool]]
) -> list[str]:
    """Why a rollback is prohibited: the task flag, and every subtask that has run with the flag.

    ``subtasks`` holds (id, name, status, prohibit_rollback).
    """
    reasons = []
    if task_prohibits:
        reasons.append("the task's stringMap.prohibit_rollback is 'true'")
    for sid, name, status, prohibits in subtasks:
        if prohibits and status not in (SubtaskStatus.PENDING, SubtaskStatus.READY):
            reasons.append(f"subtask {sid} ({name!r}) has run and is marked prohibit_rollback")
    return reasons


def retry_subtask_refusal(
    status: SubtaskStatus, operation: Operation, task_operation: Operation, *, ocp: bool = False
) -> str | None:
    """Retry of one subtask: FAILED and not a failed rollback step, nor (unless ``ocp``: OCP
    looks at the subtask's own operation only) a subtask of a task that is rolling back: a
    rollback is retried by rolling the task back again (:mod:`dagtask.fidelity`)."""
    if status is not SubtaskStatus.FAILED:
        return f"it is {status}; only a FAILED subtask can be retried"
    if operation is Operation.ROLLBACK:
        return "it failed while rolling back; roll the task back again or skip it"
    if task_operation is Operation.ROLLBACK and not ocp:
        return "its task is rolling back; roll the task back again or skip it"
    return None


def skip_refusal(status: SubtaskStatus) -> str | None:
    """Skip of one subtask: only FAILED."""
    if status is not SubtaskStatus.FAILED:
        return f"it is {status}; only a FAILED subtask can be skipped"
    return None


def cancel_subtask_refusal(status: SubtaskStatus) -> str | None:
    """Cancel of one subtask: only RUNNING."""
    if status is not SubtaskStatus.RUNNING:
        return f"it is {status}; only a RUNNING subtask can be cancelled"
    return None


def cancel_task_refusal(status: TaskStatus) -> str | None:
    """Cancel of a whole task (beyond OCP): only RUNNING."""
    if status is not TaskStatus.RUNNING:
        return f"it is {status}; only a RUNNING task can be cancelled"
    return None


def skip_operation(task_operation: Operation) -> Operation:
    """SKIP, or ROLLBACK_SKIP while the task is rolling back."""
    return Operation.ROLLBACK_SKIP if task_operation is Operation.ROLLBACK else Operation.SKIP


def rollback_plan(task: TaskInfo) -> RollbackPlan:
    """The subtasks a rollback of ``task`` would undo, in order, and why it would be refused."""
    involved = [s for s in task.subtasks if s.status is not SubtaskStatus.PENDING]
    ids = {s.id for s in involved}
    by_id = {s.id: s for s in involved}
    edges = [(s.id, d) for s in involved for d in s.downstreams if d in ids]
    # Topological order of ids grows from sinks (seriesId order), so sort roots-first for ties.
    order = sorted(ids, key=lambda i: -by_id[i].series_id)
    waves = [
        [
            PlannedStep(
                id=i,
                name=by_id[i].name,
                status=by_id[i].status,
                prohibit_rollback=by_id[i].prohibit_rollback,
            )
            for i in wave
        ]
        for wave in graph.reverse_generations(order, edges)
    ]
    refusals = []
    state = rollback_refusal(task.status)
    if state:
        refusals.append(state)
    refusals += rollback_blockers(
        task.context.prohibit_rollback,
        [(s.id, s.name, s.status, s.prohibit_rollback) for s in task.subtasks],
    )
    return RollbackPlan(task_id=task.id, allowed=not refusals, refusals=refusals, waves=waves)
