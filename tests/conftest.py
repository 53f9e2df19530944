"""Shared fixtures: database URLs for SQLite, PostgreSQL and MariaDB/MySQL.

Server-backed tests use ``DAGTASK_TEST_PG_URL`` / ``DAGTASK_TEST_MYSQL_URL`` (defaults: the local
servers). Without a reachable server they skip, unless ``DAGTASK_REQUIRE_SERVERS=1`` (set by CI),
where an unreachable server fails the test instead: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("DAGTASK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("DAGTASK_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRE_SERVERS = os.environ.get("DAGTASK_REQUIRE_SERVERS") == "1"


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
