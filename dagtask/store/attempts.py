"""Claiming READY subtasks and recording the end of attempts: the workers' hot path.

* a claim is one conditional ``UPDATE ... WHERE status = 'READY'`` (plus ``FOR UPDATE SKIP
  LOCKED`` on servers that have it), so two workers can never both win a subtask;
* finishing attempts locks their tasks' rows first (in id order), so a subtask's completion, the
  promotion of its successors and the task's own status are decided by one transaction at a time
  per task;
* every finish is conditional on the subtask still being in the attempt the caller ran (same
  ``run_time``, still RUNNING/CANCELING): a late result of an attempt that was timed out,
  cancelled or recovered meanwhile is discarded, and an attempt reported twice is recorded once.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dagtask import context
from dagtask.clock import utcnow
from dagtask.context import TaskContext
from dagtask.errors import (
    ContextError,
)
from dagtask.planner import AttemptResult
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from dagtask.store import changes
from dagtask.store import statements as q
from dagtask.store.db import Database, retrying
from dagtask.store.prepared import execute as run

S = SubtaskStatus
_BACKWARD = {Operation.ROLLBACK.value, Operation.ROLLBACK_SKIP.value}
_STORED = context.StoredContexts()
"""Input contexts of claims, parsed and merged once per distinct stored text (shared: the
runner copies a context's containers before a handler sees it)."""


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
    prohibit_rollback: bool = False
    """The subtask cannot be rolled back once it has run: its output then says so (OCP)."""


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


class AttemptStore:
    """Claim and finish (mixed into :class:`dagtask.store.sql.Store`)."""

    db: Database
    _returning: bool

    def claim(self, executor: str, *, limit: int = 1, task_id: int | None = None) -> list[Claim]:
        """Atomically take up to ``limit`` READY subtasks (of ``task_id`` only, if given).

        Each claim comes with its input context (the task's for a root, else the merge of its
        upstreams' outputs), read in the same transaction.
        """

        def attempt() -> list[Claim]:
            events: list[dict[str, Any]] = []
            with self.db.hot() as conn:
                claims = self._claim_in(conn, executor, limit, task_id, utcnow(), events)
                if events:
                    run(conn, q.insert_event, events)
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
            rows = run(conn, stmt, params).all()
        elif self._returning:
            pick = q.claim_candidates if task_id is None else q.claim_candidates_of_task
            candidates = run(conn, pick, params).scalars().all()
            rows = (
                run(
                    conn,
                    q.claim_ids_returning,
                    {"ids": candidates, "executor": executor, "now": now},
                ).all()
                if candidates
                else []
            )
        else:  # MySQL/MariaDB: the candidates are row-locked, so one plain UPDATE wins them all
            pick = q.claim_candidates if task_id is None else q.claim_candidates_of_task
            candidates = run(conn, pick, params).scalars().all()
            if candidates:
                run(conn, q.claim_ids, {"ids": candidates, "executor": executor, "now": now})
            rows = run(conn, q.claimed_rows, {"ids": candidates}).all() if candidates else []
        changes.claimed(rows, now, executor, events)
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
                parallel=bool(row.parallel),
                parallel_idx=row.parallel_idx,
                prohibit_rollback=bool(row.prohibit_rollback),
                start_time=now,
                **contexts[row.id],
            )
            for row in rows
        ]

    @staticmethod
    def _input_contexts(conn: sa.Connection, rows: Sequence[Any]) -> dict[int, dict[str, Any]]:
        """``context`` (and ``context_error``) of each claimed row, for :class:`Claim`: the task's
        context for a root, else the merge of its upstreams' outputs; for a rollback, the output
        its execute recorded. Two queries for the whole batch; each distinct output is parsed,
        and each distinct set of upstream outputs merged, once (:data:`_STORED`)."""
        found: dict[int, dict[str, Any]] = {}
        forward = []
        for row in rows:
            if row.operation in _BACKWARD and not context.stored_is_empty(row.output_context):
                # A rollback undoes what this subtask's execute recorded in its own output.
                found[row.id] = {"context": _STORED.parse(row.output_context)}
            else:
                forward.append(row)
        upstreams: dict[int, list[Any]] = {}
        if forward:
            links = (
                run(conn, q.upstream_outputs_of_one, {"sid": forward[0].id})
                if len(forward) == 1
                else run(conn, q.upstream_outputs_of, {"ids": [r.id for r in forward]})
            )
            for link in links:
                upstreams.setdefault(link.downstream_id, []).append(link.output_context)
        roots = sorted({row.task_id for row in forward if row.id not in upstreams})
        found_tasks = run(conn, q.task_contexts, {"ids": roots}) if roots else []
        task_contexts = {t.id: _STORED.parse(t.context) for t in found_tasks}
        for row in forward:
            outputs = upstreams.get(row.id)
            if outputs is None:
                found[row.id] = {"context": task_contexts[row.task_id]}
                continue
            try:
                found[row.id] = {"context": _STORED.merge(outputs)}
            except ContextError as exc:
                found[row.id] = {"context": TaskContext(), "context_error": str(exc)}
        for row in rows:
            given: TaskContext = found[row.id]["context"]
            parallel = bool(row.parallel)
            if given.parallel is not parallel or given.parallel_idx != row.parallel_idx:
                copy = {"parallel": parallel, "parallel_idx": row.parallel_idx}
                found[row.id]["context"] = given.model_copy(update=copy)
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
        # One attempt, one finish: a second report of the same attempt in one batch (however it
        # came about) would match no row and must not be taken for a change.
        unique: dict[tuple[int, int], Report] = {}
        for report in reports:
            unique.setdefault((report.claim.subtask_id, report.claim.run_time), report)
        if len(unique) != len(reports):
            first = list(unique.values())
            batch = retrying(
                lambda: self._finish_many(first, executor, claim_limit, claim_task, claim_any)
            )
            by_key = {
                (r.claim.subtask_id, r.claim.run_time): o
                for r, o in zip(first, batch.outcomes, strict=True)
            }
            outcomes = [
                by_key[(r.claim.subtask_id, r.claim.run_time)]
                if unique[(r.claim.subtask_id, r.claim.run_time)] is r
                else FinishOutcome(applied=False)
                for r in reports
            ]
            return Batch(outcomes, batch.claims)
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
        with self.db.hot() as conn:
            task_ids = sorted({r.claim.task_id for r in reports})
            locked = (
                run(conn, q.lock_one_task, {"task_id": task_ids[0]})
                if len(task_ids) == 1
                else run(conn, q.lock_tasks, {"ids": task_ids})
            )
            # The lock is sent first, but read after the finish: in a PostgreSQL pipeline both
            # results then come back in one round trip.
            ended = changes.finish_attempts(conn, reports, now, executor, events)
            tasks = {row.id: row for row in locked.all()}
            outcomes = [
                FinishOutcome(applied=False) if final is None else FinishOutcome(True, final)
                for final in ended.finals
            ]
            logs_rows, crossing = ended.log_rows, ended.crossing
            if logs_rows:
                run(conn, q.insert_log, logs_rows)
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
                run(conn, q.insert_event, events)
        # Each task's promotions and new status go with its last applied report.
        for index in range(len(reports) - 1, -1, -1):
            task_id = reports[index].claim.task_id
            if task_id in settled and outcomes[index].applied:
                count, task_status = settled.pop(task_id)
                outcomes[index] = replace(outcomes[index], promoted=count, task_status=task_status)
        return Batch(outcomes, claims)
