"""The ``dagtask`` argument parser, assembled from each command module's ``add_commands``."""

from __future__ import annotations

import argparse

from dagtask import __version__
from dagtask.cli import admin, api, history, tasks
from dagtask.cli.common import (
    DB_HELP,
    DEBUG_HELP,
    DEBUG_VAR,
    EXIT_INTERNAL,
    EXIT_USER,
    PROG,
    Commands,
    Parser,
)

REGISTRARS = (
    tasks.add_commands,
    admin.add_commands,
    history.add_commands,
    api.add_commands,
    admin.add_db_commands,
)
"""Who registers which subcommands, in the order ``dagtask --help`` lists them."""


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
    commands = Commands(parser)
    for register in REGISTRARS:
        register(commands)
    return parser
