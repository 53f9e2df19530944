"""Prebuilt SQLAlchemy Core statements for the task store's hot path.

Built once at import time and executed with bound parameters, so claiming and finishing never
build a query (SQLAlchemy's compiled cache does the rest).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from dagtask import states
from dagtask.states import Operation, SubtaskStatus
from dagtask.store.schema import (
    host_lock,
    id_sequence,
    subtask,
    subtask_edge,
    subtask_log,
    task,
    task_event,
    task_host,
)

S = SubtaskStatus
ACTIVE = [s.value for s in states.ACTIVE_SUBTASK_STATUSES]


lock_task = (
    sa.select(task.c.status, task.c.operation, task.c.concurrency, task.c.cancel_requested)
    .where(task.c.id == sa.bindparam("task_id"))
    .with_for_update()
)
lock_subtask = (
    sa.select(
        subtask.c.status,
        subtask.c.operation,
        subtask.c.run_time,
        subtask.c.retry_count,
        subtask.c.executor,
    )
    .where(subtask.c.id == sa.bindparam("sid"))
    .with_for_update()
)
set_subtask = (
    subtask.update()
    .where(subtask.c.id == sa.bindparam("sid"))
    .where(subtask.c.status == sa.bindparam("old_status"))
    .values(
        status=sa.bindparam("new_status"),
        operation=sa.bindparam("new_operation"),
        run_time=sa.bindparam("new_run_time"),
    )
)


def _finish_statement(*, keep_output: bool) -> sa.Update:
    """The end of an attempt, conditional on the subtask still being in that attempt."""
    values: dict[str, sa.BindParameter[Any]] = {
        "status": sa.bindparam("new_status"),
        "operation": sa.bindparam("new_operation"),
        "run_time": sa.bindparam("new_run_time"),
        "message": sa.bindparam("message"),
        "finish_time": sa.bindparam("now"),
    }
    if not keep_output:
        values["output_context"] = sa.bindparam("output")
    return (
        subtask.update()
        .where(
            subtask.c.id == sa.bindparam("sid"),
            subtask.c.status == sa.bindparam("old_status"),
            subtask.c.operation == sa.bindparam("old_operation"),
            subtask.c.run_time == sa.bindparam("old_run_time"),
        )
        .values(values)
    )


finish_subtask = _finish_statement(keep_output=False)
finish_subtask_keep_output = _finish_statement(keep_output=True)
"""The same, for a rollback: the subtask keeps the output its execute recorded."""
insert_event = task_event.insert()
insert_log = subtask_log.insert()
count_active = sa.select(sa.func.count()).where(
    subtask.c.task_id == sa.bindparam("task_id"), subtask.c.status.in_(ACTIVE)
)
runnable = (
    sa.select(subtask.c.id, subtask.c.operation, subtask.c.run_time)
    .where(
        subtask.c.task_id == sa.bindparam("task_id"),
        subtask.c.status == S.PENDING.value,
        subtask.c.pending_upstreams == 0,
    )
    .order_by(subtask.c.id.desc())
    .limit(sa.bindparam("limit"))
)
has_status = (
    sa.select(subtask.c.id)
    .where(subtask.c.task_id == sa.bindparam("task_id"), subtask.c.status == sa.bindparam("st"))
    .limit(1)
)
set_task = (
    task.update()
    .where(task.c.id == sa.bindparam("task_id"))
    .values(status=sa.bindparam("status"), finish_time=sa.bindparam("finish_time"))
)
claim_candidates = (
    sa.select(subtask.c.id)
    .where(subtask.c.status == S.READY.value)
    .order_by(subtask.c.id)
    .limit(sa.bindparam("limit"))
    .with_for_update(skip_locked=True)
)
claim_candidates_of_task = (
    sa.select(subtask.c.id)
    .where(subtask.c.status == S.READY.value, subtask.c.task_id == sa.bindparam("only_task"))
    .order_by(subtask.c.id)
    .limit(sa.bindparam("limit"))
    .with_for_update(skip_locked=True)
)
claim_one = (
    subtask.update()
    .where(subtask.c.id == sa.bindparam("sid"), subtask.c.status == S.READY.value)
    .values(
        status=S.RUNNING.value, executor=sa.bindparam("executor"), start_time=sa.bindparam("now")
    )
)
CLAIM_COLUMNS = (
    subtask.c.id,
    subtask.c.output_context,
    subtask.c.task_id,
    subtask.c.name,
    subtask.c.class_name,
    subtask.c.operation,
    subtask.c.run_time,
    subtask.c.timeout,
    subtask.c.retry_count,
    subtask.c.parallel,
    subtask.c.parallel_idx,
)
claim_returning = (
    subtask.update()
    .where(subtask.c.id.in_(claim_candidates.scalar_subquery()), subtask.c.status == S.READY.value)
    .values(
        status=S.RUNNING.value, executor=sa.bindparam("executor"), start_time=sa.bindparam("now")
    )
    .returning(*CLAIM_COLUMNS)
)
claim_returning_of_task = (
    subtask.update()
    .where(
        subtask.c.id.in_(claim_candidates_of_task.scalar_subquery()),
        subtask.c.status == S.READY.value,
    )
    .values(
        status=S.RUNNING.value, executor=sa.bindparam("executor"), start_time=sa.bindparam("now")
    )
    .returning(*CLAIM_COLUMNS)
)
claim_ids_returning = (
    subtask.update()
    .where(subtask.c.id.in_(sa.bindparam("ids", expanding=True)), subtask.c.status == S.READY.value)
    .values(
        status=S.RUNNING.value, executor=sa.bindparam("executor"), start_time=sa.bindparam("now")
    )
    .returning(*CLAIM_COLUMNS)
)
"""PostgreSQL: the UPDATE of the rows a ``FOR UPDATE SKIP LOCKED`` select picked. (One
``UPDATE … WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`` is wrong there: the planner may
re-run the subquery per row, and each run skips the rows locked by the previous ones.)"""

claimed_rows = sa.select(*CLAIM_COLUMNS).where(
    subtask.c.id.in_(sa.bindparam("ids", expanding=True))
)
upstream_outputs = (
    sa.select(subtask.c.output_context)
    .join(subtask_edge, subtask_edge.c.upstream_id == subtask.c.id)
    .where(subtask_edge.c.downstream_id == sa.bindparam("sid"))
    .order_by(subtask.c.id)
)
task_context = sa.select(task.c.context).where(task.c.id == sa.bindparam("task_id"))
any_ready = sa.select(subtask.c.id).where(subtask.c.status == S.READY.value).limit(1)
task_status = sa.select(task.c.status).where(task.c.id == sa.bindparam("task_id"))
next_ids = (
    id_sequence.update()
    .where(id_sequence.c.name == sa.bindparam("seq"))
    .values(next_value=id_sequence.c.next_value + sa.bindparam("n"))
)
read_next_id = sa.select(id_sequence.c.next_value).where(id_sequence.c.name == sa.bindparam("seq"))


_down = subtask.alias("down")
rollback_runnable = (
    sa.select(subtask.c.id, subtask.c.operation, subtask.c.run_time)
    .where(
        subtask.c.task_id == sa.bindparam("task_id"),
        subtask.c.status == S.SUCCESSFUL.value,
        subtask.c.operation == Operation.ROLLBACK.value,
        ~sa.exists(
            sa.select(subtask_edge.c.downstream_id)
            .join(_down, _down.c.id == subtask_edge.c.downstream_id)
            .where(
                subtask_edge.c.upstream_id == subtask.c.id,
                _down.c.status != S.PENDING.value,
            )
        ),
    )
    .order_by(subtask.c.id)
    .limit(sa.bindparam("limit"))
)
"""SUCCESSFUL subtasks waiting to roll back whose downstreams are all PENDING (SPEC §4)."""

adjust_downstreams = (
    subtask.update()
    .where(
        subtask.c.id.in_(
            sa.select(subtask_edge.c.downstream_id).where(
                subtask_edge.c.upstream_id == sa.bindparam("sid")
            )
        )
    )
    .values(pending_upstreams=subtask.c.pending_upstreams + sa.bindparam("delta"))
)
"""Keep ``pending_upstreams`` true when an upstream enters or leaves SUCCESSFUL."""

set_task_operation = (
    task.update()
    .where(task.c.id == sa.bindparam("task_id"))
    .values(
        status=sa.bindparam("status"),
        operation=sa.bindparam("operation"),
        finish_time=None,
        cancel_requested=sa.bindparam("cancel_requested"),
    )
)
request_task_cancel = (
    task.update().where(task.c.id == sa.bindparam("task_id")).values(cancel_requested=True)
)
canceling_of = sa.select(subtask.c.id, subtask.c.run_time).where(
    subtask.c.status == S.CANCELING.value, subtask.c.executor == sa.bindparam("executor")
)
subtask_row = sa.select(subtask).where(subtask.c.id == sa.bindparam("sid"))
task_subtasks = sa.select(
    subtask.c.id,
    subtask.c.name,
    subtask.c.status,
    subtask.c.operation,
    subtask.c.run_time,
    subtask.c.prohibit_rollback,
).where(subtask.c.task_id == sa.bindparam("task_id"))


# ---- one host operation per host at a time ------------------------------------------------------

insert_task_hosts = task_host.insert()
hosts_of_task = sa.select(task_host.c.host_id).where(task_host.c.task_id == sa.bindparam("task_id"))
lock_holders = (
    sa.select(host_lock.c.host_id, host_lock.c.task_id, task.c.name, task.c.status)
    .join(task, task.c.id == host_lock.c.task_id, isouter=True)
    .where(host_lock.c.host_id.in_(sa.bindparam("hosts", expanding=True)))
    .order_by(host_lock.c.host_id)
)
insert_host_locks = host_lock.insert()
release_host_locks = host_lock.delete().where(host_lock.c.task_id == sa.bindparam("task_id"))
