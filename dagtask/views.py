"""OCP-shaped JSON: the one place that renders tasks, subtasks, pages, logs and envelopes.

Every object is a pydantic v2 model whose camelCase aliases are OCP's field names; the functions
below build a model from a domain object (:mod:`dagtask.models`) and dump it by alias. Fields are
declared in alphabetical order of their alias because OCP (Jackson) sorts keys that way, so our
output reads like OCP's samples.

Optional fields are *omitted* when unset rather than sent as ``null``: OCP's samples never show
``null`` for ``hostId``, ``finishTime``, a subtask's ``executor`` and the like, they leave the
key out (``tests/data/ocp/stop-ocp-agent.json`` vs ``task-detail.json``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from pydantic.alias_generators import to_camel

from dagtask import fidelity
from dagtask.context import TaskContext
from dagtask.errors import DagtaskError
from dagtask.models import SubtaskInfo, TaskInfo, TaskPage, ocp_original_of
from dagtask.secrets import mask_context
from dagtask.states import Operation, SubtaskStatus, TaskStatus, TaskType

__all__ = [
    "BasicSubtaskView",
    "EnvelopeView",
    "ErrorView",
    "LogView",
    "PageView",
    "SubtaskView",
    "TaskListItemView",
    "TaskListView",
    "TaskView",
    "envelope",
    "error_envelope",
    "iso_ms",
    "log_json",
    "subtask_json",
    "task_json",
    "task_list_json",
]


def iso_ms(dt: datetime) -> str:
    """ISO-8601 with milliseconds and the local UTC offset: ``2021-09-03T14:27:59.687+08:00``.

    A naive ``dt`` is taken as UTC (the store keeps naive UTC times); the result is shown in the
    machine's local zone as OCP does (``+00:00`` on a UTC machine). OCP trims trailing zeros of
    the fraction (``.74``); we always print three digits, which every ISO parser accepts.
    """
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone().isoformat(timespec="milliseconds")


IsoTime = Annotated[datetime, PlainSerializer(iso_ms, return_type=str)]
"""A datetime that serialises with :func:`iso_ms`."""


class _View(BaseModel):
    # populate_by_name lets the builders below use snake_case names; dumps use the aliases.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    def to_json(self) -> dict[str, Any]:
        """This object as OCP JSON: camelCase keys, enums as strings, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class BasicSubtaskView(_View):
    """A subtask as listed inside a task-list item: ``id, name, description, status, operation``."""

    description: str
    id: int
    name: str
    operation: Operation
    status: SubtaskStatus


class SubtaskView(_View):
    """A subtask with the fields of ``stop-ocp-agent.json`` (plus run times once it has run)."""

    class_name: str
    create_time: IsoTime | None = None
    """In the task detail's answers only (``task-detail.json``)."""
    description: str
    downstreams: list[int]
    executor: str | None = None
    finish_time: IsoTime | None = None
    id: int
    name: str
    node_type: str
    operation: Operation
    parallel_idx: int
    prohibit_rollback: bool
    run_time: int
    """dagtask's attempt number; OCP's count with the ``run_time`` switch (dagtask.fidelity)."""
    attempt: int | None = None
    """With the ``run_time`` switch only: dagtask's attempt number (logs are per attempt)."""
    series_id: int
    start_time: IsoTime | None = None
    status: SubtaskStatus
    timeout: int
    upstreams: list[int]


class TaskView(_View):
    """A task with its subtasks, the shape every task action returns (``stop-ocp-agent.json``).

    A task imported from an OCP document also shows what that document sent and dagtask has no
    column for, in OCP's shape: ``creator`` as the object ``{id, name}``, the ``cluster`` and
    ``tenant`` objects, and ``prohibitRollback`` and ``createTime`` when the document had them
    (see :func:`_as_ocp_sent`); other tasks leave these out, as the golden sample does, except
    in the answers whose OCP samples carry ``prohibitRollback`` and ``createTime`` (the task
    detail, retry and rollback: :func:`task_json`'s ``detail``).
    """

    cluster: dict[str, Any] | None = None
    cluster_id: int | None = None
    context: TaskContext
    create_time: IsoTime | None = None
    creator: str | dict[str, Any]
    executor: str
    finish_time: IsoTime | None = None
    host_id: int | None = None
    id: int
    name: str
    operation: Operation
    prohibit_rollback: bool | None = None
    start_time: IsoTime
    status: TaskStatus
    subtasks: list[SubtaskView]
    task_definition_id: int
    tenant: dict[str, Any] | None = None
    tenant_id: int | None = None
    type: TaskType


class TaskListItemView(_View):
    """A task in a paged list (``query-task-list.json``), with basic subtasks.

    OCP shows ``creator`` as an object ``{id, name}`` and the subject as ``cluster``/``tenant``
    objects here; dagtask has no user or cluster records, so ``creator`` is the same string as in
    a task object and the subject is the ``hostId``/``clusterId``/``tenantId`` of the task, except
    for a task imported from an OCP document, which shows the objects OCP sent.
    """

    cluster: dict[str, Any] | None = None
    cluster_id: int | None = None
    creator: str | dict[str, Any]
    finish_time: IsoTime | None = None
    host_id: int | None = None
    id: int
    name: str
    start_time: IsoTime
    status: TaskStatus
    subtasks: list[BasicSubtaskView]
    tenant: dict[str, Any] | None = None
    tenant_id: int | None = None


class PageView(_View):
    """The ``page`` object of a paged list (``number`` counts from 1)."""

    number: int
    size: int
    total_elements: int
    total_pages: int


class TaskListView(_View):
    """A paged list of tasks: ``{"contents": [...], "page": {...}}``."""

    contents: list[TaskListItemView]
    page: PageView


class LogView(_View):
    """A subtask's log: ``{"log": "..."}``."""

    log: str


class ErrorView(_View):
    """The ``error`` object of a failed request (docs/api.md).

    ``target`` is sent as ``null`` when there is none: docs/api.md lists it as a member of every
    error, so clients can rely on the key (OCP's one published sample, a 429, leaves it out).
    """

    code: int
    message: str
    sub_errors: list[ErrorView] = Field(default_factory=list)
    target: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The error as JSON; unlike other views it keeps ``target: null``."""
        return self.model_dump(mode="json", by_alias=True)


class EnvelopeView(_View):
    """The response envelope around every REST answer (docs/api.md)."""

    data: Any = None
    duration: int
    error: ErrorView | None = None
    server: str
    status: int
    successful: bool
    timestamp: IsoTime
    trace_id: str

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Only the two members that are absent by design are dropped; None deeper down (an
        # error's target, a value inside ``data``) is part of the payload and stays.
        out: dict[str, Any] = handler(self)
        for key in ("data", "error"):
            if out.get(key) is None:
                out.pop(key, None)
        return out

    def to_json(self) -> dict[str, Any]:
        """The envelope as JSON (``data``/``error`` left out when absent)."""
        return self.model_dump(mode="json", by_alias=True)


def _subtask_order(subtasks: list[SubtaskInfo]) -> list[SubtaskInfo]:
    """Subtasks by ``seriesId`` descending (then id).

    The engine numbers subtasks in reverse topological order (docs/templates.md), so the highest
    seriesId is a root: this lists roots first and a chain in execution order, and puts the READY
    root first as the golden sample ``stop-ocp-agent.json`` does (its own array order, 2, 0, 1,
    follows no rule we could reproduce).
    """
    return sorted(subtasks, key=lambda sub: (-sub.series_id, sub.id))


def _run_time(sub: SubtaskInfo) -> dict[str, int]:
    """``runTime`` (and ``attempt``) as :mod:`dagtask.fidelity`'s ``run_time`` switch says."""
    if fidelity.current().run_time and sub.ocp_run_time is not None:
        return {"run_time": sub.ocp_run_time, "attempt": sub.run_time}
    return {"run_time": sub.run_time}


def _subtask_view(sub: SubtaskInfo, *, detail: bool = False) -> SubtaskView:
    return SubtaskView(
        class_name=sub.class_name,
        create_time=sub.create_time if detail else None,
        description=sub.description,
        downstreams=list(sub.downstreams),
        executor=sub.executor,
        finish_time=sub.finish_time,
        id=sub.id,
        name=sub.name,
        node_type=sub.node_type,
        operation=sub.operation,
        parallel_idx=sub.parallel_idx,
        prohibit_rollback=sub.prohibit_rollback,
        **_run_time(sub),
        series_id=sub.series_id,
        start_time=sub.start_time,
        status=sub.status,
        timeout=sub.timeout,
        upstreams=list(sub.upstreams),
    )


def _task_start(task: TaskInfo) -> datetime:
    # A task starts when it is submitted (OCP's startTime precedes the submit response by a few
    # ms); fall back to the creation time so a task always carries a startTime as in OCP.
    return task.start_time if task.start_time is not None else task.create_time


def _as_ocp_sent(task: TaskInfo) -> dict[str, Any]:
    """The task-level fields of an imported OCP task that only its OCP original holds.

    ``creator``, ``cluster`` and ``tenant`` are the objects OCP sent, as sent; ``prohibitRollback``
    and ``createTime`` appear when the document had them, with the values the import stored
    from them (``createTime`` printed by :func:`iso_ms`, the same instant). Empty for any other
    task.
    """
    original = ocp_original_of(task.origin)
    if original is None:
        return {}
    document = original["document"]
    found: dict[str, Any] = {
        key: dict(document[key])
        for key in ("creator", "cluster", "tenant")
        if isinstance(document.get(key), Mapping)
    }
    if isinstance(document.get("prohibitRollback"), bool):
        found["prohibit_rollback"] = task.prohibit_rollback
    if document.get("createTime"):
        found["create_time"] = task.create_time
    return found


def _task_view(task: TaskInfo, *, detail: bool = False) -> TaskView:
    sent = _as_ocp_sent(task)
    if detail:
        sent.setdefault("prohibit_rollback", task.prohibit_rollback)
        sent.setdefault("create_time", task.create_time)
    return TaskView(
        cluster=sent.get("cluster"),
        cluster_id=task.cluster_id,
        # Secrets are masked in everything shown (docs/security.md); the store keeps them.
        context=mask_context(task.context),
        create_time=sent.get("create_time"),
        creator=sent.get("creator", task.creator),
        executor=task.executor,
        finish_time=task.finish_time,
        host_id=task.host_id,
        id=task.id,
        name=task.name,
        operation=task.operation,
        prohibit_rollback=sent.get("prohibit_rollback"),
        start_time=_task_start(task),
        status=task.status,
        subtasks=[_subtask_view(sub, detail=detail) for sub in _subtask_order(task.subtasks)],
        task_definition_id=task.task_definition_id,
        tenant=sent.get("tenant"),
        tenant_id=task.tenant_id,
        type=task.type,
    )


def _list_item_view(task: TaskInfo) -> TaskListItemView:
    sent = _as_ocp_sent(task)
    return TaskListItemView(
        cluster=sent.get("cluster"),
        cluster_id=task.cluster_id,
        creator=sent.get("creator", task.creator),
        finish_time=task.finish_time,
        host_id=task.host_id,
        id=task.id,
        name=task.name,
        start_time=_task_start(task),
        status=task.status,
        subtasks=[
            BasicSubtaskView(
                description=sub.description,
                id=sub.id,
                name=sub.name,
                operation=sub.operation,
                status=sub.status,
            )
            for sub in _subtask_order(task.subtasks)
        ],
        tenant=sent.get("tenant"),
        tenant_id=task.tenant_id,
    )


def task_json(task: TaskInfo, *, detail: bool = False) -> dict[str, Any]:
    """A task as OCP's JSON: the keys of ``stop-ocp-agent.json``'s ``data``; with ``detail``
    (the task detail, retry and rollback answers, whose OCP samples have them) also the
    task-level ``prohibitRollback`` and ``createTime`` of every task and each subtask's
    ``createTime``.

    ``hostId``/``clusterId``/``tenantId`` appear only when the task has that subject and
    ``finishTime`` only once the task has finished; subtasks are ordered by seriesId descending
    (roots first, see :func:`_subtask_order`) and rendered by :func:`subtask_json`'s rules.
    The values of secret context keys are masked (:mod:`dagtask.secrets`).
    """
    return _task_view(task, detail=detail).to_json()


def detail_json(task: TaskInfo) -> dict[str, Any]:
    """:func:`task_json` with ``detail``: a task as OCP's task detail shows it."""
    return task_json(task, detail=True)


def subtask_json(sub: SubtaskInfo) -> dict[str, Any]:
    """A subtask as OCP's JSON; ``executor``/``startTime``/``finishTime`` only once set."""
    return _subtask_view(sub).to_json()


def task_list_json(page: TaskPage) -> dict[str, Any]:
    """A page of tasks as OCP's paged list ``{"contents": [...], "page": {...}}``.

    Items carry basic subtasks (``id, name, description, status, operation``) and ``creator``
    as a string (see :class:`TaskListItemView`).
    """
    view = TaskListView(
        contents=[_list_item_view(task) for task in page.tasks],
        page=PageView(
            number=page.number,
            size=page.size,
            total_elements=page.total_elements,
            total_pages=page.total_pages,
        ),
    )
    return view.to_json()


def log_json(text: str) -> dict[str, Any]:
    """A subtask log as OCP's JSON: ``{"log": text}``."""
    return LogView(log=text).to_json()


def envelope(
    data: Any | None,
    *,
    status: int = 200,
    duration_ms: int,
    trace_id: str,
    server: str,
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """The docs/api.md success envelope around ``data`` (left out when ``None``).

    ``data`` should already be JSON (e.g. from :func:`task_json`). ``timestamp`` defaults to now.
    """
    return EnvelopeView(
        data=data,
        duration=duration_ms,
        server=server,
        status=status,
        successful=True,
        timestamp=timestamp if timestamp is not None else datetime.now(UTC),
        trace_id=trace_id,
    ).to_json()


def error_envelope(
    exc: DagtaskError | Exception,
    *,
    status: int | None = None,
    trace_id: str,
    server: str,
    duration_ms: int,
    timestamp: datetime | None = None,
    sub_errors: Sequence[ErrorView] = (),
) -> dict[str, Any]:
    """The docs/api.md error envelope for ``exc``: ``error: {code, message, target, subErrors}``.

    A :class:`DagtaskError` gives its OCP ``code``, ``message`` and ``target``, and its
    ``http_status`` is the default ``status``; any other exception is an unexpected error (500).
    ``sub_errors`` (e.g. one per invalid request field) become ``error.subErrors``.
    """
    if isinstance(exc, DagtaskError):
        error = ErrorView(
            code=exc.code, message=exc.message, target=exc.target, sub_errors=list(sub_errors)
        )
        default_status = exc.http_status
    else:
        # Name the exception class: a bare str(exc) is often empty or meaningless alone.
        text = str(exc)
        message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        error = ErrorView(code=500, message=message, sub_errors=list(sub_errors))
        default_status = 500
    return EnvelopeView(
        duration=duration_ms,
        error=error,
        server=server,
        status=status if status is not None else default_status,
        successful=False,
        timestamp=timestamp if timestamp is not None else datetime.now(UTC),
        trace_id=trace_id,
    ).to_json()
