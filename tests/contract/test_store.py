"""One store suite, run on SQLite, PostgreSQL and MariaDB (see ``db_url`` in conftest)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import sqlalchemy as sa

from dagtask import TaskStatus, TemplateBuilder
from dagtask.errors import SchemaOutdatedError, TaskNotFoundError
from dagtask.expand import expand, task_context
from dagtask.models import EventKind
from dagtask.planner import AttemptResult
from dagtask.states import Operation, SubtaskStatus, TaskType
from dagtask.store import db as dbmod
from dagtask.store.schema import metadata
from dagtask.store.sql import Store

NOOP = "dagtask.builtin.noop"


@pytest.fixture
def store(db_url: str) -> Store:
    database = dbmod.open_database(db_url)
    yield Store(database)
    database.dispose()


def chain(n: int, concurrency: int = 10, retry_count: int = 0) -> object:
    t = TemplateBuilder(f"chain{n}", concurrency=concurrency)
    prev: list[str] = []
    for i in range(n):
        prev = [t.add(f"s{i}", NOOP, after=prev, retry_count=retry_count)]
    return t.build()


def fan(n: int, concurrency: int) -> object:
    t = TemplateBuilder(f"fan{n}", concurrency=concurrency)
    t.add("root", NOOP)
    for i in range(n):
        t.add(f"m{i}", NOOP, after=["root"])
    t.add("sink", NOOP, after=[f"m{i}" for i in range(n)])
    return t.build()


def submit(store: Store, tpl: object, **args: str) -> int:
    expanded = expand(tpl, task_context(tpl, args))  # type: ignore[arg-type]
    return store.submit(
        expanded,
        template_id=store.save_template(tpl),
        creator="tester",
        executor="here",  # type: ignore[arg-type]
    )


def drain(store: Store, fail: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Run every READY subtask to the end in this thread; return the names in run order."""
    order = []
    while claims := store.claim("w1", limit=5):
        for c in claims:
            order.append(c.name)
            ok = c.name not in fail
            store.finish(c, AttemptResult(ok=ok, message=None if ok else "boom"), output=c.context)
    return order


def test_fresh_database_is_created_at_head_and_matches_the_tables(db_url: str) -> None:
    database = dbmod.open_database(db_url)
    assert dbmod.current_revision(database) == dbmod.head_revision()
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    # The migration creates exactly what schema.py declares (no missing/extra tables or indexes).
    assert [
        d
        for d in diff
        if d[0]
        in ("add_table", "remove_table", "add_index", "remove_index", "add_column", "remove_column")
    ] == []
    database.dispose()


def test_schema_behind_is_refused_with_upgrade_advice(db_url: str) -> None:
    database = dbmod.open_database(db_url)
    with database.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    database.dispose()
    with pytest.raises(SchemaOutdatedError, match=r"does not know|dagtask db upgrade"):
        dbmod.open_database(db_url)


def test_submit_stores_roots_ready_others_pending(store: Store) -> None:
    task_id = submit(store, chain(3), host_id="2")
    task = store.get_task(task_id)
    assert task.status is TaskStatus.RUNNING and task.operation is Operation.EXECUTE
    by_name = {s.name: s for s in task.subtasks}
    assert by_name["s0"].status is SubtaskStatus.READY
    assert {by_name["s1"].status, by_name["s2"].status} == {SubtaskStatus.PENDING}
    assert by_name["s1"].upstreams == [by_name["s0"].id]
    assert by_name["s0"].downstreams == [by_name["s1"].id]
    assert all(s.run_time == 1 for s in task.subtasks)
    assert task.context.string_map == {"prohibit_rollback": "false", "host_id": "2"}
    kinds = [e.kind for e in store.events(task_id)]
    assert kinds == [EventKind.TASK_SUBMITTED, EventKind.SUBTASK_STATUS]


def test_a_chain_runs_in_order_and_every_change_has_its_event(store: Store) -> None:
    task_id = submit(store, chain(5))
    assert drain(store) == [f"s{i}" for i in range(5)]
    task = store.get_task(task_id)
    assert task.status is TaskStatus.SUCCESSFUL and task.finish_time is not None
    events = store.events(task_id)
    per_subtask = Counter(e.subtask_id for e in events if e.subtask_id)
    # PENDING->READY, READY->RUNNING, RUNNING->SUCCESSFUL for each subtask (the root skips none).
    assert set(per_subtask.values()) == {3}
    last = events[-1]
    assert (last.kind, last.old_status, last.new_status) == (
        EventKind.TASK_STATUS,
        "RUNNING",
        "SUCCESSFUL",
    )


def test_a_claim_is_won_by_exactly_one_worker(store: Store) -> None:
    submit(store, fan(60, concurrency=60))
    drain_root = store.claim("w0")
    store.finish(drain_root[0], AttemptResult(ok=True), output=drain_root[0].context)
    won: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    barrier = threading.Barrier(3)

    def grab(name: str) -> None:
        barrier.wait()
        while claims := store.claim(name, limit=2):
            won[name].extend(c.subtask_id for c in claims)

    threads = [threading.Thread(target=grab, args=(n,)) for n in won]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_ids = [i for ids in won.values() for i in ids]
    assert len(all_ids) == 60 and len(set(all_ids)) == 60


def test_concurrency_caps_ready_and_running(store: Store) -> None:
    task_id = submit(store, fan(20, concurrency=4))
    root = store.claim("w")[0]
    store.finish(root, AttemptResult(ok=True), output=root.context)
    task = store.get_task(task_id)
    assert sum(s.status is SubtaskStatus.READY for s in task.subtasks) == 4
    claims = store.claim("w", limit=10)
    assert len(claims) == 4
    store.finish(claims[0], AttemptResult(ok=True), output=claims[0].context)
    task = store.get_task(task_id)
    active = [s for s in task.subtasks if s.status in (SubtaskStatus.READY, SubtaskStatus.RUNNING)]
    assert len(active) == 4


def test_failure_with_retries_goes_back_to_ready_then_fails(store: Store) -> None:
    task_id = submit(store, chain(2, retry_count=1))
    first = store.claim("w")[0]
    out = store.finish(first, AttemptResult(ok=False, message="boom"))
    assert out.status is SubtaskStatus.READY
    again = store.claim("w")[0]
    assert (again.run_time, again.operation) == (2, Operation.RETRY)
    out = store.finish(again, AttemptResult(ok=False, message="boom again"))
    assert out.status is SubtaskStatus.FAILED and out.task_status is TaskStatus.FAILED
    task = store.get_task(task_id)
    s0 = task.subtask("s0")
    assert (s0.status, s0.operation, s0.run_time, s0.message) == (
        SubtaskStatus.FAILED,
        Operation.RETRY,
        2,
        "boom again",
    )
    assert task.subtask("s1").status is SubtaskStatus.PENDING


def test_a_stale_result_is_discarded(store: Store) -> None:
    submit(store, chain(1, retry_count=1))
    claim = store.claim("w")[0]
    assert store.finish(claim, AttemptResult(ok=False, message="timed out after 1 s")).applied
    late = store.finish(claim, AttemptResult(ok=True), log_text="late line\n")
    assert not late.applied
    again = store.claim("w")[0]
    assert again.run_time == 2


def test_logs_are_kept_per_run_time(store: Store) -> None:
    task_id = submit(store, chain(1, retry_count=1))
    c1 = store.claim("w")[0]
    store.finish(c1, AttemptResult(ok=False, message="x"), log_text="first\n")
    c2 = store.claim("w")[0]
    store.finish(c2, AttemptResult(ok=True), log_text="second\n")
    text = store.read_log(task_id, c1.subtask_id)
    assert text.index("first") < text.index("second")
    assert "current state: RUNNING, new state: FAILED" in text
    assert "current state: RUNNING, new state: SUCCESSFUL" in text
    with pytest.raises(TaskNotFoundError, match="20000"):
        store.read_log(task_id + 1, c1.subtask_id)


def test_unknown_task_is_error_20000(store: Store) -> None:
    with pytest.raises(TaskNotFoundError, match="20000"):
        store.get_task(424242)


def test_templates_are_versioned_by_definition(store: Store) -> None:
    a = store.save_template(chain(2))
    assert store.save_template(chain(2)) == a
    b = store.save_template(chain(2, retry_count=3))
    assert b != a
    versions = {name: version for name, version, _ in store.stored_templates()}
    assert versions["chain2"] == 2


def test_list_tasks_pages_and_filters(store: Store) -> None:
    ids = [submit(store, chain(1)) for _ in range(5)]
    page = store.list_tasks(page=1, size=2)
    assert [t.id for t in page.tasks] == sorted(ids, reverse=True)[:2]
    assert (page.total_elements, page.total_pages) == (5, 3)
    drain(store)
    assert store.list_tasks(statuses=[TaskStatus.RUNNING]).total_elements == 0
    assert store.list_tasks(name="chain").total_elements == 5
    assert store.list_tasks(name="ch_in").total_elements == 0  # "_" is not a wildcard
    assert store.list_tasks(name="%").total_elements == 0
    assert store.list_tasks(types=[TaskType.MANUAL]).total_elements == 5
    assert store.list_tasks(types=[TaskType.SCHEDULED]).total_elements == 0


def test_the_host_filter_finds_batches_acting_on_the_host(store: Store) -> None:
    tpl = chain(1)
    single = store.submit(
        expand(tpl, task_context(tpl)),  # type: ignore[arg-type]
        template_id=None,
        creator="t",
        executor="here",
        host_id=7,
    )
    drain(store)  # one host operation per host at a time: the first must end
    batch = store.submit(
        expand(tpl, task_context(tpl)),  # type: ignore[arg-type]
        template_id=None,
        creator="t",
        executor="here",
        hosts=[7, 8],
    )
    assert [t.id for t in store.list_tasks(host_id=7).tasks] == [batch, single]
    assert [t.id for t in store.list_tasks(host_id=8).tasks] == [batch]
    assert store.list_tasks(host_id=9).total_elements == 0


def test_ids_are_unique_across_concurrent_submitters(db_url: str) -> None:
    database = dbmod.open_database(db_url)
    store = Store(database)
    got: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            task_id = submit(store, chain(3))
            with lock:
                got.append(task_id)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 20
    with database.read() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM dagtask_subtask")).scalar()
    assert n == 60
    database.dispose()


@pytest.mark.parametrize("limit", [1, 3])
def test_a_claim_takes_at_most_its_limit(store: Store, limit: int) -> None:
    submit(store, fan(10, concurrency=10))
    root = store.claim("w")
    assert len(root) == 1
    store.finish(root[0], AttemptResult(ok=True), output=root[0].context)
    assert len(store.claim("w", limit=limit)) == limit
    claims = store.claim("w", limit=limit, task_id=root[0].task_id)
    assert len(claims) == limit


def test_finish_can_claim_the_successor_it_unblocked(store: Store) -> None:
    submit(store, fan(5, concurrency=5))
    root = store.claim("w")[0]
    out = store.finish(
        root, AttemptResult(ok=True), output=root.context, executor="w", claim_next=True
    )
    assert out.promoted == 5 and out.next is not None and out.next.task_id == root.task_id
    task = store.get_task(root.task_id)
    running = [s for s in task.subtasks if s.status is SubtaskStatus.RUNNING]
    assert [s.id for s in running] == [out.next.subtask_id]
    assert len(store.claim("v", limit=10)) == 4


# ---- regressions found by the state machine (tests/contract/test_state_machine.py) ------------


def test_cancelling_a_task_twice_is_harmless(store: Store) -> None:
    task_id = submit(store, chain(1))
    store.claim("w1")
    store.cancel_task(task_id, "op")  # the running subtask is now CANCELING
    store.cancel_task(task_id, "op")  # again, before the worker noticed: nothing left to change
    assert store.get_task(task_id).subtasks[0].status is SubtaskStatus.CANCELING


def test_retrying_a_subtask_of_a_running_task_writes_no_task_event(store: Store) -> None:
    t = TemplateBuilder("two")
    t.add("a", NOOP)
    t.add("b", NOOP)
    task_id = submit(store, t.build())
    a, _b = store.claim("w1", limit=2)
    store.finish(a, AttemptResult(ok=False, message="boom"))  # b still runs: the task is RUNNING
    seen = store.events(task_id)[-1].id
    store.retry_subtask(task_id, a.subtask_id, "op")
    task_events = [e for e in store.events(task_id, after_id=seen) if e.subtask_id is None]
    # Nothing happened to the task's status: no TASK_STATUS event RUNNING -> RUNNING.
    assert [(e.old_status, e.new_status) for e in task_events] == []


def test_cancelling_a_rollback_does_not_count_as_rolled_back(store: Store) -> None:
    t = TemplateBuilder("rollback then cancel")
    t.add("a", NOOP)
    t.add("b", NOOP, after=["a"])
    t.add("c", NOOP)
    task_id = submit(store, t.build())
    drain(store, fail={"c"})  # a, b SUCCESSFUL; c FAILED; the task FAILED
    store.rollback_task(task_id, "op")  # b and c READY to roll back, a waits for b
    store.cancel_task(task_id, "op")  # nothing has rolled back yet
    task = store.get_task(task_id)
    assert task.subtask("a").status is SubtaskStatus.SUCCESSFUL  # a was never undone
    # SPEC §3/§4: a rollback is SUCCESSFUL only when every subtask is back to PENDING.
    assert (task.status, task.operation) == (TaskStatus.FAILED, Operation.ROLLBACK)


def test_a_failed_attempt_withdrawn_by_a_task_cancel_is_still_rolled_back(store: Store) -> None:
    task_id = submit(store, chain(1, retry_count=1))
    (a,) = store.claim("w1")
    store.finish(a, AttemptResult(ok=False, message="boom"))  # ran (half-way?), READY to retry
    store.cancel_task(task_id, "op")  # withdraws the retry: a is PENDING again, the task FAILED
    assert store.get_task(task_id).status is TaskStatus.FAILED
    store.rollback_task(task_id, "op")
    sub = store.get_task(task_id).subtasks[0]
    # a's execute ran and failed: the rollback must undo it, not treat it as never run.
    assert (sub.status, sub.operation) == (SubtaskStatus.READY, Operation.ROLLBACK)


def test_a_late_result_never_finishes_a_later_cancelled_attempt(store: Store) -> None:
    t = TemplateBuilder("two")
    t.add("a", NOOP)
    t.add("b", NOOP)
    task_id = submit(store, t.build())
    a, b = store.claim("w1", limit=2)
    store.finish(a, AttemptResult(ok=True))
    store.finish(b, AttemptResult(ok=False, message="boom"))
    store.rollback_task(task_id, "op")
    rollbacks = store.claim("w1", limit=2, task_id=task_id)
    a2 = next(c for c in rollbacks if c.subtask_id == a.subtask_id)
    assert (a2.operation, a2.run_time) == (Operation.ROLLBACK, a.run_time)
    store.cancel_subtask(task_id, a.subtask_id, "op")  # a's rollback is now CANCELING
    # The execute attempt of a, recorded long ago, reports again (a late duplicate):
    outcome = store.finish(a, AttemptResult(ok=True))
    sub = next(s for s in store.get_task(task_id).subtasks if s.id == a.subtask_id)
    last = [e for e in store.events(task_id) if e.subtask_id == a.subtask_id][-1]
    assert not outcome.applied
    # (Today the history says a ended FAILED/CANCEL while its row is still CANCELING.)
    assert (last.new_status, sub.status) == ("CANCELING", SubtaskStatus.CANCELING)


def test_a_new_attempt_gets_a_new_run_time(store: Store) -> None:
    task_id = submit(store, chain(1))
    (first,) = store.claim("w1")
    store.finish(first, AttemptResult(ok=False, message="boom"))
    store.rollback_task(task_id, "op")
    (undo,) = store.claim("w1")  # the rollback attempt
    store.cancel_subtask(task_id, undo.subtask_id, "op")
    # Its handler ignores the interrupt; after the grace period the watchdog records the cancel.
    store.finish(undo, AttemptResult(ok=False, message="cancelled", cancelled=True))
    store.rollback_task(task_id, "op")  # roll back again: a new rollback attempt
    (again,) = store.claim("w2")
    assert (again.operation, again.run_time) != (undo.operation, undo.run_time)
    # The first rollback's handler returns at last: its result is stale.
    assert not store.finish(undo, AttemptResult(ok=True)).applied
    assert store.get_task(task_id).subtasks[0].status is SubtaskStatus.RUNNING


def test_an_operator_restart_after_a_task_cancel_fills_free_slots(store: Store) -> None:
    t = TemplateBuilder("three roots", concurrency=2)
    for name in ("a", "b", "c"):
        t.add(name, NOOP)
    task_id = submit(store, t.build())  # two roots READY (concurrency 2), one PENDING
    (x,) = store.claim("w1")
    store.cancel_task(task_id, "op")  # x CANCELING, the other READY root back to PENDING
    store.finish(x, AttemptResult(ok=False, message="stopped", cancelled=True))
    assert store.get_task(task_id).status is TaskStatus.FAILED
    store.retry_subtask(task_id, x.subtask_id, "op")  # the task RUNNING again
    task = store.get_task(task_id)
    active = [s for s in task.subtasks if s.status is SubtaskStatus.READY]
    # One slot is free and two roots could start: the restart should promote one, as
    # retry_task and rollback_task do.
    assert len(active) == task.concurrency
