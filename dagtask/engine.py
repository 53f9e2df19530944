"""The embeddable facade: submit tasks, run workers, wait for and inspect results.

>>> from dagtask import Engine
>>> with Engine("sqlite:///dagtask.db", workers=4) as engine:      # doctest: +SKIP
...     host = engine.hosts.add(name="web-1", inner_ip="10.0.0.5", agent_home="/opt/agent")
...     task = engine.run("Stop OCP agent", args={"host_id": str(host.id)})
...     print(task.status)
SUCCESSFUL

``Engine(...)`` opens (and if empty, creates) the database. ``start()`` runs worker threads in
the background until ``stop()``/``close()``; ``run()`` submits a task and, if the background
workers are not running, works on that task in this process until it ends.
"""

from __future__ import annotations

import builtins
import difflib
import functools
import getpass
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

from dagtask import arguments, expand, fidelity, handlers, hooks, memory, planner
from dagtask import history as hist
from dagtask.builtin import builtin_templates
from dagtask.config import DEFAULT_WORKERS
from dagtask.errors import ArgumentError, HostNotFoundError, TaskTimeoutError, TemplateError
from dagtask.hosts.inventory import HostInventory
from dagtask.models import RollbackPlan, SubtaskInfo, TaskEvent, TaskInfo, TaskPage
from dagtask.observability import tracing
from dagtask.schedules import Schedules
from dagtask.services import Services
from dagtask.states import SubtaskStatus, TaskStatus, TaskType
from dagtask.store import retention
from dagtask.store.db import open_database
from dagtask.store.sql import Claim, FinishOutcome, Store
from dagtask.store.workers import WorkerRecord
from dagtask.template import TaskTemplate
from dagtask.webhooks import Notifier, Webhooks
from dagtask.worker import DEFAULT_LEASE_SECONDS, WorkerPool, default_worker_name
from dagtask.worker.scheduler import Scheduler


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class Engine:
    """A dagtask engine bound to one database."""

    def __init__(
        self,
        db: str | None = None,
        *,
        workers: int = DEFAULT_WORKERS,
        name: str | None = None,
        templates: Iterable[TaskTemplate] = (),
        poll_interval: float = 0.25,
        lease_seconds: int = DEFAULT_LEASE_SECONDS,
        schedules: bool = True,
        webhooks: bool = True,
    ) -> None:
        """Open the database (``db`` URL, else ``$DAGTASK_DB_URL``, else ./dagtask.db).

        ``workers`` is the number of subtasks :meth:`start` runs at a time (0: this engine only
        submits and reads; another process runs the tasks). ``name`` is the worker name its
        subtasks show as executor (unique among running workers; default ``host:pid``).
        ``lease_seconds``: if this process stops heartbeating for that long (killed, frozen, cut
        off), other workers recover what it was running. ``schedules``: whether :meth:`start`
        also runs the scheduler that fires task definitions (docs/schedules.md; any number of
        processes may, each tick fires once). ``webhooks``: whether :meth:`start` also runs the
        notifier that delivers webhooks (:mod:`dagtask.webhooks`; any number of processes may).
        """
        fidelity.current()  # a bad $DAGTASK_OCP_COMPAT is refused here, not mid-request
        self.database = open_database(db)
        self.store = Store(self.database)
        self.services = Services(self.database)
        self.workers = workers
        self.name = name or default_worker_name()
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self._templates: dict[str, TaskTemplate] = {}
        for template in [*builtin_templates(), *templates]:
            self.register_template(template)
        self._pool: WorkerPool | None = None
        self._run_schedules = schedules
        self._schedules: Schedules | None = None
        self._scheduler: Scheduler | None = None
        self._run_webhooks = webhooks
        self._webhooks: Webhooks | None = None
        self._notifier: Notifier | None = None
        self._changed = threading.Condition()
        self._generation = (
            0  # bumped (under _changed) whenever a task of this engine may have ended
        )
        self._waiting: Counter[int] = Counter()
        """Under _changed: the tasks wait_status() calls are waiting for."""
        self._ended: dict[int, TaskStatus] = {}
        """Under _changed: how this engine's workers ended a task of _waiting (committed before
        it is put here), so that the wait returns without reading it back."""

    @property
    def schedules(self) -> Schedules:
        """The task definitions of this database: add, list, enable, run now (docs/schedules.md)."""
        if self._schedules is None:
            self._schedules = Schedules(self)
        return self._schedules

    @property
    def webhooks(self) -> Webhooks:
        """The webhooks of this database: add, list, remove, the delivery log."""
        if self._webhooks is None:
            self._webhooks = Webhooks(self)
        return self._webhooks

    @property
    def hosts(self) -> HostInventory:
        """The host inventory of this database."""
        return self.services.hosts

    # ---- templates ---------------------------------------------------------------------------

    def register_template(self, template: TaskTemplate) -> None:
        """Make ``template`` available by name (and by its slug, e.g. ``stop-ocp-agent``)."""
        self._templates[template.name] = template
        self._templates[_slug(template.name)] = template

    def template(self, name: str) -> TaskTemplate:
        """The registered or built-in template called ``name`` (or its slug)."""
        found = self._templates.get(name) or self._templates.get(_slug(name))
        if found is None:
            for stored_name, _version, _id in self.store.stored_templates():
                if name in (stored_name, _slug(stored_name)) or _slug(name) == _slug(stored_name):
                    stored = self.store.stored_template(stored_name)
                    if stored is not None:
                        return TaskTemplate.from_definition(
                            stored, source=f"stored template {name!r}"
                        )
        if found is None:
            known = ", ".join(sorted({t.name for t in self._templates.values()}))
            slugs = sorted({_slug(t.name) for t in self._templates.values()})
            close = difflib.get_close_matches(_slug(name), slugs, n=1, cutoff=0.5)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            raise TemplateError(
                f"no template named {name!r}{guess}; known templates: {known}; "
                "or pass a template file (FILE.yaml / FILE.json)"
            )
        return found

    def templates(self) -> builtins.list[TaskTemplate]:
        """Every registered and built-in template, and the newest version of every template
        stored in the database by an earlier submit, by name."""
        unique = {t.name: t for t in self._templates.values()}
        for name, _version, _id in self.store.stored_templates():
            if name not in unique:
                stored = self.store.stored_template(name)
                if stored is not None:
                    unique[name] = TaskTemplate.from_definition(
                        stored, source=f"stored template {name!r}"
                    )
        return [unique[name] for name in sorted(unique)]

    # ---- submit and read ---------------------------------------------------------------------

    def submit(
        self,
        template: TaskTemplate | str,
        *,
        args: Mapping[str, str] | None = None,
        lists: Mapping[str, Sequence[str]] | None = None,
        creator: str | None = None,
    ) -> TaskInfo:
        """Validate, expand and store a new task; its root subtasks become READY.

        ``args`` fills the stringMap and ``lists`` the listMap. Everything is checked before
        anything is written: the template's handlers import; every key is a ``str``; every
        ``args`` value and every ``lists`` item is a ``str``, or an ``int`` (not a ``bool``),
        which becomes its decimal string (a ``bool``, ``float``, ``None``, ``bytes`` or anything
        else is refused rather than guessed at: pass ``"true"``, not ``True``); every ``lists``
        value is a list or tuple (a string, bytes, a mapping or a set is refused: ``"12"`` is
        not the hosts 1 and 2); the bounds of :func:`dagtask.context.check_arguments` hold; the
        host ids named by the template's ``host_arg`` / ``host_list_arg`` are decimal integers
        from 1 to 2**63 - 1 (no sign, spaces or leading zeros) of hosts that exist and that no
        running task holds; ``creator`` is at most 128 characters. A refusal is an
        :class:`ArgumentError` (or the context's 20002, or the host's 404 / 409) and stores
        nothing, not even the template.
        """
        task_id, wake = self._store_task(template, args, lists, creator)
        # Read before waking this process's workers: the answer is the task as submitted (its
        # roots READY), as OCP returns it, not a moment later.
        task = self.store.get_task(task_id)
        wake()
        return task

    def submit_id(
        self,
        template: TaskTemplate | str,
        *,
        args: Mapping[str, str] | None = None,
        lists: Mapping[str, Sequence[str]] | None = None,
        creator: str | None = None,
    ) -> int:
        """:meth:`submit`, checked and stored the same way, returning only the new task's id
        (no read of the task back): the cheap call for a caller that submits many tasks."""
        task_id, wake = self._store_task(template, args, lists, creator)
        wake()
        return task_id

    def _store_task(
        self,
        template: TaskTemplate | str,
        args: Mapping[str, str] | None,
        lists: Mapping[str, Sequence[str]] | None,
        creator: str | None,
        **origin: Any,
    ) -> tuple[int, Callable[[], None]]:
        """Validate, expand and store a task; its id, and how to wake this process's workers."""
        tpl = self.template(template) if isinstance(template, str) else template
        if not isinstance(tpl, TaskTemplate):
            raise ArgumentError(
                f"template must be a TaskTemplate or a template's name, got {type(tpl).__name__}"
            )
        with memory.paused_gc(len(tpl.subtasks) >= memory.LARGE):
            return self._store_checked(tpl, args, lists, creator, **origin)

    def _store_checked(
        self,
        tpl: TaskTemplate,
        args: Mapping[str, str] | None,
        lists: Mapping[str, Sequence[str]] | None,
        creator: str | None,
        **origin: Any,
    ) -> tuple[int, Callable[[], None]]:
        tpl.check_handlers()
        strings = arguments.string_args(args)
        list_map = arguments.list_args(lists)
        who = arguments.creator(creator) if creator is not None else _user()
        context = expand.task_context(tpl, strings, list_map)
        expanded = expand.expand(tpl, context)
        for sub in expanded.subtasks:
            sub.prohibit_rollback = sub.prohibit_rollback or handlers.prohibits_rollback(
                sub.spec.handler
            )
        host_id = self._check_host(tpl, context.string_map) if tpl.host_arg else None
        hosts: list[int] = []
        if tpl.host_list_arg:
            hosts = self._check_host_list(tpl.host_list_arg, context.list_map)
        # The template is stored in the submit's own transaction: a refused submit (a busy
        # host, a lost race) leaves no template row behind.
        with tracing.task_span(tpl.name, who) as span:
            task_id = self.store.submit(
                expanded,
                template=tpl,
                creator=who,
                executor=socket.gethostname(),
                host_id=host_id,
                hosts=hosts,
                trace_parent=span.trace_parent,
                **origin,
            )
            span.stored(task_id)
        pool = self._pool
        if pool is not None:  # what its first claim would read back (hooks.PoolHooks.known)
            pool.hooks.known(
                task_id, hooks.Loaded(tpl.hooks, template=tpl.name, trace_parent=span.trace_parent)
            )
        room = min(tpl.concurrency, len(expanded.subtasks))

        def wake() -> None:
            if pool is not None:
                pool.wake(room)

        return task_id, wake

    def _check_host(self, tpl: TaskTemplate, strings: Mapping[str, str]) -> int:
        key = tpl.host_arg or "host_id"
        raw = strings.get(key)
        if raw is None:
            raise ArgumentError(
                f"{tpl.name!r} acts on a host: pass its id as {key} (e.g. --set {key}=1); "
                "list hosts with `dagtask hosts list`"
            )
        host_id = arguments.host_id(key, raw)
        try:
            self.hosts.get(host_id)
        except HostNotFoundError as exc:
            raise HostNotFoundError(
                f"host {host_id} does not exist, so no task was created; "
                "add it with `dagtask hosts add` or list hosts with `dagtask hosts list`"
            ) from exc
        return host_id

    def _check_host_list(self, key: str, lists: Mapping[str, Sequence[str]]) -> list[int]:
        raw = lists.get(key)
        if not raw:
            raise ArgumentError(
                f"this task acts on a list of hosts: pass their ids as {key} "
                f"(e.g. --list {key}=1,2,3); list hosts with `dagtask hosts list`"
            )
        ids = [arguments.host_id(f"{key}[{index}]", item) for index, item in enumerate(raw)]
        # Ids are canonical (no leading zeros), so equal ids are equal strings too.
        if len(set(ids)) != len(ids):
            twice = sorted({str(i) for i in ids if ids.count(i) > 1}, key=int)
            raise ArgumentError(
                f"{key} names host {', '.join(twice)} more than once; give each host once"
            )
        missing = []
        for host_id in ids:
            try:
                self.hosts.get(host_id)
            except HostNotFoundError:
                missing.append(str(host_id))
        if missing:
            raise HostNotFoundError(
                f"hosts {', '.join(missing)} do not exist, so no task was created; "
                "add them with `dagtask hosts add` or list hosts with `dagtask hosts list`"
            )
        return ids

    def get(self, task_id: int, *, outputs: bool = True) -> TaskInfo:
        """The task and its subtasks (raises TaskNotFoundError, OCP 20000); without
        ``outputs``, the subtasks' output contexts are left out (None), which is cheaper."""
        return self.store.get_task(task_id, outputs=outputs)

    def count(self, statuses: Sequence[TaskStatus]) -> int:
        """How many live tasks (not imported ones) have one of ``statuses``."""
        return self.store.count_tasks(statuses)

    def list(
        self,
        *,
        page: int = 1,
        size: int = 20,
        name: str | None = None,
        statuses: Sequence[TaskStatus] = (),
        host_id: int | None = None,
        types: Sequence[TaskType] = (),
        descending: bool = True,
        since: datetime | None = None,
        until: datetime | None = None,
        creator: str | None = None,
    ) -> TaskPage:
        """One page of tasks, newest first unless not ``descending`` (``page`` counts from 1,
        ``size`` ≤ 2000); ``host_id`` also finds the batches that act on that host; ``since`` /
        ``until`` bound the creation time; ``creator`` matches exactly."""
        if page < 1 or not 1 <= size <= 2000:
            raise ArgumentError("page counts from 1 and size must be between 1 and 2000")
        return self.store.list_tasks(
            page=page,
            size=size,
            name=name,
            statuses=statuses,
            host_id=host_id,
            types=types,
            descending=descending,
            since=since,
            until=until,
            creator=creator,
        )

    def logs(self, task_id: int, subtask_id: int, *, attempt: int | None = None) -> str:
        """The log of every attempt of one subtask, or of attempt ``attempt`` (its runTime)."""
        return self.store.read_log(task_id, subtask_id, attempt)

    def follow_log(
        self,
        task_id: int,
        subtask_id: int,
        *,
        poll: float = 0.2,
        attempt: int | None = None,
        idle: bool = False,
    ) -> Iterator[str]:
        """Yield a subtask's log as it grows, until the subtask is no longer READY/RUNNING/
        CANCELING (a PENDING subtask's log is yielded once: it may still be started later).

        With ``attempt``, only that attempt's log, until the subtask stops running it (a retry
        moves on to the next runTime). With ``idle``, an empty string each ``poll`` seconds
        nothing new came: a server streaming the log notices a client that went away."""
        last = 0
        while True:
            text, last, status, run_time = self.store.log_since(task_id, subtask_id, last, attempt)
            if text or idle:
                yield text
            active = status in (SubtaskStatus.READY, SubtaskStatus.RUNNING, SubtaskStatus.CANCELING)
            if not active or (attempt is not None and run_time != attempt):
                text, last, _, _ = self.store.log_since(task_id, subtask_id, last, attempt)
                if text:
                    yield text
                return
            time.sleep(poll)

    def worker_records(self) -> builtins.list[WorkerRecord]:
        """Every worker the database has seen (ACTIVE, STOPPED or LOST), with its heartbeat."""
        return self.store.workers()

    def events(self, task_id: int, after_id: int = 0) -> builtins.list[TaskEvent]:
        """The task's history events after ``after_id``."""
        self.store.task_status(task_id)
        return self.store.events(task_id, after_id)

    # ---- operator actions (docs/actions.md) ------------------------------------------------------

    def retry(self, task_id: int, *, operator: str | None = None) -> TaskInfo:
        """Retry a FAILED task: every FAILED subtask runs again as RETRY (else error 20003)."""
        self.store.retry_task(task_id, operator or _user())
        return self._acted(task_id)

    def rollback(self, task_id: int, *, operator: str | None = None) -> TaskInfo:
        """Roll a FAILED task back in reverse topological order (20003 / 20004 if refused)."""
        self.store.rollback_task(task_id, operator or _user())
        return self._acted(task_id)

    def rollback_plan(self, task_id: int) -> RollbackPlan:
        """What :meth:`rollback` would undo, in which order, and what would refuse it."""
        return planner.rollback_plan(self.get(task_id))

    def retry_subtask(
        self, task_id: int, subtask_id: int, *, operator: str | None = None
    ) -> SubtaskInfo:
        """Run one FAILED subtask again as RETRY; the task goes back to RUNNING."""
        self.store.retry_subtask(task_id, subtask_id, operator or _user())
        return self._acted_subtask(task_id, subtask_id)

    def skip_subtask(
        self, task_id: int, subtask_id: int, *, operator: str | None = None
    ) -> SubtaskInfo:
        """Mark one FAILED subtask done without running it (SKIP, or ROLLBACK_SKIP)."""
        self.store.skip_subtask(task_id, subtask_id, operator or _user())
        return self._acted_subtask(task_id, subtask_id)

    def cancel_subtask(
        self, task_id: int, subtask_id: int, *, operator: str | None = None
    ) -> SubtaskInfo:
        """Interrupt one RUNNING subtask; it ends FAILED with op CANCEL and is not retried."""
        self.store.cancel_subtask(task_id, subtask_id, operator or _user())
        return self._acted_subtask(task_id, subtask_id)

    def cancel(self, task_id: int, *, operator: str | None = None) -> TaskInfo:
        """Cancel a RUNNING task: interrupt its running subtasks, start nothing new."""
        self.store.cancel_task(task_id, operator or _user())
        return self._acted(task_id)

    def _acted(self, task_id: int) -> TaskInfo:
        if self._pool is not None:
            self._pool.wake(self._pool.size)
        self._bump()
        return self.get(task_id)

    def _acted_subtask(self, task_id: int, subtask_id: int) -> SubtaskInfo:
        task = self._acted(task_id)
        return next(s for s in task.subtasks if s.id == subtask_id)

    # ---- history -----------------------------------------------------------------------------

    def history(self, task_id: int) -> hist.TaskHistory:
        """The task's complete history: typed events, attempts, operator actions."""
        return hist.task_history(self, task_id)

    def replay(
        self, task_id: int, *, step: int | None = None, at: datetime | None = None
    ) -> hist.TaskState:
        """The task rebuilt from its events alone (all of them, the first ``step``, or those up
        to ``at``)."""
        return hist.replay(self, task_id, step=step, at=at)

    def export(self, task_id: int, out: str | Path | TextIO) -> None:
        """Write the task's self-contained record (JSON lines: template, events, logs)."""
        hist.export_task(self, task_id, out)

    def purge(
        self,
        older_than: timedelta,
        *,
        dry_run: bool = False,
        export_to: str | Path | None = None,
        batch: int = retention.DEFAULT_BATCH,
    ) -> retention.PurgeReport:
        """Delete the SUCCESSFUL and FAILED tasks that finished more than ``older_than`` ago
        (nothing READY or RUNNING in them; imported tasks stay), with their subtasks, links,
        events and logs, ``batch`` tasks per short transaction. ``dry_run``: only count them.
        ``export_to``: first write them to that new file, which :meth:`import_files` reads."""
        return retention.purge_tasks(
            self.database,
            older_than=older_than,
            dry_run=dry_run,
            export_to=Path(export_to) if export_to is not None else None,
            batch=batch,
        )

    def import_files(self, paths: Iterable[str | Path]) -> builtins.list[hist.Imported]:
        """Import dagtask exports and OCP task documents as historical tasks (all or nothing)."""
        return hist.import_files(self, paths)

    def rerun(
        self,
        task_id: int,
        *,
        from_subtask: str | int | None = None,
        creator: str | None = None,
    ) -> TaskInfo:
        """A new task from a finished one's template and context; with ``from_subtask``, the
        outputs of what does not depend on that subtask are reused and the rest runs again."""
        task = hist.rerun(self, task_id, from_subtask=from_subtask, creator=creator)
        if self._pool is not None:
            self._pool.wake(len(task.subtasks))
        return task

    # ---- running -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Run ``workers`` worker threads in the background until :meth:`stop`."""
        if self._pool is None:
            if self.workers < 1:
                raise ArgumentError("this engine was created with workers=0; it cannot run tasks")
            self._pool = self._new_pool(self.workers, None)
            self._pool.start()
            if self._run_schedules and self._scheduler is None:
                self._scheduler = Scheduler(self.schedules, self.name)
                self._scheduler.start()
            if self._run_webhooks and self._notifier is None:
                self._notifier = Notifier(self.webhooks, self.name)
                self._notifier.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background workers, letting running handlers finish for up to ``timeout``."""
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        if self._pool is not None:
            self._pool.stop(timeout)
            self._pool = None

    @property
    def code_changed(self) -> bool:
        """Whether the installed dagtask changed under this engine's running workers (an
        upgrade): they claim nothing more, and the process should restart."""
        return self._pool is not None and self._pool.code_changed

    def close(self) -> None:
        """Stop the workers and release the database."""
        self.stop()
        self.database.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _new_pool(self, size: int, task_id: int | None) -> WorkerPool:
        return WorkerPool(
            self.store,
            self.services,
            size=size,
            name=self.name,
            task_id=task_id,
            poll_interval=self.poll_interval,
            on_finish=self._finished,
            lease_seconds=self.lease_seconds,
        )

    def _finished(self, claim: Claim, outcome: FinishOutcome) -> None:
        status = outcome.task_status
        if status is None:
            return
        with self._changed:
            if status is TaskStatus.RUNNING:  # restarted (a retry): read it again
                self._ended.pop(claim.task_id, None)
            elif claim.task_id in self._waiting:
                self._ended[claim.task_id] = status
            self._bump()  # _changed's lock is reentrant

    def _bump(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def _wait_for_change(self, seen: int, seconds: float) -> None:
        """Sleep up to ``seconds`` unless something changed since generation ``seen``."""
        with self._changed:
            if self._generation == seen:
                self._changed.wait(seconds)

    def wait(self, task_id: int, timeout: float | None = None) -> TaskInfo:
        """Block until the task is no longer RUNNING; return it (TaskTimeoutError on timeout)."""
        self.wait_status(task_id, timeout)
        return self.get(task_id)

    def wait_status(self, task_id: int, timeout: float | None = None) -> TaskStatus:
        """Block until the task is no longer RUNNING; return only its status (one small read
        per wake-up, and none of the task's subtasks: the cheap wait). When this engine's own
        workers end the task, the status they committed is taken as it is, without a read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            self._waiting[task_id] += 1
        try:
            while True:
                with self._changed:
                    seen = self._generation  # read before the status, so no end is missed
                    status = self._ended.get(task_id)
                if status is None:
                    status = self.store.task_status(task_id)
                if status is not TaskStatus.RUNNING:
                    return status
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TaskTimeoutError(
                        f"task {task_id} is still RUNNING after {timeout} s; "
                        f"see its progress with `dagtask show {task_id}`"
                    )
                # Short polls still catch tasks that workers in other processes end.
                self._wait_for_change(seen, min(0.1, left) if left is not None else 0.1)
        finally:
            with self._changed:
                self._waiting[task_id] -= 1
                if self._waiting[task_id] <= 0:
                    del self._waiting[task_id]
                    self._ended.pop(task_id, None)

    def run_task(self, task_id: int, timeout: float | None = None) -> TaskInfo:
        """Work on one task in this process until it ends (alongside workers elsewhere)."""
        if self._pool is not None:
            return self.wait(task_id, timeout)
        pool = self._new_pool(max(1, self.workers), task_id)
        pool.start()
        try:
            return self.wait(task_id, timeout)
        finally:
            pool.stop()

    def run(
        self,
        template: TaskTemplate | str,
        *,
        args: Mapping[str, str] | None = None,
        lists: Mapping[str, Sequence[str]] | None = None,
        creator: str | None = None,
        timeout: float | None = None,
    ) -> TaskInfo:
        """Submit a task and return it once it has ended."""
        task_id = self.submit_id(template, args=args, lists=lists, creator=creator)
        return self.run_task(task_id, timeout)

    def follow(self, task_id: int, *, poll: float = 0.1) -> Iterator[TaskEvent]:
        """Yield the task's history events as they are written, until the task has ended."""
        last = 0
        while True:
            ended = self.store.task_status(task_id) is not TaskStatus.RUNNING
            seen = self._generation
            for event in self.store.events(task_id, last):
                last = event.id
                yield event
            if ended:
                return
            self._wait_for_change(seen, poll)


_USER_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")


def _user() -> str:
    """Who submits, as :func:`getpass.getuser` says (the variables first, then the account of
    this process's uid, which is looked up once per uid: it costs more than a small submit)."""
    for variable in _USER_VARIABLES:
        found = os.environ.get(variable)
        if found:
            return found
    return _account(os.getuid() if hasattr(os, "getuid") else -1)


@functools.lru_cache(maxsize=8)
def _account(uid: int) -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
