"""Fixtures of the API tests: an engine on a fresh database with users, served over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dagtask import Engine
from tests.api.support import ApiServer, add_users, serve


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    """An engine with running workers (as `dagtask serve` has) and the test users."""
    with Engine(sqlite_url, workers=2, poll_interval=0.05) as eng:
        add_users(eng)
        eng.start()
        yield eng


@pytest.fixture
def api(engine: Engine) -> Iterator[ApiServer]:
    """The API around ``engine`` on loopback, rate limiting off."""
    with serve(engine) as server:
        yield server


@pytest.fixture
def frozen_engine(sqlite_url: str) -> Iterator[Engine]:
    """An engine without workers: submitted tasks stay at the moment of submission."""
    with Engine(sqlite_url, workers=0) as eng:
        add_users(eng)
        yield eng


@pytest.fixture
def frozen_api(frozen_engine: Engine) -> Iterator[ApiServer]:
    """The API around ``frozen_engine`` (`dagtask serve --workers-in-process 0`)."""
    with serve(frozen_engine) as server:
        yield server


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One frozen server for a module's tests that only read or are refused (no workers)."""
    folder = tmp_path_factory.mktemp("shared")
    with Engine(f"sqlite:///{folder / 'shared.db'}", workers=0) as eng:
        add_users(eng)
        with serve(eng) as server:
            yield server
