"""What the command modules share: exit codes, limits, argument types, opening the engine,
and the pieces every subcommand's parser is built from."""

from __future__ import annotations

import argparse
import getpass
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from dagtask.config import DEFAULT_WORKERS
from dagtask.engine import Engine
from dagtask.errors import (
    ArgumentError,
    TemplateError,
)
from dagtask.store.db import (
    DEFAULT_URL,
    ENV_VAR,
    open_database,
    resolve_url,
)
from dagtask.template import TaskTemplate, load_template

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
agent_log = logging.getLogger("dagtask.cli.agent")

Command = Callable[[argparse.Namespace], int]
_N = TypeVar("_N", int, float)


# ---- small helpers -------------------------------------------------------------------------------


def open_engine(
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


def parse_pairs(items: Sequence[str], option: str) -> dict[str, str]:
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


def parse_lists(items: Sequence[str]) -> dict[str, list[str]]:
    """``--list KEY=V1,V2`` items as a listMap; ``KEY=`` is an empty list."""
    return {
        key: [part.strip() for part in value.split(",") if part.strip()]
        for key, value in parse_pairs(items, "--list").items()
    }


_E = TypeVar("_E", bound=StrEnum)


def parse_enums(text: str | None, kind: type[_E], option: str, noun: str) -> list[_E]:
    """``--status RUNNING,failed``: the members of ``kind`` a comma list names (any case),
    else one ArgumentError naming the allowed values."""
    result = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        try:
            result.append(kind(part.strip().upper()))
        except ValueError:
            allowed = ", ".join(m.value for m in kind)
            raise ArgumentError(
                f"{option} {part.strip()!r} is not a {noun}; use one or more of {allowed}"
            ) from None
    return result


def no_color_of(args: argparse.Namespace) -> bool:
    """``--no-color`` (the NO_COLOR variable is read where the console is made)."""
    return bool(getattr(args, "no_color", False))


def positive(kind: type[_N], maximum: _N | None = None) -> Callable[[str], _N]:
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


def port_number(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535, for argparse."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, got {text}")
    return value


def an_id(text: str) -> int:
    """An argparse type: a task or subtask id (1 to 2**63 - 1)."""
    value = int(text)  # ValueError: argparse says "invalid int value", as for type=int
    if not 1 <= value <= MAX_ID:
        raise argparse.ArgumentTypeError(f"ids are between 1 and {MAX_ID}, got {text}")
    return value


an_id.__name__ = "int"  # argparse names the type in its message by __name__


def debug_on(args: argparse.Namespace | None) -> bool:
    """Whether to print tracebacks: ``--debug`` or ``DAGTASK_DEBUG`` set to anything but 0."""
    if args is not None and getattr(args, "debug", False):
        return True
    return os.environ.get(DEBUG_VAR, "").strip().lower() not in ("", "0", "false", "no")


def check_wait(args: argparse.Namespace) -> None:
    if args.timeout is not None and not args.wait:
        raise ArgumentError("--timeout only applies with --wait")


def operator_of(args: argparse.Namespace) -> str:
    """Who performs an operator action: ``--operator``, else the OS user."""
    if args.operator is not None:
        if not args.operator.strip():
            raise ArgumentError("--operator needs a name, e.g. --operator alice")
        return str(args.operator.strip())
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def import_from(*folders: Path) -> None:
    """Let handlers (mypkg.ops.X) be imported from ``folders``, first one first."""
    for folder in map(str, reversed(folders)):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
    importlib.invalidate_caches()


def load_file(path: Path) -> TaskTemplate:
    # Handlers named in the file usually live next to it or in the current folder.
    import_from(path.resolve().parent, Path.cwd())
    try:
        return load_template(path)
    except UnicodeDecodeError as exc:  # load_template reads text; a binary file is not
        raise TemplateError(
            f"template file {str(path)!r} is not UTF-8 text (byte {exc.start} is "
            f"0x{exc.object[exc.start]:02x}); a template is a YAML or JSON file"
        ) from exc


def is_template_file(text: str) -> bool:
    return text.lower().endswith(TEMPLATE_SUFFIXES) or Path(text).is_file()


# ---- parser --------------------------------------------------------------------------------------

DB_HELP = f"database URL (default: ${ENV_VAR}, else {DEFAULT_URL})"
DEBUG_HELP = f"print the traceback of an unexpected error (also: {DEBUG_VAR}=1)"


class Commands:
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
            common.add_argument(
                "--no-color",
                action="store_true",
                default=argparse.SUPPRESS,
                help="no colour in the output (also: NO_COLOR=1)",
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

    def nested(self, parser: Parser) -> Commands:
        """The subcommands of a group such as ``hosts``."""
        return Commands(parser, self.common)


Parser = argparse.ArgumentParser


def json_flag(parser: Parser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what}")


def a_time(text: str) -> datetime:
    """An ISO time on the command line; one without an offset is local time."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO time, e.g. 2026-11-28T12:00:00 (local) or with +08:00"
        ) from None
    return when if when.tzinfo else when.astimezone()


def task_id_arg(parser: Parser) -> None:
    parser.add_argument("id", type=an_id, metavar="ID", help="the task id")


def subtask_id_arg(parser: Parser) -> None:
    parser.add_argument(
        "subtask_id", type=an_id, metavar="SUBTASK_ID", help="see `dagtask show ID`"
    )


def wait_options(parser: Parser, wait: str) -> None:
    """--wait, --timeout and --workers: run the task in this process until it ends."""
    parser.add_argument("--wait", action="store_true", help=wait)
    parser.add_argument(
        "--timeout",
        type=positive(float, MAX_SECONDS),
        metavar="S",
        help="with --wait: give up waiting after S seconds (the task stays RUNNING)",
    )
    parser.add_argument(
        "--workers",
        type=positive(int, MAX_THREADS),
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"with --wait: worker threads (default {DEFAULT_WORKERS})",
    )


ACTION_WAIT = (
    "then run the task here (alongside any workers elsewhere) until it ends; "
    "exit 1 if it ends FAILED"
)


def action_command(
    commands: Commands,
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
        "prints one line on stderr and exits 4."
    )
    parser = commands.add(name, command, epilog=epilog)
    task_id_arg(parser)
    if subtask:
        subtask_id_arg(parser)
    wait_options(parser, wait)
    parser.add_argument(
        "--operator",
        metavar="NAME",
        help="who acts, as recorded in the task's history (default: the OS user)",
    )
    json_flag(parser, json)
    return parser
