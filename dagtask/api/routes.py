"""The endpoints of docs/api.md, as a FastAPI router around one :class:`~dagtask.Engine`.

Every endpoint is a plain ``def``: the engine's calls block on SQL, so FastAPI runs them in its
thread pool and the event loop never waits on the database. Answers are rendered by
:mod:`dagtask.views` and wrapped by :func:`dagtask.api.errors.ok`.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at run
# time, and they name aliases (Viewer, Manager, ...) local to create_router.

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response, Security
from fastapi.security import HTTPBasicCredentials

from dagtask import diagnosis, views
from dagtask.api.auth import Authenticator, BasicCredentials, check_role
from dagtask.api.errors import DEBUG_HEADER, TRACE_HEADER, EnvelopeRoute, download, ok
from dagtask.api.schedules import add_definition_routes
from dagtask.api.schemas import (
    MAX_ID,
    BatchHostsRequest,
    EmptyEnvelope,
    LogEnvelope,
    SubtaskEnvelope,
    TaskEnvelope,
    TaskListEnvelope,
    error_responses,
)
from dagtask.builtin.templates import (
    BATCH_RESTART_OCP_AGENT,
    BATCH_STOP_OCP_AGENT,
    RESTART_OCP_AGENT,
    STOP_OCP_AGENT,
)
from dagtask.engine import Engine
from dagtask.states import TaskStatus, TaskType
from dagtask.users import Role, UserInfo

MAX_PAGE_SIZE = 2000
DEFAULT_PAGE_SIZE = 10

Id = Annotated[int, Path(ge=1, le=MAX_ID, description="A task id.")]
SubtaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="A subtask id of the task.")]
HostIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="The id of the host.")]
_STATUS = "(RUNNING|FAILED|SUCCESSFUL)"
_TYPE = "(MANUAL|SYS_ONCE|SCHEDULED|SYS_SCHEDULED)"

_HEADER_DOCS = {
    TRACE_HEADER: {"description": "The request's trace id.", "schema": {"type": "string"}},
    "RateLimit-Limit": {"description": "Requests per window.", "schema": {"type": "integer"}},
    "RateLimit-Remaining": {
        "description": "Requests left in the window.",
        "schema": {"type": "integer"},
    },
    "RateLimit-Reset": {
        "description": "Seconds until the window starts over.",
        "schema": {"type": "integer"},
    },
}


def _responses(model: type[Any], *errors: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of an endpoint: 200 with ``model``, the errors, headers on all."""
    docs: dict[int | str, dict[str, Any]] = {200: {"model": model}}
    docs.update(error_responses(400, 401, 403, 429, 500, *errors))
    for entry in docs.values():
        entry["headers"] = _HEADER_DOCS
    return docs


def _statuses(text: str | None) -> list[TaskStatus]:
    # The query's pattern has already checked every name.
    return [TaskStatus(part) for part in text.split(",")] if text else []


def _types(text: str | None) -> list[TaskType]:
    return [TaskType(part) for part in text.split(",")] if text else []


def create_router(engine: Engine, authenticator: Authenticator, *, server: str) -> APIRouter:
    """The API's endpoints around ``engine``; include it in any FastAPI app.

    ``server`` is what the envelopes show as the answering server.
    """
    route_class = type("DagtaskRoute", (EnvelopeRoute,), {"server": server})
    basic = BasicCredentials(
        auto_error=False, realm="dagtask", scheme_name="HTTPBasic", description="A dagtask user."
    )

    def _request_headers(
        x_trace_id: Annotated[
            str | None,
            Header(
                alias=TRACE_HEADER,
                description="Your trace id for this request, echoed in the answer when it is 1 "
                "to 128 characters of [A-Za-z0-9._:/+=-] (else a fresh id is made).",
            ),
        ] = None,
        x_debug: Annotated[
            str | None,
            Header(
                alias=DEBUG_HEADER,
                description="'true': an unexpected error (500) carries its stack trace as a "
                "sub-error with target 'stackTrace' (authenticated callers only).",
            ),
        ] = None,
    ) -> None:
        """Declares the optional request headers (read by the route wrapper)."""

    router = APIRouter(route_class=route_class, dependencies=[Depends(_request_headers)])

    def caller(role: Role, action: str) -> Callable[..., UserInfo]:
        def dependency(
            request: Request,
            credentials: Annotated[HTTPBasicCredentials | None, Security(basic)],
        ) -> UserInfo:
            name = credentials.username if credentials else None
            password = credentials.password if credentials else None
            user = authenticator.authenticate(request, name, password)
            check_role(user, role, action)
            return user

        return dependency

    Viewer = Annotated[UserInfo, Depends(caller(Role.TASK_VIEWER, "read tasks"))]
    Manager = Annotated[UserInfo, Depends(caller(Role.TASK_MANAGER, "act on tasks"))]
    HostManager = Annotated[UserInfo, Depends(caller(Role.HOST_MANAGER, "operate hosts"))]
    add_definition_routes(router, engine, caller, _responses)

    tasks = "/api/v2/tasks/instances"

    @router.get(
        tasks,
        tags=["tasks"],
        summary="List tasks",
        response_model=TaskListEnvelope,
        responses=_responses(TaskListEnvelope),
    )
    def query_task_list(
        request: Request,
        user: Viewer,
        name: Annotated[
            str | None,
            Query(max_length=256, pattern=r"^[^\x00]*$", description="Part of the task name."),
        ] = None,
        status: Annotated[
            str | None,
            Query(
                max_length=64,
                pattern=f"^{_STATUS}(,{_STATUS})*$",
                description="Task statuses, comma-separated: RUNNING, FAILED, SUCCESSFUL.",
            ),
        ] = None,
        type: Annotated[
            str | None,
            Query(
                max_length=64,
                pattern=f"^{_TYPE}(,{_TYPE})*$",
                description="Task types, comma-separated: MANUAL, SYS_ONCE, SCHEDULED, "
                "SYS_SCHEDULED.",
            ),
        ] = None,
        host_id: Annotated[
            int | None,
            Query(alias="hostId", ge=1, le=MAX_ID, description="Only tasks on this host."),
        ] = None,
        page: Annotated[int, Query(ge=1, le=2**31 - 1, description="Page number, from 1.")] = 1,
        size: Annotated[
            int, Query(ge=1, le=MAX_PAGE_SIZE, description="Tasks per page, up to 2000.")
        ] = DEFAULT_PAGE_SIZE,
        sort: Annotated[
            str,
            Query(
                pattern=r"^id(,(asc|desc))?$",
                description="Order: 'id,desc' (newest first, the default) or 'id,asc'.",
            ),
        ] = "id,desc",
    ) -> Response:
        """A page of tasks, newest first, with basic subtasks (query-task-list.json)."""
        found = engine.list(
            page=page,
            size=size,
            name=name or None,
            statuses=_statuses(status),
            types=_types(type),
            host_id=host_id,
            descending=not sort.lower().endswith(",asc"),
        )
        return ok(request, views.task_list_json(found))

    @router.get(
        tasks + "/{id}",
        tags=["tasks"],
        summary="Get a task",
        response_model=TaskEnvelope,
        responses=_responses(TaskEnvelope, 404),
    )
    def get_task(request: Request, user: Viewer, id: Id) -> Response:
        """The task with its subtasks (task-detail.json)."""
        return ok(request, views.task_json(engine.get(id), detail=True))

    @router.post(
        tasks + "/{id}/retry",
        tags=["tasks"],
        summary="Retry a failed task",
        response_model=TaskEnvelope,
        responses=_responses(TaskEnvelope, 404, 409),
    )
    def retry_task(request: Request, user: Manager, id: Id) -> Response:
        """Every FAILED subtask runs again as RETRY (20003 unless the task is FAILED)."""
        return ok(request, views.task_json(engine.retry(id, operator=user.name), detail=True))

    @router.post(
        tasks + "/{id}/rollback",
        tags=["tasks"],
        summary="Roll a failed task back",
        response_model=TaskEnvelope,
        responses=_responses(TaskEnvelope, 404, 409),
    )
    def rollback_task(request: Request, user: Manager, id: Id) -> Response:
        """Undo the task in reverse topological order (20003 / 20004 if refused)."""
        return ok(request, views.task_json(engine.rollback(id, operator=user.name), detail=True))

    @router.get(
        tasks + "/{id}/subtasks/{subtask_id}/log",
        tags=["subtasks"],
        summary="Read a subtask's log",
        response_model=LogEnvelope,
        responses=_responses(LogEnvelope, 404),
    )
    def subtask_log(request: Request, user: Viewer, id: Id, subtask_id: SubtaskId) -> Response:
        """Every attempt's log of the subtask, as it is now (subtask-log.json)."""
        return ok(request, views.log_json(engine.logs(id, subtask_id)))

    @router.get(
        tasks + "/{id}/log/download",
        tags=["tasks"],
        summary="Download every log of a task",
        response_class=Response,
        responses={
            200: {
                "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                "description": "A zip: task.json, history.txt and logs/<subtask id>-<name>/"
                "attempt-<runTime>.log for every subtask and attempt that logged anything.",
                "headers": _HEADER_DOCS,
            },
            **error_responses(400, 401, 403, 404, 429, 500),
        },
    )
    def task_logs(request: Request, user: Viewer, id: Id) -> Response:
        """The task's diagnosis download, as OCP's task center offers it: its JSON, its history
        and one file per subtask and attempt (secret values masked)."""
        archive = diagnosis.task_archive(engine, id)
        return download(request, archive, "application/zip", f"task-{id}-logs.zip")

    @router.post(
        tasks + "/{id}/subtasks/{subtask_id}/retry",
        tags=["subtasks"],
        summary="Retry a failed subtask",
        response_model=SubtaskEnvelope,
        responses=_responses(SubtaskEnvelope, 404, 409),
    )
    def retry_subtask(request: Request, user: Manager, id: Id, subtask_id: SubtaskId) -> Response:
        """The FAILED subtask runs again as RETRY; answers the subtask (retry-subtask.json)."""
        sub = engine.retry_subtask(id, subtask_id, operator=user.name)
        return ok(request, views.subtask_json(sub))

    @router.post(
        tasks + "/{id}/subtasks/{subtask_id}/skip",
        tags=["subtasks"],
        summary="Skip a failed subtask",
        response_model=EmptyEnvelope,
        responses=_responses(EmptyEnvelope, 404, 409),
    )
    def skip_subtask(request: Request, user: Manager, id: Id, subtask_id: SubtaskId) -> Response:
        """The FAILED subtask counts as done without running (SKIP / ROLLBACK_SKIP); no data."""
        engine.skip_subtask(id, subtask_id, operator=user.name)
        return ok(request, None)

    @router.post(
        tasks + "/{id}/subtasks/{subtask_id}/cancel",
        tags=["subtasks"],
        summary="Cancel a running subtask",
        response_model=EmptyEnvelope,
        responses=_responses(EmptyEnvelope, 404, 409),
    )
    def cancel_subtask(request: Request, user: Manager, id: Id, subtask_id: SubtaskId) -> Response:
        """The RUNNING subtask is interrupted and ends FAILED with operation CANCEL; no data."""
        engine.cancel_subtask(id, subtask_id, operator=user.name)
        return ok(request, None)

    def submit_single(template: str, host_id: int, user: UserInfo) -> dict[str, Any]:
        task = engine.submit(template, args={"host_id": str(host_id)}, creator=user.name)
        return views.task_json(task)

    def submit_batch(template: str, body: BatchHostsRequest, user: UserInfo) -> dict[str, Any]:
        ids = [str(host_id) for host_id in body.ids or ()]
        task = engine.submit(template, lists={"host_ids": ids}, creator=user.name)
        return views.task_json(task)

    host_errors = (404, 409)

    @router.post(
        "/compute/hosts/{hostId}/agent/stop",
        tags=["hosts"],
        summary="Stop the OCP agent of a host",
        response_model=TaskEnvelope,
        responses=_responses(TaskEnvelope, *host_errors),
    )
    def stop_agent(request: Request, user: HostManager, hostId: HostIdPath) -> Response:
        """Start a "Stop OCP agent" task on the host; answers the new task (stop-ocp-agent.json).

        409 if the host already has a running host operation.
        """
        return ok(request, submit_single(STOP_OCP_AGENT, hostId, user))

    @router.post(
        "/compute/hosts/{hostId}/agent/restart",
        tags=["hosts"],
        summary="Restart the OCP agent of a host",
        response_model=TaskEnvelope,
        responses=_responses(TaskEnvelope, *host_errors),
    )
    def restart_agent(request: Request, user: HostManager, hostId: HostIdPath) -> Response:
        """Start a "Restart OCP agent" task on the host (restart-ocp-agent.json)."""
        return ok(request, submit_single(RESTART_OCP_AGENT, hostId, user))

    @router.post(
        "/compute/hosts/batchStopAgents",
        tags=["hosts"],
        summary="Stop the OCP agents of several hosts",
        response_model=TaskEnvelope,
        responses=_responses(TaskEnvelope, *host_errors),
    )
    def batch_stop_agents(
        request: Request, user: HostManager, body: Annotated[BatchHostsRequest, Body()]
    ) -> Response:
        """Start a "Batch stop OCP agent" task (stop-ocp-agents-batch.json)."""
        return ok(request, submit_batch(BATCH_STOP_OCP_AGENT, body, user))

    @router.post(
        "/compute/hosts/batchRestartAgents",
        tags=["hosts"],
        summary="Restart the OCP agents of several hosts",
        response_model=TaskEnvelope,
        responses=_responses(TaskEnvelope, *host_errors),
    )
    def batch_restart_agents(
        request: Request, user: HostManager, body: Annotated[BatchHostsRequest, Body()]
    ) -> Response:
        """Start a "Batch restart OCP agent" task (restart-ocp-agents-batch.json)."""
        return ok(request, submit_batch(BATCH_RESTART_OCP_AGENT, body, user))

    return router
