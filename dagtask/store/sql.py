"""The task store: every task/subtask write, each state change with its history event.

All SQL for tasks lives here, as SQLAlchemy Core statements built once at import time and executed
with bound parameters (the hot path never builds a query or opens an ORM session). Every status
change goes through :meth:`Store._change_subtasks` / :meth:`Store._change_task`, which check the
transition table and insert the history events in the same transaction as the change.

Concurrency rules:

* a claim is one conditional ``UPDATE ... WHERE status = 'READY'`` (plus ``FOR UPDATE SKIP LOCKED``
  on servers that have it), so two workers can never both win a subtask;
* finishing an attempt locks the task row first, so the subtask's completion, the promotion of its
  successors and the task's own status are decided by one transaction at a time per task;
* every finish is conditional on the subtask still being in the attempt the caller ran
  (same ``run_time``, still RUNNING/CANCELING): a late result of an attempt the watchdog already
  timed out is discarded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dagtask import context, logs, planner, states
from dagtask.clock import utcnow
from dagtask.context import TaskContext
from dagtask.errors import ContextError, TaskNotFoundError
from dagtask.expand import ExpandedTask
from dagtask.models import EventKind, SubtaskInfo, TaskEvent, TaskInfo, TaskPage
from dagtask.planner import AttemptResult
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from dagtask.store.db import Database
from dagtask.store.schema import id_sequence, subtask, subtask_edge, subtask_log, task, task_event
from dagtask.store.schema import task_template as template_table
from dagtask.template import TaskTemplate

S = SubtaskStatus
ACTIVE = [s.value for s in states.ACTIVE_SUBTASK_STATUSES]

# ---- prebuilt statements (hot path) -------------------------------------------------------------

_lock_task = (
    sa.select(task.c.status, task.c.operation, task.c.concurrency)
    .where(task.c.id == sa.bindparam("task_id"))
    .with_for_update()
)
_lock_subtask = (
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
_set_subtask = (
    subtask.update()
    .where(subtask.c.id == sa.bindparam("sid"))
    .where(subtask.c.status == sa.bindparam("old_status"))
    .values(
        status=sa.bindparam("new_status"),
        operation=sa.bindparam("new_operation"),
        run_time=sa.bindparam("new_run_time"),
    )
)
_finish_subtask = (
    subtask.update()
    .where(
        subtask.c.id == sa.bindparam("sid"),
        subtask.c.status == sa.bindparam("old_status"),
        subtask.c.operation == sa.bindparam("old_operation"),
        subtask.c.run_time == sa.bindparam("old_run_time"),
    )
    .values(
        status=sa.bindparam("new_status"),
        operation=sa.bindparam("new_operation"),
        run_time=sa.bindparam("new_run_time"),
        output_context=sa.bindparam("output"),
        message=sa.bindparam("message"),
        finish_time=sa.bindparam("now"),
    )
)
_insert_event = task_event.insert()
_insert_log = subtask_log.insert()
_decrement_downstreams = (
    subtask.update()
    .where(
        subtask.c.id.in_(
            sa.select(subtask_edge.c.downstream_id).where(
                subtask_edge.c.upstream_id == sa.bindparam("sid")
            )
        )
    )
    .values(pending_upstreams=subtask.c.pending_upstreams - 1)
)
_count_active = sa.select(sa.func.count()).where(
    subtask.c.task_id == sa.bindparam("task_id"), subtask.c.status.in_(ACTIVE)
)
_runnable = (
    sa.select(subtask.c.id)
    .where(
        subtask.c.task_id == sa.bindparam("task_id"),
        subtask.c.status == S.PENDING.value,
        subtask.c.pending_upstreams == 0,
    )
    .order_by(subtask.c.id.desc())
    .limit(sa.bindparam("limit"))
)
_has_status = (
    sa.select(subtask.c.id)
    .where(subtask.c.task_id == sa.bindparam("task_id"), subtask.c.status == sa.bindparam("st"))
    .limit(1)
)
_set_task = (
    task.update()
    .where(task.c.id == sa.bindparam("task_id"))
    .values(status=sa.bindparam("status"), finish_time=sa.bindparam("finish_time"))
)
_claim_candidates = (
    sa.select(subtask.c.id)
    .where(subtask.c.status == S.READY.value)
    .order_by(subtask.c.id)
    .limit(sa.bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_claim_candidates_of_task = (
    sa.select(subtask.c.id)
    .where(subtask.c.status == S.READY.value, subtask.c.task_id == sa.bindparam("task_id"))
    .order_by(subtask.c.id)
    .limit(sa.bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_claim_one = (
    subtask.update()
    .where(subtask.c.id == sa.bindparam("sid"), subtask.c.status == S.READY.value)
    .values(
        status=S.RUNNING.value, executor=sa.bindparam("executor"), start_time=sa.bindparam("now")
    )
)
_CLAIM_COLUMNS = (
    subtask.c.id,
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
_claim_returning = (
    subtask.update()
    .where(subtask.c.id.in_(_claim_candidates.scalar_subquery()), subtask.c.status == S.READY.value)
    .values(
        status=S.RUNNING.value, executor=sa.bindparam("executor"), start_time=sa.bindparam("now")
    )
    .returning(*_CLAIM_COLUMNS)
)
_claim_returning_of_task = (
    subtask.update()
    .where(
        subtask.c.id.in_(_claim_candidates_of_task.scalar_subquery()),
        subtask.c.status == S.READY.value,
    )
    .values(
        status=S.RUNNING.value, executor=sa.bindparam("executor"), start_time=sa.bindparam("now")
    )
    .returning(*_CLAIM_COLUMNS)
)
_claimed_rows = sa.select(
    subtask.c.id,
    subtask.c.task_id,
    subtask.c.name,
    subtask.c.class_name,
    subtask.c.operation,
    subtask.c.run_time,
    subtask.c.timeout,
    subtask.c.retry_count,
    subtask.c.parallel,
    subtask.c.parallel_idx,
).where(subtask.c.id.in_(sa.bindparam("ids", expanding=True)))
_upstream_outputs = (
    sa.select(subtask.c.output_context)
    .join(subtask_edge, subtask_edge.c.upstream_id == subtask.c.id)
    .where(subtask_edge.c.downstream_id == sa.bindparam("sid"))
    .order_by(subtask.c.id)
)
_task_context = sa.select(task.c.context).where(task.c.id == sa.bindparam("task_id"))
_any_ready = sa.select(subtask.c.id).where(subtask.c.status == S.READY.value).limit(1)
_task_status = sa.select(task.c.status).where(task.c.id == sa.bindparam("task_id"))
_next_ids = (
    id_sequence.update()
    .where(id_sequence.c.name == sa.bindparam("seq"))
    .values(next_value=id_sequence.c.next_value + sa.bindparam("n"))
)
_read_next_id = sa.select(id_sequence.c.next_value).where(id_sequence.c.name == sa.bindparam("seq"))


@dataclass(frozen=True)
class Claim:
    """A subtask a worker won, with what it needs to run it."""

    subtask_id: int
    task_id: int
    name: str
    class_name: str
    operation: Operation
    run_time: int
    timeout: int
    retry_count: int
    parallel: bool
    parallel_idx: int
    start_time: datetime
    context: TaskContext
    """The input context (without the engine-owned keys)."""
    context_error: str | None = None
    """Why the input context could not be built (upstreams disagree, error 20002)."""


@dataclass(frozen=True)
class FinishOutcome:
    """What finishing an attempt changed."""

    applied: bool
    """False when the attempt was stale (timed out, cancelled or recovered meanwhile)."""
    status: SubtaskStatus | None = None
    promoted: int = 0
    task_status: TaskStatus | None = None
    """The task's new status if this finish ended (or restarted) the task."""


def _event(
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


class Store:
    """Tasks, subtasks, their history and logs in one SQL database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # UPDATE ... RETURNING claims in one statement; MySQL/MariaDB lack it for UPDATE.
        self._returning = db.dialect in ("sqlite", "postgresql")

    # ---- templates and submission ---------------------------------------------------------

    def save_template(self, template: TaskTemplate) -> int:
        """Store ``template`` (once per distinct definition) and return its id.

        A changed definition under an existing name becomes that name's next version.
        """
        digest = template.digest()
        by_digest = sa.select(template_table.c.id).where(template_table.c.digest == digest)
        for _attempt in range(3):
            with self.db.read() as conn:
                found = conn.execute(by_digest).scalar()
            if found is not None:
                return int(found)
            try:
                with self.db.begin() as conn:
                    latest = conn.execute(
                        sa.select(sa.func.max(template_table.c.version)).where(
                            template_table.c.name == template.name
                        )
                    ).scalar()
                    result = conn.execute(
                        template_table.insert().values(
                            name=template.name,
                            version=(latest or 0) + 1,
                            digest=digest,
                            definition=template.definition(),
                            create_time=utcnow(),
                        )
                    )
                    assert result.inserted_primary_key is not None
                    return int(result.inserted_primary_key[0])
            except sa.exc.IntegrityError:
                continue  # another process stored the same definition (or version) first
        raise RuntimeError(f"could not store template {template.name!r}")

    def allocate_ids(self, sequence: str, count: int) -> int:
        """Reserve ``count`` consecutive ids of ``sequence``; return the first."""
        with self.db.begin() as conn:
            conn.execute(_next_ids, {"seq": sequence, "n": count})
            end = conn.execute(_read_next_id, {"seq": sequence}).scalar_one()
        return int(end) - count

    def submit(
        self,
        expanded: ExpandedTask,
        *,
        template_id: int | None,
        creator: str,
        executor: str,
        host_id: int | None = None,
    ) -> int:
        """Store a new task and its subtasks, make its roots READY; return the task id."""
        subs = sorted(expanded.subtasks, key=lambda s: s.series_id)
        task_id = self.allocate_ids("task", 1)
        first = self.allocate_ids("subtask", len(subs))
        ids = {sub.index: first + i for i, sub in enumerate(subs)}
        now = utcnow()
        ctx = expanded.context
        task_row = {
            "id": task_id,
            "name": expanded.template.name,
            "template_id": template_id,
            "task_definition_id": -1,
            "type": states.TaskType.MANUAL.value,
            "status": TaskStatus.RUNNING.value,
            "operation": Operation.EXECUTE.value,
            "creator": creator,
            "executor": executor,
            "context": ctx.to_json(),
            "prohibit_rollback": ctx.prohibit_rollback,
            "host_id": host_id,
            "concurrency": expanded.template.concurrency,
            "create_time": now,
            "start_time": now,
        }
        sub_rows = [
            {
                "id": ids[sub.index],
                "task_id": task_id,
                "series_id": sub.series_id,
                "name": sub.spec.name,
                "description": sub.spec.description,
                "class_name": sub.spec.handler,
                "node_type": "JAVA_TASK",
                "operation": Operation.EXECUTE.value,
                "status": S.PENDING.value,
                "run_time": 1,
                "timeout": sub.spec.timeout,
                "retry_count": sub.spec.retry_count,
                "parallel": sub.parallel,
                "parallel_idx": sub.parallel_idx,
                "prohibit_rollback": sub.spec.prohibit_rollback,
                "pending_upstreams": len(sub.upstreams),
                "create_time": now,
            }
            for sub in subs
        ]
        edge_rows = [
            {"upstream_id": ids[up], "downstream_id": ids[down], "task_id": task_id}
            for up, down in expanded.edges
        ]
        events = [
            _event(
                task_id,
                None,
                now,
                EventKind.TASK_SUBMITTED,
                new_status=TaskStatus.RUNNING.value,
                new_operation=Operation.EXECUTE.value,
                executor=executor,
                message=f"submitted by {creator}: {len(subs)} subtasks",
            )
        ]
        with self.db.begin() as conn:
            conn.execute(task.insert(), task_row)
            conn.execute(subtask.insert(), sub_rows)
            if edge_rows:
                conn.execute(subtask_edge.insert(), edge_rows)
            self._promote(conn, task_id, expanded.template.concurrency, 0, now, events)
            conn.execute(_insert_event, events)
        return task_id

    # ---- the hot path: claim and finish ---------------------------------------------------

    def claim(self, executor: str, *, limit: int = 1, task_id: int | None = None) -> list[Claim]:
        """Atomically take up to ``limit`` READY subtasks (of ``task_id`` only, if given).

        Each claim comes with its input context (the task's for a root, else the merge of its
        upstreams' outputs), read in the same transaction.
        """
        now = utcnow()
        params: dict[str, Any] = {"limit": limit, "executor": executor, "now": now}
        if task_id is not None:
            params["task_id"] = task_id
        with self.db.begin() as conn:
            if self._returning:
                stmt = _claim_returning if task_id is None else _claim_returning_of_task
                rows = conn.execute(stmt, params).all()
            else:
                pick = _claim_candidates if task_id is None else _claim_candidates_of_task
                candidates = conn.execute(pick, params).scalars().all()
                won = [
                    sid
                    for sid in candidates
                    if conn.execute(
                        _claim_one, {"sid": sid, "executor": executor, "now": now}
                    ).rowcount
                ]
                rows = conn.execute(_claimed_rows, {"ids": won}).all() if won else []
            if not rows:
                return []
            conn.execute(
                _insert_event,
                [
                    _event(
                        row.task_id,
                        row.id,
                        now,
                        EventKind.SUBTASK_STATUS,
                        S.READY.value,
                        S.RUNNING.value,
                        row.operation,
                        row.operation,
                        row.run_time,
                        executor,
                    )
                    for row in rows
                ],
            )
            return [
                Claim(
                    subtask_id=row.id,
                    task_id=row.task_id,
                    name=row.name,
                    class_name=row.class_name,
                    operation=Operation(row.operation),
                    run_time=row.run_time,
                    timeout=row.timeout,
                    retry_count=row.retry_count,
                    parallel=row.parallel,
                    parallel_idx=row.parallel_idx,
                    start_time=now,
                    **self._input_context(conn, row),
                )
                for row in rows
            ]

    @staticmethod
    def _input_context(conn: sa.Connection, row: sa.Row[Any]) -> dict[str, Any]:
        """``context`` (and ``context_error``) of a claimed row, for :class:`Claim`."""
        copy = {"parallel": row.parallel, "parallel_idx": row.parallel_idx}
        outputs = conn.execute(_upstream_outputs, {"sid": row.id}).scalars().all()
        if not outputs:
            data = conn.execute(_task_context, {"task_id": row.task_id}).scalar_one()
            return {"context": TaskContext.from_json(data).model_copy(update=copy)}
        try:
            merged = context.merge(TaskContext.from_json(o) for o in outputs)
        except ContextError as exc:
            return {"context": TaskContext().model_copy(update=copy), "context_error": str(exc)}
        return {"context": merged.model_copy(update=copy)}

    def finish(
        self,
        claim: Claim,
        result: AttemptResult,
        *,
        output: TaskContext | None = None,
        log_text: str = "",
        executor: str | None = None,
    ) -> FinishOutcome:
        """Record the end of an attempt, promote successors and settle the task, atomically."""
        now = utcnow()
        events: list[dict[str, Any]] = []
        with self.db.begin() as conn:
            task_row = conn.execute(_lock_task, {"task_id": claim.task_id}).one()
            old = S.RUNNING
            steps = planner.after_attempt(
                claim.operation, claim.run_time, claim.retry_count, result
            )
            values = {
                "sid": claim.subtask_id,
                "old_status": old.value,
                "old_operation": claim.operation.value,
                "old_run_time": claim.run_time,
                "output": output.without_engine_keys().to_json() if output else None,
                "message": None if result.ok else result.message,
                "now": now,
            }
            if not self._finish_one(conn, steps, values):
                # Not RUNNING in this attempt any more: an operator cancel (CANCELING) finishes
                # as CANCEL; anything else (timed out, recovered) makes this result stale.
                current = conn.execute(_lock_subtask, {"sid": claim.subtask_id}).one_or_none()
                if (
                    current is None
                    or current.status != S.CANCELING.value
                    or current.run_time != claim.run_time
                ):
                    if log_text:
                        self._log(conn, claim.subtask_id, claim.run_time, log_text, now)
                    return FinishOutcome(applied=False)
                old = S.CANCELING
                message = result.message if not result.ok else "cancelled by the operator"
                result = AttemptResult(ok=False, message=message, cancelled=True)
                steps = planner.after_attempt(
                    claim.operation, claim.run_time, claim.retry_count, result
                )
                values.update(old_status=old.value, message=message)
                self._finish_one(conn, steps, values)
            prev = old
            prev_op = claim.operation
            for step in steps:
                states.check_subtask_transition(prev, step.status)
                log_text += logs.state_line(claim.subtask_id, prev, step.status, when=now)
                events.append(
                    _event(
                        claim.task_id,
                        claim.subtask_id,
                        now,
                        EventKind.SUBTASK_STATUS,
                        prev.value,
                        step.status.value,
                        prev_op.value,
                        step.operation.value,
                        step.run_time,
                        executor,
                        result.message,
                    )
                )
                prev, prev_op = step.status, step.operation
            final = steps[-1]
            if log_text:
                self._log(conn, claim.subtask_id, claim.run_time, log_text, now)
            if final.status is S.SUCCESSFUL:
                conn.execute(_decrement_downstreams, {"sid": claim.subtask_id})
            active = conn.execute(_count_active, {"task_id": claim.task_id}).scalar_one()
            promoted = self._promote(conn, claim.task_id, task_row.concurrency, active, now, events)
            task_status = None
            if active + promoted == 0:
                task_status = self._settle_task(
                    conn,
                    claim.task_id,
                    TaskStatus(task_row.status),
                    task_row.operation,
                    now,
                    events,
                )
            conn.execute(_insert_event, events)
        return FinishOutcome(True, final.status, promoted, task_status)

    @staticmethod
    def _finish_one(conn: sa.Connection, steps: list[planner.Step], values: dict[str, Any]) -> bool:
        """The attempt's subtask row update, conditional on it still being in that attempt."""
        final = steps[-1]
        params = {
            **values,
            "new_status": final.status.value,
            "new_operation": final.operation.value,
            "new_run_time": final.run_time,
        }
        return bool(conn.execute(_finish_subtask, params).rowcount)

    def append_log(self, subtask_id: int, run_time: int, text: str) -> None:
        """Append to an attempt's log (used to flush a long-running handler's log)."""
        with self.db.begin() as conn:
            self._log(conn, subtask_id, run_time, text, utcnow())

    # ---- status changes: the only place they are written -----------------------------------

    def _change_subtasks(
        self,
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
            result = conn.execute(_set_subtask, params)
            if result.rowcount != len(subtask_ids):
                raise RuntimeError(
                    f"subtasks {list(subtask_ids)} were not all {status} (changed concurrently)"
                )
            events.extend(
                _event(
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
            status, operation = step.status, step.operation

    def _promote(
        self,
        conn: sa.Connection,
        task_id: int,
        concurrency: int,
        active: int,
        now: datetime,
        events: list[dict[str, Any]],
    ) -> int:
        """Make runnable PENDING subtasks READY, as many as the task's concurrency allows."""
        room = planner.promotable(concurrency, active)
        if room == 0:
            return 0
        ids = conn.execute(_runnable, {"task_id": task_id, "limit": room}).scalars().all()
        if ids:
            self._change_subtasks(
                conn,
                task_id,
                ids,
                S.PENDING,
                [planner.Step(S.READY, Operation.EXECUTE, 1)],
                now,
                None,
                None,
                Operation.EXECUTE,
                events,
            )
        return len(ids)

    def _settle_task(
        self,
        conn: sa.Connection,
        task_id: int,
        old: TaskStatus,
        operation: str,
        now: datetime,
        events: list[dict[str, Any]],
    ) -> TaskStatus | None:
        """Nothing of the task is active: set its final status (SPEC §3)."""

        def has(status: SubtaskStatus) -> bool:
            found = conn.execute(_has_status, {"task_id": task_id, "st": status.value}).first()
            return found is not None

        new = planner.task_status_when_idle(
            any_failed=has(S.FAILED),
            any_pending=has(S.PENDING),
            rollback=operation == Operation.ROLLBACK.value,
        )
        if new is old:
            return None
        self._change_task(conn, task_id, old, new, Operation(operation), now, events)
        return new

    def _change_task(
        self,
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
        conn.execute(
            _set_task,
            {"task_id": task_id, "status": new.value, "finish_time": now if finished else None},
        )
        events.append(
            _event(
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

    def _log(self, conn: sa.Connection, sid: int, run_time: int, text: str, now: datetime) -> None:
        conn.execute(
            _insert_log, {"subtask_id": sid, "run_time": run_time, "text": text, "create_time": now}
        )

    # ---- reads --------------------------------------------------------------------------------

    def any_ready(self) -> bool:
        """Whether any subtask is READY (a cheap check before trying to claim)."""
        with self.db.read() as conn:
            return conn.execute(_any_ready).first() is not None

    def task_status(self, task_id: int) -> TaskStatus:
        """The task's status (raises TaskNotFoundError)."""
        with self.db.read() as conn:
            value = conn.execute(_task_status, {"task_id": task_id}).scalar()
        if value is None:
            raise _not_found(task_id)
        return TaskStatus(value)

    def get_task(self, task_id: int) -> TaskInfo:
        """The task with its subtasks and their links."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(task).where(task.c.id == task_id)).one_or_none()
            if row is None:
                raise _not_found(task_id)
            subs = conn.execute(
                sa.select(subtask).where(subtask.c.task_id == task_id).order_by(subtask.c.id)
            ).all()
            edges = conn.execute(
                sa.select(subtask_edge.c.upstream_id, subtask_edge.c.downstream_id).where(
                    subtask_edge.c.task_id == task_id
                )
            ).all()
        return _task_info(row, subs, edges)

    def list_tasks(
        self,
        *,
        page: int = 1,
        size: int = 20,
        name: str | None = None,
        statuses: Sequence[TaskStatus] = (),
        host_id: int | None = None,
        descending: bool = True,
    ) -> TaskPage:
        """One page of tasks (newest first by default), with their subtasks."""
        where: list[sa.ColumnElement[bool]] = []
        if name:
            where.append(task.c.name.like(f"%{name}%"))
        if statuses:
            where.append(task.c.status.in_([s.value for s in statuses]))
        if host_id is not None:
            where.append(task.c.host_id == host_id)
        order = task.c.id.desc() if descending else task.c.id.asc()
        with self.db.read() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(task).where(*where)
            ).scalar()
            rows = conn.execute(
                sa.select(task).where(*where).order_by(order).limit(size).offset((page - 1) * size)
            ).all()
            ids = [r.id for r in rows]
            subs = conn.execute(
                sa.select(subtask).where(subtask.c.task_id.in_(ids)).order_by(subtask.c.id)
            ).all()
            edges = conn.execute(
                sa.select(
                    subtask_edge.c.upstream_id, subtask_edge.c.downstream_id, subtask_edge.c.task_id
                ).where(subtask_edge.c.task_id.in_(ids))
            ).all()
        tasks = [
            _task_info(
                r,
                [s for s in subs if s.task_id == r.id],
                [e for e in edges if e.task_id == r.id],
            )
            for r in rows
        ]
        return TaskPage(tasks=tasks, number=page, size=size, total_elements=int(total or 0))

    def read_log(self, task_id: int, subtask_id: int) -> str:
        """Every attempt's log of one subtask, in order."""
        with self.db.read() as conn:
            owner = conn.execute(
                sa.select(subtask.c.task_id).where(subtask.c.id == subtask_id)
            ).scalar()
            if owner != task_id:
                raise TaskNotFoundError(
                    f"error 20000: task {task_id} has no subtask {subtask_id}; "
                    f"see the subtask ids with `dagtask show {task_id}`"
                )
            parts = conn.execute(
                sa.select(subtask_log.c.text)
                .where(subtask_log.c.subtask_id == subtask_id)
                .order_by(subtask_log.c.run_time, subtask_log.c.id)
            ).scalars()
            return "".join(parts)

    def events(self, task_id: int, after_id: int = 0) -> list[TaskEvent]:
        """The task's history events with id greater than ``after_id``, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(task_event)
                .where(task_event.c.task_id == task_id, task_event.c.id > after_id)
                .order_by(task_event.c.id)
            ).all()
        return [TaskEvent.model_validate(row._asdict()) for row in rows]

    def template_definition(self, template_id: int) -> dict[str, Any]:
        """The stored definition of a template version."""
        with self.db.read() as conn:
            value = conn.execute(
                sa.select(template_table.c.definition).where(template_table.c.id == template_id)
            ).scalar_one()
        return dict(value)

    def stored_templates(self) -> list[tuple[str, int, int]]:
        """(name, newest version, id) of every template name stored in the database."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(
                    template_table.c.name, template_table.c.version, template_table.c.id
                ).order_by(template_table.c.name, template_table.c.version)
            ).all()
        newest: dict[str, tuple[str, int, int]] = {}
        for name, version, tid in rows:
            newest[name] = (name, version, tid)
        return list(newest.values())


def _not_found(task_id: int) -> TaskNotFoundError:
    return TaskNotFoundError(
        f"error 20000: task {task_id} does not exist; list tasks with `dagtask list`"
    )


def _task_info(row: Any, subs: Sequence[Any], edges: Sequence[Any]) -> TaskInfo:
    """Map a task row, its subtask rows and its edge rows to the domain model."""
    ups: dict[int, list[int]] = {}
    downs: dict[int, list[int]] = {}
    for edge in edges:
        ups.setdefault(edge.downstream_id, []).append(edge.upstream_id)
        downs.setdefault(edge.upstream_id, []).append(edge.downstream_id)
    subtasks = [
        SubtaskInfo(
            id=s.id,
            task_id=s.task_id,
            name=s.name,
            description=s.description,
            class_name=s.class_name,
            node_type=s.node_type,
            operation=Operation(s.operation),
            status=S(s.status),
            series_id=s.series_id,
            run_time=s.run_time,
            timeout=s.timeout,
            retry_count=s.retry_count,
            parallel=s.parallel,
            parallel_idx=s.parallel_idx,
            prohibit_rollback=s.prohibit_rollback,
            upstreams=sorted(ups.get(s.id, [])),
            downstreams=sorted(downs.get(s.id, [])),
            executor=s.executor,
            context=TaskContext.from_json(s.output_context) if s.output_context else None,
            message=s.message,
            create_time=s.create_time,
            start_time=s.start_time,
            finish_time=s.finish_time,
        )
        for s in subs
    ]
    return TaskInfo(
        id=row.id,
        name=row.name,
        template_id=row.template_id,
        task_definition_id=row.task_definition_id,
        type=states.TaskType(row.type),
        status=TaskStatus(row.status),
        operation=Operation(row.operation),
        creator=row.creator,
        executor=row.executor,
        context=TaskContext.from_json(row.context),
        prohibit_rollback=row.prohibit_rollback,
        host_id=row.host_id,
        cluster_id=row.cluster_id,
        tenant_id=row.tenant_id,
        concurrency=row.concurrency,
        create_time=row.create_time,
        start_time=row.start_time,
        finish_time=row.finish_time,
        subtasks=subtasks,
    )
