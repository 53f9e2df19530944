"""Commands that manage what tasks run on: templates, hosts, workers and the database schema."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import sqlalchemy as sa
from alembic.util import CommandError

from dagtask import observability
from dagtask.builtin import builtin_templates
from dagtask.cli import output as out
from dagtask.cli.common import (
    MAX_SECONDS,
    MAX_THREADS,
    Commands,
    agent_log,
    json_flag,
    open_engine,
    port_number,
    positive,
)
from dagtask.config import DEFAULT_WORKERS
from dagtask.engine import Engine
from dagtask.errors import (
    ArgumentError,
    HostError,
    SchemaMissingError,
    StoreError,
)
from dagtask.hosts.access import make_access
from dagtask.hosts.check import check_hosts, presented_key
from dagtask.hosts.connector import connector_for
from dagtask.hosts.hostkeys import fingerprint
from dagtask.hosts.inventory import (
    SSH_CONNECTOR,
    AgentStatus,
    connector_description,
    local_ip_mismatch,
)
from dagtask.models import HostInfo, SshAccess
from dagtask.store.db import (
    Database,
    database_problem,
    resolve_url,
    upgrade,
)
from dagtask.store.workers import WorkerRecord
from dagtask.worker import DEFAULT_LEASE_SECONDS

# ---- templates, hosts, worker, db ----------------------------------------------------------------


_log = logging.getLogger("dagtask.cli")
EXIT_UPGRADED = 75
"""``dagtask worker``'s exit code when dagtask was upgraded under it (EX_TEMPFAIL: restart me)."""


def cmd_templates(args: argparse.Namespace) -> int:
    """List the templates `dagtask run` accepts: built-in, registered and stored, by slug."""
    try:
        with open_engine(args, read_only=True) as engine:
            templates = engine.templates()
    except SchemaMissingError:
        # The built-in templates need no database; listing them must not create one either.
        templates = builtin_templates()
    if args.json:
        out.print_json([t.definition() for t in templates])
    else:
        out.print_templates(templates)
    return 0


def _ssh_access(args: argparse.Namespace) -> SshAccess | None:
    """The SSH settings of ``hosts add`` (None for a host with another connector)."""
    given = [
        flag
        for flag, value in (
            ("--ssh-user", args.ssh_user),
            ("--key-file", args.key_file),
            ("--ssh-agent", args.ssh_agent),
            ("--password-ref", args.password_ref),
            ("--jump-host", args.jump_host),
            ("--known-hosts", args.known_hosts),
            ("--accept-new-host-key", args.accept_new_host_key),
        )
        if value
    ]
    if args.connector != SSH_CONNECTOR:
        if given:
            raise ArgumentError(
                f"{given[0]} is for SSH hosts; add --connector ssh (the {args.connector} "
                "connector does not use it)"
            )
        return None
    return make_access(
        args.name,
        user=args.ssh_user or getpass.getuser(),
        port=args.port,
        key_file=args.key_file,
        use_agent=args.ssh_agent,
        password_ref=args.password_ref,
        jump_host=args.jump_host,
        known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key,
        connect_timeout=args.connect_timeout,
    )


def cmd_hosts_add(args: argparse.Namespace) -> int:
    """Register a host (and start its agent with --start-agent)."""
    ssh_access = _ssh_access(args)
    with open_engine(args) as engine:
        # Nothing has looked at the agent yet: UNKNOWN, never a claimed ONLINE.
        host = engine.hosts.add(
            name=args.name,
            inner_ip=args.ip,
            agent_home=args.agent_home,
            connector=args.connector,
            agent_status=AgentStatus.UNKNOWN,
            ssh=ssh_access,
            agent_kind=args.agent_kind,
        )
        print(f"host {host.id} added: {host.name} {host.inner_ip}, {connector_description(host)}")
        mismatch = local_ip_mismatch(host)
        if mismatch:
            print(f"dagtask: warning: {mismatch}", file=sys.stderr)
        if args.start_agent:
            pids = connector_for(host, engine.services).start_agent(host, log=agent_log)
            engine.hosts.set_agent_status(host.id, AgentStatus.ONLINE)
            print(f"OCP agent started (agent status ONLINE): pid {', '.join(map(str, pids))}")
        else:
            print(
                f"agent status {host.agent_status}: not checked; `dagtask hosts check {host.id}` "
                "looks, --start-agent starts it"
            )
    return 0


def cmd_hosts_list(args: argparse.Namespace) -> int:
    """List the hosts of the inventory."""
    with open_engine(args, read_only=True) as engine:
        hosts = engine.hosts.list()
    if args.json:
        out.print_json([host.model_dump(mode="json") for host in hosts])
    else:
        out.print_hosts(hosts)
    return 0


def _hosts_of(engine: Engine, args: argparse.Namespace) -> list[HostInfo]:
    if args.all:
        return engine.hosts.list()
    if args.host_id is None:
        raise ArgumentError("name a host id, or give --all (see `dagtask hosts list`)")
    return [engine.hosts.get(args.host_id)]


def cmd_hosts_check(args: argparse.Namespace) -> int:
    """Connect to hosts, verify them, report the OS and the agent's real status."""
    with open_engine(args) as engine:
        hosts = _hosts_of(engine, args)
        reports = check_hosts(engine.services, hosts, parallel=args.parallel)
    if args.json:
        out.print_json([r.as_json() for r in reports])
    else:
        rows = [
            [str(r.host.id), r.host.name, r.reached, r.os_info, r.agent_status] for r in reports
        ]
        print(out.table(["ID", "NAME", "REACHED", "OS", "AGENT"], rows) if rows else "no hosts")
        for r in reports:
            if r.error:
                print(r.error, file=sys.stderr)
    return 1 if any(r.error for r in reports) else 0


def cmd_hosts_trust(args: argparse.Namespace) -> int:
    """Show an SSH host's key fingerprint and pin it."""
    with open_engine(args) as engine:
        host = engine.hosts.get(args.host_id)
        if host.connector != SSH_CONNECTOR:
            raise ArgumentError(
                f"host {host.id} ({host.name}) uses the {host.connector} connector: there is no "
                "SSH host key to trust"
            )
        offered = presented_key(engine.services, host)
        shown = fingerprint(offered)
        print(
            f"host {host.id} ({host.name}, {host.inner_ip}) presents {offered.split()[0]} {shown}"
        )
        if host.host_key and host.host_key.split()[:2] == offered.split()[:2]:
            print("this key is already pinned")
            return 0
        if host.host_key:
            print(f"pinned now: {fingerprint(host.host_key)} (it will be replaced)")
        if args.fingerprint is not None:
            expected = args.fingerprint.strip()
            if expected != shown:
                raise HostError(
                    f"host {host.id} presents {shown}, not the expected {expected}; "
                    "nothing was pinned. Check the host (ssh-keygen -lf /etc/ssh/ssh_host_*.pub)"
                )
        elif not args.yes:
            if not sys.stdin.isatty():
                raise ArgumentError(
                    "compare the fingerprint above with the host's own (ssh-keygen -lf on the "
                    "host), then pin it with --fingerprint SHA256:... or --yes"
                )
            answer = input("Pin this key? Compare it with the host's own first [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing pinned")
                return 1
        engine.hosts.set_host_key(host.id, offered)
        print(f"pinned {shown} for host {host.id}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker in the foreground until SIGTERM or SIGINT, then stop gracefully."""
    out.configure_logging(args.log_level, args.log_format)
    # Handlers named by dotted path import from the current folder, as under `python -m`.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    stop = threading.Event()
    if args.metrics_port is not None:
        observability.require_metrics()  # before the engine: one line, exit 2

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
    code = 0
    with engine, _probe_server(engine, args):
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
                if engine.code_changed:
                    _log.error(
                        "worker %s: dagtask was upgraded under it; stopping so that it is "
                        "restarted on the new code (exit %d)",
                        engine.name,
                        EXIT_UPGRADED,
                    )
                    code = EXIT_UPGRADED
                    break
            engine.stop(args.stop_timeout)
            _log.info("worker %s stopped", engine.name)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return code


@contextlib.contextmanager
def _probe_server(engine: Engine, args: argparse.Namespace) -> Iterator[None]:
    """``--metrics-port``: /metrics, /health and /ready of the worker while the block runs."""
    if args.metrics_port is None:
        yield
        return
    from dagtask.observability.metrics import for_engine
    from dagtask.observability.server import ProbeServer

    try:
        probes = ProbeServer(engine, for_engine(engine), args.metrics_address, args.metrics_port)
    except OSError as exc:
        raise ArgumentError(
            f"--metrics-address {args.metrics_address} --metrics-port {args.metrics_port}: "
            f"cannot listen there ({exc.strerror or exc}); choose another port or address"
        ) from exc
    probes.start()
    _log.info("worker metrics on %s/metrics (health: /health, readiness: /ready)", probes.url)
    try:
        yield
    finally:
        probes.stop()


def cmd_workers(args: argparse.Namespace) -> int:
    """List the workers the database has seen, with their heartbeats."""
    with open_engine(args, read_only=True) as engine:
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


def add_commands(commands: Commands) -> None:
    """Register templates, hosts, worker and workers."""
    json_flag(commands.add("templates", cmd_templates), "each template's definition as JSON")

    hosts = commands.nested(commands.add("hosts", "Manage the host inventory"))
    add = hosts.add("add", cmd_hosts_add)
    add.add_argument("--name", required=True, help="a unique host name")
    add.add_argument("--ip", required=True, help="the host's inner IP address")
    add.add_argument(
        "--agent-home", required=True, metavar="PATH", help="the OCP agent's home directory"
    )
    add.add_argument(
        "--connector",
        default="local",
        help="how to reach the agent: local (this machine) or ssh (default: local)",
    )
    add.add_argument(
        "--agent-kind",
        default="ocp",
        metavar="KIND",
        help="how the agent's processes are found and started (default: ocp; see docs/hosts.md)",
    )
    ssh = add.add_argument_group("SSH (with --connector ssh)")
    ssh.add_argument(
        "--port", type=positive(int, 65535), default=22, help="the SSH port (default 22)"
    )
    ssh.add_argument("--ssh-user", metavar="USER", help="log in as USER (default: you)")
    ssh.add_argument("--key-file", metavar="PATH", help="authenticate with this private key")
    ssh.add_argument("--ssh-agent", action="store_true", help="authenticate with the ssh-agent")
    ssh.add_argument(
        "--password-ref",
        metavar="REF",
        help="authenticate with the password in env:NAME or file:PATH (never stored itself)",
    )
    ssh.add_argument("--jump-host", metavar="NAME", help="connect through this inventory host")
    ssh.add_argument(
        "--known-hosts",
        metavar="PATH",
        help="verify the host key here (default ~/.ssh/known_hosts)",
    )
    ssh.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="trust this host's key on first connect and pin it (a changed key is still refused)",
    )
    ssh.add_argument(
        "--connect-timeout",
        type=positive(float, 600),
        default=10.0,
        metavar="SECONDS",
        help="TCP connect, banner and login timeout (default 10)",
    )
    add.add_argument(
        "--start-agent", action="store_true", help="start the host's OCP agent processes now"
    )
    json_flag(hosts.add("list", cmd_hosts_list), "the hosts as JSON")
    check = hosts.add("check", cmd_hosts_check)
    check.add_argument("host_id", nargs="?", type=int, metavar="ID", help="the host to check")
    check.add_argument("--all", action="store_true", help="check every host")
    check.add_argument(
        "--parallel",
        type=positive(int, 256),
        default=16,
        metavar="N",
        help="hosts checked at a time (default 16)",
    )
    json_flag(check, "the reports as JSON")
    trust = hosts.add("trust", cmd_hosts_trust)
    trust.add_argument("host_id", type=int, metavar="ID", help="the SSH host")
    trust.add_argument(
        "--fingerprint", metavar="SHA256:...", help="pin only if the host presents this key"
    )
    trust.add_argument("--yes", action="store_true", help="pin without asking")

    worker = commands.add("worker", cmd_worker)
    worker.add_argument(
        "--concurrency",
        type=positive(int, MAX_THREADS),
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"subtasks run at a time (default {DEFAULT_WORKERS})",
    )
    worker.add_argument(
        "--name",
        help="the name subtasks show as executor, unique among running workers (default: host:pid)",
    )
    worker.add_argument(
        "--lease",
        type=positive(int, MAX_SECONDS),
        default=DEFAULT_LEASE_SECONDS,
        metavar="S",
        help="if this worker stops heartbeating for S seconds (killed, frozen, cut off), other "
        f"workers recover its subtasks by their recovery policy (default {DEFAULT_LEASE_SECONDS})",
    )
    worker.add_argument(
        "--stop-timeout",
        type=positive(float, MAX_SECONDS),
        default=30.0,
        metavar="S",
        help="on SIGTERM/SIGINT, wait up to S seconds for running handlers, then hand the rest "
        "back by their recovery policy (default 30)",
    )
    worker.add_argument(
        "--poll",
        type=positive(float, MAX_SECONDS),
        default=0.25,
        metavar="S",
        help="when idle, look for READY subtasks every S seconds (PostgreSQL also wakes "
        "workers at once with LISTEN/NOTIFY) (default 0.25)",
    )
    worker.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default="INFO",
        type=str.upper,
        help="the worker's own log (default INFO: one line per attempt started and ended)",
    )
    worker.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text lines, or one JSON object per line for a log collector (default text; JSON "
        "lines about an attempt carry task_id, subtask_id, attempt and trace_id)",
    )
    worker.add_argument(
        "--metrics-port",
        type=port_number,
        default=None,
        metavar="PORT",
        help="serve Prometheus /metrics, /health and /ready on this port (0: any free one, "
        "logged; needs the metrics extra; default: none; see docs/observability.md)",
    )
    worker.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDR",
        help="the address --metrics-port listens on (default 127.0.0.1; no login is asked)",
    )
    json_flag(commands.add("workers", cmd_workers), "the workers as JSON")


def add_db_commands(commands: Commands) -> None:
    """Register db upgrade."""
    db = commands.nested(commands.add("db", "Manage the database schema"))
    db.add("upgrade", cmd_db_upgrade)
