"""Prebuilt SQLAlchemy Core statements for the task store's hot path.

Built once at import time and executed with bound parameters, so claiming and finishing never
build a query (SQLAlchemy's compiled cache does the rest).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

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
    worker,
)

S = SubtaskStatus


def _among(values: list[str]) -> list[sa.BindParameter[str]]:
    """Fixed values for ``IN``, one bound parameter each: a literal list would be an expanding
    parameter, rendered again on every execution (see :mod:`dagtask.store.prepared`)."""
    return [sa.literal(value) for value in values]


ACTIVE = _among([s.value for s in states.ACTIVE_SUBTASK_STATUSES])
HELD = _among([S.RUNNING.value, S.CANCELING.value])


lock_task = (
    sa.select(
        task.c.status,
        task.c.operation,
        task.c.concurrency,
        task.c.cancel_requested,
        task.c.historical,
    )
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
lock_subtasks_done = (
    sa.select(
        subtask.c.id,
        subtask.c.status,
        subtask.c.operation,
        subtask.c.run_time,
        subtask.c.finish_time,
    )
    .where(subtask.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(subtask.c.id)
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
        ocp_run_time=subtask.c.ocp_run_time + sa.bindparam("ocp_step"),
    )
)


def _finish_statement(*, keep_output: bool) -> sa.Update:
    """The end of an attempt, conditional on the subtask still being in that attempt."""
    values: dict[str, sa.ColumnElement[Any]] = {
        "status": sa.bindparam("new_status"),
        "operation": sa.bindparam("new_operation"),
        "run_time": sa.bindparam("new_run_time"),
        "ocp_run_time": subtask.c.ocp_run_time + sa.bindparam("ocp_step"),
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
insert_task = task.insert()
insert_subtasks = subtask.insert()
insert_edges = subtask_edge.insert()
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
_active = (
    sa.select(sa.func.count().label("n"))
    .where(subtask.c.task_id == sa.bindparam("task_id"), subtask.c.status.in_(ACTIVE))
    .subquery("active")
)
_runnable = runnable.subquery("r")
active_and_runnable = sa.select(
    _active.c.n, _runnable.c.id, _runnable.c.operation, _runnable.c.run_time
).select_from(_active.outerjoin(_runnable, sa.true()))
"""How many subtasks of a task are active, with its runnable PENDING ones (up to ``limit``),
in one round trip: one row with null ids when none is runnable."""
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


def _as_text(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """A JSON column as the driver returns it (text, or on PostgreSQL maybe parsed), so the
    statement can run on the driver directly; readers use ``TaskContext.from_stored``."""
    return sa.type_coerce(column, sa.Text).label(column.name)


def _as_int(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """A boolean column as the driver returns it (0/1 on SQLite and MariaDB), so the
    statement can run on the driver directly (:mod:`dagtask.store.prepared`); readers apply
    ``bool()``."""
    return sa.type_coerce(column, sa.Integer).label(column.name)


CLAIM_COLUMNS = (
    subtask.c.id,
    _as_text(subtask.c.output_context),
    subtask.c.task_id,
    subtask.c.name,
    subtask.c.class_name,
    subtask.c.operation,
    subtask.c.run_time,
    subtask.c.timeout,
    subtask.c.retry_count,
    _as_int(subtask.c.parallel),
    subtask.c.parallel_idx,
    _as_int(subtask.c.prohibit_rollback),
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

claim_ids = (
    subtask.update()
    .where(subtask.c.id.in_(sa.bindparam("ids", expanding=True)), subtask.c.status == S.READY.value)
    .values(
        status=S.RUNNING.value, executor=sa.bindparam("executor"), start_time=sa.bindparam("now")
    )
)


def _promote_and_claim(which: sa.ColumnElement[bool]) -> sa.Update:
    return (
        subtask.update()
        .where(which, subtask.c.status == sa.bindparam("old_status"))
        .values(
            status=S.RUNNING.value,
            operation=sa.bindparam("new_operation"),
            run_time=sa.bindparam("new_run_time"),
            executor=sa.bindparam("executor"),
            start_time=sa.bindparam("now"),
        )
    )


promote_and_claim = _promote_and_claim(subtask.c.id.in_(sa.bindparam("ids", expanding=True)))
promote_and_claim_returning = promote_and_claim.returning(*CLAIM_COLUMNS)
"""PENDING (or SUCCESSFUL) straight to RUNNING for the worker whose transaction unblocked them:
one statement where promoting and then claiming would take two."""
promote_and_claim_one = _promote_and_claim(subtask.c.id == sa.bindparam("sid"))
promote_and_claim_one_returning = promote_and_claim_one.returning(*CLAIM_COLUMNS)
"""The same for one subtask (a chain's next link): no expanding parameter to render."""
claimed_rows = sa.select(*CLAIM_COLUMNS).where(
    subtask.c.id.in_(sa.bindparam("ids", expanding=True))
)
task_context = sa.select(task.c.context).where(task.c.id == sa.bindparam("task_id"))
upstream_outputs_of = (
    sa.select(subtask_edge.c.downstream_id, subtask.c.id, _as_text(subtask.c.output_context))
    .join(subtask, subtask_edge.c.upstream_id == subtask.c.id)
    .where(subtask_edge.c.downstream_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(subtask_edge.c.downstream_id, subtask.c.id)
)
"""The upstream outputs of a batch of claimed subtasks, in upstream id order per subtask."""
upstream_outputs_of_one = (
    sa.select(subtask_edge.c.downstream_id, subtask.c.id, _as_text(subtask.c.output_context))
    .join(subtask, subtask_edge.c.upstream_id == subtask.c.id)
    .where(subtask_edge.c.downstream_id == sa.bindparam("sid"))
    .order_by(subtask.c.id)
)
task_contexts = sa.select(task.c.id, _as_text(task.c.context)).where(
    task.c.id.in_(sa.bindparam("ids", expanding=True))
)
any_ready = sa.select(subtask.c.id).where(subtask.c.status == S.READY.value).limit(1)
task_status = sa.select(task.c.status).where(task.c.id == sa.bindparam("task_id"))
next_ids = (
    id_sequence.update()
    .where(id_sequence.c.name == sa.bindparam("seq"))
    .values(next_value=id_sequence.c.next_value + sa.bindparam("n"))
)
read_next_id = sa.select(id_sequence.c.next_value).where(id_sequence.c.name == sa.bindparam("seq"))
next_ids_returning = next_ids.returning(id_sequence.c.next_value)
"""``next_ids`` and ``read_next_id`` in one statement, where UPDATE ... RETURNING exists."""


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
"""SUCCESSFUL subtasks waiting to roll back whose downstreams are all PENDING (docs/actions.md)."""

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
_crossed = (
    sa.select(subtask_edge.c.downstream_id, sa.func.count().label("n"))
    .where(subtask_edge.c.upstream_id.in_(sa.bindparam("ids", expanding=True)))
    .group_by(subtask_edge.c.downstream_id)
    .subquery("crossed")
)
adjust_downstreams_of = (
    subtask.update()
    .where(subtask.c.id == _crossed.c.downstream_id)
    .values(pending_upstreams=subtask.c.pending_upstreams + _crossed.c.n * sa.bindparam("sign"))
)
"""The same for many upstreams in one statement (``UPDATE … FROM``; SQLite ≥ 3.33)."""

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
subtask_row_locked = subtask_row.with_for_update()
"""An operator action's read of the subtask it changes: a claim in flight finishes first."""
task_subtasks = sa.select(
    subtask.c.id,
    subtask.c.name,
    subtask.c.status,
    subtask.c.operation,
    subtask.c.run_time,
    subtask.c.prohibit_rollback,
).where(subtask.c.task_id == sa.bindparam("task_id"))
task_subtasks_locked = task_subtasks.order_by(subtask.c.id).with_for_update()
"""The same, row-locked (in id order), for an operator action that changes them."""


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


# ---- workers: registry, heartbeats, recovery ---------------------------------------------------


class utc_now(FunctionElement[Any]):
    """The database server's current UTC time, as a naive timestamp like every stored time.

    Leases are judged on the database's clock, so workers on machines whose clocks disagree
    still agree on which worker is late.
    """

    type = sa.DateTime()
    inherit_cache = True


@compiles(utc_now)
def _utc_now_default(_element: utc_now, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(utc_now, "postgresql")
def _utc_now_pg(_element: utc_now, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "(now() AT TIME ZONE 'UTC')"


@compiles(utc_now, "mysql")
@compiles(utc_now, "mariadb")
def _utc_now_mysql(_element: utc_now, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"


@compiles(utc_now, "sqlite")
def _utc_now_sqlite(_element: utc_now, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


db_now = sa.select(utc_now())
worker_row = sa.select(worker).where(worker.c.name == sa.bindparam("w_name")).with_for_update()
insert_worker = worker.insert().values(
    name=sa.bindparam("w_name"),
    host=sa.bindparam("w_host"),
    pid=sa.bindparam("w_pid"),
    concurrency=sa.bindparam("w_concurrency"),
    lease_seconds=sa.bindparam("w_lease_seconds"),
    status="ACTIVE",
    heartbeat_at=utc_now(),
    started_at=utc_now(),
)
reregister_worker = (
    worker.update()
    .where(worker.c.name == sa.bindparam("w_name"))
    .values(
        host=sa.bindparam("w_host"),
        pid=sa.bindparam("w_pid"),
        concurrency=sa.bindparam("w_concurrency"),
        lease_seconds=sa.bindparam("w_lease_seconds"),
        status="ACTIVE",
        started_at=utc_now(),
        heartbeat_at=utc_now(),
        stopped_at=None,
    )
)
heartbeat = (
    worker.update()
    .where(worker.c.name == sa.bindparam("w_name"), worker.c.status == "ACTIVE")
    .values(heartbeat_at=utc_now())
)
stop_worker = (
    worker.update()
    .where(worker.c.name == sa.bindparam("w_name"))
    .values(status="STOPPED", stopped_at=utc_now())
)
active_workers = sa.select(
    worker.c.name, worker.c.heartbeat_at, worker.c.lease_seconds, utc_now().label("now")
).where(worker.c.status == "ACTIVE")
declare_lost = (
    worker.update()
    .where(
        worker.c.name == sa.bindparam("w_name"),
        worker.c.status == "ACTIVE",
        worker.c.heartbeat_at == sa.bindparam("w_seen"),
    )
    .values(status="LOST")
)
"""Conditional on the heartbeat the sweeper judged: of two sweepers only one recovers, and a
worker that heartbeats meanwhile is not declared lost."""
all_workers = sa.select(worker).order_by(worker.c.name)
silent_workers = sa.select(
    worker.c.name, worker.c.heartbeat_at, worker.c.lease_seconds, utc_now().label("now")
).where(worker.c.status != "ACTIVE")
holders = sa.select(subtask.c.executor).where(subtask.c.status.in_(HELD)).distinct()
"""The workers that hold subtasks now (a read of the claim index's RUNNING/CANCELING range)."""
any_ready_of_task = (
    sa.select(subtask.c.id)
    .where(subtask.c.task_id == sa.bindparam("task_id"), subtask.c.status == S.READY.value)
    .limit(1)
)
held_by = (
    sa.select(
        subtask.c.id,
        subtask.c.task_id,
        subtask.c.status,
        subtask.c.operation,
        subtask.c.run_time,
        subtask.c.recovery,
        subtask.c.lost_count,
    )
    .where(
        subtask.c.status.in_(HELD),
        subtask.c.executor == sa.bindparam("executor"),
    )
    .order_by(subtask.c.task_id, subtask.c.id)
)
lock_tasks = (
    sa.select(
        task.c.id, task.c.status, task.c.operation, task.c.concurrency, task.c.cancel_requested
    )
    .where(task.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(task.c.id)
    .with_for_update()
)
"""Several tasks locked in one statement, in id order (the order every locker uses)."""
lock_one_task = (
    sa.select(
        task.c.id,
        task.c.status,
        task.c.operation,
        task.c.concurrency,
        _as_int(task.c.cancel_requested),
    )
    .where(task.c.id == sa.bindparam("task_id"))
    .with_for_update()
)
"""The same for one task: no expanding parameter to render on the hot path of a chain."""
mark_lost = (
    subtask.update()
    .where(subtask.c.id == sa.bindparam("sid"))
    .values(
        lost_count=subtask.c.lost_count + sa.bindparam("lost"),
        message=sa.bindparam("message"),
        finish_time=sa.bindparam("finish_time"),
    )
)
notify_ready = sa.text("SELECT pg_notify('dagtask_ready', '')")
"""PostgreSQL: wake idle workers listening on ``dagtask_ready`` (delivered at commit)."""
