"""Typed history: each stored event of a task as a typed model, plus attempts and operator actions.

The store writes one event per status or operation change (:mod:`dagtask.store.changes`). This
module reads them back and says what each one *was*: a submission, a promotion by the engine, the
start or the end of an attempt (with its worker, duration, result and error), an automatic retry,
a change made by an operator action (who, and from which state), an output reused by a rerun, a
task status change, or a state recorded by an import. Nothing here writes.

How an event is recognised (the store records no "cause" column, so the cause is derived):

* READY -> RUNNING is a worker claiming the subtask: an attempt starts; ``executor`` is the worker.
* RUNNING -> anything but CANCELING, and CANCELING -> anything but RUNNING, is the end of that
  attempt.
* CANCELING -> RUNNING (operation CANCEL) is OCP's path of a cancel, which shows the cancel running
  before the subtask ends FAILED / CANCEL; the attempt goes on (dagtask's own cancel goes
  CANCELING -> FAILED / CANCEL). Only imported histories have it.
* FAILED -> READY written by the same worker right after an attempt ended is an automatic retry.
* An operator action writes its events with the operator as ``executor`` and a fixed message
  (:data:`OPERATOR_MESSAGES`; task events say ``"<action> by <operator>"``); the events of one
  action share the time of their transaction, which groups them into one :class:`ActionSummary`.
* PENDING/SUCCESSFUL -> READY without an executor is the engine promoting the subtask.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from dagtask.models import EventKind, TaskEvent, TaskInfo
from dagtask.secrets import mask_values, secret_values
from dagtask.states import Operation, SubtaskStatus, TaskStatus

S = SubtaskStatus


class Action(StrEnum):
    """An operator action (docs/actions.md, and the task cancel beyond OCP)."""

    RETRY_TASK = "retry task"
    ROLLBACK_TASK = "roll back task"
    CANCEL_TASK = "cancel task"
    RETRY_SUBTASK = "retry subtask"
    SKIP_SUBTASK = "skip subtask"
    CANCEL_SUBTASK = "cancel subtask"


class Result(StrEnum):
    """How an attempt ended."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"
    """Its worker was lost; it runs again as a new attempt (recovery policy RETRY)."""
    RUNNING = "RUNNING"
    """Not ended (yet, or as recorded by an imported document)."""


OPERATOR_MESSAGES: dict[str, Action] = {
    "retried by the operator": Action.RETRY_SUBTASK,
    "skipped by the operator": Action.SKIP_SUBTASK,
    "rollback requested by the operator": Action.ROLLBACK_TASK,
    "cancel requested by the operator": Action.CANCEL_SUBTASK,
    "task cancelled by the operator": Action.CANCEL_TASK,
}
"""The messages the store writes on subtask events of operator actions."""

TASK_ACTIONS: dict[str, Action] = {
    "retry": Action.RETRY_TASK,
    "rollback": Action.ROLLBACK_TASK,
    "cancel": Action.CANCEL_TASK,
    "subtask retry": Action.RETRY_SUBTASK,
    "subtask skip": Action.SKIP_SUBTASK,
}
"""``"<action> by <operator>"`` on the task event of an operator action."""

_TASK_ACTION = re.compile(r"^(retry|rollback|cancel|subtask retry|subtask skip) by (.+)$")
REUSED_PREFIX = "output reused from task "


class TemplateRef(BaseModel):
    """The stored template version a task was expanded from."""

    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    version: int
    digest: str


class _Event(BaseModel):
    """Fields every typed event has: the stored event, its position and its subtask's label."""

    model_config = ConfigDict(frozen=True)

    step: int
    """Position in the task's history, from 1 (``dagtask replay --step N`` applies 1..N)."""
    id: int
    time: datetime
    """When (naive UTC, as stored)."""
    task_id: int
    subtask_id: int | None = None
    subtask: str | None = None
    """The subtask's name (``name [idx]`` for a fan-out copy)."""
    old_status: str | None = None
    new_status: str | None = None
    old_operation: str | None = None
    new_operation: str | None = None
    run_time: int | None = None
    executor: str | None = None
    message: str | None = None

    def describe(self) -> str:
        """One line saying what happened."""
        return _change(self)


class TaskSubmitted(_Event):
    """The task was created (submitted here, rerun, or the start of an imported record)."""

    kind: Literal["submitted"] = "submitted"
    creator: str
    template: TemplateRef | None = None
    source_task_id: int | None = None

    def describe(self) -> str:
        if (self.message or "").startswith("imported from"):
            return f"{self.message}: {self.new_status} ({self.new_operation})"
        what = f"submitted by {self.creator}"
        if self.template is not None:
            what += f" from template {self.template.name!r} v{self.template.version}"
        if self.source_task_id is not None:
            what += f", rerunning task {self.source_task_id}"
        return f"{what}: {self.new_status} ({self.new_operation})"


class TaskStatusChanged(_Event):
    """The engine settled the task (every subtask idle): RUNNING -> SUCCESSFUL or FAILED."""

    kind: Literal["task_status"] = "task_status"

    def describe(self) -> str:
        return f"task {self.old_status} -> {self.new_status} ({self.new_operation})"


class OperatorChange(_Event):
    """A change made by an operator action; ``old_*`` is the state it acted from."""

    kind: Literal["operator"] = "operator"
    operator: str
    action: Action

    def describe(self) -> str:
        target = "task" if self.subtask_id is None else self.subtask or f"subtask {self.subtask_id}"
        return f"{self.action.value} by {self.operator}: {target} {_move(self)}"


class Promoted(_Event):
    """The engine made a waiting subtask READY (its upstreams, or in a rollback its
    downstreams, are done)."""

    kind: Literal["promoted"] = "promoted"

    def describe(self) -> str:
        return f"{self.subtask}: READY for {self.new_operation} (attempt {self.run_time})"


class AttemptStarted(_Event):
    """A worker claimed the subtask and started an attempt."""

    kind: Literal["attempt_started"] = "attempt_started"
    worker: str | None

    def describe(self) -> str:
        return (
            f"{self.subtask}: {self.new_operation} attempt {self.run_time} started "
            f"on {self.worker or '?'}"
        )


class CancelRunning(_Event):
    """OCP's path of a cancel: CANCELING -> RUNNING / CANCEL, the worker running the cancel; the
    attempt ends with the next change (FAILED / CANCEL). dagtask never writes it (its own cancel
    goes CANCELING -> FAILED / CANCEL); imported OCP histories may have it."""

    kind: Literal["cancel_running"] = "cancel_running"

    def describe(self) -> str:
        return (
            f"{self.subtask}: cancel running (OCP's path), {_move(self)}: attempt "
            f"{self.run_time} not ended yet"
        )


class AttemptEnded(_Event):
    """An attempt ended: its result, its error and how long it ran."""

    kind: Literal["attempt_ended"] = "attempt_ended"
    result: Result
    error: str | None = None
    started: datetime | None = None
    duration: float | None = None
    """Seconds from the claim to this event."""
    attempt: int | None = None
    """The runTime of the attempt that ended. The event's own ``run_time`` is the subtask's
    runTime after the change, the same number except for a LOST attempt that runs again: that
    event already carries the next attempt's number (``attempt`` + 1)."""

    def describe(self) -> str:
        took = f" after {self.duration:.3f} s" if self.duration is not None else ""
        why = f": {self.error}" if self.error else ""
        number = self.attempt if self.attempt is not None else self.run_time
        return (
            f"{self.subtask}: {self.old_operation} attempt {number} "
            f"{self.result.value}{took} -> {self.new_status}{why}"
        )


class AutoRetry(_Event):
    """A failed attempt is retried automatically (``runTime <= retry_count``)."""

    kind: Literal["auto_retry"] = "auto_retry"

    def describe(self) -> str:
        return f"{self.subtask}: retried automatically as attempt {self.run_time}"


class Reused(_Event):
    """A rerun took this subtask's output from the task it reruns instead of running it."""

    kind: Literal["reused"] = "reused"

    def describe(self) -> str:
        return f"{self.subtask}: SUCCESSFUL, {self.message}"


class Recorded(_Event):
    """Any other change, e.g. a state recorded by an imported document."""

    kind: Literal["recorded"] = "recorded"


HistoryEvent = Annotated[
    TaskSubmitted
    | TaskStatusChanged
    | OperatorChange
    | Promoted
    | AttemptStarted
    | CancelRunning
    | AttemptEnded
    | AutoRetry
    | Reused
    | Recorded,
    Field(discriminator="kind"),
]
"""One typed event of a task's history."""


class Attempt(BaseModel):
    """One run of a subtask by a worker."""

    model_config = ConfigDict(frozen=True)

    subtask_id: int
    subtask: str
    run_time: int
    operation: Operation
    worker: str | None
    start: datetime
    end: datetime | None
    duration: float | None
    """Seconds; None while (or as recorded) still running."""
    result: Result
    error: str | None = None
    cancel_requested_by: str | None = None
    retried_automatically: bool = False


class ActionChange(BaseModel):
    """What one operator action did to the task or to one subtask."""

    model_config = ConfigDict(frozen=True)

    subtask_id: int | None
    subtask: str | None
    old_status: str | None
    new_status: str | None
    old_operation: str | None
    new_operation: str | None


class ActionSummary(BaseModel):
    """One operator action: who, when, what, and the task's state it acted from."""

    model_config = ConfigDict(frozen=True)

    time: datetime
    operator: str
    action: Action
    task_status_before: str | None
    task_operation_before: str | None
    changes: list[ActionChange]
    steps: list[int]


class TaskHistory(BaseModel):
    """A task's complete history."""

    model_config = ConfigDict(frozen=True)

    task_id: int
    name: str
    status: TaskStatus
    operation: Operation
    creator: str
    template: TemplateRef | None
    source_task_id: int | None
    historical: bool
    origin: dict[str, object] | None
    events: list[HistoryEvent]
    attempts: list[Attempt]
    actions: list[ActionSummary]


# ---- classification ------------------------------------------------------------------------------


def labels(task: TaskInfo) -> dict[int, str]:
    """Subtask id -> name, ``name [idx]`` for the copies of a fan-out."""
    return {s.id: f"{s.name} [{s.parallel_idx}]" if s.parallel else s.name for s in task.subtasks}


def is_claim(event: TaskEvent | _Event) -> bool:
    """READY -> RUNNING: a worker took the subtask (an attempt starts)."""
    return event.old_status == S.READY.value and event.new_status == S.RUNNING.value


def is_cancel_running(event: TaskEvent | _Event) -> bool:
    """CANCELING -> RUNNING: OCP's intermediate state of a cancel (RUNNING / CANCEL), not an end."""
    return event.old_status == S.CANCELING.value and event.new_status == S.RUNNING.value


def is_attempt_end(event: TaskEvent | _Event) -> bool:
    """The first change of the end of an attempt."""
    if event.old_status == S.CANCELING.value:
        return not is_cancel_running(event)
    return event.old_status == S.RUNNING.value and event.new_status != S.CANCELING.value


def typed_events(
    task: TaskInfo, raw: Sequence[TaskEvent], template: TemplateRef | None = None
) -> list[HistoryEvent]:
    """Each stored event of ``task`` as a typed event (same order, one for one); the task's
    secret values are masked in the messages (an error may quote a password)."""
    names = labels(task)
    secrets = secret_values(task)
    started: dict[int, tuple[datetime, int | None]] = {}
    ended_by: dict[int, str | None] = {}
    result: list[HistoryEvent] = []
    for step, event in enumerate(raw, start=1):
        if secrets and event.message:
            event = event.model_copy(update={"message": mask_values(event.message, secrets)})
        base = event.model_dump(exclude={"kind"})
        base.update(step=step, subtask=names.get(event.subtask_id or -1))
        sid = event.subtask_id
        typed: HistoryEvent
        if event.kind is EventKind.TASK_SUBMITTED:
            typed = TaskSubmitted(
                **base,
                creator=task.creator,
                template=template,
                source_task_id=task.source_task_id,
            )
        elif event.kind is EventKind.TASK_STATUS:
            match = _TASK_ACTION.match(event.message or "")
            if match and event.executor == match.group(2):
                typed = OperatorChange(
                    **base, operator=match.group(2), action=TASK_ACTIONS[match.group(1)]
                )
            else:
                typed = TaskStatusChanged(**base)
        elif sid is None:
            typed = Recorded(**base)
        elif event.message in OPERATOR_MESSAGES and event.executor:
            typed = OperatorChange(
                **base, operator=event.executor, action=OPERATOR_MESSAGES[event.message or ""]
            )
        elif is_claim(event):
            started[sid] = (event.time, event.run_time)
            typed = AttemptStarted(**base, worker=event.executor)
        elif is_cancel_running(event):
            typed = CancelRunning(**base)
        elif is_attempt_end(event):
            typed = _ended(base, event, started.pop(sid, None))
            ended_by[sid] = event.executor
        elif (
            event.old_status == S.FAILED.value
            and event.new_status == S.READY.value
            and sid in ended_by
            and ended_by[sid] == event.executor
            and event.new_operation == Operation.RETRY.value
        ):
            typed = AutoRetry(**base)
        elif event.new_status == S.READY.value and event.executor is None and not event.message:
            typed = Promoted(**base)
        elif (event.message or "").startswith(REUSED_PREFIX):
            typed = Reused(**base)
        else:
            typed = Recorded(**base)
        if sid is not None and not isinstance(typed, AttemptEnded | AutoRetry):
            ended_by.pop(sid, None)
        result.append(typed)
    return _resolve_actions(result)


def _ended(
    base: dict[str, object], event: TaskEvent, claim: tuple[datetime, int | None] | None
) -> AttemptEnded:
    start, attempt = claim if claim is not None else (None, event.run_time)
    new = event.new_status
    if new in (S.SUCCESSFUL.value, S.PENDING.value):
        outcome, error = Result.SUCCEEDED, None
    elif new == S.FAILED.value and event.new_operation == Operation.CANCEL.value:
        outcome, error = Result.CANCELLED, event.message
    elif new == S.READY.value:
        outcome, error = Result.LOST, event.message
    else:
        outcome, error = Result.FAILED, event.message
    duration = (event.time - start).total_seconds() if start is not None else None
    return AttemptEnded(
        **base,
        result=outcome,
        error=error,
        started=start,
        duration=duration,
        attempt=attempt,
    )


def _resolve_actions(events: list[HistoryEvent]) -> list[HistoryEvent]:
    """A subtask "retried by the operator" is part of a task retry when the same transaction
    (same time and operator) restarted the task with "retry by"."""
    task_retries = {
        (e.time, e.operator)
        for e in events
        if isinstance(e, OperatorChange) and e.subtask_id is None and e.action is Action.RETRY_TASK
    }
    return [
        e.model_copy(update={"action": Action.RETRY_TASK})
        if isinstance(e, OperatorChange)
        and e.action is Action.RETRY_SUBTASK
        and (e.time, e.operator) in task_retries
        else e
        for e in events
    ]


def attempts(events: Sequence[HistoryEvent]) -> list[Attempt]:
    """Every attempt of every subtask, in the order they started."""
    done: list[Attempt] = []
    running: dict[int, int] = {}  # subtask id -> index in done of its open attempt
    last: dict[int, int] = {}  # subtask id -> index in done of its latest attempt
    for event in events:
        sid = event.subtask_id
        if sid is None:
            continue
        update: dict[str, object] | None = None
        if isinstance(event, AttemptStarted):
            running[sid] = last[sid] = len(done)
            done.append(
                Attempt(
                    subtask_id=sid,
                    subtask=event.subtask or str(sid),
                    run_time=event.run_time or 0,
                    operation=Operation(event.new_operation or Operation.EXECUTE.value),
                    worker=event.worker,
                    start=event.time,
                    end=None,
                    duration=None,
                    result=Result.RUNNING,
                )
            )
        elif isinstance(event, OperatorChange) and event.new_status == S.CANCELING.value:
            if sid in running:
                done[running[sid]] = done[running[sid]].model_copy(
                    update={"cancel_requested_by": event.operator}
                )
        elif isinstance(event, AttemptEnded) and sid in running:
            index = running.pop(sid)
            update = {
                "end": event.time,
                "duration": event.duration,
                "result": event.result,
                "error": event.error,
            }
            done[index] = done[index].model_copy(update=update)
        elif isinstance(event, AutoRetry) and sid in last:
            done[last[sid]] = done[last[sid]].model_copy(update={"retried_automatically": True})
    return done


def actions(events: Sequence[HistoryEvent]) -> list[ActionSummary]:
    """The operator actions, one per transaction (same time and operator), with the task's
    status and operation just before each."""
    groups: list[_Group] = []
    task_state: tuple[str | None, str | None] = (None, None)
    for event in events:
        if isinstance(event, OperatorChange):
            if not groups or groups[-1].key != (event.time, event.operator):
                groups.append(_Group((event.time, event.operator), event.action, task_state))
            group = groups[-1]
            if _rank(event.action) > _rank(group.action):
                group.action = event.action
            group.events.append(event)
        if event.subtask_id is None and event.new_status is not None:
            task_state = (event.new_status, event.new_operation or task_state[1])
    return [group.summary() for group in groups]


@dataclass
class _Group:
    key: tuple[datetime, str]
    action: Action
    before: tuple[str | None, str | None]
    events: list[OperatorChange] = field(default_factory=list)

    def summary(self) -> ActionSummary:
        return ActionSummary(
            time=self.key[0],
            operator=self.key[1],
            action=self.action,
            task_status_before=self.before[0],
            task_operation_before=self.before[1],
            changes=[
                ActionChange(
                    subtask_id=e.subtask_id,
                    subtask=e.subtask,
                    old_status=e.old_status,
                    new_status=e.new_status,
                    old_operation=e.old_operation,
                    new_operation=e.new_operation,
                )
                for e in self.events
            ],
            steps=[e.step for e in self.events],
        )


def _rank(action: Action) -> int:
    """Task-level actions name the whole transaction over the subtask changes they made."""
    return 1 if action in (Action.RETRY_TASK, Action.ROLLBACK_TASK, Action.CANCEL_TASK) else 0


def _move(event: _Event) -> str:
    status = (
        f"{event.old_status} -> {event.new_status}"
        if event.old_status != event.new_status
        else f"{event.new_status}"
    )
    if event.new_operation and event.old_operation != event.new_operation:
        status += f" ({event.old_operation or '-'} -> {event.new_operation})"
    elif event.new_operation:
        status += f" ({event.new_operation})"
    return status


def _change(event: _Event) -> str:
    who = "task" if event.subtask_id is None else event.subtask or f"subtask {event.subtask_id}"
    text = f"{who}: {_move(event)}"
    if event.message:
        text += f": {event.message}"
    return text
