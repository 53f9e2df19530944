"""The ``dagtask`` command line: a thin layer over :class:`dagtask.Engine` and :mod:`dagtask.views`.

Every command opens the database given by ``--db`` (else ``$DAGTASK_DB_URL``, else
``sqlite:///dagtask.db``), calls the public API and prints the result, as a table for people
(rendered by :mod:`dagtask.cli.output`) or as OCP's JSON (``--json``). A user mistake (any
:class:`~dagtask.errors.DagtaskError`) prints one line ``dagtask: error: ...`` (or
``dagtask: error 2000x: ...`` for OCP's task errors) and exits 2, like argparse's own usage
errors, or 4 when the engine refused (not found 20000, not allowed 20003, rollback prohibited
20004, host busy or name taken 409). A database that cannot be used (unreachable, not
answering within the timeouts, read-only, not a database, no dagtask schema for a command that
only reads) exits 2. A task that ends FAILED under ``--wait`` exits 1; Ctrl-C exits 130.
Anything else is a bug: it prints one line naming the error and exits 3; ``--debug`` or
``DAGTASK_DEBUG=1`` prints the traceback too.

Commands that only read (``list``, ``show``, ``logs``, ``history``, ``export`` ...) never create
the schema or the SQLite file: on a database without a dagtask schema they say so and exit 2.
"""

from dagtask.cli.main import main
from dagtask.cli.parser import build_parser

__all__ = ["build_parser", "main"]
