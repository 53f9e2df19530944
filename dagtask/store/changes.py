"""Status changes: the only place a task's or a subtask's status (or operation) is written.

Every function here runs inside the caller's transaction. Each change is checked against the
transition table (:mod:`dagtask.states`) and appends its history event to ``events``, which the
caller inserts in the same transaction. What should change is decided by :mod:`dagtask.planner`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dagtask import planner, states
from dagtask.errors import HostBusyError
from dagtask.models import EventKind
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from dagtask.store import statements as q

S = SubtaskStatus


def event(
    task_id: int,
    subtask_id: int | None,
    now: datetime,
    kind: EventKind,
    old_status: str | None = None,
    new_status: str | None = None,
    old_operation: str | None = None,
    new_operation: str | None = None,
    run_time: int | None = None,
    executor: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "subtask_id": subtask_id,
        "time": now,
        "kind": kind.value,
        "old_status": old_status,
        "new_status": new_status,
        "old_operation": old_operation,
        "new_operation": new_operation,
        "run_time": run_time,
        "executor": executor,
        "message": message,
    }


def change_subtasks(
    conn: sa.Connection,
    task_id: int,
    subtask_ids: Sequence[int],
    old: SubtaskStatus,
    steps: Iterable[planner.Step],
    now: datetime,
    executor: str | None,
    message: str | None,
    old_operation: Operation,
    events: list[dict[str, Any]],
) -> None:
    """Apply ``steps`` (in order) to subtasks currently ``old``; one event per step each is
    appended to ``events``, which the caller inserts in the same transaction."""
    status, operation = old, old_operation
    for step in steps:
        if step.status is not status:
            states.check_subtask_transition(status, step.status)
        params = [
            {
                "sid": sid,
                "old_status": status.value,
                "new_status": step.status.value,
                "new_operation": step.operation.value,
                "new_run_time": step.run_time,
            }
            for sid in subtask_ids
        ]
        result = conn.execute(q.set_subtask, params)
        if result.rowcount != len(subtask_ids):
            raise RuntimeError(
                f"subtasks {list(subtask_ids)} were not all {status} (changed concurrently)"
            )
        events.extend(
            event(
                task_id,
                sid,
                now,
                EventKind.SUBTASK_STATUS,
                status.value,
                step.status.value,
                operation.value,
                step.operation.value,
                step.run_time,
                executor,
                message,
            )
            for sid in subtask_ids
        )
        successful_crossing(conn, subtask_ids, status, step.status)
        status, operation = step.status, step.operation


def successful_crossing(
    conn: sa.Connection, subtask_ids: Sequence[int], old: SubtaskStatus, new: SubtaskStatus
) -> None:
    """Keep downstreams' ``pending_upstreams`` equal to their upstreams not SUCCESSFUL."""
    if not subtask_ids or (old is S.SUCCESSFUL) == (new is S.SUCCESSFUL):
        return
    delta = -1 if new is S.SUCCESSFUL else 1
    if len(subtask_ids) > 1 and (
        conn.dialect.name != "sqlite" or sqlite3.sqlite_version_info >= (3, 33)
    ):
        conn.execute(q.adjust_downstreams_of, {"ids": list(subtask_ids), "sign": delta})
        return
    conn.execute(q.adjust_downstreams, [{"sid": sid, "delta": delta} for sid in subtask_ids])


def progress(
    conn: sa.Connection,
    task_id: int,
    task_row: Any,
    now: datetime,
    events: list[dict[str, Any]],
    *,
    take: Take | None = None,
) -> tuple[int, TaskStatus | None]:
    """Promote what may run now (within the concurrency) and settle the task if idle.

    Returns how many subtasks became READY and the task's new status, if it changed. With
    ``take``, a worker claims some of them in the same statement (see :class:`Take`).
    """
    may_promote = (
        not task_row.cancel_requested and TaskStatus(task_row.status) is TaskStatus.RUNNING
    )
    operation = Operation(task_row.operation)
    promoted = 0
    if may_promote and operation is not Operation.ROLLBACK:
        # The active count and the runnable subtasks in one round trip.
        rows = conn.execute(
            q.active_and_runnable, {"task_id": task_id, "limit": task_row.concurrency}
        ).all()
        active = rows[0].n
        room = planner.promotable(task_row.concurrency, active)
        runnable = [row for row in rows if row.id is not None][:room]
        promoted = make_ready(conn, task_id, operation, S.PENDING, runnable, now, events, take)
    else:
        active = conn.execute(q.count_active, {"task_id": task_id}).scalar_one()
        room = planner.promotable(task_row.concurrency, active)
        if may_promote and room:
            promoted = promote(conn, task_id, operation, room, now, events, take)
    task_status = None
    if active + promoted == 0:
        task_status = settle_task(
            conn, task_id, TaskStatus(task_row.status), operation, now, events
        )
    return promoted, task_status


def promote(
    conn: sa.Connection,
    task_id: int,
    operation: Operation,
    room: int,
    now: datetime,
    events: list[dict[str, Any]],
    take: Take | None = None,
) -> int:
    """Make up to ``room`` subtasks READY: forward, PENDING ones whose upstreams all
    succeeded; in a rollback, SUCCESSFUL ones whose downstreams are all PENDING."""
    rollback = operation is Operation.ROLLBACK
    stmt = q.rollback_runnable if rollback else q.runnable
    rows = conn.execute(stmt, {"task_id": task_id, "limit": room}).all()
    old = S.SUCCESSFUL if rollback else S.PENDING
    return make_ready(conn, task_id, operation, old, rows, now, events, take)


@dataclass
class Take:
    """A worker taking what a change makes READY, in the statement that makes it READY.

    The subtasks go straight from PENDING (or SUCCESSFUL, in a rollback) to RUNNING for
    ``executor`` in one UPDATE, and both steps are recorded as events, as if it had claimed them
    a moment later. ``rows`` collects what was taken (:data:`statements.CLAIM_COLUMNS`).
    """

    executor: str
    limit: int
    returning: bool
    """Whether the database has ``UPDATE … RETURNING``."""
    rows: list[Any] = field(default_factory=list)

    def room(self) -> int:
        """How many more it may take."""
        return self.limit - len(self.rows)


def make_ready(
    conn: sa.Connection,
    task_id: int,
    operation: Operation,
    old: SubtaskStatus,
    rows: Sequence[Any],
    now: datetime,
    events: list[dict[str, Any]],
    take: Take | None = None,
) -> int:
    """``rows`` (id, operation, run_time), currently ``old``, → READY for the task's
    ``operation`` (or on to RUNNING, as far as ``take`` reaches); returns how many."""
    groups: dict[tuple[str, int], list[int]] = {}
    for row in rows:
        groups.setdefault((row.operation, row.run_time), []).append(row.id)
    for (current_op, run_time), ids in groups.items():
        if operation is Operation.ROLLBACK:
            new_op = Operation.ROLLBACK
        elif current_op in (Operation.ROLLBACK.value, Operation.ROLLBACK_SKIP.value):
            new_op = Operation.EXECUTE
        else:
            new_op = Operation(current_op)  # keeps RETRY of a subtask a cancel withdrew
        ready = planner.Step(S.READY, new_op, run_time)
        taken = ids[: take.room()] if take is not None else []
        rest = ids[len(taken) :]
        if taken:
            assert take is not None
            _take(conn, task_id, taken, old, ready, Operation(current_op), now, events, take)
        if rest:
            change_subtasks(
                conn, task_id, rest, old, [ready], now, None, None, Operation(current_op), events
            )
    return len(rows)


def _take(
    conn: sa.Connection,
    task_id: int,
    ids: list[int],
    old: SubtaskStatus,
    ready: planner.Step,
    old_operation: Operation,
    now: datetime,
    events: list[dict[str, Any]],
    take: Take,
) -> None:
    states.check_subtask_transition(old, S.READY)
    states.check_subtask_transition(S.READY, S.RUNNING)
    params = {
        "ids": ids,
        "old_status": old.value,
        "new_operation": ready.operation.value,
        "new_run_time": ready.run_time,
        "executor": take.executor,
        "now": now,
    }
    if len(ids) == 1:  # a chain's next link: no expanding parameter to render
        params["sid"] = ids[0]
        stmt = q.promote_and_claim_one_returning if take.returning else q.promote_and_claim_one
    else:
        stmt = q.promote_and_claim_returning if take.returning else q.promote_and_claim
    if take.returning:
        rows = conn.execute(stmt, params).all()
    else:
        conn.execute(stmt, params)
        rows = conn.execute(q.claimed_rows, {"ids": ids}).all()
    if len(rows) != len(ids):
        raise RuntimeError(f"subtasks {ids} were not all {old} (changed concurrently)")
    successful_crossing(conn, ids, old, S.READY)
    for sid in ids:
        events.append(
            event(
                task_id,
                sid,
                now,
                EventKind.SUBTASK_STATUS,
                old.value,
                S.READY.value,
                old_operation.value,
                ready.operation.value,
                ready.run_time,
            )
        )
        events.append(
            event(
                task_id,
                sid,
                now,
                EventKind.SUBTASK_STATUS,
                S.READY.value,
                S.RUNNING.value,
                ready.operation.value,
                ready.operation.value,
                ready.run_time,
                take.executor,
            )
        )
    take.rows.extend(rows)


def settle_task(
    conn: sa.Connection,
    task_id: int,
    old: TaskStatus,
    operation: str,
    now: datetime,
    events: list[dict[str, Any]],
) -> TaskStatus | None:
    """Nothing of the task is active: set its final status (SPEC §3)."""

    def has(status: SubtaskStatus) -> bool:
        found = conn.execute(q.has_status, {"task_id": task_id, "st": status.value}).first()
        return found is not None

    new = planner.task_status_when_idle(
        any_failed=has(S.FAILED),
        any_pending=has(S.PENDING),
        any_successful=has(S.SUCCESSFUL),
        rollback=operation == Operation.ROLLBACK.value,
    )
    if new is old:
        return None
    change_task(conn, task_id, old, new, Operation(operation), now, events)
    return new


def change_task(
    conn: sa.Connection,
    task_id: int,
    old: TaskStatus,
    new: TaskStatus,
    operation: Operation,
    now: datetime,
    events: list[dict[str, Any]],
    message: str | None = None,
) -> None:
    """Change the task's status; its event is appended to ``events``."""
    states.check_task_transition(old, new)
    finished = new is not TaskStatus.RUNNING
    if finished:
        conn.execute(q.release_host_locks, {"task_id": task_id})
    conn.execute(
        q.set_task,
        {"task_id": task_id, "status": new.value, "finish_time": now if finished else None},
    )
    events.append(
        event(
            task_id,
            None,
            now,
            EventKind.TASK_STATUS,
            old.value,
            new.value,
            operation.value,
            operation.value,
            message=message,
        )
    )


def restart_task(
    conn: sa.Connection,
    task_id: int,
    old: TaskStatus,
    operation: Operation,
    now: datetime,
    events: list[dict[str, Any]],
    operator: str,
    action: str,
    old_operation: Operation | None = None,
) -> None:
    """The task → RUNNING with ``operation``; an operator action clears a task cancel.

    ``old_operation`` is the task's operation before; no event is written when neither the
    status nor the operation changes (a subtask action on a task that is still RUNNING).
    """
    states.check_task_transition(old, TaskStatus.RUNNING)
    if old is not TaskStatus.RUNNING:
        hosts = conn.execute(q.hosts_of_task, {"task_id": task_id}).scalars().all()
        lock_hosts(conn, task_id, hosts, now)
    conn.execute(
        q.set_task_operation,
        {
            "task_id": task_id,
            "status": TaskStatus.RUNNING.value,
            "operation": operation.value,
            "cancel_requested": False,
        },
    )
    if old is TaskStatus.RUNNING and old_operation is operation:
        return
    events.append(
        event(
            task_id,
            None,
            now,
            EventKind.TASK_STATUS,
            old.value,
            TaskStatus.RUNNING.value,
            None,
            operation.value,
            executor=operator,
            message=f"{action} by {operator}",
        )
    )


def lock_hosts(conn: sa.Connection, task_id: int, hosts: Sequence[int], now: datetime) -> None:
    """Make ``task_id`` the running host operation of ``hosts``, or raise :class:`HostBusyError`.

    The lock table's primary key is the host id, so of two transactions taking the same host only
    one commits; the loser's ``IntegrityError`` is turned into the same error by :func:`busy`.
    """
    if not hosts:
        return
    holders = conn.execute(q.lock_holders, {"hosts": list(hosts)}).all()
    for row in holders:
        if row.task_id != task_id:
            raise busy(row.host_id, row.task_id, row.name, row.status)
    held = {row.host_id for row in holders}
    rows = [{"host_id": h, "task_id": task_id, "since": now} for h in hosts if h not in held]
    if rows:
        conn.execute(q.insert_host_locks, rows)


def busy(host_id: int, task_id: int, name: str | None, status: str | None) -> HostBusyError:
    """The error for a host that task ``task_id`` holds."""
    what = f"task {task_id} {name!r} ({status})" if name else f"task {task_id}"
    return HostBusyError(
        f"error 409: host {host_id} already has a running host operation: {what}; "
        f"only one host operation runs per host at a time. Wait for it to end "
        f"(`dagtask show {task_id}`) or cancel it (`dagtask cancel {task_id}`), then try again",
        host_id=host_id,
        task_id=task_id,
    )


def host_conflict(conn: sa.Connection, hosts: Sequence[int]) -> HostBusyError | None:
    """After a lost race for ``hosts``: the error naming the task that won, if any."""
    rows = conn.execute(q.lock_holders, {"hosts": list(hosts)}).all()
    if not rows:
        return None
    row = rows[0]
    return busy(row.host_id, row.task_id, row.name, row.status)


def notify_ready(conn: sa.Connection) -> None:
    """Wake idle workers in other processes: subtasks became READY (PostgreSQL NOTIFY, sent at
    commit; elsewhere idle workers poll)."""
    if conn.dialect.name == "postgresql":
        conn.execute(q.notify_ready)
