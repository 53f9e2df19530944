"""What the ``dagtask`` command line prints for people: tables, task summaries, live progress.

:mod:`dagtask.cli` parses the command line and calls the engine; everything it shows a person
(rather than OCP JSON, which comes from :mod:`dagtask.views` only) is rendered here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from dagtask import live, views
from dagtask.engine import Engine
from dagtask.errors import DagtaskError
from dagtask.hosts.connector import AgentProcess
from dagtask.models import (
    EventKind,
    HostInfo,
    RollbackPlan,
    SubtaskInfo,
    TaskEvent,
    TaskInfo,
    TaskPage,
)
from dagtask.observability import logfields
from dagtask.secrets import mask_values, secret_values
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.template import TaskTemplate

_CODED = re.compile(r"error \d+: ")
"""The library's OCP-coded messages start with ``error 2000x: ``."""


def error_line(prog: str, exc: DagtaskError) -> str:
    """The one line a user mistake prints: ``prog: error 20000: ...`` or ``prog: error: ...``."""
    message = " ".join(str(exc).splitlines())
    if _CODED.match(message):
        return f"{prog}: {message}"
    return f"{prog}: error: {message}"


def safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def log_to_stderr(log: logging.Logger) -> None:
    """Show ``log``'s INFO records on stderr with their time (for the foreground worker)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class JsonLines(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message; then, when the
    record is about one, ``task_id``, ``subtask_id``, ``attempt`` (the runTime) and
    ``trace_id`` (:mod:`dagtask.observability.logfields`); for uvicorn's access lines also
    ``client``, ``method``, ``path`` and ``status``."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in logfields.FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, _version, status = args  # '%s - "%s %s HTTP/%s" %d'
            data.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


WORKER_LOGGERS = ("dagtask.cli", "dagtask.worker")
"""The loggers ``dagtask worker`` shows."""
SERVE_LOGGERS = ("dagtask.cli", "dagtask.api", "uvicorn.error", "uvicorn.access")
"""The loggers ``dagtask serve --log-format json`` shows from INFO: its server and access log."""
SERVE_WORKER_LOGGERS = ("dagtask.worker", "dagtask.webhooks", "dagtask.schedules", "dagtask.hooks")
"""The loggers of the work ``dagtask serve`` runs, shown from WARNING (as in text mode)."""


def configure_logging(
    level: str = "INFO", form: str = "text", names: Sequence[str] = WORKER_LOGGERS
) -> None:
    """Show the loggers ``names`` (by default the CLI's and the workers' own log, for ``dagtask
    worker``) on stderr, as text lines with their time or as JSON lines. Handlers' logs are not
    touched: they go to the subtask logs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLines()
        if form == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    handler.addFilter(logfields.ContextFilter())
    for name in names:
        log = logging.getLogger(name)
        for old in list(log.handlers):
            log.removeHandler(old)
        log.addHandler(handler)
        log.setLevel(getattr(logging, level))
        log.propagate = False


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout."""
    print(json.dumps(data, indent=2, ensure_ascii=False))


def local(dt: datetime) -> datetime:
    """A stored time (naive UTC) in the local zone: people read local time."""
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone()


def when(dt: datetime | None) -> str:
    """A time for a table cell, ``-`` when unset."""
    return local(dt).strftime("%Y-%m-%d %H:%M:%S") if dt is not None else "-"


def one_line(text: str | None, limit: int = 120) -> str:
    """``text`` flattened to one line of at most ``limit`` characters."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def counted(number: int, noun: str) -> str:
    """``1 wave``, ``2 waves``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        indent + "  ".join(cell.ljust(w) for w, cell in zip(widths, line, strict=True)).rstrip()
        for line in [headers, *rows]
    ]
    return "\n".join(lines)


# ---- tasks ---------------------------------------------------------------------------------------


def subtask_labels(task: TaskInfo) -> dict[int, str]:
    """Subtask id -> name, with ``[idx]`` for the copies of a fan-out."""
    return {
        sub.id: f"{sub.name} [{sub.parallel_idx}]" if sub.parallel else sub.name
        for sub in task.subtasks
    }


def event_line(event: TaskEvent, labels: Mapping[int, str], secrets: Sequence[str] = ()) -> str:
    """One line of live progress: ``[time] who: OLD -> NEW (operation OP): message``, with
    ``secrets`` (the task's :func:`dagtask.secrets.secret_values`) masked in the message."""
    stamp = local(event.time).strftime("%H:%M:%S.%f")[:-3]
    if event.subtask_id is None:
        who = f"task {event.task_id}"
    else:
        who = labels.get(event.subtask_id, f"subtask {event.subtask_id}")
    if event.kind is EventKind.TASK_SUBMITTED:
        change = f"submitted, {event.new_status}"
    else:
        change = f"{event.old_status} -> {event.new_status}"
    if event.old_operation and event.new_operation and event.old_operation != event.new_operation:
        change += f" (operation {event.new_operation})"
    if event.message and event.kind is not EventKind.TASK_SUBMITTED:
        change += f": {one_line(mask_values(event.message, secrets))}"
    return f"  [{stamp}] {who}: {change}"


def print_task(task: TaskInfo) -> None:
    """A task line, then one line per subtask (in the order of the OCP JSON: roots first)."""
    subject = f", host {task.host_id}" if task.host_id is not None else ""
    finished = f", finished {when(task.finish_time)}" if task.finish_time else ""
    print(
        f"task {task.id} {task.name}: {task.status.value} ({task.operation.value}){subject}, "
        f"creator {task.creator}, started {when(task.start_time or task.create_time)}{finished}"
    )
    if task.historical:
        print(f"  {origin_line(task.origin or {})}")
    labels = subtask_labels(task)
    secrets = secret_values(task)
    subs = sorted(task.subtasks, key=lambda sub: (-sub.series_id, sub.id))
    rows = [
        [
            str(sub.id),
            labels[sub.id],
            sub.status.value,
            sub.operation.value,
            str(sub.run_time),
            sub.executor or "-",
            one_line(mask_values(sub.message or "", secrets)),
        ]
        for sub in subs
    ]
    headers = ["ID", "NAME", "STATUS", "OPERATION", "RUNTIME", "EXECUTOR", "MESSAGE"]
    if task.historical:  # the ids the subtasks had where they were recorded
        headers.insert(1, "ORIGINAL ID")
        for row, sub in zip(rows, subs, strict=True):
            row.insert(1, str(sub.original_id) if sub.original_id is not None else "-")
    print(table(headers, rows, indent="  "))


def origin_line(origin: Mapping[str, Any]) -> str:
    """Where a historical task was imported from, and that nothing runs it here."""
    ocp = origin.get("format") == "ocp"
    where = str(origin.get("file", "?")) + (f" {origin['path']}" if origin.get("path") else "")
    again = "" if ocp else " (start it again with `dagtask rerun`)"
    return (
        f"historical: imported from {'OCP' if ocp else 'dagtask'} task {origin.get('task_id')} "
        f"({where}); nothing runs or changes it here{again}"
    )


def show_task(task: TaskInfo, as_json: Callable[[TaskInfo], dict[str, Any]] | None) -> None:
    """The task as JSON rendered by ``as_json`` (a :mod:`dagtask.views` function), else as a
    table."""
    if as_json is not None:
        print_json(as_json(task))
    else:
        print_task(task)


def print_submitted(task: TaskInfo, *, as_json: bool) -> None:
    """A task just submitted (not run here): its OCP JSON, or what to do next."""
    if as_json:
        print_json(views.task_json(task))
    else:
        print(f"task {task.id} {task.status.value}: {task.name}")
        print(f"  run it with `dagtask worker`, follow it with `dagtask show {task.id}`")


def print_page(page: TaskPage) -> None:
    """One page of tasks as a table, then where the page is."""
    if not page.tasks:
        print("no tasks" if page.total_elements == 0 else f"no tasks on page {page.number}")
    else:
        rows = []
        for task in page.tasks:
            done = sum(1 for sub in task.subtasks if sub.status is SubtaskStatus.SUCCESSFUL)
            rows.append(
                [
                    str(task.id),
                    task.name,
                    task.status.value,
                    task.operation.value,
                    f"{done}/{len(task.subtasks)}",
                    task.creator,
                    when(task.start_time or task.create_time),
                    when(task.finish_time),
                ]
            )
        headers = ["ID", "NAME", "STATUS", "OPERATION", "DONE", "CREATOR", "STARTED", "FINISHED"]
        print(table(headers, rows))
    print(
        f"page {page.number} of {max(page.total_pages, 1)}, {counted(page.total_elements, 'task')}"
    )


def template_slug(name: str) -> str:
    """The slug ``dagtask run`` accepts for a template name: ``Stop OCP agent`` is
    ``stop-ocp-agent`` (the engine's rule for names given by slug)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def print_templates(templates: Sequence[TaskTemplate]) -> None:
    """The templates as a table, with the slug to give ``dagtask run`` (no quotes needed)."""
    rows = [
        [template_slug(t.name), t.name, str(len(t.subtasks)), one_line(t.description) or "-"]
        for t in templates
    ]
    print(table(["SLUG", "NAME", "SUBTASKS", "DESCRIPTION"], rows))
    if templates:
        print(f"run one with `dagtask run {template_slug(templates[0].name)} --set KEY=VALUE`")


def subtask_order(subtasks: Sequence[SubtaskInfo]) -> list[SubtaskInfo]:
    """Subtasks in the order ``dagtask show`` lists them (the OCP JSON's: roots first)."""
    return sorted(subtasks, key=lambda sub: (-sub.series_id, sub.id))


def print_hosts(hosts: Sequence[HostInfo]) -> None:
    """The host inventory as a table."""
    if not hosts:
        print("no hosts; add one with `dagtask hosts add`")
        return
    rows = [
        [str(h.id), h.name, h.inner_ip, h.status, h.agent_status, h.connector, h.agent_home]
        for h in hosts
    ]
    print(table(["ID", "NAME", "IP", "STATUS", "AGENT", "CONNECTOR", "AGENT HOME"], rows))
    # The connector decides where a stop really acts; say it where an IP could suggest otherwise.
    if any(h.connector == "local" for h in hosts):
        print("connector local: the agent runs as processes on this machine, whatever the IP says")
    if any(h.agent_status == "UNKNOWN" for h in hosts):
        print("agent UNKNOWN: not checked since the host was added")


def print_agent_running(processes: Sequence[AgentProcess]) -> None:
    """The agent processes the demo started."""
    print("OCP agent is running (agent status ONLINE):")
    for process in processes:
        if process.alive:
            print(f"  {process.name} pid={process.pid}")


def print_demo_outcome(pids: Sequence[int], alive: Sequence[int]) -> None:
    """Whether the demo's agent processes are gone (the summary says why the task failed)."""
    if alive:
        print(f"Agent processes still running: pid {', '.join(map(str, alive))}", flush=True)
    else:
        print(f"Agent processes gone: pid {', '.join(map(str, pids))} no longer running")


def write_log(text: str) -> None:
    """A log chunk on stdout, flushed at once (a follower reads it as it comes)."""
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


# ---- operator actions ----------------------------------------------------------------------------


def action_line(task: TaskInfo, subtask_id: int | None, done: str, operator: str) -> str:
    """What an operator action did, e.g. ``task 7 retried by alice: RUNNING (RETRY)``."""
    state = f"{task.status.value} ({task.operation.value})"
    if subtask_id is None:
        return f"task {task.id} {done} by {operator}: {state}"
    sub = subtask_of(task, subtask_id)
    return (
        f"subtask {sub.id} {subtask_labels(task)[sub.id]} of task {task.id} {done} by "
        f"{operator}: {sub.status.value} ({sub.operation.value}); task {state}"
    )


def subtask_of(task: TaskInfo, subtask_id: int) -> SubtaskInfo:
    """The subtask ``subtask_id`` of ``task`` (the engine has checked that it belongs to it)."""
    return next(sub for sub in task.subtasks if sub.id == subtask_id)


def plan_json(plan: RollbackPlan) -> dict[str, Any]:
    """A rollback plan as plain JSON (beyond OCP, so not an OCP shape)."""
    return {
        "taskId": plan.task_id,
        "allowed": plan.allowed,
        "refusals": list(plan.refusals),
        "waves": [
            [
                {
                    "id": step.id,
                    "name": step.name,
                    "status": step.status.value,
                    "prohibitRollback": step.prohibit_rollback,
                }
                for step in wave
            ]
            for wave in plan.waves
        ],
    }


def print_plan(plan: RollbackPlan) -> None:
    """Whether the task can roll back, why not, and the order of the rollback in waves."""
    steps = sum(len(wave) for wave in plan.waves)
    verdict = "allowed" if plan.allowed else "refused"
    print(
        f"rollback of task {plan.task_id} is {verdict}: "
        f"{counted(steps, 'subtask')} to undo in {counted(len(plan.waves), 'wave')}"
    )
    for reason in plan.refusals:
        print(f"  refused: {reason}")
    if not plan.waves:
        return
    print("order (the subtasks of one wave may roll back in parallel):")
    rows = [
        [
            str(number),
            str(step.id),
            step.name,
            step.status.value,
            "yes" if step.prohibit_rollback else "no",
        ]
        for number, wave in enumerate(plan.waves, start=1)
        for step in wave
    ]
    print(table(["WAVE", "ID", "NAME", "STATUS", "PROHIBIT ROLLBACK"], rows, indent="  "))


# ---- running a task in this process --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Waited:
    """A task run here to its end, and how it was shown meanwhile."""

    task: TaskInfo
    mode: live.Mode
    seconds: float


def run_to_end(
    engine: Engine,
    task_id: int,
    timeout: float | None,
    *,
    progress: bool,
    after: int = 0,
    no_color: bool = False,
) -> Waited:
    """Work on the task here until it ends. With ``progress``: a live view on a terminal, else
    one timestamped line per status change (the history events after event id ``after``).
    Ctrl-C stops this process's work on the task and says what then (KeyboardInterrupt)."""
    mode = live.choose_mode(progress)
    labels: dict[int, str] = {}
    secrets: list[str] = []
    if mode == "plain":
        task = engine.get(task_id)
        labels, secrets = subtask_labels(task), secret_values(task)
    watch = live.Watch(
        engine,
        task_id,
        timeout,
        mode=mode,
        console=live.make_console(no_color=no_color),
        after=after,
        event_line=lambda event: event_line(event, labels, secrets),
    )
    final = watch.run()
    return Waited(final, mode, watch.elapsed)


def wait_here(
    engine: Engine,
    task_id: int,
    timeout: float | None,
    *,
    as_json: Callable[[TaskInfo], dict[str, Any]] | None,
    after: int = 0,
    no_color: bool = False,
) -> int:
    """``--wait``: run the task here to its end (:func:`run_to_end`, shown unless ``as_json``),
    print how it ended (:func:`print_end`), and return the exit code: 1 if it ended FAILED."""
    waited = run_to_end(
        engine, task_id, timeout, progress=as_json is None, after=after, no_color=no_color
    )
    print_end(waited, as_json, no_color=no_color)
    return 1 if waited.task.status is TaskStatus.FAILED else 0


def print_end(
    waited: Waited,
    as_json: Callable[[TaskInfo], dict[str, Any]] | None = None,
    *,
    no_color: bool = False,
    also: Sequence[live.Next] = (),
) -> None:
    """After a wait: the JSON rendered by ``as_json``, else the task (unless the live view's
    last frame shows it already), how it ended and what to run next (``also``: more ideas)."""
    if as_json is not None:
        print_json(as_json(waited.task))
        return
    if waited.mode != "live":
        print_task(waited.task)
    console = live.make_console(no_color=no_color)
    console.print(live.summary(waited.task, waited.seconds, also=also), soft_wrap=True)


def last_event_id(engine: Engine, task_id: int) -> int:
    """The id of the task's newest history event (0 if none); raises 20000 for a missing task."""
    events = engine.events(task_id)
    return events[-1].id if events else 0
