"""Operator actions (docs/actions.md): retry, rollback, skip and cancel, one transaction each.

Each locks the task row, asks :mod:`dagtask.planner` whether the action is allowed (20003 /
20004 otherwise) and applies its changes through :mod:`.changes`. The subtasks it changes are
row-locked as they are read, so a worker's claim or finish that crosses the action either
commits first (and the action sees its result) or waits for the action.
"""

from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dagtask import fidelity, planner
from dagtask.clock import utcnow
from dagtask.context import TaskContext
from dagtask.errors import (
    OperationNotAllowedError,
    RollbackProhibitedError,
    TaskNotFoundError,
)
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from dagtask.store import changes, host_locks
from dagtask.store import statements as q
from dagtask.store.db import Database, retrying

S = SubtaskStatus
_DONE = {"retry": "retried", "skip": "skipped"}


class ActionStore:
    """Operator actions (mixed into :class:`dagtask.store.sql.Store`)."""

    db: Database

    def retry_task(self, task_id: int, operator: str) -> None:
        """Every FAILED subtask → READY as RETRY (runTime + 1); the task → RUNNING / RETRY."""

        def body(conn: sa.Connection) -> None:
            row, now, events = self._lock_for_action(conn, task_id)
            old, op = TaskStatus(row.status), Operation(row.operation)
            _refuse(task_id, "retry", planner.retry_task_refusal(old, op))
            failed = [s for s in self._subtasks(conn, task_id) if s.status == S.FAILED.value]
            for sub in failed:
                changes.change_subtasks(
                    conn,
                    task_id,
                    [sub.id],
                    S.FAILED,
                    [planner.Step(S.READY, Operation.RETRY, sub.run_time + 1, ocp_retry=True)],
                    now,
                    operator,
                    "retried by the operator",
                    Operation(sub.operation),
                    events,
                )
            changes.restart_task(
                conn, task_id, old, Operation.RETRY, now, events, operator, "retry"
            )
            _settle(conn, task_id, now, events)

        self._act(task_id, body)

    def rollback_task(self, task_id: int, operator: str) -> None:
        """Start (or resume) rolling the task back in reverse topological order (see
        docs/actions.md)."""

        def body(conn: sa.Connection) -> None:
            row, now, events = self._lock_for_action(conn, task_id)
            old = TaskStatus(row.status)
            _refuse(task_id, "roll back", planner.rollback_refusal(old))
            subs = self._subtasks(conn, task_id)
            context = TaskContext.from_json(
                conn.execute(q.task_context, {"task_id": task_id}).scalar_one()
            )
            blockers = planner.rollback_blockers(
                context.prohibit_rollback,
                [(s.id, s.name, S(s.status), s.prohibit_rollback) for s in subs],
            )
            if blockers:
                raise RollbackProhibitedError(
                    f"error 20004: task {task_id} cannot be rolled back: {'; '.join(blockers)}; "
                    "retry it or skip the failed subtasks instead"
                )
            for sub in subs:
                status, op = S(sub.status), Operation(sub.operation)
                if status is S.FAILED:
                    # A failed subtask's downstreams never ran: it can roll back at once, as a
                    # new attempt (runTime + 1, so a late result of the failed one is stale).
                    steps = [planner.Step(S.READY, Operation.ROLLBACK, sub.run_time + 1)]
                elif status is S.SUCCESSFUL and op is not Operation.ROLLBACK:
                    steps = [planner.Step(S.SUCCESSFUL, Operation.ROLLBACK, sub.run_time)]
                else:
                    continue
                changes.change_subtasks(
                    conn,
                    task_id,
                    [sub.id],
                    status,
                    steps,
                    now,
                    operator,
                    "rollback requested by the operator",
                    op,
                    events,
                )
            changes.restart_task(
                conn, task_id, old, Operation.ROLLBACK, now, events, operator, "rollback"
            )
            _settle(conn, task_id, now, events)

        self._act(task_id, body)

    def retry_subtask(self, task_id: int, subtask_id: int, operator: str) -> None:
        """A FAILED subtask → READY as RETRY (runTime + 1); the task → RUNNING."""

        def decide(row: Any, sub: Any) -> tuple[str | None, Operation]:
            refusal = planner.retry_subtask_refusal(
                S(sub.status),
                Operation(sub.operation),
                Operation(row.operation),
                ocp=fidelity.current().retry_in_rollback,
            )
            return refusal, Operation.RETRY

        self._rerun_subtask(task_id, subtask_id, operator, "retry", decide)

    def skip_subtask(self, task_id: int, subtask_id: int, operator: str) -> None:
        """A FAILED subtask → READY as SKIP (ROLLBACK_SKIP while rolling back), runTime + 1 (every
        new attempt gets its own runTime, so a late result of an old one is told apart); nothing
        runs."""

        def decide(row: Any, sub: Any) -> tuple[str | None, Operation]:
            refusal = planner.skip_refusal(S(sub.status))
            return refusal, planner.skip_operation(Operation(row.operation))

        self._rerun_subtask(task_id, subtask_id, operator, "skip", decide)

    def _rerun_subtask(
        self,
        task_id: int,
        subtask_id: int,
        operator: str,
        action: str,
        decide: Callable[[Any, Any], tuple[str | None, Operation]],
    ) -> None:
        """A FAILED subtask → READY as a new attempt with the operation ``decide`` picks (or its
        refusal); the task → RUNNING and waiting work is promoted."""

        def body(conn: sa.Connection) -> None:
            row, now, events = self._lock_for_action(conn, task_id)
            sub = self._subtask_of(conn, task_id, subtask_id)
            refusal, operation = decide(row, sub)
            _refuse_subtask(task_id, subtask_id, action, refusal)
            changes.change_subtasks(
                conn,
                task_id,
                [subtask_id],
                S.FAILED,
                [planner.Step(S.READY, operation, sub.run_time + 1)],
                now,
                operator,
                f"{_DONE[action]} by the operator",
                Operation(sub.operation),
                events,
            )
            changes.restart_task(
                conn,
                task_id,
                TaskStatus(row.status),
                Operation(row.operation),
                now,
                events,
                operator,
                f"subtask {action}",
                old_operation=Operation(row.operation),
            )
            _settle(conn, task_id, now, events)

        self._act(task_id, body)

    def cancel_subtask(self, task_id: int, subtask_id: int, operator: str) -> None:
        """A RUNNING subtask → CANCELING; the worker running it interrupts it (docs/actions.md)."""

        def body(conn: sa.Connection) -> None:
            _row, now, events = self._lock_for_action(conn, task_id)
            sub = self._subtask_of(conn, task_id, subtask_id)
            refusal = planner.cancel_subtask_refusal(S(sub.status))
            _refuse_subtask(task_id, subtask_id, "cancel", refusal)
            changes.change_subtasks(
                conn,
                task_id,
                [subtask_id],
                S.RUNNING,
                [planner.Step(S.CANCELING, Operation(sub.operation), sub.run_time)],
                now,
                operator,
                "cancel requested by the operator",
                Operation(sub.operation),
                events,
            )
            if events:
                conn.execute(q.insert_event, events)

        self._act(task_id, body)

    def cancel_task(self, task_id: int, operator: str) -> None:
        """Cancel every RUNNING subtask, withdraw READY ones, start nothing new (beyond OCP).

        The task ends FAILED once its running subtasks have stopped; it can then be retried or
        rolled back.
        """

        def body(conn: sa.Connection) -> None:
            row, now, events = self._lock_for_action(conn, task_id)
            _refuse(task_id, "cancel", planner.cancel_task_refusal(TaskStatus(row.status)))
            conn.execute(q.request_task_cancel, {"task_id": task_id})
            for sub in self._subtasks(conn, task_id):
                status, op = S(sub.status), Operation(sub.operation)
                if status is S.RUNNING:
                    step = planner.Step(S.CANCELING, op, sub.run_time)
                elif status is S.READY and op is Operation.EXECUTE:
                    step = planner.Step(S.PENDING, op, sub.run_time)  # never ran: as before
                elif status is S.READY:
                    # A retry, skip or rollback step: the subtask has run before, so it must
                    # stay visible as not done (a later retry or rollback picks it up).
                    step = planner.Step(S.FAILED, Operation.CANCEL, sub.run_time)
                else:
                    continue
                changes.change_subtasks(
                    conn,
                    task_id,
                    [sub.id],
                    status,
                    [step],
                    now,
                    operator,
                    "task cancelled by the operator",
                    op,
                    events,
                )
            _settle(conn, task_id, now, events)

        self._act(task_id, body)

    def canceling(self, executor: str) -> list[tuple[int, int]]:
        """(subtask id, runTime) of the CANCELING subtasks that ``executor`` runs."""
        with self.db.read() as conn:
            rows = conn.execute(q.canceling_of, {"executor": executor}).all()
        return [(row.id, row.run_time) for row in rows]

    # ---- helpers of the actions -----------------------------------------------------------------

    def _act(self, task_id: int, body: Callable[[sa.Connection], None]) -> None:
        """Run an action's transaction; again (from a fresh read) after a deadlock or a
        worker's change that crossed it; a host taken meanwhile is :class:`HostBusyError`."""
        try:
            retrying(lambda: self._once(body))
        except sa.exc.IntegrityError:
            with self.db.read() as conn:  # lost a race for a host lock (retry or rollback)
                hosts = conn.execute(q.hosts_of_task, {"task_id": task_id}).scalars().all()
                conflict = host_locks.host_conflict(conn, hosts) if hosts else None
            if conflict is None:
                raise
            raise conflict from None

    def _once(self, body: Callable[[sa.Connection], None]) -> None:
        with self.db.begin() as conn:
            body(conn)

    def _lock_for_action(
        self, conn: sa.Connection, task_id: int
    ) -> tuple[Any, datetime, list[dict[str, Any]]]:
        row = conn.execute(q.lock_task, {"task_id": task_id}).one_or_none()
        if row is None:
            raise TaskNotFoundError(
                f"error 20000: task {task_id} does not exist; list tasks with `dagtask list`"
            )
        if row.historical:
            raise OperationNotAllowedError(
                f"error 20003: task {task_id} is a historical record (imported); nothing runs "
                f"or changes it here; start it again with `dagtask rerun {task_id}`"
            )
        return row, utcnow(), []

    @staticmethod
    def _subtasks(conn: sa.Connection, task_id: int) -> list[Any]:
        return list(conn.execute(q.task_subtasks_locked, {"task_id": task_id}).all())

    @staticmethod
    def _subtask_of(conn: sa.Connection, task_id: int, subtask_id: int) -> Any:
        row = conn.execute(q.subtask_row_locked, {"sid": subtask_id}).one_or_none()
        if row is None or row.task_id != task_id:
            raise TaskNotFoundError(
                f"error 20000: task {task_id} has no subtask {subtask_id}; "
                f"see its subtasks with `dagtask show {task_id}`"
            )
        return row


def _refuse(task_id: int, action: str, reason: str | None) -> None:
    if reason is not None:
        raise OperationNotAllowedError(f"error 20003: cannot {action} task {task_id}: {reason}")


def _refuse_subtask(task_id: int, subtask_id: int, action: str, reason: str | None) -> None:
    if reason is not None:
        raise OperationNotAllowedError(
            f"error 20003: cannot {action} subtask {subtask_id} of task {task_id}: {reason}"
        )


def _settle(conn: sa.Connection, task_id: int, now: datetime, events: list[dict[str, Any]]) -> None:
    """The end of an action: promote what it made runnable (waking workers), settle the task,
    insert the events it wrote."""
    if changes.progress(conn, task_id, changes.relock_task(conn, task_id), now, events)[0]:
        changes.notify_ready(conn)
    if events:
        conn.execute(q.insert_event, events)
