"""Opening a database from many processes at once, and a database that never answers.

Real processes throughout: several ``open_database`` calls released together on a fresh
database must all succeed and leave the schema at head exactly once (SQLite, PostgreSQL,
MariaDB); a server that accepts connections and never replies must make the CLI give up
within the configured connect timeout, with one line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dagtask.store.db import head_revision
from tests.processes import wait_until

PROCESSES = 5

# Each child waits for the barrier file, so they all open the database at the same moment.
OPENER = """
import os, sys, time
from dagtask.store.db import open_database
barrier, ready, url = sys.argv[1], sys.argv[2], sys.argv[3]
open(ready, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(barrier):
    if time.monotonic() > deadline:
        sys.exit("barrier never appeared")
    time.sleep(0.001)
db = open_database(url)
db.dispose()
print("opened")
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DAGTASK_DB_URL", None)
    return env


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def test_processes_starting_together_on_an_empty_database_all_come_up(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = str(
        request.getfixturevalue(
            {"sqlite": "sqlite_url", "postgres": "pg_url", "mysql": "mysql_url"}[backend]
        )
    )
    barrier = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(barrier), str(tmp_path / f"ready-{n}"), url],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    try:
        # Release them only once every child has imported dagtask and waits at the barrier.
        wait_until(
            lambda: (
                all((tmp_path / f"ready-{n}").exists() for n in range(PROCESSES))
                or any(child.poll() is not None for child in children)
            ),
            "every child to reach the barrier",
            timeout=60,
        )
        barrier.touch()
        results = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    failures = [
        f"exit {child.returncode}: {err.strip()[-800:]}"
        for child, (_out, err) in zip(children, results, strict=True)
        if child.returncode != 0
    ]
    assert not failures, "\n".join(failures)
    assert all(out.strip() == "opened" for out, _err in results)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
            tables = sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()
    assert [tuple(row) for row in versions] == [(head_revision(),)]
    assert "dagtask_task" in tables


def test_connections_switching_a_new_sqlite_file_to_wal_together_all_come_up(
    tmp_path: Path,
) -> None:
    """Two connections that switch a brand-new SQLite file to WAL at the same moment get
    "database is locked" at once (SQLite does not wait there); every opener must still come
    up. Threads instead of processes, so that many rounds fit in a few seconds: without the
    retry, about one round in eight failed on the 2-core machine."""
    from dagtask.store.db import open_database

    failures: list[str] = []
    for round_ in range(40):
        url = f"sqlite:///{tmp_path}/fresh-{round_}.db"
        start = threading.Barrier(3)

        def opener(url: str = url, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                open_database(url).dispose()
            except Exception as exc:  # collected and asserted below
                failures.append(f"{url}: {exc}")

        threads = [threading.Thread(target=opener) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert failures == []


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on loopback that accepts every connection and never sends a byte."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # kept open, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize(
    "scheme, path",
    [
        ("postgresql+psycopg", "postgres@127.0.0.1:{port}/test"),
        ("mysql+pymysql", "root@127.0.0.1:{port}/test"),
    ],
)
def test_a_database_that_never_answers_fails_within_the_connect_timeout(
    silent_server: int, scheme: str, path: str, tmp_path: Path
) -> None:
    url = f"{scheme}://{path.format(port=silent_server)}"
    env = {**_env(), "DAGTASK_CONNECT_TIMEOUT": "1"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "dagtask", "--db", url, "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "did not answer in time" in lines[0]
    assert "DAGTASK_CONNECT_TIMEOUT" in lines[0]
    # 1 s per connection attempt (libpq may make two, e.g. with and without SSL), plus start-up.
    assert elapsed < 15, f"took {elapsed:.1f} s"


@pytest.mark.postgres
def test_a_statement_blocked_on_a_lock_gives_up_after_the_statement_timeout(
    pg_url: str, tmp_path: Path
) -> None:
    from dagtask.store.db import open_database

    open_database(pg_url).dispose()  # create the schema
    blocker = sa.create_engine(pg_url)
    try:
        with blocker.connect() as conn:
            # An exclusive lock on the task table blocks every read of it until we let go.
            conn.execute(sa.text("LOCK TABLE dagtask_task IN ACCESS EXCLUSIVE MODE"))
            env = {**_env(), "DAGTASK_STATEMENT_TIMEOUT": "1"}
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "dagtask", "--db", pg_url, "list"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            elapsed = time.monotonic() - started
            conn.rollback()
    finally:
        blocker.dispose()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "statement timeout" in lines[0] or "did not answer in time" in lines[0], lines[0]
    assert elapsed < 20, f"took {elapsed:.1f} s"


def test_a_bad_timeout_setting_is_one_line(tmp_path: Path) -> None:
    env = {**_env(), "DAGTASK_CONNECT_TIMEOUT": "soon"}
    done = subprocess.run(
        [sys.executable, "-m", "dagtask", "--db", f"sqlite:///{tmp_path}/x.db", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "dagtask: error: environment variable DAGTASK_CONNECT_TIMEOUT='soon': 'soon' is not a "
        "number of seconds; set it right or unset it (`dagtask config` shows each setting and "
        "its default)"
    )
    assert not (tmp_path / "x.db").exists()
