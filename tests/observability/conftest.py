"""Fixtures of the observability tests: an engine whose workers the test starts, and its API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dagtask import Engine
from tests.api.support import ApiServer, add_users, serve


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    """An engine on a fresh SQLite file with the test users; its workers (2 slots, a 3 s lease
    so that heartbeats come every second) start when the test calls ``engine.start()``."""
    with Engine(sqlite_url, workers=2, poll_interval=0.05, lease_seconds=3) as eng:
        add_users(eng)
        yield eng


@pytest.fixture
def api(engine: Engine) -> Iterator[ApiServer]:
    """The API around ``engine`` (create_app, served by uvicorn on loopback)."""
    with serve(engine) as server:
        yield server
