"""Reading a task's history from an :class:`~dagtask.Engine` or a bare store."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from dagtask.models import TaskEvent, TaskInfo
from dagtask.store import history as sql

from . import state as rp
from . import typed as ev

if TYPE_CHECKING:
    from dagtask.engine import Engine
    from dagtask.store.sql import Store


def store_of(source: Engine | Store) -> Store:
    """The store behind an engine (or the store itself)."""
    inner = getattr(source, "store", None)
    return inner if inner is not None else source  # type: ignore[return-value]


def template_ref(source: Engine | Store, task: TaskInfo) -> ev.TemplateRef | None:
    """The stored template version ``task`` was expanded from, if any."""
    if task.template_id is None:
        return None
    found = sql.template_by_id(store_of(source).db, task.template_id)
    if found is None:
        return None
    return ev.TemplateRef(id=found.id, name=found.name, version=found.version, digest=found.digest)


def load(source: Engine | Store, task_id: int) -> tuple[TaskInfo, list[TaskEvent]]:
    """The task (raises TaskNotFoundError, 20000) and its stored events, oldest first."""
    store = store_of(source)
    task = store.get_task(task_id)
    return task, store.events(task_id)


def typed_events(source: Engine | Store, task_id: int) -> list[ev.HistoryEvent]:
    """The task's history as typed events, oldest first."""
    task, raw = load(source, task_id)
    return ev.typed_events(task, raw, template_ref(source, task))


def task_history(source: Engine | Store, task_id: int) -> ev.TaskHistory:
    """The task's complete history: typed events, attempts and operator actions."""
    task, raw = load(source, task_id)
    template = template_ref(source, task)
    typed = ev.typed_events(task, raw, template)
    return ev.TaskHistory(
        task_id=task.id,
        name=task.name,
        status=task.status,
        operation=task.operation,
        creator=task.creator,
        template=template,
        source_task_id=task.source_task_id,
        historical=task.historical,
        origin=task.origin,
        events=typed,
        attempts=ev.attempts(typed),
        actions=ev.actions(typed),
    )


def replay(
    source: Engine | Store,
    task_id: int,
    *,
    step: int | None = None,
    at: datetime | None = None,
) -> rp.TaskState:
    """The task's state rebuilt from its events: after all of them, after the first ``step``,
    or as it was at ``at`` (an aware datetime, or naive UTC)."""
    task, raw = load(source, task_id)
    return rp.replay_events(task, raw, step=step, at=at)


def snapshot(source: Engine | Store, task_id: int) -> rp.TaskState:
    """The task's stored state, in the fields replay rebuilds."""
    task, raw = load(source, task_id)
    return rp.snapshot(task, raw)
