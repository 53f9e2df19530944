"""``dagtask``'s entry point: parse, run the command, turn errors into one line and an exit code.

Exit codes (also in ``dagtask --help`` and the README):

- 0: done;
- 1: the task ended FAILED (``--wait``), or a check failed (``rollback --plan``, ``replay``,
  ``compat``, ``hosts check``);
- 2 (``EXIT_USER``): a mistake in the command, its settings (environment, config file) or
  its arguments, or a database that cannot be used (unreachable, timed out, read-only, no or an
  outdated dagtask schema): the command cannot run as given, so it is fixed where it is typed;
- 4 (:data:`EXIT_REFUSED`): the engine refused the action for the state of what it names: no
  such task, subtask, host or user (20000, 404), an action not allowed in this state (20003),
  a rollback prohibited (20004), a host busy with another operation or a name taken (409).
  The same command may succeed later, so a script can tell this from a typo;
- 3 (``EXIT_INTERNAL``): a bug; 130: Ctrl-C; 141: the reader of stdout went away.

Only the standard library is imported before the command line is parsed, so that
``dagtask --version`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback

from dagtask import config
from dagtask.errors import (
    DagtaskError,
    DefinitionNotFoundError,
    HostError,
    HostNotFoundError,
    OperationNotAllowedError,
    RollbackProhibitedError,
    TaskNotFoundError,
    UserError,
    UserNotFoundError,
    WebhookNotFoundError,
)

EXIT_REFUSED = 4
"""The engine refused: not found, not allowed in this state, prohibited, busy."""
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141
"""What a shell reports for a program whose output pipe closed (128 + SIGPIPE)."""
REFUSALS: tuple[type[DagtaskError], ...] = (
    TaskNotFoundError,
    HostNotFoundError,
    UserNotFoundError,
    OperationNotAllowedError,
    RollbackProhibitedError,
    HostError,
    UserError,
    DefinitionNotFoundError,
    WebhookNotFoundError,
)
"""The errors that exit :data:`EXIT_REFUSED`: the command was well formed, the state said no."""


def exit_code(exc: DagtaskError) -> int:
    """The exit code of a command that raised ``exc``."""
    from dagtask.cli.common import EXIT_USER

    return EXIT_REFUSED if isinstance(exc, REFUSALS) else EXIT_USER


def main(argv: list[str] | None = None) -> int:
    """Run ``dagtask`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:
        # Before the parser: building it imports every command (SQLAlchemy and all).
        from dagtask import __version__

        print(f"dagtask {__version__}")
        return 0
    from dagtask.cli.common import DEBUG_VAR, EXIT_INTERNAL, EXIT_USER, PROG, debug_on
    from dagtask.cli.parser import build_parser

    parser = build_parser()
    registry = config.Registry(parser)
    args = parser.parse_args(argv)
    try:
        args.settings = registry.apply(args)
        from dagtask import fidelity

        fidelity.current()  # a bad $DAGTASK_OCP_COMPAT: one line, before anything is opened
        code: int = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is met inside the try
        return code
    except DagtaskError as exc:
        _debug_traceback(args)
        from dagtask.cli import output as out

        print(out.error_line(PROG, exc), file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `dagtask list | head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except Exception as exc:
        import sqlalchemy as sa

        if isinstance(exc, sa.exc.OperationalError):
            # The database went away, timed out, or refuses writes: not a bug, nothing to retry.
            from dagtask.store.db import database_problem, resolve_url

            _debug_traceback(args)
            url = resolve_url(getattr(args, "db", None))
            print(f"{PROG}: error: {database_problem(url, exc)}", file=sys.stderr)
            return EXIT_USER
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
    from dagtask.cli.common import debug_on

    if debug_on(args):
        traceback.print_exc()
