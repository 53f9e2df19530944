"""The task store: submit, claim, finish and the operator actions, one transaction each.

The statements are prebuilt in :mod:`.statements` (the hot path never builds a query or opens an
ORM session); every status change goes through :mod:`.changes`, which checks the transition table
and records the history event in the same transaction as the change; reads are in :mod:`.reads`.

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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dagtask import context, logs, planner, states
from dagtask.clock import utcnow
from dagtask.context import TaskContext
from dagtask.errors import (
    ContextError,
    OperationNotAllowedError,
    RollbackProhibitedError,
    StoreError,
    TaskNotFoundError,
)
from dagtask.expand import ExpandedTask
from dagtask.models import EventKind
from dagtask.planner import AttemptResult
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from dagtask.store import changes
from dagtask.store import statements as q
from dagtask.store.db import Database, retrying
from dagtask.store.reads import StoreReads
from dagtask.store.schema import subtask, subtask_edge, task
from dagtask.store.schema import task_template as template_table
from dagtask.store.workers import WorkerStore
from dagtask.template import TaskTemplate

S = SubtaskStatus
_DONE = {"retry": "retried", "skip": "skipped"}
_BACKWARD = {Operation.ROLLBACK.value, Operation.ROLLBACK_SKIP.value}


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
    next: Claim | None = None
    """A successor claimed in the same transaction (``claim_next``)."""


@dataclass(frozen=True)
class Report:
    """The end of one attempt, as a worker reports it."""

    claim: Claim
    result: AttemptResult
    output: TaskContext | None = None
    log_text: str = ""


@dataclass(frozen=True)
class Batch:
    """What :meth:`Store.finish_many` did: one outcome per report, and what it claimed."""

    outcomes: list[FinishOutcome]
    claims: list[Claim]


def _log_row(claim: Claim, text: str, now: datetime) -> dict[str, Any]:
    return {
        "subtask_id": claim.subtask_id,
        "run_time": claim.run_time,
        "text": text,
        "create_time": now,
    }


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
        "old_status": old.value,
        "old_operation": claim.operation.value,
        "old_run_time": claim.run_time,
        "new_status": final.status.value,
        "new_operation": final.operation.value,
        "new_run_time": final.run_time,
        "message": None if result.ok else result.message,
        "now": now,
    }
    if not keep_output:
        output = report.output if result.ok else None
        params["output"] = output.without_engine_keys().to_json() if output is not None else None
    return _Plan(old, result, steps, keep_output, params)


def _attempt_state(
    row: Any, claim: Claim, result: AttemptResult
) -> tuple[SubtaskStatus | None, AttemptResult]:
    """The status the attempt's subtask is in (None if the attempt already ended) and the result
    to record: an attempt the operator cancelled ends as a cancel whatever the handler said."""
    if (
        row is None
        or row.run_time != claim.run_time
        or row.operation != claim.operation.value
        or row.status not in (S.RUNNING.value, S.CANCELING.value)
    ):
        return None, result
    if row.status == S.CANCELING.value:
        message = result.message if not result.ok else "cancelled by the operator"
        return S.CANCELING, AttemptResult(ok=False, message=message, cancelled=True)
    return S.RUNNING, result


class Store(WorkerStore, StoreReads):
    """Tasks, subtasks, their history and logs in one SQL database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # UPDATE ... RETURNING claims in one statement; MySQL/MariaDB lack it for UPDATE.
        self._returning = db.dialect in ("sqlite", "postgresql")
        self._template_ids: dict[str, int] = {}  # digest -> id; stored templates never change

    # ---- templates and submission ---------------------------------------------------------

    def save_template(self, template: TaskTemplate) -> int:
        """Store ``template`` (once per distinct definition) and return its id.

        A changed definition under an existing name becomes that name's next version.
        """
        digest = template.digest()
        known = self._template_ids.get(digest)
        if known is not None:
            return known
        by_digest = sa.select(template_table.c.id).where(template_table.c.digest == digest)
        for _attempt in range(3):
            with self.db.read() as conn:
                found = conn.execute(by_digest).scalar()
            if found is not None:
                self._template_ids[digest] = int(found)
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
                    template_id = int(result.inserted_primary_key[0])
                self._template_ids[digest] = template_id
                return template_id
            except sa.exc.IntegrityError:
                continue  # another process stored the same definition (or version) first
        raise RuntimeError(f"could not store template {template.name!r}")

    @staticmethod
    def _allocate(conn: sa.Connection, sequence: str, count: int) -> int:
        """Reserve ``count`` consecutive ids of ``sequence`` (in the caller's transaction)."""
        if not conn.execute(q.next_ids, {"seq": sequence, "n": count}).rowcount:
            raise StoreError(
                f"the database has no id sequence {sequence!r} (it was not created by dagtask); "
                "use an empty database or run `dagtask db upgrade`"
            )
        end = conn.execute(q.read_next_id, {"seq": sequence}).scalar_one()
        return int(end) - count

    def submit(
        self,
        expanded: ExpandedTask,
        *,
        template_id: int | None,
        creator: str,
        executor: str,
        host_id: int | None = None,
        hosts: Sequence[int] = (),
        source_task_id: int | None = None,
        reused: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> int:
        """Store a new task and its subtasks, make its roots READY; return the task id.

        ``hosts`` are the hosts a host operation acts on: the task holds them while it runs and
        is refused (:class:`~dagtask.errors.HostBusyError`, nothing stored) if another running
        task holds one. ``reused`` maps subtask indexes to output contexts recorded by
        ``source_task_id``: those subtasks start SUCCESSFUL with that output (``dagtask rerun
        --from``) and only the others run.
        """
        reused = reused or {}
        subs = sorted(expanded.subtasks, key=lambda s: s.series_id)
        # Rows are built with ids relative to the task's block of ids, shifted once the block
        # is allocated inside the transaction (one transaction per submit).
        ids = {sub.index: i for i, sub in enumerate(subs)}
        task_id = 0
        now = utcnow()
        ctx = expanded.context
        task_row: dict[str, Any] = {
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
            "source_task_id": source_task_id,
            "concurrency": expanded.template.concurrency,
            "create_time": now,
            "start_time": now,
        }
        sub_rows: list[dict[str, Any]] = [
            {
                "id": ids[sub.index],
                "task_id": task_id,
                "series_id": sub.series_id,
                "name": sub.spec.instance_name,
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
                "prohibit_rollback": sub.prohibit_rollback,
                "recovery": sub.spec.on_worker_lost.value,
                "pending_upstreams": sum(1 for up in sub.upstreams if up not in reused),
                "create_time": now,
            }
            for sub in subs
        ]
        for row, sub in zip(sub_rows, subs, strict=True):
            done = sub.index in reused
            row.update(
                status=S.SUCCESSFUL.value if done else S.PENDING.value,
                output_context=dict(reused[sub.index]) if done else None,
                message=f"output reused from task {source_task_id}" if done else None,
                start_time=now if done else None,
                finish_time=now if done else None,
            )
        edge_rows: list[dict[str, Any]] = [
            {"upstream_id": ids[up], "downstream_id": ids[down], "task_id": task_id}
            for up, down in expanded.edges
        ]
        host_list = sorted({*hosts, *([host_id] if host_id is not None else [])})
        try:
            with self.db.begin() as conn:
                task_id = self._insert_new(conn, expanded, task_row, sub_rows, edge_rows, now)
                if host_list:
                    conn.execute(
                        q.insert_task_hosts, [{"task_id": task_id, "host_id": h} for h in host_list]
                    )
                    changes.lock_hosts(conn, task_id, host_list, now)
        except sa.exc.IntegrityError:
            if not host_list:
                raise
            with self.db.read() as conn:  # lost a race for a host to a concurrent submit
                conflict = changes.host_conflict(conn, host_list)
            if conflict is None:
                raise
            raise conflict from None
        return task_id

    def _insert_new(
        self,
        conn: sa.Connection,
        expanded: ExpandedTask,
        task_row: dict[str, Any],
        sub_rows: list[dict[str, Any]],
        edge_rows: list[dict[str, Any]],
        now: datetime,
    ) -> int:
        """Allocate the new task's block of ids, shift its rows onto them, insert them with the
        submission event (and one per reused subtask) and make its first subtasks READY."""
        task_id = self._allocate(conn, "task", 1)
        first = self._allocate(conn, "subtask", len(sub_rows))
        task_row["id"] = task_id
        for row in sub_rows:
            row["id"] += first
            row["task_id"] = task_id
        for row in edge_rows:
            row["upstream_id"] += first
            row["downstream_id"] += first
            row["task_id"] = task_id
        creator, executor = task_row["creator"], task_row["executor"]
        events = [
            changes.event(
                task_id,
                None,
                now,
                EventKind.TASK_SUBMITTED,
                new_status=TaskStatus.RUNNING.value,
                new_operation=Operation.EXECUTE.value,
                executor=executor,
                message=f"submitted by {creator}: {len(sub_rows)} subtasks",
            )
        ]
        events.extend(
            changes.event(
                task_id,
                row["id"],
                now,
                EventKind.SUBTASK_STATUS,
                S.PENDING.value,
                S.SUCCESSFUL.value,
                Operation.EXECUTE.value,
                Operation.EXECUTE.value,
                1,
                executor,
                row["message"],
            )
            for row in sub_rows
            if row["status"] == S.SUCCESSFUL.value
        )
        conn.execute(task.insert(), task_row)
        conn.execute(subtask.insert(), sub_rows)
        if edge_rows:
            conn.execute(subtask_edge.insert(), edge_rows)
        promoted, _ = changes.progress(conn, task_id, self._relock(conn, task_id), now, events)
        if events:
            conn.execute(q.insert_event, events)
        if promoted:
            changes.notify_ready(conn)
        return task_id

    # ---- the hot path: claim and finish ---------------------------------------------------

    def claim(self, executor: str, *, limit: int = 1, task_id: int | None = None) -> list[Claim]:
        """Atomically take up to ``limit`` READY subtasks (of ``task_id`` only, if given).

        Each claim comes with its input context (the task's for a root, else the merge of its
        upstreams' outputs), read in the same transaction.
        """

        def attempt() -> list[Claim]:
            events: list[dict[str, Any]] = []
            with self.db.begin(hot=True) as conn:
                claims = self._claim_in(conn, executor, limit, task_id, utcnow(), events)
                if events:
                    conn.execute(q.insert_event, events)
            return claims

        return retrying(attempt)

    def _claim_in(
        self,
        conn: sa.Connection,
        executor: str,
        limit: int,
        task_id: int | None,
        now: datetime,
        events: list[dict[str, Any]],
    ) -> list[Claim]:
        """Claim in the caller's transaction: up to ``limit`` READY subtasks (of ``task_id``
        only, if given)."""
        params: dict[str, Any] = {"limit": limit, "executor": executor, "now": now}
        if task_id is not None:
            params["only_task"] = task_id
        if self.db.is_sqlite:  # one writer at a time: one statement is atomic and enough
            stmt = q.claim_returning if task_id is None else q.claim_returning_of_task
            rows = conn.execute(stmt, params).all()
        elif self._returning:
            pick = q.claim_candidates if task_id is None else q.claim_candidates_of_task
            candidates = conn.execute(pick, params).scalars().all()
            rows = (
                conn.execute(
                    q.claim_ids_returning, {"ids": candidates, "executor": executor, "now": now}
                ).all()
                if candidates
                else []
            )
        else:  # MySQL/MariaDB: the candidates are row-locked, so one plain UPDATE wins them all
            pick = q.claim_candidates if task_id is None else q.claim_candidates_of_task
            candidates = conn.execute(pick, params).scalars().all()
            if candidates:
                conn.execute(q.claim_ids, {"ids": candidates, "executor": executor, "now": now})
            rows = conn.execute(q.claimed_rows, {"ids": candidates}).all() if candidates else []
        events.extend(
            changes.event(
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
        )
        return self._claims(conn, rows, now)

    def _claims(self, conn: sa.Connection, rows: Sequence[Any], now: datetime) -> list[Claim]:
        """:class:`Claim` objects for claimed rows (:data:`statements.CLAIM_COLUMNS`)."""
        contexts = self._input_contexts(conn, rows)
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
                **contexts[row.id],
            )
            for row in rows
        ]

    @staticmethod
    def _input_contexts(conn: sa.Connection, rows: Sequence[Any]) -> dict[int, dict[str, Any]]:
        """``context`` (and ``context_error``) of each claimed row, for :class:`Claim`: the task's
        context for a root, else the merge of its upstreams' outputs; for a rollback, the output
        its execute recorded. Two queries for the whole batch; each output is parsed once."""
        found: dict[int, dict[str, Any]] = {}
        forward = []
        for row in rows:
            if row.operation in _BACKWARD and row.output_context:
                # A rollback undoes what this subtask's execute recorded in its own output.
                found[row.id] = {"context": TaskContext.from_json(row.output_context)}
            else:
                forward.append(row)
        upstreams: dict[int, list[int]] = {}
        parsed: dict[int, TaskContext] = {}
        if forward:
            links = (
                conn.execute(q.upstream_outputs_of_one, {"sid": forward[0].id})
                if len(forward) == 1
                else conn.execute(q.upstream_outputs_of, {"ids": [r.id for r in forward]})
            )
            for link in links:
                upstreams.setdefault(link.downstream_id, []).append(link.id)
                if link.id not in parsed:
                    parsed[link.id] = TaskContext.from_json(link.output_context)
        roots = sorted({row.task_id for row in forward if row.id not in upstreams})
        task_contexts = (
            {
                t.id: TaskContext.from_json(t.context)
                for t in conn.execute(q.task_contexts, {"ids": roots})
            }
            if roots
            else {}
        )
        for row in forward:
            ups = upstreams.get(row.id)
            if ups is None:
                found[row.id] = {"context": task_contexts[row.task_id]}
                continue
            try:
                found[row.id] = {"context": context.merge(parsed[u] for u in ups)}
            except ContextError as exc:
                found[row.id] = {"context": TaskContext(), "context_error": str(exc)}
        for row in rows:
            copy = {"parallel": row.parallel, "parallel_idx": row.parallel_idx}
            found[row.id]["context"] = found[row.id]["context"].model_copy(update=copy)
        return found

    def finish(
        self,
        claim: Claim,
        result: AttemptResult,
        *,
        output: TaskContext | None = None,
        log_text: str = "",
        executor: str | None = None,
        claim_next: bool = False,
    ) -> FinishOutcome:
        """Record the end of one attempt (see :meth:`finish_many`).

        With ``claim_next``, the same transaction also claims one READY subtask of the same task
        for ``executor`` (returned as ``FinishOutcome.next``), so a worker goes straight on to a
        successor it just unblocked.
        """
        batch = self.finish_many(
            [Report(claim, result, output, log_text)],
            executor=executor,
            claim_limit=1 if claim_next and executor else 0,
            claim_task=claim.task_id,
        )
        outcome = batch.outcomes[0]
        if batch.claims:
            return FinishOutcome(
                outcome.applied,
                outcome.status,
                outcome.promoted,
                outcome.task_status,
                batch.claims[0],
            )
        return outcome

    def finish_many(
        self,
        reports: Sequence[Report],
        *,
        executor: str | None = None,
        claim_limit: int = 0,
        claim_task: int | None = None,
        claim_any: bool = True,
    ) -> Batch:
        """Record the end of attempts, promote what they unblock and settle their tasks, then
        claim up to ``claim_limit`` READY subtasks (of ``claim_task`` only, if given): one
        transaction, a fixed number of statements whatever the number of reports.

        Each update is conditional on the subtask still being in the attempt that ran. If an
        operator asked to cancel it (CANCELING), the attempt ends FAILED with op CANCEL whatever
        the handler returned; if it is in neither state (timed out, recovered), the result is
        stale and only its log is kept.

        A deadlock (which MariaDB reports now and then when claims and finishes cross) rolls the
        transaction back; it is then tried again as a whole.
        """
        return retrying(
            lambda: self._finish_many(reports, executor, claim_limit, claim_task, claim_any)
        )

    def _finish_many(
        self,
        reports: Sequence[Report],
        executor: str | None,
        claim_limit: int,
        claim_task: int | None,
        claim_any: bool,
    ) -> Batch:
        now = utcnow()
        events: list[dict[str, Any]] = []
        claims: list[Claim] = []
        with self.db.begin(hot=True) as conn:
            task_ids = sorted({r.claim.task_id for r in reports})
            locked = (
                conn.execute(q.lock_one_task, {"task_id": task_ids[0]})
                if len(task_ids) == 1
                else conn.execute(q.lock_tasks, {"ids": task_ids})
            )
            tasks = {row.id: row for row in locked.all()}
            # Optimistically, every attempt is still RUNNING (the usual case): one conditional
            # UPDATE per kind of change, no read first. Only if some rows did not match are
            # those read to tell a cancel from a stale result.
            plans: list[_Plan | None] = [_plan(r, S.RUNNING, r.result, now) for r in reports]
            if self._apply(conn, plans) != len(plans):
                plans = self._replan(conn, reports, plans, now)
            outcomes: list[FinishOutcome] = []
            logs_rows: list[dict[str, Any]] = []
            crossing: list[int] = []
            for report, plan in zip(reports, plans, strict=True):
                claim = report.claim
                if plan is None:  # stale: keep what it logged, change nothing
                    if report.log_text:
                        logs_rows.append(_log_row(claim, report.log_text, now))
                    outcomes.append(FinishOutcome(applied=False))
                    continue
                text = report.log_text
                prev, prev_op = plan.old, claim.operation
                for step in plan.steps:
                    states.check_subtask_transition(prev, step.status)
                    text += logs.state_line(claim.subtask_id, prev, step.status, when=now)
                    events.append(
                        changes.event(
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
                            plan.result.message,
                        )
                    )
                    prev, prev_op = step.status, step.operation
                logs_rows.append(_log_row(claim, text, now))
                final = plan.steps[-1].status
                if final is S.SUCCESSFUL:
                    crossing.append(claim.subtask_id)
                outcomes.append(FinishOutcome(True, final))
            if logs_rows:
                conn.execute(q.insert_log, logs_rows)
            changes.successful_crossing(conn, crossing, S.RUNNING, S.SUCCESSFUL)
            promoted = 0
            take = (
                changes.Take(executor, claim_limit, self._returning)
                if claim_limit and executor
                else None
            )
            settled: dict[int, tuple[int, TaskStatus | None]] = {}
            applied_tasks = {
                r.claim.task_id for r, o in zip(reports, outcomes, strict=True) if o.applied
            }
            for task_id in sorted(applied_tasks):
                # What this batch unblocks, this worker takes first (no search, no contention).
                mine = take if claim_task is None or task_id == claim_task else None
                settled[task_id] = changes.progress(
                    conn, task_id, tasks[task_id], now, events, take=mine
                )
                promoted += settled[task_id][0]
            if take is not None:
                claims = self._claims(conn, take.rows, now)
                if take.room() > 0 and claim_task is None and claim_any:
                    claims += self._claim_in(conn, executor or "", take.room(), None, now, events)
            if promoted > len(claims):
                changes.notify_ready(conn)
            if events:
                conn.execute(q.insert_event, events)
        # Each task's promotions and new status go with its last applied report.
        for index in range(len(reports) - 1, -1, -1):
            task_id = reports[index].claim.task_id
            if task_id in settled and outcomes[index].applied:
                count, task_status = settled.pop(task_id)
                outcomes[index] = replace(outcomes[index], promoted=count, task_status=task_status)
        return Batch(outcomes, claims)

    @staticmethod
    def _apply(conn: sa.Connection, plans: Sequence[_Plan | None]) -> int:
        """Run the conditional updates of ``plans``; return how many rows matched."""
        matched = 0
        for keep_output in (False, True):
            params = [p.params for p in plans if p is not None and p.keep_output is keep_output]
            if params:
                stmt = q.finish_subtask_keep_output if keep_output else q.finish_subtask
                matched += conn.execute(stmt, params).rowcount
        return matched

    def _replan(
        self,
        conn: sa.Connection,
        reports: Sequence[Report],
        plans: list[_Plan | None],
        now: datetime,
    ) -> list[_Plan | None]:
        """After an optimistic finish matched fewer rows than reports: keep the plans that
        matched (their rows carry this transaction's ``finish_time``), and for the others decide
        from the row as it is now (CANCELING: a cancel; anything else: stale)."""
        ids = [r.claim.subtask_id for r in reports]
        rows = {row.id: row for row in conn.execute(q.lock_subtasks_done, {"ids": ids}).all()}
        again: list[_Plan | None] = []
        for report, plan in zip(reports, plans, strict=True):
            row = rows.get(report.claim.subtask_id)
            if plan is not None and row is not None and row.finish_time == now:
                again.append(plan)
                continue
            old, result = _attempt_state(row, report.claim, report.result)
            again.append(None if old is None else _plan(report, old, result, now))
        redo = [p if p is not None and p.old is S.CANCELING else None for p in again]
        if self._apply(conn, redo) != sum(p is not None for p in redo):
            raise RuntimeError("a subtask changed under its row lock")
        return again

    def append_log(self, subtask_id: int, run_time: int, text: str) -> None:
        """Append to an attempt's log (used to flush a long-running handler's log)."""
        with self.db.begin() as conn:
            self._log(conn, subtask_id, run_time, text, utcnow())

    # ---- operator actions (SPEC §4) -------------------------------------------------------------

    def retry_task(self, task_id: int, operator: str) -> None:
        """Every FAILED subtask → READY as RETRY (runTime + 1); the task → RUNNING / RETRY."""
        with self.db.begin() as conn:
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
                    [planner.Step(S.READY, Operation.RETRY, sub.run_time + 1)],
                    now,
                    operator,
                    "retried by the operator",
                    Operation(sub.operation),
                    events,
                )
            changes.restart_task(
                conn, task_id, old, Operation.RETRY, now, events, operator, "retry"
            )
            if changes.progress(conn, task_id, self._relock(conn, task_id), now, events)[0]:
                changes.notify_ready(conn)
            if events:
                conn.execute(q.insert_event, events)

    def rollback_task(self, task_id: int, operator: str) -> None:
        """Start (or resume) rolling the task back in reverse topological order (SPEC §4)."""
        with self.db.begin() as conn:
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
            if changes.progress(conn, task_id, self._relock(conn, task_id), now, events)[0]:
                changes.notify_ready(conn)
            if events:
                conn.execute(q.insert_event, events)

    def retry_subtask(self, task_id: int, subtask_id: int, operator: str) -> None:
        """A FAILED subtask → READY as RETRY (runTime + 1); the task → RUNNING."""

        def decide(row: Any, sub: Any) -> tuple[str | None, Operation]:
            refusal = planner.retry_subtask_refusal(
                S(sub.status), Operation(sub.operation), Operation(row.operation)
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
        with self.db.begin() as conn:
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
            if changes.progress(conn, task_id, self._relock(conn, task_id), now, events)[0]:
                changes.notify_ready(conn)
            if events:
                conn.execute(q.insert_event, events)

    def cancel_subtask(self, task_id: int, subtask_id: int, operator: str) -> None:
        """A RUNNING subtask → CANCELING; the worker running it interrupts it (SPEC §4)."""
        with self.db.begin() as conn:
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

    def cancel_task(self, task_id: int, operator: str) -> None:
        """Cancel every RUNNING subtask, withdraw READY ones, start nothing new (beyond OCP).

        The task ends FAILED once its running subtasks have stopped; it can then be retried or
        rolled back.
        """
        with self.db.begin() as conn:
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
            if changes.progress(conn, task_id, self._relock(conn, task_id), now, events)[0]:
                changes.notify_ready(conn)
            if events:
                conn.execute(q.insert_event, events)

    def canceling(self, executor: str) -> list[tuple[int, int]]:
        """(subtask id, runTime) of the CANCELING subtasks that ``executor`` runs."""
        with self.db.read() as conn:
            rows = conn.execute(q.canceling_of, {"executor": executor}).all()
        return [(row.id, row.run_time) for row in rows]

    # ---- helpers of the actions -----------------------------------------------------------------

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
    def _relock(conn: sa.Connection, task_id: int) -> Any:
        return conn.execute(q.lock_task, {"task_id": task_id}).one()

    @staticmethod
    def _subtasks(conn: sa.Connection, task_id: int) -> list[Any]:
        return list(conn.execute(q.task_subtasks, {"task_id": task_id}).all())

    @staticmethod
    def _subtask_of(conn: sa.Connection, task_id: int, subtask_id: int) -> Any:
        row = conn.execute(q.subtask_row, {"sid": subtask_id}).one_or_none()
        if row is None or row.task_id != task_id:
            raise TaskNotFoundError(
                f"error 20000: task {task_id} has no subtask {subtask_id}; "
                f"see its subtasks with `dagtask show {task_id}`"
            )
        return row

    def _log(self, conn: sa.Connection, sid: int, run_time: int, text: str, now: datetime) -> None:
        conn.execute(
            q.insert_log,
            {"subtask_id": sid, "run_time": run_time, "text": text, "create_time": now},
        )


def _refuse(task_id: int, action: str, reason: str | None) -> None:
    if reason is not None:
        raise OperationNotAllowedError(f"error 20003: cannot {action} task {task_id}: {reason}")


def _refuse_subtask(task_id: int, subtask_id: int, action: str, reason: str | None) -> None:
    if reason is not None:
        raise OperationNotAllowedError(
            f"error 20003: cannot {action} subtask {subtask_id} of task {task_id}: {reason}"
        )
