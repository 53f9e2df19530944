"""Replay: the state of a task at any step of its history, rebuilt from its events alone.

A task's structure (its subtasks and their links) is fixed when it is created; everything that
changes afterwards is an event. Replay starts from the structure as created (no task yet, every
subtask PENDING / EXECUTE / runTime 1, never run) and applies the events in order:

* TASK_SUBMITTED and TASK_STATUS set the task's status and operation; the task's finish time is
  the time of the change that ended it (none while RUNNING).
* a subtask event sets its status, operation and runTime; a claim (READY -> RUNNING) also sets its
  executor (the worker) and start time; the end of an attempt sets its finish time and message
  (the error, none after a success; a lost worker's attempt that runs again, RUNNING -> READY,
  clears the finish time); an output reused by a rerun sets both times and the message.
* a cancel ends its attempt FAILED / CANCEL, straight from CANCELING (dagtask's path) or after
  RUNNING / CANCEL (OCP's path, in imported histories): CANCELING -> RUNNING is not the end of
  the attempt, so it sets only status, operation and runTime.

:func:`snapshot` reads the same fields from what is stored; after the last event the two are
equal (the property test in ``tests/history`` checks it after every event, on SQLite and
PostgreSQL). What is not an event is not replayed: output contexts, logs and a task cancel that
changed no subtask (``cancel_requested`` has no event of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from dagtask.errors import ArgumentError
from dagtask.models import TaskEvent, TaskInfo
from dagtask.states import Operation, SubtaskStatus, TaskStatus

from . import typed as ev

S = SubtaskStatus


class SubtaskState(BaseModel):
    """A subtask's state at one step of the history."""

    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    status: SubtaskStatus
    operation: Operation
    run_time: int
    executor: str | None = None
    start_time: datetime | None = None
    finish_time: datetime | None = None
    message: str | None = None


class TaskState(BaseModel):
    """A task's state at one step of its history (step 0: before it was submitted)."""

    model_config = ConfigDict(frozen=True)

    task_id: int
    step: int
    """How many events were applied."""
    time: datetime | None
    """The time of the last event applied."""
    status: TaskStatus | None
    operation: Operation | None
    finish_time: datetime | None = None
    subtasks: list[SubtaskState]


def naive_utc(when: datetime) -> datetime:
    """``when`` as the store keeps times: naive UTC (a naive input is taken as UTC already)."""
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when


def initial(task: TaskInfo) -> TaskState:
    """The task's state before its first event."""
    names = ev.labels(task)
    return TaskState(
        task_id=task.id,
        step=0,
        time=None,
        status=None,
        operation=None,
        subtasks=[
            SubtaskState(
                id=s.id,
                name=names[s.id],
                status=S.PENDING,
                operation=Operation.EXECUTE,
                run_time=1,
            )
            for s in sorted(task.subtasks, key=lambda s: s.id)
        ],
    )


def replay_events(
    task: TaskInfo,
    events: Sequence[TaskEvent | ev._Event],
    *,
    step: int | None = None,
    at: datetime | None = None,
) -> TaskState:
    """Apply ``events`` (the task's, oldest first) to its initial state: all of them, the first
    ``step``, or those up to the time ``at`` (inclusive)."""
    if step is not None and not 0 <= step <= len(events):
        raise ArgumentError(
            f"task {task.id} has {len(events)} history events: --step must be between 0 and "
            f"{len(events)}, got {step}; see them with `dagtask history {task.id}`"
        )
    limit = naive_utc(at) if at is not None else None
    state = initial(task)
    status, operation, finish = state.status, state.operation, state.finish_time
    subs = {s.id: s.model_dump() for s in state.subtasks}
    applied = 0
    last_time: datetime | None = None
    for event in events:
        if step is not None and applied >= step:
            break
        if limit is not None and event.time > limit:
            break
        applied += 1
        last_time = event.time
        if event.subtask_id is None:
            if event.new_status is not None:
                status = TaskStatus(event.new_status)
                finish = None if status is TaskStatus.RUNNING else event.time
            if event.new_operation is not None:
                operation = Operation(event.new_operation)
            continue
        sub = subs.get(event.subtask_id)
        if sub is None:
            raise ValueError(f"event {event.id} names subtask {event.subtask_id} of another task")
        _apply(sub, event)
    return TaskState(
        task_id=task.id,
        step=applied,
        time=last_time,
        status=status,
        operation=operation,
        finish_time=finish,
        subtasks=[SubtaskState.model_validate(s) for s in subs.values()],
    )


def _apply(sub: dict[str, object], event: TaskEvent | ev._Event) -> None:
    if event.new_status is not None:
        sub["status"] = S(event.new_status)
    if event.new_operation is not None:
        sub["operation"] = Operation(event.new_operation)
    if event.run_time is not None:
        sub["run_time"] = event.run_time
    if ev.is_claim(event):
        sub["executor"] = event.executor
        sub["start_time"] = event.time
    elif ev.is_attempt_end(event):
        # An attempt whose worker was lost and that runs again (RUNNING -> READY) has not
        # finished: the recovery clears the finish time.
        lost = event.old_status == S.RUNNING.value and event.new_status == S.READY.value
        sub["finish_time"] = None if lost else event.time
        ok = event.new_status in (S.SUCCESSFUL.value, S.PENDING.value)
        sub["message"] = None if ok else event.message
    elif (event.message or "").startswith(ev.REUSED_PREFIX) and event.new_status == S.SUCCESSFUL:
        sub["start_time"] = sub["finish_time"] = event.time  # an output reused by a rerun
        sub["message"] = event.message


def snapshot(task: TaskInfo, events: Sequence[TaskEvent | ev._Event]) -> TaskState:
    """The stored state of ``task`` in the fields replay rebuilds (``events`` give the step)."""
    names = ev.labels(task)
    return TaskState(
        task_id=task.id,
        step=len(events),
        time=events[-1].time if events else None,
        status=task.status,
        operation=task.operation,
        finish_time=task.finish_time,
        subtasks=[
            SubtaskState(
                id=s.id,
                name=names[s.id],
                status=s.status,
                operation=s.operation,
                run_time=s.run_time,
                executor=s.executor,
                start_time=s.start_time,
                finish_time=s.finish_time,
                message=s.message,
            )
            for s in sorted(task.subtasks, key=lambda s: s.id)
        ],
    )


def differences(replayed: TaskState, stored: TaskState) -> list[str]:
    """Where a replayed state and a stored one disagree (empty when equal)."""
    found = []
    for field in ("status", "operation", "finish_time"):
        a, b = getattr(replayed, field), getattr(stored, field)
        if a != b:
            found.append(f"task {field}: events give {a}, stored {b}")
    stored_subs = {s.id: s for s in stored.subtasks}
    for sub in replayed.subtasks:
        other = stored_subs.get(sub.id)
        if other is None:
            found.append(f"subtask {sub.id} is not stored")
            continue
        for field, value in sub.model_dump().items():
            if value != getattr(other, field):
                found.append(
                    f"subtask {sub.id} {sub.name} {field}: events give {value!r}, "
                    f"stored {getattr(other, field)!r}"
                )
    return found
