"""Hooks (and one handler) the hook tests name (importable as ``tests.hooks_for_tests.<name>``).

Every call is appended to :data:`LEDGER` under its task id, so a test sees what ran in which
order. Behaviour is chosen by the task's stringMap, so one template serves several cases:
``refuse_runs`` / ``refuse_after_runs`` (the before- / after-subtask refusals apply while the
attempt's runTime is at most that).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from dagtask import HookAbort, RunContext, SubtaskResult, TaskStatus

LEDGER: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
"""task id -> the calls, in order: ("before" | "handler", subtask name, runTime, subtask id),
("after", subtask name, runTime, ok, message, output "ran"), ("task", status)."""
_lock = threading.Lock()


def _note(task_id: int, *entry: Any) -> None:
    with _lock:
        LEDGER[task_id].append(entry)


def calls(task_id: int, kind: str) -> list[tuple[Any, ...]]:
    """The ledger entries of ``kind`` for the task."""
    with _lock:
        return [e for e in LEDGER[task_id] if e[0] == kind]


def step(ctx: RunContext) -> dict[str, str]:
    """The handler: notes its run and outputs ``ran = <subtask name>``."""
    _note(ctx.task_id, "handler", ctx.subtask_name, ctx.run_time, ctx.subtask_id)
    return {"ran": ctx.subtask_name}


def note_before(ctx: RunContext) -> None:
    """Note the call."""
    _note(ctx.task_id, "before", ctx.subtask_name, ctx.run_time, ctx.subtask_id)


def note_after(ctx: RunContext, result: SubtaskResult) -> None:
    """Note the call and the result it was given."""
    ran = result.output.string_map.get("ran") if result.output is not None else None
    _note(ctx.task_id, "after", ctx.subtask_name, ctx.run_time, result.ok, result.message, ran)


def note_task(task_id: int, status: TaskStatus) -> None:
    """Note the task's end."""
    _note(task_id, "task", status)


def boom_before(ctx: RunContext) -> None:
    """A before-subtask hook with a bug."""
    raise RuntimeError("before hook bug")


def boom_after(ctx: RunContext, result: SubtaskResult) -> None:
    """An after-subtask hook with a bug."""
    raise ValueError("after hook bug")


def boom_task(task_id: int, status: TaskStatus) -> None:
    """An after-task hook with a bug."""
    raise RuntimeError("after-task hook bug")


def refuse_before(ctx: RunContext) -> None:
    """Refuse the attempt while its runTime is at most ``stringMap.refuse_runs`` (default 1)."""
    if ctx.run_time <= int(ctx.string_map.get("refuse_runs", "1")):
        raise HookAbort("maintenance window")


def refuse_after(ctx: RunContext, result: SubtaskResult) -> None:
    """Fail the attempt while its runTime is at most ``stringMap.refuse_after_runs`` (1)."""
    if ctx.run_time <= int(ctx.string_map.get("refuse_after_runs", "1")):
        raise HookAbort("output rejected")


def hang_before(ctx: RunContext) -> None:
    """Hang until the attempt's token is set (its timeout), then return."""
    _note(ctx.task_id, "before", ctx.subtask_name, ctx.run_time, ctx.subtask_id)
    ctx.token.wait(60)
