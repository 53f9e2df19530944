"""``dagtask``'s entry point: parse, run the command, turn errors into one line and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback

import sqlalchemy as sa

from dagtask.cli import output as out
from dagtask.cli.common import (
    DEBUG_VAR,
    EXIT_INTERNAL,
    EXIT_USER,
    PROG,
    Command,
    debug_on,
)
from dagtask.cli.parser import build_parser
from dagtask.errors import (
    DagtaskError,
)
from dagtask.store.db import (
    DEFAULT_URL,
    ENV_VAR,
    database_problem,
)


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
        how = "the traceback is above" if debug_on(args) else f"rerun with --debug or {DEBUG_VAR}=1"
        print(
            f"{PROG}: internal error: {what[:500]} (this is a bug; {how} to see where)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _debug_traceback(args: argparse.Namespace) -> None:
    if debug_on(args):
        traceback.print_exc()
