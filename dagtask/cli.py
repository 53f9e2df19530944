"""The ``dagtask`` command line: a thin layer over :class:`dagtask.Engine` and :mod:`dagtask.views`.

Every command opens the database given by ``--db`` (else ``$DAGTASK_DB_URL``, else
``sqlite:///dagtask.db``), calls the public API and prints the result, as a table for people or
as OCP's JSON (``--json``). A user mistake (any :class:`~dagtask.errors.DagtaskError`) prints one
line ``dagtask: error: ...`` and exits 2, like argparse's own usage errors; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic.util import CommandError

from dagtask import __version__, views
from dagtask.engine import Engine
from dagtask.errors import ArgumentError, DagtaskError, HostNotFoundError, StoreError
from dagtask.hosts.connector import connector_for
from dagtask.hosts.inventory import AgentStatus
from dagtask.models import EventKind, HostInfo, TaskEvent, TaskInfo
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.store.db import DEFAULT_URL, ENV_VAR, Database, resolve_url, upgrade
from dagtask.template import TaskTemplate, load_template

PROG = "dagtask"
DEMO_HOST = "demo-host"
DEMO_DIR = "dagtask-demo"
TEMPLATE_SUFFIXES = (".yaml", ".yml", ".json")

_log = logging.getLogger("dagtask.cli")
# start_agent reports each process it starts at INFO; the commands print what matters themselves.
_agent_log = logging.getLogger("dagtask.cli.agent")

Command = Callable[[argparse.Namespace], int]
_N = TypeVar("_N", int, float)


# ---- small helpers -------------------------------------------------------------------------------


def _engine(args: argparse.Namespace, *, workers: int = 0, name: str | None = None) -> Engine:
    return Engine(resolve_url(args.db), workers=workers, name=name)


def _safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _local(dt: datetime) -> datetime:
    # The store keeps naive UTC times; people read local time.
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone()


def _when(dt: datetime | None) -> str:
    return _local(dt).strftime("%Y-%m-%d %H:%M:%S") if dt is not None else "-"


def _one_line(text: str | None, limit: int = 120) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        indent + "  ".join(cell.ljust(w) for w, cell in zip(widths, line, strict=True)).rstrip()
        for line in [headers, *rows]
    ]
    return "\n".join(lines)


def _pairs(items: Sequence[str], option: str) -> dict[str, str]:
    """``KEY=VALUE`` command-line items as a mapping (ArgumentError for a malformed one)."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ArgumentError(
                f"{option} expects KEY=VALUE (e.g. {option} host_id=1), got {item!r}"
            )
        result[key.strip()] = value
    return result


def _lists(items: Sequence[str]) -> dict[str, list[str]]:
    """``--list KEY=V1,V2`` items as a listMap; ``KEY=`` is an empty list."""
    return {
        key: [part.strip() for part in value.split(",") if part.strip()]
        for key, value in _pairs(items, "--list").items()
    }


def _statuses(text: str | None) -> list[TaskStatus]:
    if not text:
        return []
    result = []
    for part in text.split(","):
        try:
            result.append(TaskStatus(part.strip().upper()))
        except ValueError:
            allowed = ", ".join(s.value for s in TaskStatus)
            raise ArgumentError(
                f"--status {part.strip()!r} is not a task status; use one or more of {allowed}"
            ) from None
    return result


def _positive(kind: type[_N]) -> Callable[[str], _N]:
    """An argparse type: a number of ``kind`` greater than 0."""

    def convert(text: str) -> _N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    return convert


# ---- rendering -----------------------------------------------------------------------------------


def _subtask_labels(task: TaskInfo) -> dict[int, str]:
    """Subtask id -> name, with ``[idx]`` for the copies of a fan-out."""
    return {
        sub.id: f"{sub.name} [{sub.parallel_idx}]" if sub.parallel else sub.name
        for sub in task.subtasks
    }


def _event_line(event: TaskEvent, labels: Mapping[int, str]) -> str:
    stamp = _local(event.time).strftime("%H:%M:%S.%f")[:-3]
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
        change += f": {_one_line(event.message)}"
    return f"  [{stamp}] {who}: {change}"


def _print_task(task: TaskInfo) -> None:
    """A task line, then one line per subtask (in the order of the OCP JSON: roots first)."""
    subject = f", host {task.host_id}" if task.host_id is not None else ""
    finished = f", finished {_when(task.finish_time)}" if task.finish_time else ""
    print(
        f"task {task.id} {task.name}: {task.status.value} ({task.operation.value}){subject}, "
        f"creator {task.creator}, started {_when(task.start_time or task.create_time)}{finished}"
    )
    labels = _subtask_labels(task)
    subs = sorted(task.subtasks, key=lambda sub: (-sub.series_id, sub.id))
    rows = [
        [
            str(sub.id),
            labels[sub.id],
            sub.status.value,
            sub.operation.value,
            str(sub.run_time),
            sub.executor or "-",
            _one_line(sub.message),
        ]
        for sub in subs
    ]
    headers = ["ID", "NAME", "STATUS", "OPERATION", "RUNTIME", "EXECUTOR", "MESSAGE"]
    print(_table(headers, rows, indent="  "))


def _print_hosts(hosts: Sequence[HostInfo]) -> None:
    if not hosts:
        print("no hosts; add one with `dagtask hosts add`")
        return
    rows = [
        [str(h.id), h.name, h.inner_ip, h.status, h.agent_status, h.connector, h.agent_home]
        for h in hosts
    ]
    print(_table(["ID", "NAME", "IP", "STATUS", "AGENT", "CONNECTOR", "AGENT HOME"], rows))


# ---- running a task in this process --------------------------------------------------------------


def _run_to_end(engine: Engine, task_id: int, timeout: float | None, *, progress: bool) -> TaskInfo:
    """Work on the task here until it ends; with ``progress``, print each status change live."""
    if not progress:
        return engine.run_task(task_id, timeout)
    labels = _subtask_labels(engine.get(task_id))
    done = threading.Event()

    def show() -> None:
        try:
            for event in engine.follow(task_id):
                if done.is_set():
                    return
                print(_event_line(event, labels), flush=True)
        except Exception:
            # Once the main thread gave up (timeout, Ctrl-C) it reports why and closes the
            # database under us; anything before that is a real fault and must surface.
            if not done.is_set():
                raise

    follower = threading.Thread(target=show, name="dagtask-follow", daemon=True)
    follower.start()
    try:
        task = engine.run_task(task_id, timeout)
    except BaseException:
        done.set()
        raise
    # follow() returns by itself once it has yielded the events up to the end of the task.
    follower.join(timeout=10)
    done.set()
    return task


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
    with Engine(url, workers=2) as engine:
        print(f"Database: {_safe_url(url)}")
        host = _demo_host(engine)
        print(f"Demo host {host.id} ({host.name}, {host.inner_ip}), agent home {host.agent_home}")
        connector = connector_for(host)
        pids = connector.start_agent(host, log=_agent_log)
        engine.hosts.set_agent_status(host.id, AgentStatus.ONLINE)
        print("OCP agent is running (agent status ONLINE):")
        for process in connector.agent_processes(host):
            if process.alive:
                print(f"  {process.name} pid={process.pid}")

        task = engine.submit("Stop OCP agent", args={"host_id": str(host.id)})
        print(f"Submitted task {task.id} ({task.name}); running it in this process:")
        final = _run_to_end(engine, task.id, None, progress=True)
        print(f"Task {final.id} {final.name}: {final.status.value}")

        alive = [p.pid for p in connector.agent_processes(host) if p.alive]
        alive += [pid for pid in pids if pid not in alive and _pid_is_agent(pid, host.agent_home)]
        listed = ", ".join(str(pid) for pid in pids)
        if alive:
            still = ", ".join(str(pid) for pid in alive)
            print(f"Agent processes still running: pid {still}")
        else:
            print(f"Agent processes gone: pid {listed} no longer running")
        if final.status is not TaskStatus.SUCCESSFUL:
            for sub in final.subtasks:
                if sub.status is SubtaskStatus.FAILED:
                    print(f"  subtask {sub.id} {sub.name} failed: {_one_line(sub.message)}")
                    print(f"  see its log with `dagtask logs {final.id} {sub.id}`")
        ok = final.status is TaskStatus.SUCCESSFUL and not alive
        if ok and not args.keep_agent_home:
            _remove_demo_home(host)
        print(f"Task id: {final.id}")
        _print_json(views.task_json(final))
        return 0 if ok else 1


def _load_file(path: Path) -> TaskTemplate:
    # Handlers named in the file (mypkg.ops.X) usually live next to it or in the current folder.
    for folder in (str(Path.cwd()), str(path.resolve().parent)):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
    importlib.invalidate_caches()
    return load_template(path)


def _is_template_file(text: str) -> bool:
    return text.lower().endswith(TEMPLATE_SUFFIXES) or Path(text).is_file()


def cmd_run(args: argparse.Namespace) -> int:
    """Submit a task from a template (name or file); with --wait, run it here to its end."""
    strings = _pairs(args.set, "--set")
    lists = _lists(args.list)
    if args.timeout is not None and not args.wait:
        raise ArgumentError("--timeout only applies with --wait")
    template: TaskTemplate | str = args.template
    if _is_template_file(args.template):
        template = _load_file(Path(args.template))
    with _engine(args, workers=args.workers) as engine:
        task = engine.submit(template, args=strings, lists=lists)
        if not args.wait:
            if args.json:
                _print_json(views.task_json(task))
            else:
                print(f"task {task.id} {task.status.value}: {task.name}")
                print(f"  run it with `dagtask worker`, follow it with `dagtask show {task.id}`")
            return 0
        if not args.json:
            print(f"task {task.id} submitted: {task.name}; running it in this process")
        final = _run_to_end(engine, task.id, args.timeout, progress=not args.json)
        if args.json:
            _print_json(views.task_json(final))
        else:
            _print_task(final)
        return 1 if final.status is TaskStatus.FAILED else 0


def cmd_show(args: argparse.Namespace) -> int:
    """Show one task and its subtasks."""
    with _engine(args) as engine:
        task = engine.get(args.id)
    if args.json:
        _print_json(views.task_json(task))
    else:
        _print_task(task)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List tasks, newest first, one page at a time."""
    statuses = _statuses(args.status)
    with _engine(args) as engine:
        page = engine.list(page=args.page, size=args.size, name=args.name, statuses=statuses)
    if args.json:
        _print_json(views.task_list_json(page))
        return 0
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
                    _when(task.start_time or task.create_time),
                    _when(task.finish_time),
                ]
            )
        headers = ["ID", "NAME", "STATUS", "OPERATION", "DONE", "CREATOR", "STARTED", "FINISHED"]
        print(_table(headers, rows))
    print(f"page {page.number} of {max(page.total_pages, 1)}, {page.total_elements} tasks")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the log of every attempt of one subtask."""
    with _engine(args) as engine:
        text = engine.logs(args.id, args.subtask_id)
    if args.json:
        _print_json(views.log_json(text))
    else:
        sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    """List the built-in and registered templates."""
    with _engine(args) as engine:
        templates = engine.templates()
    if args.json:
        _print_json([t.definition() for t in templates])
        return 0
    rows = [[t.name, str(len(t.subtasks)), _one_line(t.description) or "-"] for t in templates]
    print(_table(["NAME", "SUBTASKS", "DESCRIPTION"], rows))
    return 0


def cmd_hosts_add(args: argparse.Namespace) -> int:
    """Register a host (and start its agent with --start-agent)."""
    with _engine(args) as engine:
        host = engine.hosts.add(
            name=args.name, inner_ip=args.ip, agent_home=args.agent_home, connector=args.connector
        )
        print(f"host {host.id} added: {host.name} {host.inner_ip}, agent home {host.agent_home}")
        if args.start_agent:
            pids = connector_for(host).start_agent(host, log=_agent_log)
            engine.hosts.set_agent_status(host.id, AgentStatus.ONLINE)
            print(f"OCP agent started (agent status ONLINE): pid {', '.join(map(str, pids))}")
    return 0


def cmd_hosts_list(args: argparse.Namespace) -> int:
    """List the hosts of the inventory."""
    with _engine(args) as engine:
        hosts = engine.hosts.list()
    if args.json:
        _print_json([host.model_dump(mode="json") for host in hosts])
    else:
        _print_hosts(hosts)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run worker threads in the foreground until SIGTERM or SIGINT, then stop gracefully."""
    _log_to_stderr()
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    with _engine(args, workers=args.concurrency, name=args.name) as engine:
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            engine.start()
            _log.info(
                "worker %s started: %d threads on %s (pid %d)",
                engine.name,
                args.concurrency,
                _safe_url(engine.database.url),
                os.getpid(),
            )
            while not stop.wait(1.0):
                pass
            engine.stop()
            _log.info("worker %s stopped", engine.name)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Create or migrate the database schema to the newest revision."""
    url = resolve_url(args.db)
    safe = _safe_url(url)
    # Not open_database(): it refuses exactly the out-of-date schema this command must fix.
    database = Database(url)
    try:
        before, after = upgrade(database)
    except (sa.exc.SQLAlchemyError, CommandError) as exc:
        raise StoreError(f"cannot upgrade database {safe}: {exc}") from exc
    finally:
        database.dispose()
    if before == after:
        print(f"database {safe} already at {after}")
    else:
        print(f"database {safe} upgraded from {before or 'none'} to {after}")
    return 0


def _log_to_stderr() -> None:
    if not _log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        _log.addHandler(handler)
        _log.setLevel(logging.INFO)
        _log.propagate = False


# ---- parser --------------------------------------------------------------------------------------

DB_HELP = f"database URL (default: ${ENV_VAR}, else {DEFAULT_URL})"


class _Commands:
    """Adds subcommands that all accept ``--db``; a command's help is its docstring's first line."""

    def __init__(
        self, parent: argparse.ArgumentParser, common: argparse.ArgumentParser | None = None
    ) -> None:
        self.group = parent.add_subparsers(title="commands", metavar="COMMAND", required=True)
        if common is None:
            common = argparse.ArgumentParser(add_help=False)
            # SUPPRESS: without --db here, a --db given before the command name stays in effect.
            common.add_argument("--db", metavar="URL", default=argparse.SUPPRESS, help=DB_HELP)
        self.common = common

    def add(self, name: str, command: Command | str) -> argparse.ArgumentParser:
        """A subcommand running ``command``, or a group of subcommands described by a string."""
        text = command if isinstance(command, str) else (command.__doc__ or "").split("\n")[0]
        text = text[0].lower() + text[1:].rstrip(".")
        parser: argparse.ArgumentParser = self.group.add_parser(
            name, help=text, description=text, parents=[self.common]
        )
        if not isinstance(command, str):
            parser.set_defaults(func=command)
        return parser

    def nested(self, parser: argparse.ArgumentParser) -> _Commands:
        """The subcommands of a group such as ``hosts``."""
        return _Commands(parser, self.common)


def _json_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dagtask`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="dagtask: an embeddable DAG workflow engine modelled on OCP's task engine.",
        epilog="Start with `dagtask demo`; see `dagtask COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--db", metavar="URL", default=None, help=DB_HELP)
    commands = _Commands(parser)

    demo = commands.add("demo", cmd_demo)
    keep = f"keep ./{DEMO_DIR}/{DEMO_HOST} (the demo agent's pid files and logs) afterwards"
    demo.add_argument("--keep-agent-home", action="store_true", help=keep)

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
    run.add_argument("--wait", action="store_true", help="run the task here until it ends")
    run.add_argument(
        "--timeout",
        type=_positive(float),
        metavar="S",
        help="with --wait: give up waiting after S seconds (the task stays RUNNING)",
    )
    run.add_argument(
        "--workers",
        type=_positive(int),
        default=4,
        metavar="N",
        help="with --wait: worker threads (default 4)",
    )
    _json_flag(run, "the task as OCP JSON")

    show = commands.add("show", cmd_show)
    show.add_argument("id", type=int, metavar="ID", help="the task id")
    _json_flag(show, "the task as OCP JSON")

    lst = commands.add("list", cmd_list)
    lst.add_argument(
        "--page", type=_positive(int), default=1, metavar="N", help="page number, from 1"
    )
    lst.add_argument(
        "--size", type=_positive(int), default=20, metavar="N", help="tasks per page, up to 2000"
    )
    lst.add_argument(
        "--status", metavar="S,...", help="only these statuses: RUNNING, FAILED, SUCCESSFUL"
    )
    lst.add_argument("--name", metavar="TEXT", help="only tasks whose name contains TEXT")
    _json_flag(lst, "the page as OCP JSON")

    logs = commands.add("logs", cmd_logs)
    logs.add_argument("id", type=int, metavar="ID", help="the task id")
    logs.add_argument("subtask_id", type=int, metavar="SUBTASK_ID", help="see `dagtask show ID`")
    _json_flag(logs, 'OCP JSON {"log": ...}')

    _json_flag(commands.add("templates", cmd_templates), "each template's definition as JSON")

    hosts = commands.nested(commands.add("hosts", "Manage the host inventory"))
    add = hosts.add("add", cmd_hosts_add)
    add.add_argument("--name", required=True, help="a unique host name")
    add.add_argument("--ip", required=True, help="the host's inner IP address")
    add.add_argument(
        "--agent-home", required=True, metavar="PATH", help="the OCP agent's home directory"
    )
    add.add_argument("--connector", default="local", help="how to reach the agent (default: local)")
    add.add_argument(
        "--start-agent", action="store_true", help="start the host's OCP agent processes now"
    )
    _json_flag(hosts.add("list", cmd_hosts_list), "the hosts as JSON")

    worker = commands.add("worker", cmd_worker)
    worker.add_argument(
        "--concurrency",
        type=_positive(int),
        default=4,
        metavar="N",
        help="worker threads (default 4)",
    )
    worker.add_argument("--name", help="the name subtasks show as executor (default: host:pid)")

    db = commands.nested(commands.add("db", "Manage the database schema"))
    db.add("upgrade", cmd_db_upgrade)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``dagtask`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = args.func
    try:
        return command(args)
    except DagtaskError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `dagtask list | head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
