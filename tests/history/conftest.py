"""Fixtures of the history tests: the CLI in-process on a fresh SQLite file."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dagtask.cli import main

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def dt(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run ``main(["--db", <tmp db>, *ARGS])`` in tmp_path; return (exit code, stdout, stderr).
    ``dt(..., db=URL)`` uses another database."""
    monkeypatch.delenv("DAGTASK_DB_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    default = f"sqlite:///{tmp_path / 'cli.db'}"

    def run(*args: str, db: str = default) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--db", db, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
