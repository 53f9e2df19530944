"""Commands that run and act on tasks: demo, run, show, list, logs and the operator actions."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagtask import diagnosis, live, views
from dagtask.cli import output as out
from dagtask.cli.common import (
    DEMO_DIR,
    DEMO_HOST,
    MAX_PAGE,
    MAX_PAGE_SIZE,
    Commands,
    a_time,
    action_command,
    agent_log,
    an_id,
    check_wait,
    import_from,
    is_template_file,
    json_flag,
    load_file,
    no_color_of,
    open_engine,
    operator_of,
    parse_enums,
    parse_lists,
    parse_pairs,
    positive,
    task_id_arg,
    wait_options,
)
from dagtask.engine import Engine
from dagtask.errors import (
    ArgumentError,
    HostNotFoundError,
)
from dagtask.history.rerun import find_subtask
from dagtask.hosts.connector import connector_for
from dagtask.hosts.inventory import AgentStatus
from dagtask.models import HostInfo, TaskInfo
from dagtask.states import TaskStatus, TaskType
from dagtask.store.db import (
    resolve_url,
)
from dagtask.template import TaskTemplate

# ---- commands ------------------------------------------------------------------------------------


def _demo_host(engine: Engine) -> HostInfo:
    try:
        return engine.hosts.get_by_name(DEMO_HOST)
    except HostNotFoundError:
        home = Path.cwd() / DEMO_DIR / DEMO_HOST
        return engine.hosts.add(name=DEMO_HOST, inner_ip="127.0.0.1", agent_home=str(home))


def _pid_is_agent(pid: int, home: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process whose command line names ``home``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rpartition(b")")[2].split()[:1]
    return state not in ([b"Z"], [b"X"]) and home.encode() in cmdline


def _remove_demo_home(host: HostInfo) -> None:
    home = Path(host.agent_home)
    # Only ever delete the folder the demo itself creates, never a home someone registered.
    if home.name != DEMO_HOST or home.parent.name != DEMO_DIR or not home.is_dir():
        return
    shutil.rmtree(home, ignore_errors=True)
    with contextlib.suppress(OSError):
        home.parent.rmdir()  # only if empty
    print(f"Removed the demo agent home {home} (keep it with --keep-agent-home)")


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a local demo agent, stop it with the built-in "Stop OCP agent" task, show the task."""
    url = resolve_url(args.db)
    no_color = no_color_of(args)
    # With --json, stdout carries the task's JSON alone; what the demo says goes to stderr.
    human = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with Engine(url, workers=2) as engine:
        with human:
            print(f"Database: {out.safe_url(url)}")
            host = _demo_host(engine)
            where = f"{host.name}, {host.inner_ip}"
            print(f"Demo host {host.id} ({where}), agent home {host.agent_home}")
            connector = connector_for(host)
            pids = connector.start_agent(host, log=agent_log)
            engine.hosts.set_agent_status(host.id, AgentStatus.ONLINE)
            out.print_agent_running(connector.agent_processes(host))

            task = engine.submit("Stop OCP agent", args={"host_id": str(host.id)})
            print(f"Submitted task {task.id} ({task.name}); running it in this process:")
            waited = out.run_to_end(engine, task.id, None, progress=True, no_color=no_color)
            final = waited.task

            alive = [p.pid for p in connector.agent_processes(host) if p.alive]
            alive += [
                pid for pid in pids if pid not in alive and _pid_is_agent(pid, host.agent_home)
            ]
            out.print_demo_outcome(pids, alive)
            ok = final.status is TaskStatus.SUCCESSFUL and not alive
            if ok and not args.keep_agent_home:
                _remove_demo_home(host)
            out.print_end(waited, no_color=no_color, also=_demo_ideas(final))
        if args.json:
            out.print_json(views.task_json(final))
        return 0 if ok else 1


def _demo_ideas(task: TaskInfo) -> list[live.Next]:
    """What to try after the demo, beyond the commands that fit any ended task."""
    stop = next((s for s in task.subtasks if s.name == "Stop all OCP agent processes"), None)
    ideas = []
    if stop is not None and task.status is TaskStatus.SUCCESSFUL:
        ideas.append(live.Next(f"dagtask logs {task.id} {stop.id}", "how the agent was stopped"))
    ideas.append(live.Next("dagtask templates", "the other built-in tasks"))
    ideas.append(live.Next("dagtask demo --keep-agent-home", "keep the agent's pid files and logs"))
    return ideas


def cmd_run(args: argparse.Namespace) -> int:
    """Submit a task from a template (name or file); with --wait, run it here to its end."""
    strings = parse_pairs(args.set, "--set")
    lists = parse_lists(args.list)
    check_wait(args)
    template: TaskTemplate | str = args.template
    if is_template_file(args.template):
        template = load_file(Path(args.template))
    with open_engine(args, workers=args.workers) as engine:
        task = engine.submit(template, args=strings, lists=lists)
        if not args.wait:
            out.print_submitted(task, as_json=args.json)
            return 0
        if not args.json:
            print(f"task {task.id} submitted: {task.name}; running it in this process")
        return out.wait_here(
            engine,
            task.id,
            args.timeout,
            as_json=views.task_json if args.json else None,
            no_color=no_color_of(args),
        )


def cmd_show(args: argparse.Namespace) -> int:
    """Show one task and its subtasks."""
    with open_engine(args, read_only=True) as engine:
        task = engine.get(args.id)
    out.show_task(task, views.detail_json if args.json else None)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List tasks, newest first, one page at a time."""
    statuses = parse_enums(args.status, TaskStatus, "--status", "task status")
    types = parse_enums(args.type, TaskType, "--type", "task type")
    with open_engine(args, read_only=True) as engine:
        page = engine.list(
            page=args.page,
            size=args.size,
            name=args.name,
            statuses=statuses,
            host_id=args.host,
            types=types,
            since=args.since,
            until=args.until,
            creator=args.creator,
        )
    if args.json:
        out.print_json(views.task_list_json(page))
    else:
        out.print_page(page)
    return 0


def _subtask_arg(text: str) -> int | str:
    """An argparse type: a subtask id (checked as ids are), else a subtask name."""
    return an_id(text.strip()) if text.strip().isdigit() else text


def _subtask_ref(engine: Engine, task_id: int, ref: int | str) -> int:
    """A subtask of the task by id, or by name as `rerun --from` takes it (``name[idx]`` for a
    fan-out copy)."""
    return ref if isinstance(ref, int) else find_subtask(engine.get(task_id), ref).id


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the log of every attempt of one subtask (with --follow, as it grows), of every
    subtask, or write the task's diagnosis zip (--zip FILE)."""
    if args.follow and args.json:
        raise ArgumentError("--follow prints the log as it grows; it cannot be used with --json")
    if args.zip is not None and (args.subtask is not None or args.follow or args.json):
        raise ArgumentError(
            "--zip writes every log of the task; leave out SUBTASK, --follow and --json"
        )
    if args.subtask is None and args.follow:
        raise ArgumentError("--follow follows one subtask: name it (see `dagtask show ID`)")
    with open_engine(args, read_only=True) as engine:
        if args.zip is not None:
            _write_file(args.zip, diagnosis.task_archive(engine, args.id))
            if args.zip != "-":
                print(f"task {args.id}: every log, its JSON and its history written to {args.zip}")
            return 0
        if args.subtask is None:
            return _print_task_logs(engine, args.id, as_json=args.json)
        subtask_id = _subtask_ref(engine, args.id, args.subtask)
        if args.follow:
            for chunk in engine.follow_log(args.id, subtask_id):
                out.write_log(chunk)
            return 0
        text = engine.logs(args.id, subtask_id)
    if args.json:
        out.print_json(views.log_json(text))
    else:
        out.write_log(text if not text or text.endswith("\n") else text + "\n")
    return 0


def _print_task_logs(engine: Engine, task_id: int, *, as_json: bool) -> int:
    """Every attempt's log of every subtask, each under a ``==> ... <==`` header."""
    task = engine.get(task_id, outputs=False)
    names = {s.id: (s.name, s.parallel_idx) for s in task.subtasks}
    order = {s.id: i for i, s in enumerate(task.subtasks)}  # as `dagtask show`: roots first
    found = sorted(engine.store.task_logs(task_id), key=lambda e: (order[e[0]], e[1]))
    if as_json:
        out.print_json(
            [
                {"subtaskId": sid, "name": names[sid][0], "runTime": rt, "log": text}
                for sid, rt, text in found
            ]
        )
        return 0
    for sid, run_time, text in found:
        name, idx = names[sid]
        label = f"{name}[{idx}]" if idx >= 0 else name
        out.write_log(f"==> subtask {sid} {label!r}, attempt {run_time} <==\n")
        out.write_log(text if text.endswith("\n") else text + "\n")
    return 0


def _write_file(path: str, data: bytes) -> None:
    """``data`` into ``path`` (``-``: stdout), whole or not at all."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ArgumentError(f"cannot write {path}: {exc.strerror or exc}") from None


# ---- operator actions (docs/actions.md) ----------------------------------------------------------

RUN_HINT = "run it with `dagtask worker` (or add --wait here); follow it with `dagtask show {id}`"
CANCEL_HINT = "the worker running it stops it; follow it with `dagtask show {id}`"


def _act(
    args: argparse.Namespace,
    action: Callable[..., object],
    done: str,
    *,
    hint: str = RUN_HINT,
    subtask_result: bool = False,
) -> int:
    """Call the Engine method ``action`` on the task (ID) or subtask (ID SUBTASK_ID) as the
    operator, print what it did; with --wait, run the task here to its end.

    ``--json`` prints the task as OCP JSON (``subtask_result``: the subtask, as OCP's subtask
    retry endpoint returns it), after the action or, with --wait, once the task has ended.
    """
    operator = operator_of(args)
    check_wait(args)
    subtask_id: int | None = getattr(args, "subtask_id", None)
    ids = (args.id,) if subtask_id is None else (args.id, subtask_id)
    progress = args.wait and not args.json

    def as_json(task: TaskInfo) -> dict[str, Any]:
        if subtask_result and subtask_id is not None:
            return views.subtask_json(out.subtask_of(task, subtask_id))
        return views.task_json(task)

    if args.wait:
        import_from(Path.cwd())  # handlers of tasks run from a template file, as `run` does
    with open_engine(args, workers=args.workers) as engine:
        after = out.last_event_id(engine, args.id) if progress else 0
        action(engine, *ids, operator=operator)
        task = engine.get(args.id)
        if not args.json:
            running = "; running the task in this process" if args.wait else ""
            print(out.action_line(task, subtask_id, done, operator) + running, flush=True)
        if not args.wait:
            if args.json:
                out.print_json(as_json(task))
            else:
                print("  " + hint.format(id=task.id))
            return 0
        return out.wait_here(
            engine,
            args.id,
            args.timeout,
            as_json=as_json if args.json else None,
            after=after,
            no_color=no_color_of(args),
        )


def cmd_retry(args: argparse.Namespace) -> int:
    """Retry a FAILED task: its FAILED subtasks run again as RETRY (else error 20003)."""
    return _act(args, Engine.retry, "retried")


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll a FAILED task back in reverse topological order, or show the plan with --plan."""
    if not args.plan:
        return _act(args, Engine.rollback, "rollback started")
    if args.wait or args.timeout is not None or args.operator is not None:
        raise ArgumentError("--plan only shows the plan; leave out --wait, --timeout, --operator")
    with open_engine(args, read_only=True) as engine:
        plan = engine.rollback_plan(args.id)
    if args.json:
        out.print_json(out.plan_json(plan))
    else:
        out.print_plan(plan)
    return 0 if plan.allowed else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a RUNNING task: stop its running subtasks, start nothing new (beyond OCP)."""
    return _act(args, Engine.cancel, "cancel requested", hint=CANCEL_HINT)


def cmd_subtask_retry(args: argparse.Namespace) -> int:
    """Run one FAILED subtask again as RETRY; the task goes back to RUNNING."""
    return _act(args, Engine.retry_subtask, "retried", subtask_result=True)


def cmd_subtask_skip(args: argparse.Namespace) -> int:
    """Mark one FAILED subtask done without running it (SKIP, or ROLLBACK_SKIP)."""
    return _act(args, Engine.skip_subtask, "skipped")


def cmd_subtask_cancel(args: argparse.Namespace) -> int:
    """Interrupt one RUNNING subtask: it ends FAILED with operation CANCEL, never retried."""
    return _act(args, Engine.cancel_subtask, "cancel requested", hint=CANCEL_HINT)


def add_commands(commands: Commands) -> None:
    """Register demo, run, show, list, logs and the operator actions."""
    demo = commands.add("demo", cmd_demo)
    keep = f"keep ./{DEMO_DIR}/{DEMO_HOST} (the demo agent's pid files and logs) afterwards"
    demo.add_argument("--keep-agent-home", action="store_true", help=keep)
    json_flag(demo, "the task as OCP JSON at the end (alone on stdout; the rest goes to stderr)")

    run = commands.add("run", cmd_run)
    run.add_argument(
        "template",
        metavar="TEMPLATE|FILE",
        help="a template name or slug (e.g. stop-ocp-agent) or a .yaml/.yml/.json template file",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a stringMap argument, e.g. --set host_id=1 (repeatable)",
    )
    run.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a listMap argument, e.g. --list host_ids=1,2 (repeatable)",
    )
    wait_options(run, "run the task here until it ends; exit 1 if it ends FAILED")
    json_flag(run, "the task as OCP JSON")

    show = commands.add("show", cmd_show)
    task_id_arg(show)
    json_flag(show, "the task as OCP JSON")

    lst = commands.add("list", cmd_list)
    lst.add_argument(
        "--page", type=positive(int, MAX_PAGE), default=1, metavar="N", help="page number, from 1"
    )
    lst.add_argument(
        "--size",
        type=positive(int, MAX_PAGE_SIZE),
        default=20,
        metavar="N",
        help="tasks per page, up to 2000",
    )
    lst.add_argument(
        "--status", metavar="S,...", help="only these statuses: RUNNING, FAILED, SUCCESSFUL"
    )
    lst.add_argument("--name", metavar="TEXT", help="only tasks whose name contains TEXT")
    lst.add_argument(
        "--host",
        type=an_id,
        metavar="HOST_ID",
        help="only tasks on this host (single-host tasks and batches that include it)",
    )
    lst.add_argument(
        "--type", metavar="T,...", help="only these task types: MANUAL, SCHEDULED, SYS_ONCE ..."
    )
    lst.add_argument(
        "--since", type=a_time, metavar="TIME", help="only tasks created at or after TIME (ISO)"
    )
    lst.add_argument(
        "--until", type=a_time, metavar="TIME", help="only tasks created at or before TIME (ISO)"
    )
    lst.add_argument("--creator", metavar="NAME", help="only tasks this user created")
    json_flag(lst, "the page as OCP JSON")

    logs = commands.add("logs", cmd_logs)
    task_id_arg(logs)
    logs.add_argument(
        "subtask",
        type=_subtask_arg,
        metavar="SUBTASK",
        nargs="?",
        help="the subtask id or name (`name[idx]`: a copy of a fan-out); see `dagtask show ID` "
        "(default: every subtask's logs, each attempt under a header)",
    )
    logs.add_argument(
        "--zip",
        metavar="FILE",
        help="write the task's diagnosis download to FILE (- for stdout): a zip with task.json, "
        "history.txt and logs/<subtask id>-<name>/attempt-<runTime>.log per subtask and attempt",
    )
    logs.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing the log as it grows until the subtask stops running (Ctrl-C: stop)",
    )
    json_flag(logs, 'OCP JSON {"log": ...}')

    action_command(commands, "retry", cmd_retry)
    rollback = action_command(
        commands,
        "rollback",
        cmd_rollback,
        json="the task as OCP JSON; with --plan, the plan as a plain JSON object {taskId, "
        "allowed, refusals, waves: [[{id, name, status, prohibitRollback}]]} (not an OCP shape: "
        "OCP has no rollback plan)",
    )
    rollback.add_argument(
        "--plan",
        action="store_true",
        help="change nothing: show the subtasks a rollback would undo, in order (waves that may "
        "roll back in parallel), and what would refuse it; exit 0 if allowed, else 1",
    )
    action_command(
        commands,
        "cancel",
        cmd_cancel,
        wait="then wait here until the task has stopped (a cancelled task ends FAILED: exit 1)",
    )
    subtask = commands.nested(
        commands.add("subtask", "Act on one subtask of a task: retry, skip or cancel it")
    )
    action_command(
        subtask,
        "retry",
        cmd_subtask_retry,
        subtask=True,
        json="the subtask as OCP JSON (as OCP's subtask retry returns it), after the action or, "
        "with --wait, once the task has ended",
    )
    action_command(subtask, "skip", cmd_subtask_skip, subtask=True)
    action_command(
        subtask,
        "cancel",
        cmd_subtask_cancel,
        subtask=True,
        wait="then wait here until the task has ended; exit 1 if it ends FAILED",
    )
