"""Reads of the store: a task list costs a constant number of statements whatever its page size,
and a task or a page is read from one snapshot even while a worker commits in between
(SQLite, PostgreSQL and MariaDB; see ``db_url`` in conftest)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from dagtask import TemplateBuilder
from dagtask.expand import expand, task_context
from dagtask.planner import AttemptResult
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.store import db as dbmod
from dagtask.store.sql import Store
from dagtask.template import TaskTemplate

NOOP = "dagtask.builtin.noop"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    database = dbmod.open_database(db_url)
    yield Store(database)
    database.dispose()


def chain(n: int) -> TaskTemplate:
    t = TemplateBuilder(f"chain{n}", concurrency=10)
    prev: list[str] = []
    for i in range(n):
        prev = [t.add(f"s{i}", NOOP, after=prev)]
    return t.build()


def submit_many(store: Store, template: TaskTemplate, count: int) -> list[int]:
    template_id = store.save_template(template)
    return [
        store.submit(
            expand(template, task_context(template, {"n": str(i)})),
            template_id=template_id,
            creator="tester",
            executor="here",
        )
        for i in range(count)
    ]


class StatementCounter:
    """Records the statements sent to the database while it is attached."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        """How many statements were sent."""
        return len(self.statements)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        self.statements.append(statement)

    def __enter__(self) -> StatementCounter:
        sa.event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._seen)


def test_a_page_of_2000_tasks_costs_the_same_few_statements_as_a_page_of_one(
    store: Store,
) -> None:
    ids = submit_many(store, chain(3), 2000)
    with StatementCounter(store.db.read_engine) as one:
        small = store.list_tasks(size=1)
    with StatementCounter(store.db.read_engine) as many:
        page = store.list_tasks(size=2000)
    assert [t.id for t in small.tasks] == [ids[-1]]
    assert many.count == one.count <= 4  # the count, the tasks, their subtasks (+ a BEGIN)
    # Only what a list shows: no links, no output contexts (get_task reads those).
    assert not [q for q in many.statements if "dagtask_subtask_edge" in q or "output_context" in q]
    assert [t.id for t in page.tasks] == sorted(ids, reverse=True)
    assert page.total_elements == 2000
    position = {task_id: i for i, task_id in enumerate(ids)}
    for task in page.tasks:
        # Roots first, as the REST list and `dagtask list` show them.
        assert [s.name for s in task.subtasks] == ["s0", "s1", "s2"]
        assert {s.task_id for s in task.subtasks} == {task.id}
        assert [s.status for s in task.subtasks] == [
            SubtaskStatus.READY,
            SubtaskStatus.PENDING,
            SubtaskStatus.PENDING,
        ]
        assert task.context.string_map["n"] == str(position[task.id])
    # A page's subtasks leave out what only a task's detail shows.
    assert all(s.upstreams == [] and s.context is None for s in page.tasks[0].subtasks)
    detail = store.get_task(ids[0])
    assert [s.upstreams for s in detail.subtasks][1:] == [
        [detail.subtasks[0].id],
        [detail.subtasks[1].id],
    ]


def test_a_filtered_page_lists_only_its_own_subtasks(store: Store) -> None:
    first = submit_many(store, chain(2), 3)
    other = submit_many(store, chain(4), 2)
    page = store.list_tasks(name="chain4", size=10)
    assert [t.id for t in page.tasks] == sorted(other, reverse=True)
    assert [len(t.subtasks) for t in page.tasks] == [4, 4]
    assert store.list_tasks(page=2, size=2, descending=False).tasks[0].id == first[2]
    assert store.list_tasks(name="nothing").tasks == []


@contextmanager
def worker_commits_after(store: Store, statement_matches: Callable[[str], bool]) -> Iterator[None]:
    """Inside the block, right after the first read statement that ``statement_matches``, a
    worker finishes every subtask it is running and commits, on another connection, before
    the read goes on."""
    claims = store.claim("w1", limit=10)
    assert claims, "nothing was running"
    fired: list[str] = []

    def after(_conn: sa.Connection, _cursor: Any, statement: str, *_rest: Any) -> None:
        if fired or not statement_matches(statement):
            return
        fired.append(statement)
        for claim in claims:
            store.finish(claim, AttemptResult(ok=True), output=claim.context)

    sa.event.listen(store.db.read_engine, "after_cursor_execute", after)
    try:
        yield
    finally:
        sa.event.remove(store.db.read_engine, "after_cursor_execute", after)
    assert fired, "the worker never committed between the reads"


def _task_row_select(statement: str) -> bool:
    return statement.lstrip().upper().startswith("SELECT") and "FROM dagtask_task " in statement


def _page_select(statement: str) -> bool:
    return _task_row_select(statement) and "LIMIT" in statement.upper()


def test_get_task_reads_one_snapshot_while_a_worker_commits_in_between(store: Store) -> None:
    (task_id,) = submit_many(store, chain(1), 1)
    with worker_commits_after(store, _task_row_select):
        seen = store.get_task(task_id)
    # The state before the worker's commit, whole: not a RUNNING task of SUCCESSFUL subtasks.
    assert seen.status is TaskStatus.RUNNING
    assert [s.status for s in seen.subtasks] == [SubtaskStatus.RUNNING]
    after = store.get_task(task_id)
    assert after.status is TaskStatus.SUCCESSFUL
    assert [s.status for s in after.subtasks] == [SubtaskStatus.SUCCESSFUL]


def test_a_list_page_reads_one_snapshot_while_a_worker_commits_in_between(store: Store) -> None:
    ids = submit_many(store, chain(1), 3)
    with worker_commits_after(store, _page_select):
        page = store.list_tasks(size=10)
    assert [t.id for t in page.tasks] == sorted(ids, reverse=True)
    for task in page.tasks:
        assert task.status is TaskStatus.RUNNING
        assert [s.status for s in task.subtasks] == [SubtaskStatus.RUNNING]
    again = store.list_tasks(size=10)
    assert {t.status for t in again.tasks} == {TaskStatus.SUCCESSFUL}
    assert {s.status for t in again.tasks for s in t.subtasks} == {SubtaskStatus.SUCCESSFUL}
