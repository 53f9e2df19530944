"""A submit larger than one chunk of rows (store/submit.py, ROW_CHUNK) is still one transaction:
stored whole, or, when a chunk's insert fails, not at all (no task, subtask, link, event or
template row)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from dagtask import TemplateBuilder
from dagtask.expand import expand, task_context
from dagtask.states import SubtaskStatus
from dagtask.store import db as dbmod
from dagtask.store.schema import subtask, subtask_edge, task, task_event, task_template
from dagtask.store.sql import Store
from dagtask.store.submit import ROW_CHUNK
from dagtask.template import TaskTemplate
from tests.faults import Faults

SIZE = ROW_CHUNK + ROW_CHUNK // 5
"""Two chunks of subtask rows and two of link rows."""


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    database = dbmod.open_database(db_url)
    yield Store(database)
    database.dispose()


def chain(size: int) -> TaskTemplate:
    builder = TemplateBuilder("large submit chain", concurrency=10)
    for i in range(size):
        builder.add(f"s{i:05d}", "tests.handlers.record", after=[f"s{i - 1:05d}"] if i else [])
    return builder.build()


def submit(store: Store, template: TaskTemplate) -> int:
    return store.submit(
        expand(template, task_context(template, {})),
        template=template,
        creator="tester",
        executor="here",
    )


def rows(url: str) -> dict[str, int]:
    """How many rows each table holds, read on a connection of its own."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return {
                table.name: int(
                    conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                )
                for table in (task, subtask, subtask_edge, task_event, task_template)
            }
    finally:
        engine.dispose()


def test_a_failed_second_chunk_stores_nothing_and_the_same_submit_then_works(
    store: Store, db_url: str
) -> None:
    template = chain(SIZE)
    before = rows(db_url)
    seen = {"n": 0}

    def second_subtask_chunk(sql: str) -> bool:
        if "INSERT INTO dagtask_subtask " not in sql:
            return False
        seen["n"] += 1
        return seen["n"] == 2

    with Faults(store.db) as faults:
        rule = faults.fail(second_subtask_chunk, when="after")
        with pytest.raises(sa.exc.OperationalError):
            submit(store, template)
        assert rule.fired == 1
    assert rows(db_url) == before

    task_id = submit(store, template)
    after = rows(db_url)
    assert after["dagtask_task"] == before["dagtask_task"] + 1
    assert after["dagtask_subtask"] == before["dagtask_subtask"] + SIZE
    assert after["dagtask_subtask_edge"] == before["dagtask_subtask_edge"] + SIZE - 1
    assert after["dagtask_template"] == before["dagtask_template"] + 1
    stored = store.get_task(task_id)
    ids = sorted(s.id for s in stored.subtasks)
    assert ids == list(range(ids[0], ids[0] + SIZE))  # one block of ids across the chunks
    ready = [s.name for s in stored.subtasks if s.status is SubtaskStatus.READY]
    assert ready == ["s00000"]  # the chain's root, READY in the same transaction
    assert sum(1 for s in stored.subtasks if s.status is SubtaskStatus.PENDING) == SIZE - 1
