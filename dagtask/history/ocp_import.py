"""OCP task documents as historical tasks (``dagtask import FILE.json``).

Accepted: an OCP task in the "subtasks" shape (what OCP's task actions return) or in the older
"tasks" shape (7-key subtasks, the context as Java's ``Context(...)`` string, ``cluster`` /
``tenant`` / ``creator`` objects), bare or inside OCP's API envelope (``{"data": ...,
"successful": true, ...}``), one task or a list of them (``data.contents`` of a task list, or a
JSON array). Anything else (request bodies, a subtask, a log, an error envelope, an envelope
without data) is refused, saying what the document is.

Decisions (OCP's documents say nothing about them):

* Ids are new; the OCP ids stay visible: the task's ``origin`` holds the OCP task id, the file,
  the JSON path and the whole original object, each subtask its ``original_id``. What the
  original has and the task row has no column for (``creator`` as ``{id, name}``, the
  ``cluster`` and ``tenant`` objects) is shown from there, in OCP's shape, as are the task's
  ``prohibitRollback`` and ``createTime`` when OCP sent them (:func:`dagtask.views.task_json`).
  The record carries the original too (``TaskRecord.ocp_original``), so its export does.
* A missing ``operation`` is EXECUTE, except for a SUCCESSFUL task whose subtasks are all PENDING,
  which only a finished rollback leaves (ROLLBACK). A missing ``seriesId`` is the position in
  reverse topological order (dagtask's own rule), a missing ``runTime`` 1, ``timeout`` 0,
  ``parallelIdx`` -1, ``className`` empty, and a missing time the nearest recorded one.
* A document holds a snapshot, not a history. The history of an imported task is made of what the
  document does record: the submission (at ``createTime``/``startTime``), for a subtask with a
  ``startTime`` an attempt (READY, then claimed by its ``executor`` at ``startTime``, ended at
  ``finishTime`` if it has ended), for any other subtask not in its initial state one event to
  the state it was recorded in, and the task's final status at its ``finishTime``. The stored
  subtask fields follow from these events, so replaying an imported task gives what it shows.
* A subtask recorded with operation CANCEL was cancelled in OCP, which shows the cancel as
  RUNNING / CANCEL between CANCELING and the end (dagtask goes CANCELING -> FAILED / CANCEL). Its
  attempt is recorded along OCP's path: claimed under EXECUTE (RETRY when its runTime is above
  1), RUNNING -> CANCELING -> RUNNING / CANCEL, then the recorded end at ``finishTime`` if it has
  ended; the cancel's own times are not in the document, so its two events take the end's time
  (the start's while it still runs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from dagtask import graph
from dagtask.context import TaskContext
from dagtask.errors import ArgumentError, CycleError
from dagtask.models import EdgeRow, EventKind, EventRow, SubtaskRow, TaskRecord, TaskRow
from dagtask.states import Operation, SubtaskStatus, TaskStatus, TaskType

from . import exchange
from . import state as rp

S = SubtaskStatus
TASK_LISTS = ("subtasks", "tasks")
SUBTASK_KEYS = {"className", "seriesId", "upstreams", "downstreams", "nodeType", "runTime"}


@dataclass(frozen=True)
class OcpTask:
    """One OCP task object found in a document, and where (a JSON path)."""

    path: str
    data: Mapping[str, Any]


def _refuse(name: str, what: str) -> NoReturn:
    raise ArgumentError(f"{name} is not an OCP task document: {what}; nothing was imported")


def find_tasks(document: Any, name: str) -> list[OcpTask]:
    """The task objects of an OCP document (ArgumentError saying what it is otherwise)."""
    if isinstance(document, dict) and "successful" in document:
        if document.get("successful") is False or "error" in document:
            error = document.get("error") or {}
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            _refuse(name, f"it is an OCP error response (error code {code}: {message})")
        if document.get("data") is None:
            _refuse(
                name,
                "it is an OCP API response without data (such as the answer to a subtask skip "
                "or cancel), so it holds no task",
            )
        return _tasks_in(document["data"], "$.data", name)
    return _tasks_in(document, "$", name)


def _is_task(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and "id" in value
        and "name" in value
        and any(isinstance(value.get(key), list) for key in TASK_LISTS)
    )


def _tasks_in(value: Any, path: str, name: str) -> list[OcpTask]:
    if _is_task(value):
        return [OcpTask(path, value)]
    items: list[Any] | None = None
    if isinstance(value, dict) and isinstance(value.get("contents"), list):
        items, path = value["contents"], f"{path}.contents"
    elif isinstance(value, list):
        items = value
    if items is not None:
        if not items:
            _refuse(name, f"the list at {path} is empty")
        for i, item in enumerate(items):
            if not _is_task(item):
                _refuse(name, f"{path}[{i}] is {_what(item)}")
        return [OcpTask(f"{path}[{i}]", item) for i, item in enumerate(items)]
    _refuse(name, f"{path} is {_what(value)}")


def _what(value: Any) -> str:
    """What a JSON value that is not an OCP task looks like, for the refusal."""
    if isinstance(value, dict):
        if set(value) == {"log"} or ("log" in value and len(value) <= 2):
            return "a subtask log (OCP's subtask log response), not a task"
        if SUBTASK_KEYS & set(value) and "id" in value:
            return "a single subtask (such as the answer to a subtask retry), not a task"
        keys = ", ".join(sorted(map(str, value))[:8]) or "none"
        return (
            "not a task: a task has id, name, status and a 'subtasks' (or older 'tasks') list; "
            f"this object has the keys {keys} (a request body?)"
        )
    return f"a JSON {type(value).__name__}, not a task object"


# ---- one task --------------------------------------------------------------------------------


def to_record(
    task: OcpTask, name: str, now: datetime
) -> tuple[TaskRecord, dict[str, Any], dict[int, int]]:
    """A task object as a record (with new local ids 1..n), its origin, and local -> OCP ids."""
    data, where = task.data, f"{name} {task.path}"
    raw_subs: list[Any] = next(data[key] for key in TASK_LISTS if isinstance(data.get(key), list))
    ocp_ids = _subtask_ids(raw_subs, where)
    local = {ocp: i + 1 for i, ocp in enumerate(ocp_ids)}
    edges = _links(raw_subs, local, where)
    task_status = _enum(TaskStatus, data.get("status"), f"{where}.status")
    statuses = [
        _enum(S, s.get("status"), f"{where}.subtasks[{i}].status") for i, s in enumerate(raw_subs)
    ]
    default_op = Operation.EXECUTE
    if task_status is TaskStatus.SUCCESSFUL and statuses and all(s is S.PENDING for s in statuses):
        default_op = Operation.ROLLBACK  # only a finished rollback leaves this
    operation = _enum(Operation, data.get("operation") or default_op.value, f"{where}.operation")
    start = _time(data.get("startTime"), f"{where}.startTime")
    created = _time(data.get("createTime"), f"{where}.createTime") or start
    finished = _time(data.get("finishTime"), f"{where}.finishTime")
    context, context_text = _context(data.get("context"), f"{where}.context")
    times = [t for t in (created, start, finished) if t is not None]
    for i, raw in enumerate(raw_subs):
        for key in ("createTime", "startTime", "finishTime"):
            found = _time(raw.get(key), f"{where}.subtasks[{i}].{key}")
            if found is not None:
                times.append(found)
    begin = created or start or (min(times) if times else now)
    subs = [
        _subtask_row(raw, local[ocp_ids[i]], statuses[i], f"{where}.subtasks[{i}]", begin)
        for i, raw in enumerate(raw_subs)
    ]
    series = _series(list(local.values()), edges)
    subs = [
        s if s.series_id >= 0 else s.model_copy(update={"series_id": series[s.id]}) for s in subs
    ]
    ocp_id = _int(data, "id", where)
    row = TaskRow(
        id=1,
        name=_str(data, "name", where),
        task_definition_id=_int(data, "taskDefinitionId", where, -1),
        type=_enum(TaskType, data.get("type") or "MANUAL", f"{where}.type"),
        status=task_status,
        operation=operation,
        creator=_creator(data.get("creator")),
        executor=str(data.get("executor") or ""),
        context=context.to_json(),
        prohibit_rollback=_bool(data, "prohibitRollback", where, context.prohibit_rollback),
        host_id=_subject(data, "hostId", None),
        cluster_id=_subject(data, "clusterId", "cluster"),
        tenant_id=_subject(data, "tenantId", "tenant"),
        concurrency=10,
        source_task_id=None,
        create_time=begin,
        start_time=start or begin,
        finish_time=None,
    )
    end = finished or max(times, default=begin)
    origin: dict[str, Any] = {
        "format": "ocp",
        "file": name,
        "path": task.path,
        "task_id": ocp_id,
        "document": dict(data),
    }
    if context_text is not None:
        origin["context_text"] = context_text
    record = TaskRecord(
        template=None,
        task=row,
        subtasks=subs,
        edges=[EdgeRow(upstream_id=u, downstream_id=d) for u, d in sorted(edges)],
        events=_events(row, subs, raw_subs, ocp_id, name, begin, end),
        logs=[],
        ocp_original=origin,
    )
    return _settle(record), origin, {local[o]: o for o in ocp_ids}


def _subtask_ids(raw_subs: list[Any], where: str) -> list[int]:
    ids: list[int] = []
    for i, sub in enumerate(raw_subs):
        if not isinstance(sub, dict):
            _bad(where, f"subtasks[{i}] is not an object")
        ids.append(_int(sub, "id", f"{where}.subtasks[{i}]"))
    if len(set(ids)) != len(ids):
        _bad(where, f"subtask id {next(i for i in ids if ids.count(i) > 1)} appears twice")
    return ids


def _links(raw_subs: list[Any], local: dict[int, int], where: str) -> set[tuple[int, int]]:
    """(upstream, downstream) local ids from both sides' lists (OCP repeats each link)."""
    edges: set[tuple[int, int]] = set()
    for i, sub in enumerate(raw_subs):
        me = local[sub["id"]]
        for key, upward in (("upstreams", True), ("downstreams", False)):
            for other in sub.get(key) or []:
                if other not in local:
                    _bad(
                        f"{where}.subtasks[{i}]",
                        f"{key} names {other!r}, which is not a subtask of this task",
                    )
                edges.add((local[other], me) if upward else (me, local[other]))
    try:
        graph.check_acyclic(list(local.values()), sorted(edges))
    except CycleError as exc:
        _bad(where, f"its subtask links form a cycle ({exc})")
    return edges


def _series(nodes: list[int], edges: set[tuple[int, int]]) -> dict[int, int]:
    """dagtask's seriesId rule for documents without one: reverse topological order."""
    order = graph.topological_order(nodes, sorted(edges))
    return {node: i for i, node in enumerate(reversed(order))}


def _subtask_row(
    raw: dict[str, Any], local_id: int, status: SubtaskStatus, here: str, begin: datetime
) -> SubtaskRow:
    """A subtask object as a row (its executor, times and message follow from its events)."""
    idx = _int(raw, "parallelIdx", here, -1)
    out = raw.get("context")
    return SubtaskRow(
        id=local_id,
        series_id=_int(raw, "seriesId", here, -1),
        name=_str(raw, "name", here),
        description=str(raw.get("description") or raw.get("name")),
        class_name=str(raw.get("className") or ""),
        node_type=str(raw.get("nodeType") or "JAVA_TASK"),
        operation=_enum(Operation, raw.get("operation") or "EXECUTE", f"{here}.operation"),
        status=status,
        run_time=_int(raw, "runTime", here, 1),
        timeout=_int(raw, "timeout", here, 0),
        retry_count=0,
        parallel=idx >= 0,
        parallel_idx=idx,
        prohibit_rollback=_bool(raw, "prohibitRollback", here, False),
        executor=None,
        recovery="FAIL",
        lost_count=0,
        output_context=_context(out, f"{here}.context")[0].to_json()
        if isinstance(out, dict)
        else None,
        message=None,
        create_time=_time(raw.get("createTime"), f"{here}.createTime") or begin,
        start_time=None,
        finish_time=None,
    )


def _events(
    task: TaskRow,
    subs: list[SubtaskRow],
    raw_subs: list[dict[str, Any]],
    ocp_id: Any,
    name: str,
    begin: datetime,
    end: datetime,
) -> list[EventRow]:
    """The history an OCP document records (see the module's docstring)."""
    found: list[tuple[datetime, int, dict[str, Any]]] = []
    seq = 0

    def add(when: datetime, **fields: Any) -> None:
        nonlocal seq
        seq += 1
        found.append((max(when, begin), seq, fields))  # nothing happens before the submission

    add(
        begin,
        subtask_id=None,
        kind=EventKind.TASK_SUBMITTED,
        new_status=TaskStatus.RUNNING.value,
        new_operation=Operation.EXECUTE.value,
        executor=task.executor or None,
        message=f"imported from OCP task {ocp_id} in {name} (created by {task.creator}): "
        f"{len(subs)} subtasks",
    )
    for sub, raw in zip(subs, raw_subs, strict=True):
        initial = sub.status is S.PENDING and sub.operation is Operation.EXECUTE
        if initial and sub.run_time == 1:
            continue
        base = {"subtask_id": sub.id, "kind": EventKind.SUBTASK_STATUS, "run_time": sub.run_time}
        started = _time(raw.get("startTime"), "")
        ended = _time(raw.get("finishTime"), "")
        op = sub.operation.value
        if started is not None and sub.status is not S.READY:
            at_end = sub.status not in (S.RUNNING, S.CANCELING)
            cancelled = sub.operation is Operation.CANCEL and sub.status is not S.CANCELING
            ran = op  # the operation of the attempt (a cancel interrupts an EXECUTE or a RETRY)
            if sub.operation is Operation.CANCEL:
                ran = (Operation.EXECUTE if sub.run_time == 1 else Operation.RETRY).value
            add(
                started,
                **base,
                old_status="PENDING",
                new_status="READY",
                old_operation="EXECUTE",
                new_operation=ran,
            )
            add(
                started,
                **base,
                old_status="READY",
                new_status="RUNNING",
                old_operation=ran,
                new_operation=ran,
                executor=raw.get("executor"),
            )
            if sub.status is S.CANCELING:
                add(
                    started,
                    **base,
                    old_status="RUNNING",
                    new_status="CANCELING",
                    old_operation=ran,
                    new_operation=op,
                )
            elif cancelled:  # OCP's path: RUNNING -> CANCELING -> RUNNING / CANCEL -> the end
                when = (ended or started) if at_end else started
                add(
                    when,
                    **base,
                    old_status="RUNNING",
                    new_status="CANCELING",
                    old_operation=ran,
                    new_operation=ran,
                )
                add(
                    when,
                    **base,
                    old_status="CANCELING",
                    new_status="RUNNING",
                    old_operation=ran,
                    new_operation=op,
                    executor=raw.get("executor"),
                )
            if at_end:
                add(
                    ended or started,
                    **base,
                    old_status="RUNNING",
                    new_status=sub.status.value,
                    old_operation=op if cancelled else ran,
                    new_operation=op,
                    executor=raw.get("executor"),
                    message=None,
                )
        else:
            add(
                started or begin,
                **base,
                old_status="PENDING",
                new_status=sub.status.value,
                old_operation="EXECUTE",
                new_operation=op,
                message=f"recorded as {sub.status.value} / {op} by OCP",
            )
    if task.status is not TaskStatus.RUNNING or task.operation is not Operation.EXECUTE:
        add(
            end if task.status is not TaskStatus.RUNNING else begin,
            subtask_id=None,
            kind=EventKind.TASK_STATUS,
            old_status="RUNNING",
            new_status=task.status.value,
            old_operation="EXECUTE",
            new_operation=task.operation.value,
            message="recorded by OCP",
        )
    found.sort(key=lambda item: (item[0], item[1]))
    defaults = {
        "old_status": None,
        "new_status": None,
        "old_operation": None,
        "new_operation": None,
        "run_time": None,
        "executor": None,
        "message": None,
    }
    return [
        EventRow.model_validate({**defaults, **fields, "id": i, "time": when})
        for i, (when, _, fields) in enumerate(found, start=1)
    ]


def _settle(record: TaskRecord) -> TaskRecord:
    """Set the fields replay rebuilds from the events, so replay gives what the task shows."""
    info = exchange.task_info(record)
    state = rp.replay_events(info, exchange.task_events(record))
    by_id = {s.id: s for s in state.subtasks}
    subs = [
        sub.model_copy(
            update={
                "executor": by_id[sub.id].executor,
                "start_time": by_id[sub.id].start_time,
                "finish_time": by_id[sub.id].finish_time,
                "message": by_id[sub.id].message,
            }
        )
        for sub in record.subtasks
    ]
    task = record.task.model_copy(update={"finish_time": state.finish_time})
    return record.model_copy(update={"subtasks": subs, "task": task})


# ---- field readers -----------------------------------------------------------------------------


def _bad(where: str, what: str) -> NoReturn:
    raise ArgumentError(f"{where}: {what}; nothing was imported")


def _int(data: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = data.get(key)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        _bad(where, f"{key} must be an integer, got {json.dumps(value)}")
    return value


def _bool(data: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        _bad(where, f"{key} must be true or false, got {json.dumps(value)}")
    return value


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        _bad(where, f"{key} must be a non-empty string, got {json.dumps(value)}")
    return value


def _enum(kind: Any, value: Any, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(item.value for item in kind)
        _bad(where, f"{json.dumps(value)} is not one of {allowed}")


def _time(value: Any, where: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        _bad(where, f"{json.dumps(value)} is not an ISO-8601 time")
    return rp.naive_utc(parsed) if parsed.tzinfo else parsed.replace(tzinfo=None)


def _creator(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name") or value.get("id") or "unknown")
    return str(value) if value else "unknown"


def _subject(data: Mapping[str, Any], key: str, obj: str | None) -> int | None:
    value = data.get(key)
    if value is None and obj is not None and isinstance(data.get(obj), dict):
        value = data[obj].get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_PAIR = re.compile(r"(?:^|, )([^=,{}\[\]\s]+)=")


def _context(value: Any, where: str) -> tuple[TaskContext, str | None]:
    """An OCP context: an object, Java's ``Context(...)`` string (best effort; the text is kept
    in the origin), or nothing."""
    if value is None:
        return TaskContext(), None
    if isinstance(value, dict):
        strings = value.get("stringMap") or {}
        lists = value.get("listMap") or {}
        if not isinstance(strings, dict) or not isinstance(lists, dict):
            _bad(where, "stringMap and listMap must be objects")
        return (
            TaskContext(
                string_map={str(k): "" if v is None else str(v) for k, v in strings.items()},
                list_map={
                    str(k): [str(i) for i in v] if isinstance(v, list) else [str(v)]
                    for k, v in lists.items()
                },
            ),
            None,
        )
    if isinstance(value, str):
        return _java_context(value), value
    _bad(where, f"expected an object or Java's Context(...) string, got {json.dumps(value)}")


def _java_context(text: str) -> TaskContext:
    strings_part = _between(text, "stringMap={", "}, listMap={") or _between(
        text, "stringMap={", "})"
    )
    lists_part = _between(text, "listMap={", "})") or ""
    strings: dict[str, str] = {}
    if strings_part:
        marks = list(_PAIR.finditer(strings_part))
        for i, mark in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(strings_part)
            strings[mark.group(1)] = strings_part[mark.end() : end]
    lists = {
        key: [item for item in items.split(", ") if item]
        for key, items in re.findall(r"([^=,{}\[\]\s]+)=\[(.*?)\]", lists_part)
    }
    return TaskContext(string_map=strings, list_map=lists)


def _between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    if i < 0:
        return None
    j = text.rfind(end)
    return text[i + len(start) : j] if j >= i + len(start) else None


def now_utc() -> datetime:
    """The current time as the store keeps it."""
    return datetime.now(UTC).replace(tzinfo=None)
