"""Rerun and fork: a new task from a finished task's template and context (``dagtask rerun``).

``rerun(engine, id)`` submits the template version the task was expanded from with the task's own
context (its argument). ``rerun(engine, id, from_subtask=S)`` forks it: the subtasks that do not
depend on S (neither S nor anything downstream of it) start SUCCESSFUL with the output they
recorded, and S and everything after it run again. A subtask that did not succeed in the old task
has no output to reuse, so it runs again too, and so does everything downstream of it. The new
task records where it came from (``source_task_id``, and the reused subtasks' messages).

Subtasks of the old and the new task are matched by position: expanding the same template with
the same context gives the same subtasks in the same seriesId order.
"""

from __future__ import annotations

import getpass
import socket
from typing import TYPE_CHECKING, Any

from dagtask import expand, handlers
from dagtask.errors import (
    ArgumentError,
    HostNotFoundError,
    OperationNotAllowedError,
    TaskNotFoundError,
    TemplateError,
)
from dagtask.models import SubtaskInfo, TaskInfo, ocp_original_of
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.store import history as sql
from dagtask.template import TaskTemplate

from .reading import store_of

if TYPE_CHECKING:
    from dagtask.engine import Engine

S = SubtaskStatus


def template_of(engine: Engine, task: TaskInfo) -> TaskTemplate:
    """The stored template version ``task`` was expanded from (TemplateError if none)."""
    found = sql.template_by_id(store_of(engine).db, task.template_id) if task.template_id else None
    if found is None:
        ocp = ocp_original_of(task.origin) is not None  # also once re-imported from an export
        why = "it was imported from an OCP document" if ocp else "none was stored"
        raise TemplateError(
            f"task {task.id} has no template to rerun ({why}); run a template anew with "
            "`dagtask run TEMPLATE`"
        )
    return TaskTemplate.from_definition(
        found.definition, source=f"template {found.name!r} v{found.version}"
    )


def find_subtask(task: TaskInfo, ref: str | int) -> SubtaskInfo:
    """A subtask of ``task`` by id or by (unique) name; ``name[idx]`` picks a fan-out copy."""
    text = str(ref).strip()
    if text.isdigit():
        for sub in task.subtasks:
            if sub.id == int(text):
                return sub
    name, idx = text, -1
    if text.endswith("]") and "[" in text:
        name, _, rest = text.rpartition("[")
        name = name.strip()
        if rest[:-1].strip().isdigit():
            idx = int(rest[:-1])
    found = [s for s in task.subtasks if s.name == name and (idx < 0 or s.parallel_idx == idx)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise TaskNotFoundError(
            f"error 20000: task {task.id} has no subtask {text!r}; "
            f"see its subtasks with `dagtask show {task.id}`"
        )
    ids = ", ".join(str(s.id) for s in found)
    raise ArgumentError(
        f"task {task.id} has {len(found)} subtasks named {text!r} (ids {ids}); name one by its id"
    )


def descendants(task: TaskInfo, start: set[int]) -> set[int]:
    """``start`` and every subtask downstream of it."""
    downs = {s.id: s.downstreams for s in task.subtasks}
    found = set(start)
    frontier = list(start)
    while frontier:
        for down in downs[frontier.pop()]:
            if down not in found:
                found.add(down)
                frontier.append(down)
    return found


def plan(task: TaskInfo, from_subtask: str | int | None) -> set[int]:
    """The ids of the old task's subtasks whose outputs a rerun reuses."""
    if from_subtask is None:
        return set()
    chosen = find_subtask(task, from_subtask)
    failed = {s.id for s in task.subtasks if s.status is not S.SUCCESSFUL}
    again = descendants(task, {chosen.id} | failed)
    return {s.id for s in task.subtasks if s.id not in again}


def rerun(
    engine: Engine,
    task_id: int,
    *,
    from_subtask: str | int | None = None,
    creator: str | None = None,
) -> TaskInfo:
    """Start a new task from a finished task's template and context; with ``from_subtask``,
    reuse the recorded outputs of the subtasks that do not depend on it (see the module)."""
    store = store_of(engine)
    old = store.get_task(task_id)
    if old.status is TaskStatus.RUNNING and not old.historical:
        raise OperationNotAllowedError(
            f"error 20003: cannot rerun task {task_id}: it is still RUNNING; wait for it to end "
            f"or cancel it (`dagtask cancel {task_id}`)"
        )
    template = template_of(engine, old)
    template.check_handlers()
    context = old.context
    expanded = expand.expand(template, context)
    for sub in expanded.subtasks:
        sub.prohibit_rollback = sub.prohibit_rollback or handlers.prohibits_rollback(
            sub.spec.handler
        )
    reuse = plan(old, from_subtask)
    reused: dict[int, dict[str, Any]] = {}
    if reuse:
        by_series = {s.series_id: s for s in old.subtasks}
        for sub in expanded.subtasks:
            before = by_series.get(sub.series_id)
            if before is None or (before.name, before.parallel_idx) != (
                sub.spec.instance_name,
                sub.parallel_idx,
            ):
                raise TemplateError(
                    f"task {task_id}'s subtasks no longer match its template (subtask with "
                    f"seriesId {sub.series_id}); rerun it without --from"
                )
            if before.id in reuse:
                reused[sub.index] = before.context.to_json() if before.context else {}
    host_id, hosts = _hosts(engine, template, old)
    new_id = store.submit(
        expanded,
        template_id=old.template_id,
        creator=creator or _user(),
        executor=socket.gethostname(),
        host_id=host_id,
        hosts=hosts,
        source_task_id=task_id,
        reused=reused,
    )
    return store.get_task(new_id)


def _hosts(engine: Engine, template: TaskTemplate, old: TaskInfo) -> tuple[int | None, list[int]]:
    """The host (or hosts) a host operation acts on, checked as a submit checks them."""
    ids: list[int] = []
    host_id = None
    if template.host_arg:
        raw = old.context.string_map.get(template.host_arg)
        if raw is not None and raw.isdigit():
            host_id = int(raw)
            ids.append(host_id)
    hosts: list[int] = []
    if template.host_list_arg:
        hosts = [
            int(h) for h in old.context.list_map.get(template.host_list_arg, []) if h.isdigit()
        ]
        ids.extend(hosts)
    inventory = getattr(engine, "hosts", None)
    for host in ids:
        if inventory is None:
            break
        try:
            inventory.get(host)
        except HostNotFoundError as exc:
            raise HostNotFoundError(
                f"host {host} of task {old.id} no longer exists, so no task was created; "
                "add it with `dagtask hosts add` or list hosts with `dagtask hosts list`"
            ) from exc
    return host_id, hosts


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
