"""The fault layer's own rules (tests/faults.py), on a scratch table of a real database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from dagtask.store.db import Database
from tests.faults import Faults

ITEMS = sa.table("scratch_items", sa.column("id", sa.Integer), sa.column("v", sa.String))


def make_db(url: str) -> Database:
    db = Database(url)
    with db.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch_items (id INTEGER PRIMARY KEY, v VARCHAR(20))")
    return db


@pytest.fixture
def sqlite_db(sqlite_url: str) -> Iterator[Database]:
    db = make_db(sqlite_url)
    yield db
    db.dispose()


@pytest.fixture
def any_db(db_url: str) -> Iterator[Database]:
    db = make_db(db_url)
    yield db
    db.dispose()


def insert(db: Database, item_id: int, *, hot: bool = False) -> None:
    with db.begin(hot=hot) as conn:
        conn.execute(ITEMS.insert().values(id=item_id, v="x"))


def stored(db: Database) -> list[int]:
    with db.read() as conn:
        return list(conn.execute(sa.select(ITEMS.c.id).order_by(ITEMS.c.id)).scalars())


def select_one(db: Database) -> int:
    with db.read() as conn:
        return int(conn.execute(sa.text("SELECT 1")).scalar_one())


def test_a_failure_is_the_drivers_disconnect_and_the_pool_recovers(any_db: Database) -> None:
    with Faults(any_db) as faults:
        rule = faults.fail("insert into scratch_items")  # case-insensitive
        with pytest.raises(sa.exc.OperationalError) as failure:
            insert(any_db, 1, hot=True)
        dbapi = any_db.hot_engine.dialect.loaded_dbapi
        assert isinstance(failure.value.orig, dbapi.OperationalError)
        assert failure.value.connection_invalidated
        assert rule.fired == 1 and not rule.active
        insert(any_db, 2, hot=True)
        insert(any_db, 3)
        assert stored(any_db) == [2, 3]
        assert any_db.hot_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_count_match_and_predicates(sqlite_db: Database) -> None:
    with Faults(sqlite_db) as faults:
        twice = faults.fail(lambda sql: "SELECT 1" in sql, count=2)
        for _ in range(2):
            with pytest.raises(sa.exc.OperationalError):
                select_one(sqlite_db)
        assert select_one(sqlite_db) == 1
        assert twice.fired == 2
        assert faults.count("select 1") == 3
        assert faults.count(lambda sql: sql.startswith("BEGIN")) == 3  # read transactions
        assert len(faults.calls) == 6
        unmatched = faults.fail("DELETE")
        insert(sqlite_db, 1)
        assert unmatched.fired == 0 and unmatched.active


def test_remove_and_clear_stop_rules(sqlite_db: Database) -> None:
    with Faults(sqlite_db) as faults:
        rule = faults.fail(count=100)
        rule.remove()
        rule.remove()  # idempotent
        assert select_one(sqlite_db) == 1 and rule.fired == 0
        faults.fail(count=100)
        faults.stall(seconds=30)
        faults.clear()
        started = time.monotonic()
        assert select_one(sqlite_db) == 1
        assert time.monotonic() - started < 5


def test_read_engine_and_write_engine_are_both_covered(sqlite_db: Database) -> None:
    assert sqlite_db.read_engine is not sqlite_db.engine
    with Faults(sqlite_db) as faults:
        faults.fail("SELECT 1", count=1)
        with pytest.raises(sa.exc.OperationalError):
            select_one(sqlite_db)  # read_engine
        faults.fail("INSERT", count=1)
        with pytest.raises(sa.exc.OperationalError):
            insert(sqlite_db, 1)  # engine
        assert stored(sqlite_db) == []


def test_a_failed_begin_immediate_releases_everything(sqlite_db: Database) -> None:
    with Faults(sqlite_db) as faults:
        faults.fail("BEGIN IMMEDIATE")
        with pytest.raises(sa.exc.OperationalError):
            insert(sqlite_db, 1)
        assert sqlite_db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # Neither dagtask's in-process write lock nor SQLite's is left taken.
        insert(sqlite_db, 2)
        assert stored(sqlite_db) == [2]


def test_fail_after_rolls_back_the_transaction(any_db: Database) -> None:
    with Faults(any_db) as faults:
        faults.fail("INSERT INTO scratch_items", when="after")
        with pytest.raises(sa.exc.OperationalError), any_db.begin() as conn:
            conn.execute(ITEMS.insert().values(id=1, v="first"))
        assert stored(any_db) == []


def test_a_lost_commit_reply_commits_once(any_db: Database) -> None:
    with Faults(any_db) as faults:
        rule = faults.lose_commit_reply("INSERT INTO scratch_items")
        with pytest.raises(sa.exc.OperationalError) as failure:
            insert(any_db, 1, hot=True)
        assert failure.value.connection_invalidated
        assert stored(any_db) == [1]
        insert(any_db, 2, hot=True)  # count=1: the next commit is answered
        assert stored(any_db) == [1, 2] and rule.fired == 1


def test_a_rolled_back_transaction_does_not_arm_the_next_commit(any_db: Database) -> None:
    with Faults(any_db) as faults:
        rule = faults.lose_commit_reply("INSERT INTO scratch_items")
        with any_db.engine.connect() as conn:
            conn.execute(ITEMS.insert().values(id=1, v="undone"))
            conn.rollback()
            conn.execute(sa.text("SELECT 1"))
            conn.commit()  # this transaction ran no matching statement
        assert rule.fired == 0 and rule.active
        assert stored(any_db) == []


def test_a_lost_reply_can_match_the_begin_of_a_sqlite_write(sqlite_db: Database) -> None:
    with Faults(sqlite_db) as faults:
        rule = faults.lose_commit_reply("BEGIN IMMEDIATE")
        with pytest.raises(sa.exc.OperationalError):
            insert(sqlite_db, 1)
        assert rule.fired == 1 and stored(sqlite_db) == [1]


def test_an_outage_fails_commits_and_new_connections(any_db: Database) -> None:
    with Faults(any_db) as faults:
        with pytest.raises(sa.exc.OperationalError), any_db.begin() as conn:
            conn.execute(ITEMS.insert().values(id=1, v="x"))
            outage = faults.outage()  # the server goes away before the COMMIT
        any_db.dispose()
        with pytest.raises(sa.exc.OperationalError, match="injected"), any_db.engine.connect():
            pass  # a new connection: refused
        outage.end()
        assert stored(any_db) == []
        insert(any_db, 2)
        assert stored(any_db) == [2]


def test_a_stall_waits_and_removal_ends_the_wait(sqlite_db: Database) -> None:
    with Faults(sqlite_db) as faults:
        rule = faults.stall("SELECT 1", seconds=60)
        done = threading.Event()
        reader = threading.Thread(target=lambda: (select_one(sqlite_db), done.set()))
        reader.start()
        deadline = time.monotonic() + 10
        while rule.fired == 0:
            assert time.monotonic() < deadline, "the statement never reached the stall"
            time.sleep(0.01)
        assert not done.wait(0.3)
        rule.remove()
        reader.join(timeout=10)
        assert done.is_set()


def test_rules_are_thread_safe(sqlite_db: Database) -> None:
    with Faults(sqlite_db) as faults:
        rule = faults.fail("SELECT 1", count=5)
        failures: list[BaseException] = []
        lock = threading.Lock()

        def work() -> None:
            for _ in range(5):
                try:
                    select_one(sqlite_db)
                except sa.exc.OperationalError as exc:
                    with lock:
                        failures.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(failures) == 5 and rule.fired == 5
        assert faults.count("SELECT 1") == 40


def test_close_detaches_everything(sqlite_db: Database) -> None:
    dialect = sqlite_db.engine.dialect
    faults = Faults(sqlite_db)
    assert "do_commit" in vars(dialect)
    faults.fail(count=100)
    faults.close()
    faults.close()
    assert "do_commit" not in vars(dialect)
    assert select_one(sqlite_db) == 1
    insert(sqlite_db, 1)
    assert faults.calls == []
    with pytest.raises(RuntimeError, match="closed"):
        faults.fail()


@pytest.mark.parametrize(
    "make",
    [
        lambda f: f.fail(count=0),
        lambda f: f.fail(when="during"),
        lambda f: f.stall(seconds=-1),
        lambda f: f.lose_commit_reply(count=0),
    ],
)
def test_bad_arguments_are_refused(sqlite_db: Database, make: object) -> None:
    with Faults(sqlite_db) as faults, pytest.raises(ValueError):
        make(faults)  # type: ignore[operator]
