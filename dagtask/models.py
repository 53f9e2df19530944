"""Domain models returned by the public API (pydantic v2, snake_case).

These are what Python callers get; :mod:`dagtask.views` turns them into OCP's JSON shape and the
store maps table rows to them (nowhere else does).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

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
    """The attempt number: every new attempt adds 1 (docs/design.md, "OCP fidelity")."""
    ocp_run_time: int | None = None
    """runTime as OCP counts it (only task retries and automatic retries add 1)."""
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
    original_id: int | None = None
    """For a historical (imported) subtask: its id in the system it was recorded by."""
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
    source_task_id: int | None = None
    """The task this one reruns (``dagtask rerun``), if any."""
    historical: bool = False
    """An imported record of a task run elsewhere: shown as recorded, never run or changed."""
    origin: dict[str, Any] | None = None
    """Where a historical task was imported from (format, file, original task id; for a task
    that came from an OCP document, the document too: see :func:`ocp_original_of`)."""

    trace_parent: str | None = None
    """The W3C traceparent of the task's span, when a tracer recorded its submit
    (:mod:`dagtask.observability.tracing`)."""

    @property
    def trace_id(self) -> str | None:
        """The task's OpenTelemetry trace id (32 hex digits), if it was traced."""
        return self.trace_parent.split("-")[1] if self.trace_parent else None

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


def ocp_original_of(origin: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The OCP original of a historical task, from its stored ``origin``, or None.

    A task imported from an OCP document keeps it in its origin (``format`` "ocp", ``file``,
    ``path``, ``task_id``, ``document``: the task object as OCP sent it, and ``context_text``
    for Java's context string); a task re-imported from a dagtask export of such a task keeps
    the same dict under its origin's ``"ocp"`` key.
    """
    if not origin:
        return None
    found = origin if origin.get("format") == "ocp" else origin.get("ocp")
    if not isinstance(found, Mapping) or not isinstance(found.get("document"), Mapping):
        return None
    return dict(found)


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


class SshAccess(_Model):
    """How workers reach a remote host over SSH (``docs/hosts.md``). Holds no password: only
    ``password_ref``, a reference that each worker resolves when it connects (``env:NAME`` or
    ``file:PATH``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    port: int = 22
    user: str
    auth: Literal["key", "agent", "password"] = "key"
    """``key``: the private key file ``key_file``; ``agent``: the keys of the ssh-agent at
    ``$SSH_AUTH_SOCK``; ``password``: the secret ``password_ref`` names."""
    key_file: str | None = None
    password_ref: str | None = None
    jump_host: str | None = None
    """The inventory name of a host to connect through (OpenSSH's ProxyJump), or None."""
    known_hosts: str | None = None
    """The known-hosts file to verify the host key against (default ``~/.ssh/known_hosts``);
    a key pinned with ``dagtask hosts trust`` is checked first."""
    accept_new_host_key: bool = False
    """Trust an unknown host key on first connect and pin it (OpenSSH's ``accept-new``); only
    when the operator asked for it for this host. A changed key is refused all the same."""
    connect_timeout: float = 10.0
    """Seconds for TCP connect, banner and authentication, each."""


class HostInfo(_Model):
    """A host of the inventory and the state of its OCP agent."""

    id: int
    name: str
    inner_ip: str
    status: str
    agent_status: str
    """OCP's agent status; UNKNOWN when nothing has looked at the agent yet (``hosts add``)."""
    agent_home: str
    connector: str = "local"
    """How workers reach the agent: "local" means processes on the worker's own machine, whatever
    ``inner_ip`` says; "ssh" reaches ``inner_ip`` as ``ssh`` says; other kinds are registered
    with ``register_connector``."""
    create_time: datetime
    update_time: datetime
    ssh: SshAccess | None = None
    """How to reach the host over SSH (``connector == "ssh"``), else None."""
    host_key: str | None = None
    """The SSH host key pinned with ``dagtask hosts trust`` (OpenSSH public key line)."""
    agent_kind: str = "ocp"
    """How the agent's processes are found, stopped and started (:mod:`dagtask.hosts.kinds`)."""
    os_info: str | None = None
    """What the last ``dagtask hosts check`` found (kernel and OS release), if any."""
    checked_at: datetime | None = None


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


# ---- the portable record of one task (``dagtask export`` / ``dagtask import``) ------------------


class _Record(BaseModel):
    """A line of an export file: strict (unknown keys are refused), so corruption shows."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TemplateRecord(_Record):
    """The template version a task was expanded from (a snapshot of its definition)."""

    name: str
    version: int
    digest: str
    definition: dict[str, Any]


class TaskRow(_Record):
    """A task as recorded (its status is the one it shows, also for a historical task)."""

    id: int
    name: str
    task_definition_id: int
    type: TaskType
    status: TaskStatus
    operation: Operation
    creator: str
    executor: str
    context: dict[str, Any]
    prohibit_rollback: bool
    host_id: int | None
    cluster_id: int | None
    tenant_id: int | None
    concurrency: int
    source_task_id: int | None
    create_time: datetime
    start_time: datetime | None
    finish_time: datetime | None


class SubtaskRow(_Record):
    """A subtask as recorded, with its output context and last message."""

    id: int
    series_id: int
    name: str
    description: str
    class_name: str
    node_type: str
    operation: Operation
    status: SubtaskStatus
    run_time: int
    timeout: int
    retry_count: int
    parallel: bool
    parallel_idx: int
    prohibit_rollback: bool
    executor: str | None
    recovery: str
    lost_count: int
    output_context: dict[str, Any] | None
    message: str | None
    create_time: datetime
    start_time: datetime | None
    finish_time: datetime | None


class EdgeRow(_Record):
    """A link between two subtasks of the task."""

    upstream_id: int
    downstream_id: int


class EventRow(_Record):
    """A history event as stored (see :class:`TaskEvent`)."""

    id: int
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


class LogRow(_Record):
    """One chunk of a subtask attempt's log."""

    subtask_id: int
    run_time: int
    text: str
    create_time: datetime


class TaskRecord(_Model):
    """Everything about one task: template snapshot, task, subtasks, links, events and logs."""

    template: TemplateRecord | None
    task: TaskRow
    subtasks: list[SubtaskRow]
    edges: list[EdgeRow]
    events: list[EventRow]
    logs: list[LogRow]
    ocp_original: dict[str, Any] | None = None
    """For a task imported from an OCP document: the OCP original (see :func:`ocp_original_of`),
    which its export carries so that a re-import keeps it."""
