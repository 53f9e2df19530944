"""A task's diagnosis download: the zip OCP's task center offers for a task, shared by the REST
API (``GET /api/v2/tasks/instances/{id}/log/download``), ``dagtask logs ID --zip FILE`` and the
console's download button.

The archive holds ``task.json`` (the task as OCP JSON, secret values masked), ``history.txt``
(every event of its history, one line each) and ``logs/<subtask id>-<name>/attempt-<runTime>.log``:
one file per subtask and attempt that logged anything, secret values masked. It is built from
two reads of the task and one query for all of its logs, whatever the number of subtasks.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import TYPE_CHECKING

from dagtask import secrets, views

if TYPE_CHECKING:
    from dagtask.engine import Engine
    from dagtask.models import TaskInfo


def attachment(filename: str) -> dict[str, str]:
    """The headers of an answer that is a file to save: the REST download and the console's."""
    return {
        "content-disposition": f'attachment; filename="{filename}"',
        "cache-control": "no-store",
    }


def log_path(subtask_id: int, name: str, parallel_idx: int, run_time: int) -> str:
    """Where one attempt's log sits in the archive (names reduced to safe characters)."""
    label = f"{name}-{parallel_idx}" if parallel_idx >= 0 else name
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return f"logs/{subtask_id}-{safe}/attempt-{run_time}.log"


def task_archive(engine: Engine, task_id: int, task: TaskInfo | None = None) -> bytes:
    """The diagnosis zip of task ``task_id`` (:class:`~dagtask.TaskNotFoundError` if none);
    ``task``: the task as the caller has just read it, to spare a read."""
    task = task if task is not None else engine.get(task_id, outputs=False)
    subtasks = {s.id: s for s in task.subtasks}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        masked = task.model_copy(update={"context": secrets.mask_context(task.context)})
        archive.writestr("task.json", json.dumps(views.task_json(masked), indent=2) + "\n")
        history = engine.history(task_id)
        archive.writestr(
            "history.txt",
            "".join(f"{e.time:%Y-%m-%d %H:%M:%S}  {e.describe()}\n" for e in history.events),
        )
        for sid, run_time, text in engine.store.task_logs(task_id):
            sub = subtasks[sid]
            archive.writestr(log_path(sid, sub.name, sub.parallel_idx, run_time), text)
    return buffer.getvalue()
