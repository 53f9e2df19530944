"""The hot path on the driver (dagtask.store.prepared), under real faults and with listeners.

The fault layer (tests/faults.py) hooks SQLAlchemy's statement events, and a hooked engine keeps
SQLAlchemy's path; so these tests break things for real instead: another connection holds the
write lock, or the server kills the workers' sessions. No listener is attached while they run.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from dagtask import Engine, TemplateBuilder
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.store import db as dbmod
from dagtask.store import prepared
from dagtask.store.sql import Store
from tests.faults import hold_write_lock
from tests.workers.conftest import read_ledger, wait_for

LEDGER = "tests.handlers.ledger"


def _chain(name: str, length: int, handler: str = "dagtask.builtin.noop") -> Any:
    t = TemplateBuilder(name)
    previous: list[str] = []
    for i in range(length):
        previous = [t.add(f"step-{i:02d}", handler, after=previous)]
    return t.build()


def _listened_run(url: str, listen: Any) -> tuple[TaskStatus, int]:
    """Run a 5-link chain with ``listen(engine, hook)`` attached to every engine; the task's
    status and how many statements the hook saw."""
    seen: list[str] = []

    def hook(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    with Engine(url, workers=2, poll_interval=0.05) as engine:
        db = engine.database
        engines = {id(e): e for e in (db.engine, db.hot_engine, db.read_engine)}
        for e in engines.values():
            listen(e, hook)
        task_id = engine.submit_id(_chain("listened", 5))
        engine.start()
        status = engine.wait_status(task_id, timeout=60)
    return status, len(seen)


def test_listeners_see_every_statement_and_observers_count_the_same(tmp_path: Path) -> None:
    """A plain ``before_cursor_execute`` listener (a tracer) moves the hot path back onto
    SQLAlchemy and sees every statement; a passive observer keeps it on the driver and counts
    the very same statements."""

    def plain(engine: sa.Engine, hook: Any) -> None:
        sa.event.listen(engine, "before_cursor_execute", hook)

    status, listened = _listened_run(f"sqlite:///{tmp_path}/a.db", plain)
    assert status is TaskStatus.SUCCESSFUL
    status, observed = _listened_run(f"sqlite:///{tmp_path}/b.db", prepared.observe_statements)
    assert status is TaskStatus.SUCCESSFUL
    # Both runs did the same work; idle polls may differ by a few reads.
    assert listened > 5 * 8
    assert abs(listened - observed) <= 6, (listened, observed)


def test_a_locked_database_is_an_operational_error_and_then_the_store_goes_on(
    tmp_path: Path,
) -> None:
    """SQLite's "database is locked" raised on the driver path reaches the caller as SQLAlchemy's
    OperationalError (what the retry and outage logic expect), on a kept connection too; once
    the lock is gone the same thread claims on a new connection."""
    url = f"sqlite:///{tmp_path}/locked.db"
    with Engine(url, workers=0) as engine:
        task_id = engine.submit_id(_chain("locked", 1))
    database = dbmod.open_database(url, statement_timeout=0.3)
    store = Store(database)
    try:
        database.keep_hot_connection()
        with hold_write_lock(database), pytest.raises(sa.exc.OperationalError) as failure:
            store.claim("w1")
        assert "locked" in str(failure.value.orig)
        claims = store.claim("w1")
        assert [c.task_id for c in claims] == [task_id]
        assert store.get_task(task_id).subtasks[0].status is SubtaskStatus.RUNNING
    finally:
        database.release_hot()
        database.dispose()


def _kill_sessions(url: str, since: datetime) -> int:
    """Kill the server sessions opened since ``since`` (the engine's, not the fixtures'); how
    many."""
    admin = sa.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if admin.dialect.name == "postgresql":
                rows = conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                    "AND backend_start >= %(since)s",
                    {"since": since},
                ).all()
                return len(rows)
            ids = conn.exec_driver_sql(
                "SELECT id FROM information_schema.processlist "
                "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            ).all()
            for (session,) in ids:
                conn.exec_driver_sql(f"KILL CONNECTION {int(session)}")
            return len(ids)
    finally:
        admin.dispose()


def _server_now(url: str) -> datetime:
    admin = sa.create_engine(url, poolclass=NullPool)
    try:
        with admin.connect() as conn:
            value: datetime = conn.exec_driver_sql("SELECT now()").scalar_one()
            return value
    finally:
        admin.dispose()


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("pg_url", marks=pytest.mark.postgres),
        pytest.param("mysql_url", marks=pytest.mark.mysql),
    ],
)
def test_sessions_killed_by_the_server_lose_nothing_and_run_nothing_twice(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The server kills every session of the running engine, twice, while a chain runs: the
    kept hot connection and the pooled ones fail once, are replaced, and the chain finishes
    with each handler run once and each subtask ended once."""
    url = str(request.getfixturevalue(server))
    ledger = tmp_path / "ledger"
    since = _server_now(url)
    with Engine(url, workers=2, poll_interval=0.05) as engine:
        task_id = engine.submit_id(
            _chain("killed sessions", 12, LEDGER), args={"ledger": str(ledger), "sleep_ms": "60"}
        )
        engine.start()
        for done in (3, 7):
            wait_for(
                lambda n=done: sum(p == "end" for (_, _, p) in read_ledger(ledger)) >= n,
                f"{done} subtasks to end",
            )
            assert _kill_sessions(url, since) >= 1
        assert engine.wait_status(task_id, timeout=90) is TaskStatus.SUCCESSFUL
        pool = engine._pool
        assert pool is not None
        assert pool.outage.failures >= 1  # the kills were felt, and got over
        task = engine.get(task_id)
        runs = read_ledger(ledger)
        starts = Counter(
            sid for (sid, _, phase), n in runs.items() for _ in range(n) if phase == "start"
        )
        for sub in task.subtasks:
            assert sub.status is SubtaskStatus.SUCCESSFUL
            # Once in all: a claim whose reply a kill lost is handed back unstarted, and its
            # handler then runs as the next attempt.
            assert starts[sub.id] == 1, (sub.name, runs)
        ends = Counter(
            e.subtask_id
            for e in engine.store.events(task_id)
            if e.subtask_id is not None and e.new_status == "SUCCESSFUL"
        )
        assert set(ends.values()) == {1}, ends


@pytest.mark.postgres
def test_errors_in_a_pipelined_transaction_roll_it_back_and_the_connection_goes_on(
    pg_url: str,
) -> None:
    """PostgreSQL's hot transactions are pipelined: a failing statement whose result is read,
    and one whose result nobody reads (it fails at the COMMIT), both reach the caller as
    SQLAlchemy's error, and nothing of their transaction stays; so does an exception of ours
    with writes still in flight. The kept connection serves the next transaction."""
    with Engine(pg_url, workers=0) as engine:
        task_id = engine.submit_id(_chain("pipelined", 1))
    database = dbmod.open_database(pg_url)
    store = Store(database)
    notes = sa.text("UPDATE dagtask_task SET name = :name WHERE id = :id")

    def rename(conn: sa.Connection, name: str) -> None:
        prepared.execute(conn, notes, {"name": name, "id": task_id})

    try:
        database.keep_hot_connection()
        with pytest.raises(sa.exc.DataError), database.hot() as conn:
            rename(conn, "read")
            prepared.execute(conn, sa.text("SELECT 1 / 0")).all()
        with pytest.raises(sa.exc.DataError), database.hot() as conn:
            rename(conn, "unread")
            prepared.execute(conn, sa.text("SELECT 1 / 0"))
        with pytest.raises(ZeroDivisionError), database.hot() as conn:
            rename(conn, "ours")
            _ = 1 / 0
        assert store.get_task(task_id).name == "pipelined"
        with database.hot() as conn:
            rename(conn, "committed")
            assert prepared.execute(conn, sa.text("SELECT 41 + 1")).scalar_one() == 42
        assert store.get_task(task_id).name == "committed"
    finally:
        database.release_hot()
        database.dispose()


def test_in_lists_of_every_length_match_what_sqlalchemy_matches_and_share_compiled_forms(
    tmp_path: Path,
) -> None:
    """An ``IN`` list on the driver path is padded to its size class: every length from 0 to
    past the limit selects exactly the rows ``conn.execute`` selects, and lengths 1 to 64 need
    no more than seven compiled forms of one statement."""
    table = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    stmt = sa.select(table.c.id).where(table.c.id.in_(sa.bindparam("ids", expanding=True)))
    engine = sa.create_engine(f"sqlite:///{tmp_path}/in.db", poolclass=NullPool)
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i} for i in range(1, 101)])
    before = {k for k in prepared._cache if k[0] is stmt}
    assert not before
    with engine.connect() as conn:
        for length in range(0, 80):
            ids = [(i * 7) % 120 + 1 for i in range(length)]  # some miss, some repeat
            got = sorted(r.id for r in prepared.execute(conn, stmt, {"ids": ids}).all())
            expected = sorted(conn.execute(stmt, {"ids": ids}).scalars().all())
            assert got == expected, length
    forms = {k[3] for k in prepared._cache if k[0] is stmt}
    assert forms == {(0,), (1,), (2,), (4,), (8,), (16,), (32,), (64,), (128,)}
    engine.dispose()


@pytest.mark.postgres
def test_batched_inserts_on_postgresql_store_every_row_in_order_in_few_statements(
    pg_url: str,
) -> None:
    """On PostgreSQL an executemany of an INSERT goes out as multi-row statements (512, 256,
    ... 4, 3, 2, 1 rows): every row is stored as given, in order, with its NULLs, timestamps
    and text (a ``%`` in a value included), whether or not the transaction is pipelined; and a
    batch takes a handful of statements, not one per row."""
    metadata = sa.MetaData()
    table = sa.Table(
        "batched",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("note", sa.String(40), nullable=True),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    insert = table.insert()
    database = dbmod.open_database(pg_url)
    metadata.create_all(database.engine)
    sent: list[str] = []

    def count(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if sql.startswith("INSERT INTO batched"):
            sent.append(sql)

    at = datetime(2026, 12, 3, 17, 0, 0, 123456)
    expected: list[tuple[int, str | None, datetime]] = []
    statements: dict[int, int] = {}
    prepared.observe_statements(database.hot_engine, count)
    prepared.observe_statements(database.engine, count)
    try:
        database.keep_hot_connection()
        for size in (1, 2, 3, 5, 13, 700, 1029):
            rows = [
                {"n": size * 10_000 + i, "note": None if i % 3 else f"{i}% done", "at": at}
                for i in range(size)
            ]
            before = len(sent)
            if size % 2:
                with database.hot() as conn:  # pipelined
                    prepared.execute(conn, insert, rows)
            else:
                with database.engine.begin() as conn:
                    assert prepared.execute(conn, insert, rows).rowcount == size
            statements[size] = len(sent) - before
            expected += [(r["n"], r["note"], at) for r in rows]
    finally:
        database.release_hot()
        prepared.stop_observing(database.hot_engine, count)
        prepared.stop_observing(database.engine, count)
    with database.read() as conn:
        query = sa.select(table.c.n, table.c.note, table.c.at).order_by(table.c.id)
        stored = [tuple(r) for r in conn.execute(query)]
    database.dispose()
    assert stored == expected  # every row, as given, its id in the order given
    # 1029 = 512 + 512 + 4 + 1; 700 = 512 + 128 + 32 + 16 + 8 + 4; 13 = 8 + 4 + 1; 5 = 4 + 1
    assert statements == {1: 1, 2: 1, 3: 1, 5: 2, 13: 3, 700: 6, 1029: 4}
