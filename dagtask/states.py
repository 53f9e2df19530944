"""Statuses, operations and the one table of legal status changes (docs/actions.md).

The enum values are the database values and the JSON values. Every status change of a subtask or a
task is checked against :data:`SUBTASK_TRANSITIONS` / :data:`TASK_TRANSITIONS` by
:func:`check_subtask_transition` / :func:`check_task_transition`, which the store calls in the same
transaction that writes the change and its history event.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Status of a task instance."""

    RUNNING = "RUNNING"
    FAILED = "FAILED"
    SUCCESSFUL = "SUCCESSFUL"


class SubtaskStatus(StrEnum):
    """Status of a subtask instance (OCP has no CANCELLED: a cancelled subtask ends FAILED)."""

    PENDING = "PENDING"
    READY = "READY"
    RUNNING = "RUNNING"
    CANCELING = "CANCELING"
    FAILED = "FAILED"
    SUCCESSFUL = "SUCCESSFUL"


class Operation(StrEnum):
    """What a subtask (or task) is doing: running forward, retrying, rolling back, ..."""

    EXECUTE = "EXECUTE"
    RETRY = "RETRY"
    ROLLBACK = "ROLLBACK"
    SKIP = "SKIP"
    ROLLBACK_SKIP = "ROLLBACK_SKIP"
    CANCEL = "CANCEL"


TASK_OPERATIONS = frozenset({Operation.EXECUTE, Operation.RETRY, Operation.ROLLBACK})
"""The operations a task (as opposed to a subtask) can carry."""


class TaskType(StrEnum):
    """How a task came to be (OCP's enum; dagtask creates MANUAL tasks)."""

    MANUAL = "MANUAL"
    SYS_ONCE = "SYS_ONCE"
    SCHEDULED = "SCHEDULED"
    SYS_SCHEDULED = "SYS_SCHEDULED"


S = SubtaskStatus

SUBTASK_TRANSITIONS: frozenset[tuple[SubtaskStatus, SubtaskStatus]] = frozenset(
    {
        (
            S.PENDING,
            S.READY,
        ),  # every upstream SUCCESSFUL (or, in rollback, every downstream PENDING)
        (S.READY, S.RUNNING),  # claimed by a worker
        (S.READY, S.PENDING),  # a task cancel withdraws work not yet started
        (S.READY, S.FAILED),  # a task cancel withdraws a retry / skip / rollback step
        (S.RUNNING, S.SUCCESSFUL),  # execute / retry / skip succeeded
        (S.RUNNING, S.FAILED),  # exception, timeout, lost worker
        (S.RUNNING, S.PENDING),  # rollback (or rollback-skip) succeeded
        (S.RUNNING, S.READY),  # lost worker recovered with the RETRY policy
        (S.RUNNING, S.CANCELING),  # operator cancel
        (S.CANCELING, S.FAILED),  # the worker interrupted the handler
        (S.FAILED, S.READY),  # automatic retry, operator retry / skip, rollback
        (S.SUCCESSFUL, S.READY),  # rollback of a subtask whose downstreams are all PENDING
    }
)
"""Every legal subtask status change; anything else is a bug and is refused."""

TASK_TRANSITIONS: frozenset[tuple[TaskStatus, TaskStatus]] = frozenset(
    {
        (TaskStatus.RUNNING, TaskStatus.SUCCESSFUL),
        (TaskStatus.RUNNING, TaskStatus.FAILED),
        (TaskStatus.FAILED, TaskStatus.RUNNING),  # retry, rollback, subtask retry / skip
    }
)
"""Every legal task status change."""

ACTIVE_SUBTASK_STATUSES = frozenset({S.READY, S.RUNNING, S.CANCELING})
"""Statuses that count against a task's concurrency and keep the task RUNNING."""


class IllegalTransitionError(RuntimeError):
    """A status change that the transition table does not allow (always a bug in dagtask)."""


def check_subtask_transition(old: SubtaskStatus, new: SubtaskStatus) -> None:
    """Raise :class:`IllegalTransitionError` unless ``old -> new`` is a legal subtask change."""
    if (old, new) not in SUBTASK_TRANSITIONS:
        raise IllegalTransitionError(f"subtask status {old} -> {new} is not a legal transition")


def check_task_transition(old: TaskStatus, new: TaskStatus) -> None:
    """Raise :class:`IllegalTransitionError` unless ``old -> new`` is a legal task change."""
    if old != new and (old, new) not in TASK_TRANSITIONS:
        raise IllegalTransitionError(f"task status {old} -> {new} is not a legal transition")
