"""Fixtures of the CLI tests: a fresh SQLite file, and the CLI run in-process or as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dagtask.cli import main
from tests.integration.cli.support import CLI_TIMEOUT, Cli, Run


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite file in the test's folder."""
    return f"sqlite:///{tmp_path / 'x.db'}"


@pytest.fixture
def env() -> dict[str, str]:
    """The environment without DAGTASK_DB_URL, so only --db names the database."""
    clean = dict(os.environ)
    clean.pop("DAGTASK_DB_URL", None)
    return clean


@pytest.fixture
def cli(tmp_path: Path, db_url: str, env: dict[str, str]) -> Cli:
    """Run ``python -m dagtask --db <tmp db> ARGS`` in tmp_path."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dagtask", "--db", db_url, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )

    return run


@pytest.fixture
def dt(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Run:
    """Run ``main(["--db", <tmp db>, *ARGS])`` in-process; return (exit code, stdout, stderr)."""
    monkeypatch.delenv("DAGTASK_DB_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    # `run FILE` and `--wait` put folders on sys.path; keep that from leaking into other tests.
    monkeypatch.setattr(sys, "path", list(sys.path))

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--db", db_url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
