"""Domain models returned by the public API (pydantic v2, snake_case).

These are what Python callers get; :mod:`dagtask.views` turns them into OCP's JSON shape and the
store maps table rows to them (nowhere else does).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from dagtask.context import TaskContext
from dagtask.states import Operation, SubtaskStatus, TaskStatus, TaskType


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class SubtaskInfo(_Model):
    """A subtask instance as stored."""

    id: int
    task_id: int
    name: str
    description: str
    class_name: str
    node_type: str = "JAVA_TASK"
    operation: Operation
    status: SubtaskStatus
    series_id: int
    run_time: int
    timeout: int
    retry_count: int
    parallel: bool
    parallel_idx: int
    prohibit_rollback: bool
    upstreams: list[int]
    downstreams: list[int]
    executor: str | None = None
    context: TaskContext | None = None
    """The output context once the subtask succeeded, else None."""
    message: str | None = None
    """Why the last attempt failed (exception, timeout, ...), if it did."""
    create_time: datetime
    start_time: datetime | None = None
    finish_time: datetime | None = None


class TaskInfo(_Model):
    """A task instance with its subtasks (roots first: seriesId descending, a topological order)."""

    id: int
    name: str
    template_id: int | None
    task_definition_id: int = -1
    type: TaskType = TaskType.MANUAL
    status: TaskStatus
    operation: Operation
    creator: str
    executor: str
    context: TaskContext
    prohibit_rollback: bool
    host_id: int | None = None
    cluster_id: int | None = None
    tenant_id: int | None = None
    concurrency: int
    create_time: datetime
    start_time: datetime | None = None
    finish_time: datetime | None = None
    subtasks: list[SubtaskInfo] = []

    @property
    def finished(self) -> bool:
        """Whether the task has ended (SUCCESSFUL or FAILED)."""
        return self.status is not TaskStatus.RUNNING

    def subtask(self, name: str, parallel_idx: int = -1) -> SubtaskInfo:
        """The subtask called ``name`` (and with this ``parallel_idx`` for fan-out copies)."""
        for sub in self.subtasks:
            if sub.name == name and (parallel_idx < 0 or sub.parallel_idx == parallel_idx):
                return sub
        raise KeyError(f"task {self.id} has no subtask named {name!r}")


class EventKind(StrEnum):
    """What a history event records."""

    TASK_SUBMITTED = "TASK_SUBMITTED"
    TASK_STATUS = "TASK_STATUS"
    SUBTASK_STATUS = "SUBTASK_STATUS"


class TaskEvent(_Model):
    """One row of the append-only history: a status/operation change of a task or subtask."""

    id: int
    task_id: int
    subtask_id: int | None
    time: datetime
    kind: EventKind
    old_status: str | None
    new_status: str | None
    old_operation: str | None
    new_operation: str | None
    run_time: int | None
    executor: str | None
    message: str | None


class HostInfo(_Model):
    """A host of the inventory and the state of its OCP agent."""

    id: int
    name: str
    inner_ip: str
    status: str
    agent_status: str
    agent_home: str
    connector: str = "local"
    create_time: datetime
    update_time: datetime


class TaskPage(_Model):
    """One page of a task list (``number`` counts from 1, as in OCP)."""

    tasks: list[TaskInfo]
    number: int
    size: int
    total_elements: int

    @property
    def total_pages(self) -> int:
        """How many pages of ``size`` the whole list makes."""
        return (self.total_elements + self.size - 1) // self.size if self.size else 0


class PlannedStep(_Model):
    """A subtask a rollback would undo."""

    id: int
    name: str
    status: SubtaskStatus
    prohibit_rollback: bool


class RollbackPlan(_Model):
    """What rolling a task back would do (beyond OCP): the order, and what would refuse it.

    ``waves`` are rolled back in order; the subtasks of one wave may roll back in parallel.
    """

    task_id: int
    allowed: bool
    refusals: list[str]
    waves: list[list[PlannedStep]]
