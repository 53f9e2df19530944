"""Packaging as a user of the package meets it: one version everywhere, a licence, a changelog,
and a ``test`` extra that installs no linter (``pip install -e '.[test]' && pytest``)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import dagtask

ROOT = Path(__file__).resolve().parents[2]
LINTERS = {"ruff", "mypy", "types-pyyaml"}


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def names(requirements: list[str]) -> set[str]:
    """The distribution names of requirement strings, normalised as pip compares them."""
    found = set()
    for text in requirements:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)
        assert match, text
        found.add(re.sub(r"[-_.]+", "-", match.group(0)).lower())
    return found


def test_one_version_source_that_metadata_and_the_cli_agree_on() -> None:
    project = pyproject()
    assert "version" not in project["project"], "the version is written once, in dagtask"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dagtask.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:[.-]?(?:a|b|rc|dev)\d+)?", dagtask.__version__)
    # Differs only when the package was not reinstalled after a version change.
    assert metadata.version("dagtask") == dagtask.__version__
    done = subprocess.run(
        [sys.executable, "-m", "dagtask", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dagtask {dagtask.__version__}"


def test_the_test_extra_has_no_linters_and_dev_has_them() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    assert not names(extras["test"]) & LINTERS
    assert names(extras["dev"]) >= LINTERS
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install --quiet -e '.[test,dev]'" in ci
    assert "pip install -e '.[test]' && pytest" in (ROOT / "README.md").read_text()


def test_licence_urls_classifiers_and_changelog() -> None:
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    licence = (ROOT / "LICENSE").read_text()
    for part in ("Apache License", "Version 2.0, January 2004", "END OF TERMS AND CONDITIONS"):
        assert part in licence
    assert len(licence.splitlines()) > 150, "the full text, not a notice"
    assert {"Homepage", "Repository", "Documentation", "Changelog"} <= set(project["urls"])
    for url in project["urls"].values():
        assert url.startswith("https://github.com/dagtask/dagtask")
    classifiers = project["classifiers"]
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    # PEP 639: a licence expression and a License classifier may not both be given.
    assert not any(c.startswith("License ::") for c in classifiers)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert re.search(
        rf"^## \[{re.escape(dagtask.__version__)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.M
    )
    assert f"[{dagtask.__version__}]: https://github.com/dagtask/dagtask/" in changelog


def test_the_schema_head_constant_is_the_newest_shipped_migration() -> None:
    """Opening a database compares with ``SCHEMA_HEAD`` without importing Alembic: it must be
    what the shipped migration scripts say is newest."""
    from alembic.script import ScriptDirectory

    from dagtask.store import db as dbmod

    scripts = ScriptDirectory.from_config(dbmod.alembic_config("sqlite://"))
    assert scripts.get_current_head() == dbmod.SCHEMA_HEAD == dbmod.shipped_revisions()[0]


def test_opening_a_database_imports_no_alembic(tmp_path: Path) -> None:
    """An Engine on an existing SQLite database is ready without loading the migration
    machinery (start-up time), and so is a fresh one once created."""
    url = f"sqlite:///{tmp_path}/fresh.db"
    code = (
        "import sys\n"
        "from dagtask import Engine\n"
        f"Engine({url!r}, workers=0).close()\n"  # creates the schema (Alembic)
        "for name in [m for m in sys.modules if m.split('.')[0] == 'alembic']:\n"
        "    del sys.modules[name]\n"
        f"Engine({url!r}, workers=0).close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
