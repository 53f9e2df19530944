"""The ``dagtask`` command line: a thin layer over :class:`dagtask.Engine` and :mod:`dagtask.views`.

Every command opens the database given by ``--db`` (else ``$DAGTASK_DB_URL``, else
``sqlite:///dagtask.db``), calls the public API and prints the result, as a table for people
(rendered by :mod:`dagtask.cli_output`) or as OCP's JSON (``--json``). A user mistake (any
:class:`~dagtask.errors.DagtaskError`) prints one line ``dagtask: error: ...`` (or
``dagtask: error 2000x: ...`` for OCP's task errors) and exits 2, like argparse's own usage
errors. So does a database that cannot be used (unreachable, not answering within the timeouts,
read-only, not a database, no dagtask schema for a command that only reads). A task that ends
FAILED under ``--wait`` exits 1; Ctrl-C exits 130. Anything else is a bug: it prints one line
naming the error and exits 3 (:data:`EXIT_INTERNAL`); ``--debug`` or ``DAGTASK_DEBUG=1`` prints
the traceback too.

Commands that only read (``list``, ``show``, ``logs``, ``history``, ``export`` ...) never create
the schema or the SQLite file: on a database without a dagtask schema they say so and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import importlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic.util import CommandError

from dagtask import __version__, views
from dagtask import cli_output as out
from dagtask.builtin import builtin_templates
from dagtask.engine import Engine
from dagtask.errors import (
    ArgumentError,
    DagtaskError,
    HostNotFoundError,
    SchemaMissingError,
    StoreError,
    TemplateError,
)
from dagtask.hosts.connector import connector_for
from dagtask.hosts.inventory import AgentStatus
from dagtask.models import HostInfo, TaskInfo
from dagtask.states import TaskStatus
from dagtask.store.db import (
    DEFAULT_URL,
    ENV_VAR,
    Database,
    database_problem,
    open_database,
    resolve_url,
    upgrade,
)
from dagtask.store.workers import WorkerRecord
from dagtask.template import TaskTemplate, load_template
from dagtask.worker import DEFAULT_LEASE_SECONDS

PROG = "dagtask"
DEMO_HOST = "demo-host"
DEMO_DIR = "dagtask-demo"
TEMPLATE_SUFFIXES = (".yaml", ".yml", ".json")
EXIT_USER = 2
"""A user mistake, or a database that cannot be used: one line on stderr."""
EXIT_INTERNAL = 3
"""An unexpected error (a bug): one line on stderr, the traceback with --debug."""
DEBUG_VAR = "DAGTASK_DEBUG"
MAX_ID = 2**63 - 1
"""Ids are 64-bit integers in every database."""
MAX_PAGE_SIZE = 2000
MAX_PAGE = MAX_ID // MAX_PAGE_SIZE
"""So that the page's offset still fits in a 64-bit integer."""
MAX_SECONDS = 10**7
"""About 115 days: longer waits are a typo (and overflow the OS's timers)."""
MAX_THREADS = 1024

_log = logging.getLogger("dagtask.cli")
# start_agent reports each process it starts at INFO; the commands print what matters themselves.
_agent_log = logging.getLogger("dagtask.cli.agent")

Command = Callable[[argparse.Namespace], int]
_N = TypeVar("_N", int, float)


# ---- small helpers -------------------------------------------------------------------------------


def _engine(
    args: argparse.Namespace,
    *,
    workers: int = 0,
    name: str | None = None,
    read_only: bool = False,
) -> Engine:
    """The engine on ``--db``. ``read_only``: the command only reads, so a database without a
    dagtask schema (or a SQLite file that does not exist) is refused, not created."""
    url = resolve_url(args.db)
    if read_only:
        open_database(url, create=False).dispose()
    return Engine(url, workers=workers, name=name)


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


def _positive(kind: type[_N], maximum: _N | None = None) -> Callable[[str], _N]:
    """An argparse type: a number of ``kind`` greater than 0 (and at most ``maximum``)."""

    def convert(text: str) -> _N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        if maximum is not None and not value <= maximum:  # also refuses inf
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text}")
        return value

    return convert


def _id(text: str) -> int:
    """An argparse type: a task or subtask id (1 to 2**63 - 1)."""
    value = int(text)  # ValueError: argparse says "invalid int value", as for type=int
    if not 1 <= value <= MAX_ID:
        raise argparse.ArgumentTypeError(f"ids are between 1 and {MAX_ID}, got {text}")
    return value


_id.__name__ = "int"  # argparse names the type in its message by __name__


def _debug(args: argparse.Namespace | None) -> bool:
    """Whether to print tracebacks: ``--debug`` or ``DAGTASK_DEBUG`` set to anything but 0."""
    if args is not None and getattr(args, "debug", False):
        return True
    return os.environ.get(DEBUG_VAR, "").strip().lower() not in ("", "0", "false", "no")


def _check_wait(args: argparse.Namespace) -> None:
    if args.timeout is not None and not args.wait:
        raise ArgumentError("--timeout only applies with --wait")


def _operator(args: argparse.Namespace) -> str:
    """Who performs an operator action: ``--operator``, else the OS user."""
    if args.operator is not None:
        if not args.operator.strip():
            raise ArgumentError("--operator needs a name, e.g. --operator alice")
        return str(args.operator.strip())
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


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
        print(f"Database: {out.safe_url(url)}")
        host = _demo_host(engine)
        print(f"Demo host {host.id} ({host.name}, {host.inner_ip}), agent home {host.agent_home}")
        connector = connector_for(host)
        pids = connector.start_agent(host, log=_agent_log)
        engine.hosts.set_agent_status(host.id, AgentStatus.ONLINE)
        out.print_agent_running(connector.agent_processes(host))

        task = engine.submit("Stop OCP agent", args={"host_id": str(host.id)})
        print(f"Submitted task {task.id} ({task.name}); running it in this process:")
        final = out.run_to_end(engine, task.id, None, progress=True)
        print(f"Task {final.id} {final.name}: {final.status.value}")

        alive = [p.pid for p in connector.agent_processes(host) if p.alive]
        alive += [pid for pid in pids if pid not in alive and _pid_is_agent(pid, host.agent_home)]
        out.print_demo_outcome(final, pids, alive)
        ok = final.status is TaskStatus.SUCCESSFUL and not alive
        if ok and not args.keep_agent_home:
            _remove_demo_home(host)
        print(f"Task id: {final.id}")
        out.print_json(views.task_json(final))
        return 0 if ok else 1


def _import_from(*folders: Path) -> None:
    """Let handlers (mypkg.ops.X) be imported from ``folders``, first one first."""
    for folder in map(str, reversed(folders)):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
    importlib.invalidate_caches()


def _load_file(path: Path) -> TaskTemplate:
    # Handlers named in the file usually live next to it or in the current folder.
    _import_from(path.resolve().parent, Path.cwd())
    try:
        return load_template(path)
    except UnicodeDecodeError as exc:  # load_template reads text; a binary file is not
        raise TemplateError(
            f"template file {str(path)!r} is not UTF-8 text (byte {exc.start} is "
            f"0x{exc.object[exc.start]:02x}); a template is a YAML or JSON file"
        ) from exc


def _is_template_file(text: str) -> bool:
    return text.lower().endswith(TEMPLATE_SUFFIXES) or Path(text).is_file()


def cmd_run(args: argparse.Namespace) -> int:
    """Submit a task from a template (name or file); with --wait, run it here to its end."""
    strings = _pairs(args.set, "--set")
    lists = _lists(args.list)
    _check_wait(args)
    template: TaskTemplate | str = args.template
    if _is_template_file(args.template):
        template = _load_file(Path(args.template))
    with _engine(args, workers=args.workers) as engine:
        task = engine.submit(template, args=strings, lists=lists)
        if not args.wait:
            out.print_submitted(task, as_json=args.json)
            return 0
        if not args.json:
            print(f"task {task.id} submitted: {task.name}; running it in this process")
        final = out.run_to_end(engine, task.id, args.timeout, progress=not args.json)
        out.show_task(final, views.task_json if args.json else None)
        return 1 if final.status is TaskStatus.FAILED else 0


def cmd_show(args: argparse.Namespace) -> int:
    """Show one task and its subtasks."""
    with _engine(args, read_only=True) as engine:
        task = engine.get(args.id)
    out.show_task(task, views.task_json if args.json else None)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List tasks, newest first, one page at a time."""
    statuses = _statuses(args.status)
    with _engine(args, read_only=True) as engine:
        page = engine.list(page=args.page, size=args.size, name=args.name, statuses=statuses)
    if args.json:
        out.print_json(views.task_list_json(page))
    else:
        out.print_page(page)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the log of every attempt of one subtask (with --follow, as it grows)."""
    if args.follow and args.json:
        raise ArgumentError("--follow prints the log as it grows; it cannot be used with --json")
    with _engine(args, read_only=True) as engine:
        if args.follow:
            for chunk in engine.follow_log(args.id, args.subtask_id):
                out.write_log(chunk)
            return 0
        text = engine.logs(args.id, args.subtask_id)
    if args.json:
        out.print_json(views.log_json(text))
    else:
        out.write_log(text if not text or text.endswith("\n") else text + "\n")
    return 0


# ---- operator actions (SPEC §4) ------------------------------------------------------------------

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
    operator = _operator(args)
    _check_wait(args)
    subtask_id: int | None = getattr(args, "subtask_id", None)
    ids = (args.id,) if subtask_id is None else (args.id, subtask_id)
    progress = args.wait and not args.json

    def as_json(task: TaskInfo) -> dict[str, Any]:
        if subtask_result and subtask_id is not None:
            return views.subtask_json(out.subtask_of(task, subtask_id))
        return views.task_json(task)

    if args.wait:
        _import_from(Path.cwd())  # handlers of tasks run from a template file, as `run` does
    with _engine(args, workers=args.workers) as engine:
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
        final = out.run_to_end(engine, args.id, args.timeout, progress=progress, after=after)
        out.show_task(final, as_json if args.json else None)
        return 1 if final.status is TaskStatus.FAILED else 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Retry a FAILED task: its FAILED subtasks run again as RETRY (else error 20003)."""
    return _act(args, Engine.retry, "retried")


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll a FAILED task back in reverse topological order, or show the plan with --plan."""
    if not args.plan:
        return _act(args, Engine.rollback, "rollback started")
    if args.wait or args.timeout is not None or args.operator is not None:
        raise ArgumentError("--plan only shows the plan; leave out --wait, --timeout, --operator")
    with _engine(args, read_only=True) as engine:
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


# ---- templates, hosts, worker, db ----------------------------------------------------------------


def cmd_templates(args: argparse.Namespace) -> int:
    """List the built-in and registered templates."""
    try:
        with _engine(args, read_only=True) as engine:
            templates = engine.templates()
    except SchemaMissingError:
        # The built-in templates need no database; listing them must not create one either.
        templates = builtin_templates()
    if args.json:
        out.print_json([t.definition() for t in templates])
    else:
        out.print_templates(templates)
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
    with _engine(args, read_only=True) as engine:
        hosts = engine.hosts.list()
    if args.json:
        out.print_json([host.model_dump(mode="json") for host in hosts])
    else:
        out.print_hosts(hosts)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker in the foreground until SIGTERM or SIGINT, then stop gracefully."""
    out.log_to_stderr(_log)
    # Handlers named by dotted path import from the current folder, as under `python -m`.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    engine = Engine(
        resolve_url(args.db),
        workers=args.concurrency,
        name=args.name,
        lease_seconds=args.lease,
        poll_interval=args.poll,
    )
    with engine:
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            engine.start()
            _log.info(
                "worker %s started: %d subtasks at a time on %s (pid %d, lease %d s)",
                engine.name,
                args.concurrency,
                out.safe_url(engine.database.url),
                os.getpid(),
                args.lease,
            )
            while not stop.wait(1.0):
                pass
            engine.stop(args.stop_timeout)
            _log.info("worker %s stopped", engine.name)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    """List the workers the database has seen, with their heartbeats."""
    with _engine(args, read_only=True) as engine:
        records = engine.store.workers()
    if args.json:
        print(json.dumps([_worker_json(r) for r in records], indent=2))
        return 0
    rows = [
        [
            r.name,
            r.status,
            f"{r.host} pid {r.pid}",
            str(r.concurrency),
            f"{r.lease_seconds} s",
            r.started_at.isoformat(sep=" ", timespec="seconds"),
            r.heartbeat_at.isoformat(sep=" ", timespec="seconds"),
        ]
        for r in records
    ]
    headers = ["NAME", "STATUS", "PROCESS", "SLOTS", "LEASE", "STARTED (UTC)", "HEARTBEAT (UTC)"]
    print(out.table(headers, rows) if rows else "no worker has run on this database yet")
    return 0


def _worker_json(record: WorkerRecord) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    for key in ("started_at", "heartbeat_at", "stopped_at"):
        if data[key] is not None:
            data[key] = data[key].isoformat()
    return data


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Create or migrate the database schema to the newest revision."""
    url = resolve_url(args.db)
    safe = out.safe_url(url)
    # Not open_database(): it refuses exactly the out-of-date schema this command must fix.
    database = Database(url)
    try:
        before, after = upgrade(database)
    except sa.exc.DBAPIError as exc:
        problem = database_problem(url, exc)
        raise StoreError(
            problem.replace("cannot use database", "cannot upgrade database", 1)
        ) from exc
    except (sa.exc.SQLAlchemyError, CommandError) as exc:
        raise StoreError(f"cannot upgrade database {safe}: {exc}") from exc
    finally:
        database.dispose()
    print(
        f"database {safe} already at {after}"
        if before == after
        else f"database {safe} upgraded from {before or 'none'} to {after}"
    )
    return 0


# ---- parser --------------------------------------------------------------------------------------

DB_HELP = f"database URL (default: ${ENV_VAR}, else {DEFAULT_URL})"
DEBUG_HELP = f"print the traceback of an unexpected error (also: {DEBUG_VAR}=1)"


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
            common.add_argument(
                "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
            )
        self.common = common

    def add(self, name: str, command: Command | str, epilog: str | None = None) -> Parser:
        """A subcommand running ``command``, or a group of subcommands described by a string."""
        text = command if isinstance(command, str) else (command.__doc__ or "").split("\n")[0]
        text = text[0].lower() + text[1:].rstrip(".")
        parser: Parser = self.group.add_parser(
            name, help=text, description=text, epilog=epilog, parents=[self.common]
        )
        if not isinstance(command, str):
            parser.set_defaults(func=command)
        return parser

    def nested(self, parser: Parser) -> _Commands:
        """The subcommands of a group such as ``hosts``."""
        return _Commands(parser, self.common)


Parser = argparse.ArgumentParser


def _json_flag(parser: Parser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what}")


def _task_id(parser: Parser) -> None:
    parser.add_argument("id", type=_id, metavar="ID", help="the task id")


def _subtask_id(parser: Parser) -> None:
    parser.add_argument("subtask_id", type=_id, metavar="SUBTASK_ID", help="see `dagtask show ID`")


def _wait_options(parser: Parser, wait: str) -> None:
    """--wait, --timeout and --workers: run the task in this process until it ends."""
    parser.add_argument("--wait", action="store_true", help=wait)
    parser.add_argument(
        "--timeout",
        type=_positive(float, MAX_SECONDS),
        metavar="S",
        help="with --wait: give up waiting after S seconds (the task stays RUNNING)",
    )
    parser.add_argument(
        "--workers",
        type=_positive(int, MAX_THREADS),
        default=4,
        metavar="N",
        help="with --wait: worker threads (default 4)",
    )


ACTION_WAIT = (
    "then run the task here (alongside any workers elsewhere) until it ends; "
    "exit 1 if it ends FAILED"
)


def _action(
    commands: _Commands,
    name: str,
    command: Command,
    *,
    subtask: bool = False,
    wait: str = ACTION_WAIT,
    json: str = "the task as OCP JSON, after the action or, with --wait, once it has ended",
) -> Parser:
    """An operator action on a task (ID) or one of its subtasks (ID SUBTASK_ID)."""
    epilog = (
        "A refused action (error 20003: not allowed in this state, 20004: rollback prohibited) "
        "prints one line on stderr and exits 2."
    )
    parser = commands.add(name, command, epilog=epilog)
    _task_id(parser)
    if subtask:
        _subtask_id(parser)
    _wait_options(parser, wait)
    parser.add_argument(
        "--operator",
        metavar="NAME",
        help="who acts, as recorded in the task's history (default: the OS user)",
    )
    _json_flag(parser, json)
    return parser


def build_parser() -> Parser:
    """The argument parser of the ``dagtask`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="dagtask: an embeddable DAG workflow engine modelled on OCP's task engine.",
        epilog="Start with `dagtask demo`; see `dagtask COMMAND --help` for each command. "
        f"Exit codes: 0 done; 1 a task ended FAILED (or a check failed); {EXIT_USER} a mistake "
        "in the command, or a database that cannot be used (one line on stderr); "
        f"{EXIT_INTERNAL} a bug (one line; --debug or {DEBUG_VAR}=1 prints the traceback); "
        "130 Ctrl-C. Database timeouts: DAGTASK_CONNECT_TIMEOUT (default 10 s) and "
        "DAGTASK_STATEMENT_TIMEOUT (default 30 s), 0 for no limit.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=DEBUG_HELP,
    )
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
    _wait_options(run, "run the task here until it ends; exit 1 if it ends FAILED")
    _json_flag(run, "the task as OCP JSON")

    show = commands.add("show", cmd_show)
    _task_id(show)
    _json_flag(show, "the task as OCP JSON")

    lst = commands.add("list", cmd_list)
    lst.add_argument(
        "--page", type=_positive(int, MAX_PAGE), default=1, metavar="N", help="page number, from 1"
    )
    lst.add_argument(
        "--size",
        type=_positive(int, MAX_PAGE_SIZE),
        default=20,
        metavar="N",
        help="tasks per page, up to 2000",
    )
    lst.add_argument(
        "--status", metavar="S,...", help="only these statuses: RUNNING, FAILED, SUCCESSFUL"
    )
    lst.add_argument("--name", metavar="TEXT", help="only tasks whose name contains TEXT")
    _json_flag(lst, "the page as OCP JSON")

    logs = commands.add("logs", cmd_logs)
    _task_id(logs)
    _subtask_id(logs)
    logs.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing the log as it grows until the subtask stops running (Ctrl-C: stop)",
    )
    _json_flag(logs, 'OCP JSON {"log": ...}')

    _action(commands, "retry", cmd_retry)
    rollback = _action(
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
    _action(
        commands,
        "cancel",
        cmd_cancel,
        wait="then wait here until the task has stopped (a cancelled task ends FAILED: exit 1)",
    )
    subtask = commands.nested(
        commands.add("subtask", "Act on one subtask of a task: retry, skip or cancel it")
    )
    _action(
        subtask,
        "retry",
        cmd_subtask_retry,
        subtask=True,
        json="the subtask as OCP JSON (as OCP's subtask retry returns it), after the action or, "
        "with --wait, once the task has ended",
    )
    _action(subtask, "skip", cmd_subtask_skip, subtask=True)
    _action(
        subtask,
        "cancel",
        cmd_subtask_cancel,
        subtask=True,
        wait="then wait here until the task has ended; exit 1 if it ends FAILED",
    )

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
        type=_positive(int, MAX_THREADS),
        default=4,
        metavar="N",
        help="subtasks run at a time (default 4)",
    )
    worker.add_argument(
        "--name",
        help="the name subtasks show as executor, unique among running workers (default: host:pid)",
    )
    worker.add_argument(
        "--lease",
        type=_positive(int, MAX_SECONDS),
        default=DEFAULT_LEASE_SECONDS,
        metavar="S",
        help="if this worker stops heartbeating for S seconds (killed, frozen, cut off), other "
        f"workers recover its subtasks by their recovery policy (default {DEFAULT_LEASE_SECONDS})",
    )
    worker.add_argument(
        "--stop-timeout",
        type=_positive(float, MAX_SECONDS),
        default=30.0,
        metavar="S",
        help="on SIGTERM/SIGINT, wait up to S seconds for running handlers, then hand the rest "
        "back by their recovery policy (default 30)",
    )
    worker.add_argument(
        "--poll",
        type=_positive(float, MAX_SECONDS),
        default=0.25,
        metavar="S",
        help="when idle, look for READY subtasks every S seconds (PostgreSQL also wakes "
        "workers at once with LISTEN/NOTIFY) (default 0.25)",
    )
    _json_flag(commands.add("workers", cmd_workers), "the workers as JSON")

    from dagtask import cli_api, cli_history  # they build on this module

    cli_history.add_commands(commands)
    cli_api.add_commands(commands)

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
        _debug_traceback(args)
        print(out.error_line(PROG, exc), file=sys.stderr)
        return EXIT_USER
    except sa.exc.OperationalError as exc:
        # The database went away, timed out, or refuses writes: not a bug, nothing to retry here.
        _debug_traceback(args)
        url = getattr(args, "db", None) or os.environ.get(ENV_VAR) or DEFAULT_URL
        print(f"{PROG}: error: {database_problem(url, exc)}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `dagtask list | head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        _debug_traceback(args)
        message = " ".join(str(exc).split())
        what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        how = "the traceback is above" if _debug(args) else f"rerun with --debug or {DEBUG_VAR}=1"
        print(
            f"{PROG}: internal error: {what[:500]} (this is a bug; {how} to see where)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _debug_traceback(args: argparse.Namespace) -> None:
    if _debug(args):
        traceback.print_exc()
