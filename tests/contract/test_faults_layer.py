"""The fault layer (tests/faults.py) does what it says, as a user of the store sees it, on SQLite,
PostgreSQL and MariaDB (see ``db_url`` in conftest)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from dagtask import TemplateBuilder
from dagtask.expand import expand, task_context
from dagtask.states import SubtaskStatus
from dagtask.store import db as dbmod
from dagtask.store.schema import subtask, task
from dagtask.store.sql import Claim, Store
from tests.faults import Faults, hold_write_lock

CLAIM_UPDATE = "UPDATE dagtask_subtask SET status"
"""The claim's UPDATE on every backend (on SQLite it is the whole claim)."""

_T = TypeVar("_T")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    database = dbmod.open_database(db_url)
    yield Store(database)
    database.dispose()


@pytest.fixture
def faults(store: Store) -> Iterator[Faults]:
    with Faults(store.db) as faults:
        yield faults


def submit_one(store: Store) -> tuple[int, int]:
    """Submit a one-subtask task; its (task id, subtask id). The subtask is READY."""
    t = TemplateBuilder("faults_one")
    t.add("only", "tests.handlers.record")
    tpl = t.build()
    task_id = store.submit(
        expand(tpl, task_context(tpl, {})),
        template_id=store.save_template(tpl),
        creator="tester",
        executor="here",
    )
    return task_id, store.get_task(task_id).subtasks[0].id


def on_fresh_connection(url: str, subtask_id: int) -> tuple[str, str | None]:
    """(status, executor) of a subtask, read on a connection of its own (not the store's)."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(subtask.c.status, subtask.c.executor).where(subtask.c.id == subtask_id)
            ).one()
            return row.status, row.executor
    finally:
        engine.dispose()


def tasks_on_fresh_connection(url: str) -> int:
    """How many tasks the database holds, read on a connection of its own."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(task)).scalar_one())
    finally:
        engine.dispose()


def eventually(attempt: Callable[[], _T | None], seconds: float = 10.0) -> _T:
    """The first truthy result of ``attempt``, tried until the deadline.

    A dropped connection's row locks are released by the server a moment after the drop (as
    after a real network failure), and a claim skips locked rows meanwhile.
    """
    deadline = time.monotonic() + seconds
    while True:
        result = attempt()
        if result:
            return result
        assert time.monotonic() < deadline, f"nothing within {seconds} s"
        time.sleep(0.02)


def claim_again(store: Store) -> list[Claim]:
    return eventually(lambda: store.claim("w2"))


def test_fail_before_the_claim_changes_nothing_and_the_next_claim_works(
    store: Store, faults: Faults, db_url: str
) -> None:
    task_id, sid = submit_one(store)
    events = store.events(task_id)
    rule = faults.fail(CLAIM_UPDATE)
    with pytest.raises(sa.exc.OperationalError) as failure:
        store.claim("w1")
    assert failure.value.connection_invalidated
    assert rule.fired == 1
    assert on_fresh_connection(db_url, sid) == (SubtaskStatus.READY.value, None)
    assert store.events(task_id) == events
    assert [c.subtask_id for c in claim_again(store)] == [sid]
    assert on_fresh_connection(db_url, sid) == (SubtaskStatus.RUNNING.value, "w2")
    assert rule.fired == 1  # count=1: used up


def test_fail_after_the_claim_update_rolls_its_transaction_back(
    store: Store, faults: Faults, db_url: str
) -> None:
    # "after": the server ran the UPDATE, but the connection drops before the caller hears of
    # it, so the transaction never commits. Only lose_commit_reply leaves a committed write.
    task_id, sid = submit_one(store)
    events = store.events(task_id)
    rule = faults.fail(CLAIM_UPDATE, when="after")
    with pytest.raises(sa.exc.OperationalError) as failure:
        store.claim("w1")
    assert failure.value.connection_invalidated
    assert rule.fired == 1 and faults.count(CLAIM_UPDATE) == 1
    assert on_fresh_connection(db_url, sid) == (SubtaskStatus.READY.value, None)
    assert store.events(task_id) == events
    assert [c.subtask_id for c in claim_again(store)] == [sid]


def test_a_lost_commit_reply_leaves_the_claim_committed(
    store: Store, faults: Faults, db_url: str
) -> None:
    task_id, sid = submit_one(store)
    rule = faults.lose_commit_reply(CLAIM_UPDATE)
    with pytest.raises(sa.exc.OperationalError) as failure:
        store.claim("w1")
    assert failure.value.connection_invalidated
    assert rule.fired == 1
    # The worker never heard, but the database holds the claim, with its event.
    assert on_fresh_connection(db_url, sid) == (SubtaskStatus.RUNNING.value, "w1")
    assert [e.executor for e in store.events(task_id) if e.subtask_id == sid][-1] == "w1"
    # The store's pools recovered: the next claim runs (and finds nothing left).
    assert store.claim("w1") == []
    assert store.get_task(task_id).subtasks[0].status is SubtaskStatus.RUNNING
    assert store.db.hot_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_stall_delays_the_matching_statement(store: Store, faults: Faults) -> None:
    _, sid = submit_one(store)
    rule = faults.stall(CLAIM_UPDATE, seconds=0.5, count=1)
    started = time.monotonic()
    claims = store.claim("w1")
    assert time.monotonic() - started >= 0.5
    assert [c.subtask_id for c in claims] == [sid]
    assert rule.fired == 1 and not rule.active


def test_an_outage_fails_everything_until_it_ends(
    store: Store, faults: Faults, db_url: str
) -> None:
    task_id, sid = submit_one(store)
    outage = faults.outage()
    with pytest.raises(sa.exc.OperationalError):
        store.claim("w1")
    with pytest.raises(sa.exc.OperationalError):
        store.get_task(task_id)
    with pytest.raises(sa.exc.OperationalError):
        submit_one(store)
    assert outage.fired >= 3
    outage.end()
    assert on_fresh_connection(db_url, sid) == (SubtaskStatus.READY.value, None)
    assert [c.subtask_id for c in claim_again(store)] == [sid]
    assert tasks_on_fresh_connection(db_url) == 1  # the submit during the outage left nothing


def test_the_outage_context_manager_restores_service(store: Store, faults: Faults) -> None:
    task_id, _ = submit_one(store)
    with faults.outage(), pytest.raises(sa.exc.OperationalError):
        store.get_task(task_id)
    assert store.get_task(task_id).id == task_id


def test_hold_write_lock_blocks_writers_until_released(store: Store, db_url: str) -> None:
    task_id, sid = submit_one(store)
    claimed: list[list[Claim]] = []
    writer = threading.Thread(target=lambda: claimed.append(store.claim("w1")), daemon=True)
    try:
        with hold_write_lock(store.db):
            writer.start()
            writer.join(timeout=1.0)
            assert writer.is_alive(), "the claim went through the held write lock"
            # Readers are not blocked.
            assert store.get_task(task_id).subtasks[0].status is SubtaskStatus.READY
    finally:
        # Released (or the test failed): let the writer end before the fixture drops the schema.
        writer.join(timeout=30)
    assert not writer.is_alive()
    assert [[c.subtask_id for c in batch] for batch in claimed] == [[sid]]
    assert on_fresh_connection(db_url, sid) == (SubtaskStatus.RUNNING.value, "w1")
