"""A purge of 100,000 finished subtasks while workers keep running new tasks (SQLite, where a
batch holds the one write lock: the case where a long purge transaction would stop workers)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import sqlalchemy as sa

from dagtask import Engine, TaskTemplate, TemplateBuilder
from dagtask.clock import utcnow
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.store import retention
from dagtask.store.db import Database
from dagtask.store.schema import subtask, subtask_edge, subtask_log, task, task_event
from dagtask.store.sql import Store
from tests.contract.test_retention import rows_of
from tests.processes import wait_until

NOOP = "dagtask.builtin.noop"
TASKS = 1_000
PER_TASK = 100
WAIT = 60.0


def _stamp(when: datetime) -> str:
    """A time as SQLAlchemy writes it into SQLite (so comparisons with the store's match)."""
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


def _insert(
    conn: sa.Connection,
    table: sa.Table,
    columns: str,
    rows: list[tuple[object, ...]],
    fixed: str = "",
    values: str = "",
) -> None:
    """One driver-level executemany of ``rows`` into ``columns`` (SQLAlchemy's per-row
    processing would take seconds), with ``fixed`` columns set to the SQL ``values``."""
    marks = ", ".join("?" * len(columns.split(",")))
    names = f"{columns}, {fixed}" if fixed else columns
    row = f"{marks}, {values}" if fixed else marks
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({row})", rows)


def bulk_finished(
    db: Database,
    tasks: int,
    per_task: int,
    finished: datetime,
    status: SubtaskStatus = SubtaskStatus.SUCCESSFUL,
) -> list[int]:
    """``tasks`` SUCCESSFUL chains of ``per_task`` subtasks finished at ``finished``, each
    subtask with one event and one log row, inserted in bulk into SQLite; the ids come from the
    id allocator, so tasks the engine submits later get others. ``status``: of each task's last
    subtask (RUNNING makes a task the purge must never touch)."""
    begin, end = _stamp(finished - timedelta(minutes=1)), _stamp(finished)
    context = '{"stringMap": {}, "listMap": {}}'
    with db.begin() as conn:
        first_task = Store._allocate(conn, "task", tasks)
        first_sub = Store._allocate(conn, "subtask", tasks * per_task)
        task_rows, subs, edges, events, logs = [], [], [], [], []
        for t in range(tasks):
            tid = first_task + t
            task_rows.append((tid, f"old {t}", "SUCCESSFUL", context, begin, begin, end))
            events.append((tid, None, begin, "TASK_SUBMITTED", None, "RUNNING"))
            for s in range(per_task):
                sid = first_sub + t * per_task + s
                state = status.value if s == per_task - 1 else SubtaskStatus.SUCCESSFUL.value
                subs.append((sid, tid, per_task - 1 - s, f"s{s}", f"s{s}", state, begin, end))
                if s:
                    edges.append((sid - 1, sid, tid))
                events.append((tid, sid, end, "SUBTASK_STATUS", "RUNNING", "SUCCESSFUL"))
                logs.append((sid, 1, "done\n", begin))
        # The columns every row shares are constants in the statement.
        _insert(
            conn,
            task,
            "id, name, status, context, create_time, start_time, finish_time",
            task_rows,
            "type, operation, creator, executor, prohibit_rollback, concurrency",
            "'MANUAL', 'EXECUTE', 'bulk', 'bulk', 0, 10",
        )
        _insert(
            conn,
            subtask,
            "id, task_id, series_id, name, description, status, start_time, finish_time",
            subs,
            "class_name, node_type, operation, run_time, timeout, retry_count, parallel, "
            "parallel_idx, prohibit_rollback, pending_upstreams, executor, create_time",
            f"'{NOOP}', 'JAVA_TASK', 'EXECUTE', 1, 0, 0, 0, -1, 0, 0, 'bulk', '{begin}'",
        )
        _insert(conn, subtask_edge, "upstream_id, downstream_id, task_id", edges)
        _insert(conn, task_event, "task_id, subtask_id, time, kind, old_status, new_status", events)
        _insert(conn, subtask_log, "subtask_id, run_time, text, create_time", logs)
    return list(range(first_task, first_task + tasks))


def chain(n: int) -> TaskTemplate:
    t = TemplateBuilder(f"live chain {n}", concurrency=4)
    prev: list[str] = []
    for i in range(n):
        prev = [t.add(f"c{i}", NOOP, after=prev)]
    return t.build()


def test_a_100k_subtask_purge_goes_in_batches_while_workers_keep_running(
    sqlite_url: str,
) -> None:
    engine = Engine(sqlite_url, workers=4, poll_interval=0.05)
    db = engine.database
    try:
        built = time.perf_counter()
        old = bulk_finished(db, TASKS, PER_TASK, utcnow() - timedelta(days=60))
        # Old too, but its last subtask is RUNNING (a task the purge must never touch).
        pinned = bulk_finished(db, 1, 5, utcnow() - timedelta(days=60), SubtaskStatus.RUNNING)
        recent = bulk_finished(db, 3, 10, utcnow() - timedelta(days=1))
        built = time.perf_counter() - built
        before = rows_of(db, old)
        assert before == {
            "tasks": TASKS,
            "subtasks": TASKS * PER_TASK,
            "links": TASKS * (PER_TASK - 1),
            "events": TASKS * (PER_TASK + 1),
            "logs": TASKS * PER_TASK,
        }
        kept_before = rows_of(db, pinned + recent)
        engine.start()
        live: list[int] = []

        def first_step_done(task_id: int) -> bool:
            return any(s.status is SubtaskStatus.SUCCESSFUL for s in engine.get(task_id).subtasks)

        def between_batches(progress: retention.PurgeProgress) -> None:
            # Submitted between two batches, a task must get going before the next batch:
            # the purge holds no lock between its transactions.
            if progress.batch <= 5:
                live.append(engine.submit(chain(20), args={}).id)
                wait_until(lambda: first_step_done(live[-1]), "a live task to start", WAIT)

        report = retention.purge_tasks(
            db, older_than=timedelta(days=30), batch=200, on_batch=between_batches
        )

        assert (report.tasks, report.subtasks) == (TASKS, TASKS * PER_TASK)
        assert (report.events, report.logs, report.links) == (
            before["events"],
            before["logs"],
            before["links"],
        )
        # Bounded batches: at most MAX_BATCH_SUBTASKS subtasks each.
        assert report.batches >= TASKS * PER_TASK // retention.MAX_BATCH_SUBTASKS
        assert rows_of(db, old) == dict.fromkeys(before, 0)
        assert rows_of(db, pinned + recent) == kept_before
        for task_id in live:
            assert engine.wait(task_id, WAIT).status is TaskStatus.SUCCESSFUL
        print(
            f"\nbuilt {TASKS * PER_TASK} subtasks in {built:.2f} s; purged them in "
            f"{report.seconds:.2f} s, {report.batches} batches, longest batch transaction "
            f"{report.longest_batch * 1000:.0f} ms, median "
            f"{sorted(report.batch_seconds)[len(report.batch_seconds) // 2] * 1000:.0f} ms"
        )
    finally:
        engine.close()
