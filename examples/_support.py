"""Helpers shared by the example scripts: where the example database lives."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

DB_ENV_VAR = "DAGTASK_DB_URL"


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--db URL`` to an example's command line."""
    parser.add_argument(
        "--db",
        metavar="URL",
        help=f"database URL (default: ${DB_ENV_VAR}, else a SQLite file in a temporary folder "
        "that is deleted when the example ends)",
    )


@contextmanager
def example_database(url: str | None) -> Iterator[str]:
    """Yield ``url``, else ``$DAGTASK_DB_URL``, else a throw-away SQLite database URL.

    The engine's own default is ``./dagtask.db``; an example should leave nothing behind, so
    without an explicit URL it works in a temporary folder that is removed afterwards.
    """
    chosen = url or os.environ.get(DB_ENV_VAR)
    if chosen:
        yield chosen
        return
    with tempfile.TemporaryDirectory(prefix="dagtask-example-") as folder:
        yield f"sqlite:///{folder}/dagtask.db"
