"""`dagtask` subcommands of the REST API feature (registered by `dagtask.cli.build_parser`).

``serve`` runs the API (it needs the ``api`` extra); ``users`` manages who may call it. A password
is read from a prompt, or from the first line of stdin with ``--password-stdin``, never from the
command line (where other users could read it in the process list).
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import sys
from typing import TYPE_CHECKING

from dagtask import observability
from dagtask.cli import output as out
from dagtask.cli.common import port_number
from dagtask.config import DEFAULT_WORKERS
from dagtask.errors import ArgumentError, UserError
from dagtask.store.db import open_database, resolve_url
from dagtask.store.users import UserStore
from dagtask.users import (
    Role,
    UserInfo,
    check_password,
    check_user_name,
    hash_password,
    parse_roles,
)

if TYPE_CHECKING:
    from dagtask.cli.common import Commands

ROLES = ", ".join(role.value for role in Role)


def _read_password(args: argparse.Namespace, name: str) -> str:
    """The new password of ``name``: stdin's first line with --password-stdin, else a prompt."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ArgumentError("--password-stdin: stdin held no password")
        return check_password(password)
    if not sys.stdin.isatty():
        raise ArgumentError(
            "no terminal to ask for the password on; pipe it in with --password-stdin"
        )
    password = check_password(getpass.getpass(f"Password for {name}: "))
    if getpass.getpass("Repeat it: ") != password:
        raise ArgumentError("the two passwords differ; nothing was changed")
    return password


def _users(args: argparse.Namespace, *, read_only: bool = False) -> UserStore:
    """The users of ``--db``; ``read_only``: refuse a database without a dagtask schema (a
    command that only reads never creates one)."""
    return UserStore(open_database(resolve_url(args.db), create=not read_only))


def _user_json(user: UserInfo) -> dict[str, object]:
    # Not an OCP shape (OCP has no user API): the model as JSON, like `hosts list --json`.
    return {**user.model_dump(mode="json"), "roles": sorted(role.value for role in user.roles)}


def cmd_users_add(args: argparse.Namespace) -> int:
    """Add a user of the REST API with one or more roles (the password is prompted for)."""
    name = check_user_name(args.name)
    roles = parse_roles(args.role)
    users = _users(args)
    try:
        if users.credentials(name) is not None:  # say so before asking for a password
            raise UserError(
                f"a user named {name!r} already exists; change its password with "
                f"`dagtask users passwd {name}`"
            )
        password = _read_password(args, name)
        user = users.add(name, hash_password(password), roles)
    finally:
        users.db.dispose()
    print(f"user {user.name} added with roles {', '.join(sorted(r.value for r in user.roles))}")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    """List the users of the REST API and their roles (never their passwords)."""
    users = _users(args, read_only=True)
    try:
        found = users.list()
    finally:
        users.db.dispose()
    if args.json:
        out.print_json([_user_json(user) for user in found])
        return 0
    if not found:
        print("no users; add one with `dagtask users add NAME --role ADMIN`")
        return 0
    width = max(len("NAME"), *(len(user.name) for user in found))
    print(f"{'NAME':<{width}}  {'ENABLED':<7}  ROLES")
    for user in found:
        roles = ",".join(sorted(role.value for role in user.roles))
        print(f"{user.name:<{width}}  {'yes' if user.enabled else 'no':<7}  {roles}")
    return 0


def cmd_users_passwd(args: argparse.Namespace) -> int:
    """Set a user's password (prompted for, or read from stdin with --password-stdin)."""
    users = _users(args)
    try:
        users.get(args.name)
        users.set_password(args.name, hash_password(_read_password(args, args.name)))
    finally:
        users.db.dispose()
    print(f"password of {args.name} changed")
    return 0


def cmd_users_roles(args: argparse.Namespace) -> int:
    """Replace a user's roles."""
    users = _users(args)
    try:
        user = users.set_roles(args.name, parse_roles(args.role))
    finally:
        users.db.dispose()
    print(f"user {user.name} now has roles {', '.join(sorted(r.value for r in user.roles))}")
    return 0


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    users = _users(args)
    try:
        user = users.set_enabled(args.name, enabled)
    finally:
        users.db.dispose()
    print(f"user {user.name} {'enabled' if enabled else 'disabled'}")
    return 0


def cmd_users_disable(args: argparse.Namespace) -> int:
    """Disable a user: its requests are refused (401) until it is enabled again."""
    return _set_enabled(args, False)


def cmd_users_enable(args: argparse.Namespace) -> int:
    """Enable a disabled user again."""
    return _set_enabled(args, True)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the REST API (OCP's task API) over HTTP, with workers in the same process."""
    try:
        from dagtask.api import ApiSettings, RateLimit
        from dagtask.api.server import serve
    except ImportError as exc:  # the optional dependencies are missing
        raise ArgumentError(
            f"`dagtask serve` needs the api extra ({exc.name} is missing): "
            "pip install 'dagtask[api]'"
        ) from exc
    settings = ApiSettings(rate_limit=RateLimit.parse(args.rate_limit))
    if args.server_name:
        settings = ApiSettings(rate_limit=settings.rate_limit, server=args.server_name)
    if args.metrics_login:
        observability.require_metrics()
    settings = dataclasses.replace(
        settings, metrics=not args.no_metrics, metrics_login=args.metrics_login
    )
    if args.log_format == "json":
        out.configure_logging("INFO", "json", names=out.SERVE_LOGGERS)
        out.configure_logging("WARNING", "json", names=out.SERVE_WORKER_LOGGERS)
    serve(
        resolve_url(args.db),
        host=args.host,
        port=args.port,
        workers=args.workers_in_process,
        settings=settings,
        trusted_proxies=args.trusted_proxy,
        announce=lambda line: print(line, flush=True),
        log_format=args.log_format,
    )
    return 0


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_commands(commands: Commands) -> None:
    """Add this feature's subcommands to the `dagtask` parser."""
    serve = commands.add(
        "serve",
        cmd_serve,
        epilog="Stop with Ctrl-C or SIGTERM. Requests need the HTTP Basic credentials of a user "
        "added with `dagtask users add`. See docs/api.md.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument(
        "--port", type=port_number, default=8080, help="port to listen on (8080; 0: any free port)"
    )
    serve.add_argument(
        "--workers-in-process",
        type=_count,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"worker threads running tasks in this process (default {DEFAULT_WORKERS}; "
        "0: none, run `dagtask worker` processes instead)",
    )
    serve.add_argument(
        "--rate-limit",
        default="600/min",
        metavar="RATE",
        help="requests per user, e.g. 600/min (default), 10/s, 100/30s, or off",
    )
    serve.add_argument(
        "--server-name", metavar="NAME", help="the envelopes' `server` (default: the host name)"
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="IP",
        help="a reverse proxy (address or network) whose X-Forwarded-For is believed "
        "(repeatable; default: none, the peer's address counts)",
    )
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="the server and access log as text lines, or one JSON object per line with the "
        "request's trace_id (default text)",
    )
    serve.add_argument(
        "--metrics-login",
        action="store_true",
        help="/metrics needs the login of a TASK_VIEWER user (default: open, as scrapers "
        "expect; see docs/observability.md)",
    )
    serve.add_argument(
        "--no-metrics", action="store_true", help="do not serve Prometheus metrics at /metrics"
    )

    users = commands.nested(commands.add("users", "Manage the users of the REST API"))
    role_help = f"a role: {ROLES} (repeatable, or comma-separated)"
    stdin_help = "read the password from the first line of stdin instead of prompting"

    add = users.add("add", cmd_users_add)
    add.add_argument("name", metavar="NAME", help="the user name (letters, digits, . _ @ -)")
    add.add_argument("--role", action="append", required=True, metavar="ROLE", help=role_help)
    add.add_argument("--password-stdin", action="store_true", help=stdin_help)

    lst = users.add("list", cmd_users_list)
    lst.add_argument("--json", action="store_true", help="print the users as JSON")

    passwd = users.add("passwd", cmd_users_passwd)
    passwd.add_argument("name", metavar="NAME", help="the user")
    passwd.add_argument("--password-stdin", action="store_true", help=stdin_help)

    roles = users.add("roles", cmd_users_roles)
    roles.add_argument("name", metavar="NAME", help="the user")
    roles.add_argument("--role", action="append", required=True, metavar="ROLE", help=role_help)

    for name, command in (("disable", cmd_users_disable), ("enable", cmd_users_enable)):
        users.add(name, command).add_argument("name", metavar="NAME", help="the user")
