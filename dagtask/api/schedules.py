"""The task definitions' endpoints: ``/api/v2/tasks/definitions`` (docs/schedules.md).

Reading needs TASK_VIEWER, changing TASK_MANAGER. Every answer is the usual envelope; a bad rule,
zone, window, policy, template or argument is a 400 naming what was wrong, and stores nothing.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time.

from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Request, Response
from pydantic import ConfigDict, Field

from dagtask import views
from dagtask.api.errors import ok
from dagtask.api.schemas import MAX_ID, EmptyEnvelope, _Envelope, _Schema
from dagtask.engine import Engine
from dagtask.errors import DefinitionNotFoundError
from dagtask.schedules import Definition
from dagtask.users import Role, UserInfo

DefinitionId = Annotated[int, Path(ge=1, le=MAX_ID, description="A task definition's id.")]
Key = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
Value = Annotated[str, Field(max_length=4096, pattern=r"^[^\x00]*$")]


class DefinitionRequest(_Schema):
    """A new task definition: a template, its arguments and a schedule (``cron`` or ``once``;
    neither: MANUAL, fired only by ``/run``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00]*$")
    template: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00]*$")
    cron: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^[^\x00]*$",
        description="OCP's 6-field rule with seconds ('0 0/2 * * * ?') or the classic 5 fields.",
    )
    once: datetime | None = Field(default=None, description="Fire once at this time.")
    time_zone: str = Field(default="UTC", max_length=64, pattern=r"^[^\x00]*$")
    string_map: dict[Key, Value] = Field(default_factory=dict, max_length=200)
    list_map: dict[Key, Annotated[list[Value], Field(max_length=1000)]] = Field(
        default_factory=dict, max_length=200
    )
    start_time: datetime | None = None
    end_time: datetime | None = None
    missed_policy: str = Field(default="SKIP", pattern=r"^(SKIP|CATCH_UP)$")
    overlap_policy: str = Field(default="SKIP", pattern=r"^(SKIP|ALLOW|QUEUE)$")
    enabled: bool = True
    description: str = Field(default="", max_length=2000, pattern=r"^[^\x00]*$")


class ContextView(_Schema):
    """The arguments each task of the definition gets."""

    string_map: dict[str, str]
    list_map: dict[str, list[str]]


class DefinitionView(_Schema):
    """A task definition. Times are ISO-8601 with offset; ``once`` is a ONCE definition's run
    time, ``nextFireTime`` null when it fires no more."""

    id: int
    name: str
    template: str
    type: str = Field(description="SCHEDULED, or SYS_SCHEDULED for a built-in one.")
    schedule_kind: str = Field(description="CRON, ONCE or MANUAL.")
    cron: str | None
    once: str | None
    time_zone: str
    start_time: str | None
    end_time: str | None
    missed_policy: str
    overlap_policy: str
    enabled: bool
    creator: str
    description: str
    next_fire_time: str | None
    last_fire_time: str | None
    context: ContextView


class FireView(_Schema):
    """One tick: FIRED (with its task), SKIPPED, MISSED, FAILED or CLAIMED (being fired)."""

    fire_time: str
    outcome: str
    task_id: int | None
    executor: str
    message: str | None


class DefinitionDetailView(DefinitionView):
    """A definition with its newest fires, newest first."""

    fires: list[FireView]


class DefinitionListView(_Schema):
    """Every task definition."""

    contents: list[DefinitionView]


class RunView(_Schema):
    """The task a run-now created."""

    task_id: int


class DefinitionEnvelope(_Envelope):
    """A successful answer carrying a task definition."""

    data: DefinitionView
    successful: Literal[True] = True


class DefinitionDetailEnvelope(_Envelope):
    """A successful answer carrying a task definition and its fires."""

    data: DefinitionDetailView
    successful: Literal[True] = True


class DefinitionListEnvelope(_Envelope):
    """A successful answer carrying every task definition."""

    data: DefinitionListView
    successful: Literal[True] = True


class RunEnvelope(_Envelope):
    """A successful answer carrying the id of the task a run created."""

    data: RunView
    successful: Literal[True] = True


def _time(value: datetime | None) -> str | None:
    return views.iso_ms(value) if value is not None else None


def definition_view(found: Definition) -> DefinitionView:
    """A definition as the API shows it."""
    return DefinitionView(
        id=found.id,
        name=found.name,
        template=found.template,
        type=found.type.value,
        schedule_kind=found.schedule_kind,
        cron=found.cron,
        once=_time(found.run_at),
        time_zone=found.time_zone,
        start_time=_time(found.start_time),
        end_time=_time(found.end_time),
        missed_policy=found.missed_policy,
        overlap_policy=found.overlap_policy,
        enabled=found.enabled,
        creator=found.creator,
        description=found.description,
        next_fire_time=_time(found.next_fire_time),
        last_fire_time=_time(found.last_fire_time),
        context=ContextView(string_map=found.args, list_map=found.lists),
    )


def definition_json(found: Definition) -> dict[str, Any]:
    """A definition in the API's camelCase JSON."""
    return definition_view(found).model_dump(by_alias=True, mode="json")


def add_definition_routes(
    router: APIRouter,
    engine: Engine,
    caller: Callable[[Role, str], Callable[..., UserInfo]],
    responses: Callable[..., dict[int | str, dict[str, Any]]],
) -> None:
    """Register the definitions' endpoints on ``router`` (``caller``: the role dependency
    factory of :func:`dagtask.api.routes.create_router`)."""
    base = "/api/v2/tasks/definitions"
    tag: list[str | Enum] = ["definitions"]
    Viewer = Annotated[UserInfo, Depends(caller(Role.TASK_VIEWER, "read task definitions"))]
    Manager = Annotated[UserInfo, Depends(caller(Role.TASK_MANAGER, "change task definitions"))]

    @router.get(
        base,
        tags=tag,
        summary="List task definitions",
        response_model=DefinitionListEnvelope,
        responses=responses(DefinitionListEnvelope),
    )
    def list_definitions(request: Request, user: Viewer) -> Response:
        """Every task definition with its schedule and next fire time."""
        return ok(request, {"contents": [definition_json(d) for d in engine.schedules.list()]})

    @router.post(
        base,
        tags=tag,
        summary="Create a task definition",
        response_model=DefinitionEnvelope,
        responses=responses(DefinitionEnvelope, 404),
    )
    def create_definition(
        request: Request,
        user: Manager,
        body: Annotated[DefinitionRequest, Body()],
    ) -> Response:
        """Store a definition; each fire creates a SCHEDULED task with its taskDefinitionId."""
        found = engine.schedules.add(
            body.name,
            body.template,
            cron_rule=body.cron,
            once=body.once,
            tz=body.time_zone,
            args=body.string_map,
            lists=body.list_map,
            start=body.start_time,
            end=body.end_time,
            missed=body.missed_policy,
            overlap=body.overlap_policy,
            enabled=body.enabled,
            creator=user.name,
            description=body.description,
        )
        return ok(request, definition_json(found))

    @router.get(
        base + "/{id}",
        tags=tag,
        summary="Get a task definition",
        response_model=DefinitionDetailEnvelope,
        responses=responses(DefinitionDetailEnvelope, 404),
    )
    def get_definition(request: Request, user: Viewer, id: DefinitionId) -> Response:
        """A definition and its newest fires."""
        found = engine.schedules.get(id)
        fires = [
            FireView(
                fire_time=views.iso_ms(f.fire_time),
                outcome=f.outcome,
                task_id=f.task_id,
                executor=f.executor,
                message=f.message,
            )
            for f in engine.schedules.fires(id, 50)
        ]
        detail = DefinitionDetailView(**dict(definition_view(found)), fires=fires)
        return ok(request, detail.model_dump(by_alias=True, mode="json"))

    def switch(enable: bool) -> Callable[..., Response]:
        def change(request: Request, user: Manager, id: DefinitionId) -> Response:
            method = engine.schedules.enable if enable else engine.schedules.disable
            return ok(request, definition_json(method(id)))

        change.__name__ = "enable_definition" if enable else "disable_definition"
        change.__doc__ = (
            "Enable it: its next fire time is computed from now."
            if enable
            else "Disable it: no more fires until enabled (run still works)."
        )
        return change

    for verb, enable in (("enable", True), ("disable", False)):
        router.post(
            base + "/{id}/" + verb,
            tags=tag,
            summary=f"{verb.capitalize()} a task definition",
            response_model=DefinitionEnvelope,
            responses=responses(DefinitionEnvelope, 404),
        )(switch(enable))

    @router.post(
        base + "/{id}/run",
        tags=tag,
        summary="Fire a task definition now",
        response_model=RunEnvelope,
        responses=responses(RunEnvelope, 404),
    )
    def run_definition(request: Request, user: Manager, id: DefinitionId) -> Response:
        """Create its task now, whatever its schedule; the answer is the new task's id."""
        task_id = engine.schedules.run_now(id, creator=user.name)
        return ok(request, RunView(task_id=task_id).model_dump(by_alias=True))

    @router.delete(
        base + "/{id}",
        tags=tag,
        summary="Delete a task definition",
        response_model=EmptyEnvelope,
        responses=responses(EmptyEnvelope, 404),
    )
    def delete_definition(request: Request, user: Manager, id: DefinitionId) -> Response:
        """Delete a definition and its fire records; the tasks it created stay."""
        engine.schedules.delete(id)
        return ok(request, None)


__all__ = ["DefinitionNotFoundError", "DefinitionRequest", "add_definition_routes"]
