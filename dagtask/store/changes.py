"""Status changes: the only place a task's or a subtask's status (or operation) is written.

Every function here runs inside the caller's transaction. Each change is checked against the
transition table (:mod:`dagtask.states`) and appends its history event to ``events``, which the
caller inserts in the same transaction. What should change is decided by :mod:`dagtask.planner`.

The functions of the workers' hot path (finishing attempts, claims, events) read an enum
member's value as ``member._value_``, a plain attribute: ``.value`` is a property that costs
several times more, and they read dozens per subtask.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from dagtask import logs, planner, states
from dagtask.errors import ConcurrentChangeError
from dagtask.models import EventKind
from dagtask.planner import AttemptResult
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from dagtask.store import host_locks
from dagtask.store import statements as q
from dagtask.store.prepared import execute as run

if TYPE_CHECKING:
    from dagtask.store.attempts import Report

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
        "kind": kind._value_,
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
                "ocp_step": int(step.ocp_retry),
            }
            for sid in subtask_ids
        ]
        result = run(conn, q.set_subtask, params)
        if result.rowcount != len(subtask_ids):
            raise ConcurrentChangeError(
                f"subtasks {list(subtask_ids)} of task {task_id} changed while this action ran "
                f"(they were not all {status.value}); try it again"
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
        run(conn, q.adjust_downstreams_of, {"ids": list(subtask_ids), "sign": delta})
        return
    run(conn, q.adjust_downstreams, [{"sid": sid, "delta": delta} for sid in subtask_ids])


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
        rows = run(
            conn, q.active_and_runnable, {"task_id": task_id, "limit": task_row.concurrency}
        ).all()
        active = rows[0].n
        room = planner.promotable(task_row.concurrency, active)
        runnable = [row for row in rows if row.id is not None][:room]
        promoted = make_ready(conn, task_id, operation, S.PENDING, runnable, now, events, take)
    else:
        active = run(conn, q.count_active, {"task_id": task_id}).scalar_one()
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
    rows = run(conn, stmt, {"task_id": task_id, "limit": room}).all()
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
        "old_status": old._value_,
        "new_operation": ready.operation._value_,
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
        rows = run(conn, stmt, params).all()
    else:
        run(conn, stmt, params)
        rows = run(conn, q.claimed_rows, {"ids": ids}).all()
    if len(rows) != len(ids):
        raise ConcurrentChangeError(
            f"subtasks {ids} of task {task_id} changed concurrently (not all {old.value})"
        )
    successful_crossing(conn, ids, old, S.READY)
    for sid in ids:
        events.append(
            event(
                task_id,
                sid,
                now,
                EventKind.SUBTASK_STATUS,
                old._value_,
                S.READY._value_,
                old_operation._value_,
                ready.operation._value_,
                ready.run_time,
            )
        )
        events.append(
            event(
                task_id,
                sid,
                now,
                EventKind.SUBTASK_STATUS,
                S.READY._value_,
                S.RUNNING._value_,
                ready.operation._value_,
                ready.operation._value_,
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
    """Nothing of the task is active: set its final status (docs/actions.md)."""

    def has(status: SubtaskStatus) -> bool:
        found = run(conn, q.has_status, {"task_id": task_id, "st": status.value}).first()
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
        run(conn, q.release_host_locks, {"task_id": task_id})
    run(
        conn,
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
        hosts = run(conn, q.hosts_of_task, {"task_id": task_id}).scalars().all()
        host_locks.lock_hosts(conn, task_id, hosts, now)
    run(
        conn,
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


def notify_ready(conn: sa.Connection) -> None:
    """Wake idle workers in other processes: subtasks became READY (PostgreSQL NOTIFY, sent at
    commit; elsewhere idle workers poll)."""
    if conn.dialect.name == "postgresql":
        run(conn, q.notify_ready)


def relock_task(conn: sa.Connection, task_id: int) -> Any:
    """The task's row as :func:`progress` reads it, locked (again) in the caller's
    transaction."""
    return run(conn, q.lock_one_task, {"task_id": task_id}).one()


@dataclass(frozen=True)
class NewTask:
    """A task's row as :func:`progress` reads it, for the transaction that inserted it (which
    knows it without reading it back)."""

    concurrency: int
    status: str = TaskStatus.RUNNING.value
    operation: str = Operation.EXECUTE.value
    cancel_requested: bool = False


def insert_log(conn: sa.Connection, sid: int, run_time: int, text: str, now: datetime) -> None:
    """Append ``text`` to the log of attempt ``run_time`` of subtask ``sid``."""
    run(
        conn,
        q.insert_log,
        {"subtask_id": sid, "run_time": run_time, "text": text, "create_time": now},
    )


# ---- the end of attempts and claims (the workers' hot path) ----------------------------------


@dataclass(frozen=True)
class _Plan:
    """How one report changes its subtask: the steps and the conditional update's parameters."""

    old: SubtaskStatus
    result: AttemptResult
    steps: list[planner.Step]
    keep_output: bool
    params: dict[str, Any]


def _plan(report: Report, old: SubtaskStatus, result: AttemptResult, now: datetime) -> _Plan:
    claim = report.claim
    steps = planner.after_attempt(claim.operation, claim.run_time, claim.retry_count, result)
    final = steps[-1]
    keep_output = final.status is S.PENDING  # a rollback keeps what its execute recorded
    params: dict[str, Any] = {
        "sid": claim.subtask_id,
        "old_status": old._value_,
        "old_operation": claim.operation._value_,
        "old_run_time": claim.run_time,
        "new_status": final.status._value_,
        "new_operation": final.operation._value_,
        "new_run_time": final.run_time,
        "ocp_step": int(any(step.ocp_retry for step in steps)),
        "message": None if result.ok else result.message,
        "now": now,
    }
    if not keep_output:
        output = report.output if result.ok else None
        params["output"] = output.stored_json() if output is not None else None
    return _Plan(old, result, steps, keep_output, params)


def _attempt_state(
    row: Any, report: Report, result: AttemptResult
) -> tuple[SubtaskStatus | None, AttemptResult]:
    """The status the attempt's subtask is in (None if the attempt already ended) and the result
    to record: an attempt the operator cancelled ends as a cancel whatever the handler said."""
    claim = report.claim
    if (
        row is None
        or row.run_time != claim.run_time
        or row.operation != claim.operation._value_
        or row.status not in (S.RUNNING._value_, S.CANCELING._value_)
    ):
        return None, result
    if row.status == S.CANCELING._value_:
        message = result.message if not result.ok else "cancelled by the operator"
        return S.CANCELING, AttemptResult(ok=False, message=message, cancelled=True)
    return S.RUNNING, result


def _apply(conn: sa.Connection, plans: Sequence[_Plan | None]) -> int:
    """Run the conditional updates of ``plans``; return how many rows matched (read once
    both are sent: one round trip in a PostgreSQL pipeline)."""
    results = []
    for keep_output in (False, True):
        params = [p.params for p in plans if p is not None and p.keep_output is keep_output]
        if params:
            stmt = q.finish_subtask_keep_output if keep_output else q.finish_subtask
            results.append(run(conn, stmt, params))
    return sum(result.rowcount for result in results)


def _replan(
    conn: sa.Connection, reports: Sequence[Report], plans: list[_Plan | None], now: datetime
) -> list[_Plan | None]:
    """After an optimistic finish matched fewer rows than reports: keep the plans that matched
    (their rows carry this transaction's ``finish_time``; the caller holds the tasks' locks, so no
    one else wrote them), and for the others decide from the row as it is now (CANCELING: a
    cancel; anything else: stale)."""
    ids = [r.claim.subtask_id for r in reports]
    rows = {row.id: row for row in run(conn, q.lock_subtasks_done, {"ids": ids}).all()}
    again: list[_Plan | None] = []
    for report, plan in zip(reports, plans, strict=True):
        row = rows.get(report.claim.subtask_id)
        if plan is not None and row is not None and row.finish_time == now:
            again.append(plan)
            continue
        old, result = _attempt_state(row, report, report.result)
        again.append(None if old is None else _plan(report, old, result, now))
    redo = [p if p is not None and p.old is S.CANCELING else None for p in again]
    if _apply(conn, redo) != sum(p is not None for p in redo):
        raise ConcurrentChangeError("a subtask changed under its row lock")
    return again


@dataclass(frozen=True)
class Ended:
    """What :func:`finish_attempts` changed."""

    finals: list[SubtaskStatus | None]
    """Each report's subtask's new status; None for a stale report (nothing changed)."""
    log_rows: list[dict[str, Any]]
    crossing: list[int]
    """Subtasks that became SUCCESSFUL (their downstreams' counters go down)."""


def finish_attempts(
    conn: sa.Connection,
    reports: Sequence[Report],
    now: datetime,
    executor: str | None,
    events: list[dict[str, Any]],
) -> Ended:
    """End the attempts of ``reports`` (distinct attempts; the caller holds their tasks' locks).

    Optimistically every attempt is still RUNNING (the usual case): one conditional UPDATE per
    kind of change, no read first. Only if fewer rows matched are those read, to tell an
    operator's cancel (CANCELING) from a stale result. Events and log lines are made from the
    plans whose updates matched, so an attempt ends once, with one set of events.
    """
    plans: list[_Plan | None] = [_plan(r, S.RUNNING, r.result, now) for r in reports]
    if _apply(conn, plans) != len(plans):
        plans = _replan(conn, reports, plans, now)
    finals: list[SubtaskStatus | None] = []
    log_rows: list[dict[str, Any]] = []
    crossing: list[int] = []
    for report, plan in zip(reports, plans, strict=True):
        claim = report.claim
        log_row = {"subtask_id": claim.subtask_id, "run_time": claim.run_time, "create_time": now}
        if plan is None:  # stale: keep what it logged, change nothing
            if report.log_text:
                log_rows.append({**log_row, "text": report.log_text})
            finals.append(None)
            continue
        text = report.log_text
        prev, prev_op = plan.old, claim.operation
        text += logs.transition_lines(
            claim.subtask_id,
            prev._value_,
            [(step.status._value_, step.operation._value_) for step in plan.steps],
            when=now,
        )
        for step in plan.steps:
            states.check_subtask_transition(prev, step.status)
            events.append(
                event(
                    claim.task_id,
                    claim.subtask_id,
                    now,
                    EventKind.SUBTASK_STATUS,
                    prev._value_,
                    step.status._value_,
                    prev_op._value_,
                    step.operation._value_,
                    step.run_time,
                    executor,
                    plan.result.message,
                )
            )
            prev, prev_op = step.status, step.operation
        log_rows.append({**log_row, "text": text})
        final = plan.steps[-1].status
        if final is S.SUCCESSFUL:
            crossing.append(claim.subtask_id)
        finals.append(final)
    return Ended(finals, log_rows, crossing)


def claimed(
    rows: Sequence[Any], now: datetime, executor: str, events: list[dict[str, Any]]
) -> None:
    """The events of subtasks a claim's conditional update moved from READY to RUNNING (the
    rows it returned, so an event can be neither missed nor doubled)."""
    if rows:
        states.check_subtask_transition(S.READY, S.RUNNING)
    events.extend(
        event(
            row.task_id,
            row.id,
            now,
            EventKind.SUBTASK_STATUS,
            S.READY._value_,
            S.RUNNING._value_,
            row.operation,
            row.operation,
            row.run_time,
            executor,
        )
        for row in rows
    )
