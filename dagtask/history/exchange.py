"""Export and import of whole tasks as JSON lines (``dagtask export`` / ``dagtask import``).

An export is self-contained: the template version the task was expanded from, the task, its
subtasks (with their output contexts), their links, every history event and every log chunk, one
JSON object per line, each tagged with ``"record"``::

    {"record": "header", "format": "dagtask-task", "version": 1, "task_id": 7, "counts": {...}}
    {"record": "template", "name": ..., "version": ..., "digest": ..., "definition": {...}}
    {"record": "task", ...}        then "subtask", "edge", "event" and "log" records
    {"record": "end", "task_id": 7, "lines": 42}

A task imported from an OCP document adds one ``"origin"`` record after its task record: the OCP
original (``format`` "ocp", ``file``, ``path``, ``task_id``, ``document``, ``context_text``), its
secrets masked like the rest of the export (the contexts in the document; Java's context text by
value). Importing such an export keeps it in the new task's origin (under ``"ocp"``), so the task
still shows what OCP sent and its export holds the same origin record again. Other tasks have no
origin record: the import provenance belongs to the importing database.

A file may hold several such blocks. The header's counts and the end record make a truncated file
detectable; every line is validated strictly, every id it refers to must be in the block, and the
task's state must equal the replay of its events, so a corrupt file is refused too, naming the
line. Imports are historical tasks with new ids (see :mod:`dagtask.store.history`); importing is
one transaction, so a refused file imports nothing. Exporting an imported task gives the same
lines as the export it came from, apart from the ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TextIO

from pydantic import BaseModel, ConfigDict, ValidationError

from dagtask.context import TaskContext
from dagtask.errors import ArgumentError
from dagtask.models import (
    EdgeRow,
    EventRow,
    LogRow,
    SubtaskInfo,
    SubtaskRow,
    TaskEvent,
    TaskInfo,
    TaskRecord,
    TaskRow,
    TemplateRecord,
    ocp_original_of,
)
from dagtask.secrets import mask_json, mask_record, mask_values, secret_values

from . import state as rp

FORMAT = "dagtask-task"
VERSION = 1


class OcpOriginRecord(BaseModel):
    """The ``origin`` record: the OCP original of a task imported from an OCP document."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["ocp"]
    file: str
    path: str
    task_id: int
    document: dict[str, Any]
    """The task object as OCP sent it (secrets masked)."""
    context_text: str | None = None
    """Java's ``Context(...)`` string, when the document's context was one."""


_ORDER = ("template", "task", "origin", "subtask", "edge", "event", "log")
_MODELS: dict[str, type[BaseModel]] = {
    "template": TemplateRecord,
    "task": TaskRow,
    "origin": OcpOriginRecord,
    "subtask": SubtaskRow,
    "edge": EdgeRow,
    "event": EventRow,
    "log": LogRow,
}


_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
"""Characters that JSON leaves unescaped but ``str.splitlines`` (and so many JSON-lines readers)
takes for line ends; a line of an export escapes them, so a value holding one stays on its line."""


def _line(kind: str, model: BaseModel | dict[str, Any]) -> str:
    body = model.model_dump(mode="json") if isinstance(model, BaseModel) else model
    text = json.dumps({"record": kind, **body}, ensure_ascii=False)
    for char, escaped in _LINE_BREAKS.items():
        text = text.replace(char, escaped)
    return text


def export_lines(record: TaskRecord) -> Iterator[str]:
    """The lines (without newlines) of ``record``'s export, its secrets masked (so a masked
    export cannot run again with the secret; see docs/security.md)."""
    original = _masked_original(record) if record.ocp_original is not None else None
    record = mask_record(record)
    counts = {
        "subtasks": len(record.subtasks),
        "edges": len(record.edges),
        "events": len(record.events),
        "logs": len(record.logs),
    }
    header = {"format": FORMAT, "version": VERSION, "task_id": record.task.id, "counts": counts}
    lines = 2 + (record.template is not None) + (original is not None) + sum(counts.values()) + 1
    yield _line("header", header)
    if record.template is not None:
        yield _line("template", record.template)
    yield _line("task", record.task)
    if original is not None:
        yield _line("origin", original)
    for group, kind in (
        (record.subtasks, "subtask"),
        (record.edges, "edge"),
        (record.events, "event"),
        (record.logs, "log"),
    ):
        for item in group:
            yield _line(kind, item)
    yield _line("end", {"task_id": record.task.id, "lines": lines})


def _masked_original(record: TaskRecord) -> dict[str, Any]:
    """``record``'s OCP original as its origin record holds it: validated, with the secrets of
    the task's contexts masked in the document's contexts (Java's context text by value, the
    rule for free text), and nothing else changed."""
    original = OcpOriginRecord.model_validate(record.ocp_original)
    contexts: list[Any] = [record.task.context]
    contexts += [s.output_context for s in record.subtasks if s.output_context]
    values = secret_values(*contexts)

    def context(value: Any) -> Any:
        if isinstance(value, dict):
            return mask_json(value)
        return mask_values(value, values) if isinstance(value, str) else value

    document = dict(original.document)
    if "context" in document:
        document["context"] = context(document["context"])
    for key in ("subtasks", "tasks"):
        if isinstance(document.get(key), list):
            document[key] = [
                {**sub, "context": context(sub["context"])}
                if isinstance(sub, dict) and "context" in sub
                else sub
                for sub in document[key]
            ]
    text = original.context_text
    masked = original.model_copy(
        update={
            "document": document,
            "context_text": None if text is None else mask_values(text, values),
        }
    )
    return masked.model_dump(mode="json", exclude_none=True)


def write_export(record: TaskRecord, out: TextIO) -> None:
    """Write ``record``'s export to ``out``."""
    for line in export_lines(record):
        out.write(line + "\n")


def is_export(text: str) -> bool:
    """Whether ``text`` looks like a dagtask export (its first line is a dagtask header)."""
    first = text.lstrip().split("\n", 1)[0]
    try:
        data = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and data.get("record") == "header"


@dataclass
class _Block:
    start: int
    header: dict[str, Any]
    items: dict[str, list[tuple[int, Any]]]


def parse_export(text: str, name: str) -> list[tuple[TaskRecord, int]]:
    """The task records of an export file and the line each starts on; ArgumentError naming
    the line for anything truncated, malformed or inconsistent."""
    blocks: list[_Block] = []
    block: _Block | None = None
    last = 0
    lines = text.split("\n")  # only "\n" ends a line: JSON escapes it inside values
    if lines and not lines[-1]:
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        last = number
        if not raw.strip():
            continue
        data = _json_line(raw, number, name)
        kind = data.pop("record", None)
        if kind == "header":
            if block is not None:
                _fail(name, number, "a new header before the end record of the task before it")
            block = _Block(number, _header(data, number, name), {k: [] for k in _ORDER})
            continue
        if block is None:
            _fail(name, number, f"expected a header record first, found {kind!r}")
        if kind == "end":
            _check_end(block, data, number, name)
            blocks.append(block)
            block = None
            continue
        if kind not in _MODELS:
            known = ", ".join(["header", *_ORDER, "end"])
            _fail(name, number, f"unknown record type {kind!r} (known: {known})")
        later = _ORDER[_ORDER.index(kind) + 1 :]
        if any(block.items[k] for k in later):
            article = "an" if kind[0] in "aeiou" else "a"
            _fail(name, number, f"{article} {kind} record after the {'/'.join(later)} records")
        try:
            model = _MODELS[kind].model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors()
            )
            _fail(name, number, f"invalid {kind} record: {problems}")
        block.items[kind].append((number, model))
    if block is not None:
        counts = block.header["counts"]
        found = {k: len(block.items[k[:-1]]) for k in counts}
        _fail(
            name,
            last + 1,
            f"the file ends before the end record of task {block.header['task_id']} "
            f"(header at line {block.start} announces {_counts(counts)}, found {_counts(found)}): "
            "it is truncated; export the task again",
        )
    if not blocks:
        _fail(name, max(last, 1), "the file holds no task (no header record)")
    return [(_record(b, name), b.start) for b in blocks]


def _json_line(raw: str, number: int, name: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        _fail(
            name,
            number,
            f"not valid JSON ({exc.msg} at column {exc.colno}): the file is corrupt or truncated",
        )
    if not isinstance(data, dict) or "record" not in data:
        _fail(name, number, 'expected a JSON object with a "record" key')
    return data


def _header(data: dict[str, Any], number: int, name: str) -> dict[str, Any]:
    if data.get("format") != FORMAT:
        _fail(name, number, f"the header's format is {data.get('format')!r}, not {FORMAT!r}")
    if data.get("version") != VERSION:
        _fail(
            name,
            number,
            f"export format version {data.get('version')!r} is not supported (this dagtask reads "
            f"version {VERSION}); import it with the dagtask that exported it",
        )
    counts = data.get("counts")
    keys = {"subtasks", "edges", "events", "logs"}
    if (
        not isinstance(counts, dict)
        or set(counts) != keys
        or not all(isinstance(v, int) and v >= 0 for v in counts.values())
        or not isinstance(data.get("task_id"), int)
    ):
        _fail(name, number, "the header needs task_id and counts of subtasks, edges, events, logs")
    return data


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items())


def _check_end(block: _Block, data: dict[str, Any], number: int, name: str) -> None:
    header = block.header
    counts = header["counts"]
    found = {k: len(block.items[k[:-1]]) for k in counts}
    if found != counts:
        _fail(
            name,
            number,
            f"task {header['task_id']}'s header (line {block.start}) announces "
            f"{_counts(counts)} but the file holds {_counts(found)}: records are missing or extra",
        )
    if data.get("task_id") != header["task_id"] or data.get("lines") != number - block.start + 1:
        _fail(name, number, "the end record does not match its header (task id or line count)")
    if (
        len(block.items["task"]) != 1
        or len(block.items["template"]) > 1
        or len(block.items["origin"]) > 1
    ):
        _fail(
            name,
            number,
            "a task's block needs exactly one task record (and at most one template and one "
            "origin)",
        )


def _record(block: _Block, name: str) -> TaskRecord:
    items = block.items
    task_line, task_row = items["task"][0]
    if task_row.id != block.header["task_id"]:
        _fail(
            name,
            task_line,
            f"task record {task_row.id} under the header of task {block.header['task_id']}",
        )
    subs: dict[int, int] = {}
    for number, sub in items["subtask"]:
        if sub.id in subs:
            _fail(name, number, f"subtask {sub.id} appears twice (first at line {subs[sub.id]})")
        subs[sub.id] = number
    for number, edge in items["edge"]:
        for sid in (edge.upstream_id, edge.downstream_id):
            if sid not in subs:
                _fail(name, number, f"the link names subtask {sid}, which is not in this task")
    previous = 0
    for number, event in items["event"]:
        if event.subtask_id is not None and event.subtask_id not in subs:
            _fail(name, number, f"the event names subtask {event.subtask_id}, not in this task")
        if event.id <= previous:
            _fail(name, number, f"event {event.id} is out of order (after event {previous})")
        previous = event.id
    for number, log in items["log"]:
        if log.subtask_id not in subs:
            _fail(name, number, f"the log names subtask {log.subtask_id}, not in this task")
    template = items["template"][0][1] if items["template"] else None
    original: dict[str, Any] | None = None
    if items["origin"]:
        origin_line, origin = items["origin"][0]
        if origin.document.get("id") != origin.task_id:
            _fail(
                name,
                origin_line,
                f"the origin record names OCP task {origin.task_id} but its document is task "
                f"{json.dumps(origin.document.get('id'))}",
            )
        original = origin.model_dump(mode="json", exclude_none=True)
    record = TaskRecord(
        template=template,
        task=task_row,
        subtasks=[m for _, m in items["subtask"]],
        edges=[m for _, m in items["edge"]],
        events=[m for _, m in items["event"]],
        logs=[m for _, m in items["log"]],
        ocp_original=original,
    )
    check_replay(record, name, task_line, subs)
    return record


def check_replay(
    record: TaskRecord, name: str, task_line: int, sub_lines: dict[int, int] | None = None
) -> None:
    """Refuse a record whose stored state is not what its events replay to."""
    try:
        info = task_info(record)
        events = task_events(record)
        problems = rp.differences(rp.replay_events(info, events), rp.snapshot(info, events))
    except (ValueError, ValidationError) as exc:
        _fail(name, task_line, f"the task's events cannot be replayed: {exc}")
    if problems:
        line = task_line
        for sid, number in (sub_lines or {}).items():
            if any(p.startswith(f"subtask {sid} ") for p in problems):
                line = number
                break
        _fail(
            name,
            line,
            f"the task's state differs from the replay of its events ({'; '.join(problems[:3])}):"
            " the file is corrupt",
        )


def task_info(record: TaskRecord) -> TaskInfo:
    """The domain model of a record's task (for replaying and checking it)."""
    t = record.task
    ups: dict[int, list[int]] = {}
    downs: dict[int, list[int]] = {}
    for e in record.edges:
        ups.setdefault(e.downstream_id, []).append(e.upstream_id)
        downs.setdefault(e.upstream_id, []).append(e.downstream_id)
    return TaskInfo(
        id=t.id,
        name=t.name,
        template_id=None,
        task_definition_id=t.task_definition_id,
        type=t.type,
        status=t.status,
        operation=t.operation,
        creator=t.creator,
        executor=t.executor,
        context=TaskContext.from_json(t.context),
        prohibit_rollback=t.prohibit_rollback,
        host_id=t.host_id,
        cluster_id=t.cluster_id,
        tenant_id=t.tenant_id,
        concurrency=t.concurrency,
        create_time=t.create_time,
        start_time=t.start_time,
        finish_time=t.finish_time,
        source_task_id=t.source_task_id,
        subtasks=[
            SubtaskInfo(
                id=s.id,
                task_id=t.id,
                name=s.name,
                description=s.description,
                class_name=s.class_name,
                node_type=s.node_type,
                operation=s.operation,
                status=s.status,
                series_id=s.series_id,
                run_time=s.run_time,
                timeout=s.timeout,
                retry_count=s.retry_count,
                parallel=s.parallel,
                parallel_idx=s.parallel_idx,
                prohibit_rollback=s.prohibit_rollback,
                upstreams=sorted(ups.get(s.id, [])),
                downstreams=sorted(downs.get(s.id, [])),
                executor=s.executor,
                context=TaskContext.from_json(s.output_context) if s.output_context else None,
                message=s.message,
                create_time=s.create_time,
                start_time=s.start_time,
                finish_time=s.finish_time,
            )
            for s in record.subtasks
        ],
    )


def task_events(record: TaskRecord) -> list[TaskEvent]:
    """A record's events as the store's event model."""
    return [TaskEvent(task_id=record.task.id, **e.model_dump()) for e in record.events]


def _fail(name: str, line: int, message: str) -> NoReturn:
    raise ArgumentError(f"{name} line {line}: {message}; nothing was imported")


def import_origin(record: TaskRecord, name: str) -> dict[str, Any]:
    """The origin to store for ``record``, read from the export file ``name``: format, file and
    the task's id in the file, and the OCP original under ``"ocp"`` when the export had one."""
    origin: dict[str, Any] = {"format": "dagtask", "file": name, "task_id": record.task.id}
    if record.ocp_original is not None:
        origin["ocp"] = record.ocp_original
    return origin


def stored_original(db: Any, task_id: int) -> dict[str, Any] | None:
    """The OCP original stored with task ``task_id`` (None if it has none or does not exist).
    ``db`` is a :class:`dagtask.store.db.Database`."""
    import sqlalchemy as sa  # the export side of this module never touches a database

    from dagtask.store.schema import task

    with db.read() as conn:
        origin = conn.execute(sa.select(task.c.origin).where(task.c.id == task_id)).scalar()
    return ocp_original_of(origin if isinstance(origin, dict) else None)


def with_original(record: TaskRecord, db: Any) -> TaskRecord:
    """``record`` (as the store reads it) with the OCP original its task keeps, if any, so that
    its export carries it."""
    original = stored_original(db, record.task.id)
    return record if original is None else record.model_copy(update={"ocp_original": original})


def already_imported(db: Any, record: TaskRecord, origin: dict[str, Any]) -> int | None:
    """The id of a historical task already imported from the same source task, else None.

    The same source task means: the same format (``dagtask`` or ``ocp``), the same task id in
    the source, the same name and the same creation time (to the millisecond). These are all
    stored with every import already (``origin`` and the task row), so no schema change is
    needed. ``db`` is a :class:`dagtask.store.db.Database`.
    """
    import sqlalchemy as sa  # the export side of this module never touches a database

    from dagtask.store.schema import task

    wanted = _naive_utc(record.task.create_time)
    with db.read() as conn:
        rows = conn.execute(
            sa.select(task.c.id, task.c.origin, task.c.create_time)
            .where(task.c.historical.is_(True), task.c.name == record.task.name)
            .order_by(task.c.id)
        ).all()
    for row in rows:
        stored = dict(row.origin or {})
        if (
            stored.get("format") == origin.get("format")
            and stored.get("task_id") == origin.get("task_id")
            and abs((_naive_utc(row.create_time) - wanted).total_seconds()) < 0.001
        ):
            return int(row.id)
    return None


def _naive_utc(when: Any) -> Any:
    from datetime import UTC

    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when
