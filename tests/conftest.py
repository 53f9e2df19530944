"""Shared fixtures: database URLs for SQLite, PostgreSQL and MariaDB/MySQL.

Server-backed tests use ``DAGTASK_TEST_PG_URL`` / ``DAGTASK_TEST_MYSQL_URL`` (defaults: the local
servers). Without a reachable server they skip, unless ``DAGTASK_REQUIRE_SERVERS=1`` (set by CI),
where an unreachable server fails the test instead: CI must never pass by skipping them.

Hypothesis runs under the profile ``$DAGTASK_HYPOTHESIS_PROFILE`` (``ci`` or ``long``, see
tests/hypo.py) with one seed for the whole session: ``--hypothesis-seed``, else
``$DAGTASK_HYPOTHESIS_SEED``, else a random one. The report header prints both, so a failure in CI
replays with the same examples.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("DAGTASK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("DAGTASK_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRE_SERVERS = os.environ.get("DAGTASK_REQUIRE_SERVERS") == "1"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Load the hypothesis profile and fix the session's seed.

    First in line: hypothesis's own plugin reads ``--hypothesis-seed`` (and loads a
    ``--hypothesis-profile``, which wins) in its ``pytest_configure``, after this one.
    """
    from hypothesis import settings

    from tests import hypo

    hypo.register_profiles()
    try:
        settings.load_profile(hypo.requested_profile())
        seed = hypo.requested_seed()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.getoption("hypothesis_seed", None) is None:
        if seed is None:
            seed = random.SystemRandom().randrange(1 << 32)
        config.option.hypothesis_seed = seed
        # Processes the tests start inherit it.
        os.environ[hypo.SEED_VAR] = str(seed)


def _hypothesis_line(config: pytest.Config) -> str:
    from hypothesis import settings

    seed = config.getoption("hypothesis_seed", None)
    return (
        f"hypothesis profile: {settings.get_current_profile_name()}, seed: {seed} "
        f"(replay with DAGTASK_HYPOTHESIS_SEED={seed})"
    )


def pytest_report_header(config: pytest.Config) -> str:
    """The hypothesis profile and seed, with how to replay the run."""
    return _hypothesis_line(config)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Print the seed even where the header is not shown (``-q``, ``--no-header``)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and (not reporter.showheader or reporter.no_header):
        reporter.write_line(_hypothesis_line(session.config))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """Repeat the seed under a failed run's summary, where a CI log is read first."""
    if exitstatus == pytest.ExitCode.TESTS_FAILED:
        terminalreporter.write_line(_hypothesis_line(config))


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if REQUIRE_SERVERS:
        pytest.fail(f"{message}; DAGTASK_REQUIRE_SERVERS=1 forbids skipping", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """A fresh SQLite file."""
    return f"sqlite:///{tmp_path}/dagtask.db"  # type: ignore[str-bytes-safe]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema (dropped afterwards)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh, empty MariaDB/MySQL database (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(MYSQL_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except Exception as exc:
        _unavailable("MariaDB/MySQL", exc)
    yield sa.make_url(MYSQL_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name}")
    admin.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite, PostgreSQL and MariaDB."""
    name = {"sqlite": "sqlite_url", "postgres": "pg_url", "mysql": "mysql_url"}[request.param]
    return str(request.getfixturevalue(name))


@pytest.fixture(autouse=True)
def _fresh_journals() -> None:
    """Task ids restart in every fresh database: forget what earlier tests' handlers recorded."""
    from tests import handlers

    handlers.JOURNAL.clear()
    handlers.ROLLED_BACK.clear()


def require_tool(name: str) -> str:
    """The path of the program ``name``; skip without it, or fail under
    ``DAGTASK_REQUIRE_SERVERS=1`` (CI installs it: .ci/run)."""
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install {name})"
        if REQUIRE_SERVERS:
            pytest.fail(f"{message}; DAGTASK_REQUIRE_SERVERS=1 forbids skipping", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def tmux_installed() -> str:
    """tmux, for tests that look at a real terminal screen."""
    return require_tool("tmux")


@pytest.fixture
def chromium_installed() -> str:
    """Debian's chromium, for tests that render a page headless."""
    return require_tool("chromium")
