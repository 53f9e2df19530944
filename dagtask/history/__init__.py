"""Task history and replay: what exactly happened to a task, and can we do it again?

Every function takes an :class:`~dagtask.Engine` (or a bare store) and a task id:

>>> from dagtask import Engine, history
>>> with Engine("sqlite:///dagtask.db") as engine:          # doctest: +SKIP
...     for event in history.events(engine, 7):
...         print(event.step, event.time, event.describe())
...     state = history.replay(engine, 7, step=5)            # the task after its 5th event
...     path = history.export_task(engine, 7, "task.jsonl")
...     new = history.rerun(engine, 7, from_subtask="Restart")

See ``docs/history.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from dagtask.errors import ArgumentError, TemplateError
from dagtask.models import TaskRecord
from dagtask.store import history as sql
from dagtask.template import TaskTemplate

from . import compat as _compat
from . import exchange, ocp_import, timeline
from .compat import CompatIssue, CompatReport, IssueKind
from .reading import load, replay, snapshot, store_of, task_history, template_ref
from .reading import typed_events as events
from .rerun import rerun
from .state import SubtaskState, TaskState, differences
from .typed import (
    Action,
    ActionSummary,
    Attempt,
    AttemptEnded,
    AttemptStarted,
    AutoRetry,
    HistoryEvent,
    OperatorChange,
    Promoted,
    Recorded,
    Result,
    Reused,
    TaskHistory,
    TaskStatusChanged,
    TaskSubmitted,
    TemplateRef,
)

if TYPE_CHECKING:
    from dagtask.engine import Engine
    from dagtask.store.sql import Store

__all__ = [
    "Action",
    "ActionSummary",
    "Attempt",
    "AttemptEnded",
    "AttemptStarted",
    "AutoRetry",
    "CompatIssue",
    "CompatReport",
    "HistoryEvent",
    "Imported",
    "IssueKind",
    "OperatorChange",
    "Promoted",
    "Recorded",
    "Result",
    "Reused",
    "SubtaskState",
    "TaskHistory",
    "TaskState",
    "TaskStatusChanged",
    "TaskSubmitted",
    "TemplateRef",
    "attempts",
    "check_compat",
    "differences",
    "events",
    "export_task",
    "import_files",
    "load",
    "parse_file",
    "record",
    "replay",
    "rerun",
    "snapshot",
    "stored_template",
    "task_history",
    "timeline_html",
    "timeline_text",
]


def attempts(source: Engine | Store, task_id: int) -> list[Attempt]:
    """Every attempt of every subtask: worker, start, end, duration, result and error."""
    return task_history(source, task_id).attempts


def record(source: Engine | Store, task_id: int) -> TaskRecord:
    """Everything stored about the task (template snapshot, subtasks, links, events, logs, and
    the OCP original of a task imported from an OCP document)."""
    db = store_of(source).db
    return exchange.with_original(sql.read_record(db, task_id), db)


def export_task(source: Engine | Store, task_id: int, out: str | Path | TextIO) -> None:
    """Write the task's self-contained export (JSON lines) to a path or an open text file."""
    data = record(source, task_id)
    if isinstance(out, str | Path):
        with Path(out).open("w", encoding="utf-8") as file:
            exchange.write_export(data, file)
    else:
        exchange.write_export(data, out)


@dataclass(frozen=True)
class Imported:
    """A task an import created."""

    task_id: int
    name: str
    file: str
    format: str
    """``dagtask`` (an export) or ``ocp`` (an OCP task document)."""
    original_id: object
    """The task's id in the file."""


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ArgumentError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ArgumentError(f"{str(path)!r} is not UTF-8 text: {exc.reason}") from exc


def parse_file(path: str | Path, now: datetime | None = None) -> list[tuple[sql.Import, str]]:
    """The tasks a file holds, ready to store (ArgumentError for anything that is not a valid
    dagtask export or OCP task document), each with its format."""
    file = Path(path)
    name = file.name
    text = _read(file)
    when = now or ocp_import.now_utc()
    if exchange.is_export(text):
        return [
            (sql.Import(rec, exchange.import_origin(rec, name)), "dagtask")
            for rec, _line in exchange.parse_export(text, name)
        ]
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArgumentError(
            f"{name} line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}); it is "
            "neither a dagtask export nor an OCP task document; nothing was imported"
        ) from exc
    found = []
    for task in ocp_import.find_tasks(document, name):
        rec, origin, originals = ocp_import.to_record(task, name, when)
        found.append((sql.Import(rec, origin, originals), "ocp"))
    return found


def import_files(source: Engine | Store, paths: Iterable[str | Path]) -> list[Imported]:
    """Import dagtask exports and OCP task documents as historical tasks, all or nothing."""
    items: list[tuple[sql.Import, str, str]] = []
    now = ocp_import.now_utc()
    for path in paths:
        items.extend((item, fmt, Path(path).name) for item, fmt in parse_file(path, now))
    if not items:
        raise ArgumentError("no file to import; name one or more files")
    ids = sql.insert_tasks(store_of(source).db, [item for item, _, _ in items], now)
    return [
        Imported(new_id, item.record.task.name, file, fmt, item.origin.get("task_id"))
        for new_id, (item, fmt, file) in zip(ids, items, strict=True)
    ]


def timeline_html(source: Engine | Store, task_id: int) -> str:
    """The task's timeline as a self-contained HTML page (a Gantt chart of every attempt)."""
    info, _ = load(source, task_id)
    return timeline.html_page(info, events(source, task_id))


def timeline_text(
    source: Engine | Store, task_id: int, *, width: int | None = None, colour: bool = False
) -> str:
    """The task's timeline for a terminal ``width`` columns wide (default: the terminal's)."""
    info, _ = load(source, task_id)
    return timeline.terminal(info, events(source, task_id), width=width, colour=colour)


def stored_template(source: Engine | Store, name: str, version: int | None = None) -> TaskTemplate:
    """A template version stored in the database (TemplateError naming the versions there are)."""
    db = store_of(source).db
    found = sql.template_by_name(db, name, version)
    if found is None:
        versions = sql.template_versions(db, name)
        known = f"stored versions: {', '.join(map(str, versions))}" if versions else "none stored"
        what = f"{name!r} v{version}" if version is not None else f"{name!r}"
        raise TemplateError(f"no stored template {what} ({known}); pass a template file instead")
    return TaskTemplate.from_definition(
        found.definition, source=f"template {name!r} v{found.version}"
    )


def check_compat(
    source: Engine | Store,
    task_id: int,
    candidate: TaskTemplate,
    *,
    candidate_name: str | None = None,
) -> CompatReport:
    """Replay the task's history against ``candidate`` (another version of its template) and
    report what no longer fits, and whether a retry and a rollback would still work."""
    info, _ = load(source, task_id)
    ref = template_ref(source, info)
    recorded = None
    if ref is not None:
        found = sql.template_by_id(store_of(source).db, ref.id)
        if found is not None:
            recorded = TaskTemplate.from_definition(
                found.definition, source=f"template {ref.name!r}"
            )
    return _compat.check(
        info,
        events(source, task_id),
        candidate,
        recorded=recorded,
        recorded_name=f"{ref.name} v{ref.version}" if ref else None,
        candidate_name=candidate_name,
    )
