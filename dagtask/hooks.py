"""Hooks: functions a template's tasks call around their subtasks and when they end
(docs/templates.md, "Hooks"; OCP's pre/post subtask hooks and post-task hooks).

A template names them by dotted path in :class:`~dagtask.template.Hooks`, and the engine imports
them at submit, like handlers. Then:

* ``before_subtask`` hooks, ``fn(ctx)``, run in the runner thread of each attempt, just before
  its handler, with the handler's :class:`~dagtask.handlers.RunContext`; ``after_subtask``
  hooks, ``fn(ctx, result)``, run just after it with a :class:`SubtaskResult`. They are part of
  the attempt: inside its timeout, and their log lines land in the subtask's log;
* ``after_task`` hooks, ``fn(task_id, status)``, run once each time a task ends (SUCCESSFUL or
  FAILED), in the process whose worker recorded the end, after its commit, on a thread of their
  own. They are best effort: a process that dies right after the commit never calls them (the
  webhooks are the durable channel).

A hook that raises is logged and changes nothing, with one exception: :class:`HookAbort` fails
the attempt (a before-subtask hook's, without running the handler; an after-subtask hook's,
if it had succeeded), and the subtask's retry rules apply as to any failure.

A worker learns the hooks of a task from its stored template, once per task
(:class:`PoolHooks`), in the dispatcher thread: runners never touch the database.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from dagtask import handlers, logs
from dagtask.context import TaskContext
from dagtask.planner import AttemptResult
from dagtask.states import TaskStatus
from dagtask.template import Hooks

if TYPE_CHECKING:
    from dagtask.store.reads import TaskRunFacts
    from dagtask.store.sql import Store

_log = logging.getLogger("dagtask.hooks")

ENDED = frozenset({TaskStatus.SUCCESSFUL, TaskStatus.FAILED})
"""The task statuses an after-task hook is called for."""


class HookAbort(Exception):
    """Raised by a before- or after-subtask hook to fail the attempt, with this message."""


class Refused(Exception):
    """The attempt fails with this message (a hook refused it, or its hooks are unusable)."""


@dataclass(frozen=True)
class SubtaskResult:
    """What an attempt ended with, as an after-subtask hook sees it."""

    ok: bool
    """Whether it succeeded (so far: an earlier after-subtask hook may have failed it)."""
    message: str = ""
    """Why it failed ("" when it succeeded)."""
    output: TaskContext | None = None
    """Its output context when it succeeded."""


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _warn(log: logs.AttemptLog, message: str, exc: BaseException | None = None) -> None:
    log.write(logs.line(message, "WARNING", logger=_log.name))
    if exc is not None:
        log.write("".join(traceback.format_exception(exc)))


def run_before(hooks: Hooks, ctx: handlers.RunContext, log: logs.AttemptLog) -> None:
    """Call the before-subtask hooks in order; raise :class:`Refused` if one raises HookAbort
    (the later ones and the handler do not run)."""
    for path in hooks.before_subtask:
        try:
            handlers.resolve_hook(path)(ctx)
        except HookAbort as exc:
            reason = str(exc) or "no reason given"
            raise Refused(f"before-subtask hook {path} refused: {reason}") from exc
        except BaseException as exc:  # a hook never takes its attempt down
            _warn(log, f"before-subtask hook {path} failed: {_described(exc)}; ignored", exc)


def run_after(
    hooks: Hooks,
    ctx: handlers.RunContext,
    result: AttemptResult,
    output: TaskContext | None,
    log: logs.AttemptLog,
) -> tuple[AttemptResult, TaskContext | None]:
    """Call the after-subtask hooks in order, each with the result so far; return the result
    (failed if a hook raised HookAbort after a success) and the output."""
    for path in hooks.after_subtask:
        seen = SubtaskResult(result.ok, result.message or "", output if result.ok else None)
        try:
            handlers.resolve_hook(path)(ctx, seen)
        except HookAbort as exc:
            message = f"after-subtask hook {path} refused: {str(exc) or 'no reason given'}"
            if result.ok:
                log.write(logs.line(f"Subtask {ctx.subtask_id} failed: {message}", "ERROR"))
                result, output = AttemptResult(ok=False, message=message), None
            else:
                _warn(log, f"{message} (the attempt had failed already)")
        except BaseException as exc:  # a hook never takes its attempt down
            _warn(log, f"after-subtask hook {path} failed: {_described(exc)}; ignored", exc)
    return result, output


@dataclass(frozen=True)
class Loaded:
    """What a pool keeps of one task it runs: the hooks its stored template gives, the
    template's name (for metrics) and its span's traceparent (for the attempts' spans)."""

    hooks: Hooks
    problem: str = ""
    """Why they cannot be used (an invalid stored definition): its attempts fail saying so."""
    template: str = ""
    """Its template's name ("" for a task stored without a template)."""
    trace_parent: str | None = None


def _parse(task_id: int, facts: TaskRunFacts | None) -> Loaded:
    template = str((facts.template if facts is not None else None) or "")
    trace_parent = facts.trace_parent if facts is not None else None
    value = facts.hooks if facts is not None else None
    try:
        found = Hooks.model_validate(value) if value else Hooks()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        problem = (
            f"the hooks stored with the template of task {task_id} are not valid "
            f"({where}: {first['msg']}); submit the task again from a corrected template"
        )
        return Loaded(Hooks(), problem, template, trace_parent)
    return Loaded(found, "", template, trace_parent)


class PoolHooks:
    """The hooks of the tasks one worker pool runs, and the thread that runs after-task hooks.

    Hooks are read from the database once per task (a task's template never changes) and kept
    for the pool's life, up to :attr:`MAX_TASKS` tasks.
    """

    MAX_TASKS = 4096
    STOP_SECONDS = 5.0
    """How long stopping the pool waits for after-task hooks still queued or running."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: OrderedDict[int, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[int, TaskStatus] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def load(self, task_ids: Collection[int]) -> dict[int, Loaded]:
        """The hooks of each task of ``task_ids``, read for those not known yet (the database
        error goes through: the caller decides)."""
        with self._lock:
            found = {tid: self._known[tid] for tid in task_ids if tid in self._known}
        missing = [tid for tid in task_ids if tid not in found]
        if missing:
            facts = self.store.task_run_facts(missing)
            read = {tid: _parse(tid, facts.get(tid)) for tid in missing}
            self._keep(read)
            found.update(read)
        return found

    def _keep(self, loaded: Mapping[int, Loaded]) -> None:
        with self._lock:
            self._known.update(loaded)
            while len(self._known) > self.MAX_TASKS:
                self._known.popitem(last=False)

    def known(self, task_id: int, loaded: Loaded) -> None:
        """Keep what a task's first claim would read (its engine's own submit knows it: the
        template it stored, and the span it stored the task under), so that claim reads
        nothing more."""
        self._keep({task_id: loaded})

    def task_ended(self, task_id: int, status: TaskStatus) -> None:
        """A worker of the pool recorded the end of task ``task_id``: queue its after-task
        hooks (the dispatcher, after the commit; returns at once)."""
        if status not in ENDED:
            return
        with self._lock:
            known = self._known.get(task_id)
            if known is not None and not known.hooks.after_task:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="dagtask-after-task-hooks", daemon=True
                )
                self._thread.start()
        self._queue.put((task_id, status))

    def close(self, timeout: float = STOP_SECONDS) -> None:
        """Let the queued after-task hooks run for up to ``timeout`` seconds, then stop."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
        if thread.is_alive():
            _log.warning(
                "after-task hooks were still running %.0f s after the worker stopped; "
                "the ones not run yet are skipped",
                timeout,
            )

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            self._after_task(*item)

    def _after_task(self, task_id: int, status: TaskStatus) -> None:
        try:
            known = self.load([task_id])[task_id]
        except Exception as exc:
            _log.warning(
                "the after-task hooks of task %d (%s) were not run: reading them failed (%s)",
                task_id,
                status.value,
                _described(exc),
            )
            return
        if known.problem:
            _log.warning("the after-task hooks of task %d were not run: %s", task_id, known.problem)
            return
        for path in known.hooks.after_task:
            try:
                handlers.resolve_hook(path)(task_id, status)
            except BaseException as exc:  # logged; never changes anything
                _log.warning(
                    "after-task hook %s of task %d (%s) failed: %s",
                    path,
                    task_id,
                    status.value,
                    _described(exc),
                    exc_info=exc,
                )
