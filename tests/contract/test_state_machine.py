"""A hypothesis state machine that drives the real Store through random task lives (SPEC §3-§5).

Synchronously, with no worker threads and no Engine: the machine plays the workers (claim; finish
with success / failure / "timed out" / cancelled, optionally claiming the next subtask in the same
transaction; late results of attempts already recorded) and the operator (every SPEC §4 action,
whether or not it is allowed, on random targets including unknown ids). One random task per
example (tests/strategies.py ``engine_tasks``), on SQLite (a fresh file per run) and on PostgreSQL
(a fresh schema, a third of the examples).

An independent model written from SPEC §4 (it does not use the planner's refusal functions)
predicts which actions are refused; a refused action must raise exactly the predicted error and
change nothing (task snapshot and history). An applied action, and every recorded attempt, must
have the effect SPEC §3/§4 describe. After every step the task is read back and checked:

* the history replays event by event to exactly what is stored (one event per change), and every
  status change in it is in the transition table of ``dagtask.states``;
* the task status follows from its subtasks (SPEC §3), and active steps go the task's direction;
* a subtask is claimed for EXECUTE/RETRY/SKIP only when its upstreams are all SUCCESSFUL, for
  ROLLBACK/ROLLBACK_SKIP only when its downstreams are all PENDING, and never twice at once;
* RUNNING/CANCELING subtasks are exactly the attempts workers hold (so a task never ends while
  one is in flight), and only the worker running a cancelled subtask is told to stop;
* the engine's promotions never make READY + RUNNING + CANCELING exceed the concurrency, and
  never leave a free slot empty while a subtask could start (unless the task is being cancelled);
* a late result of an attempt already recorded is discarded (``applied=False``), changing nothing;
* a rollback that ends SUCCESSFUL has undone every subtask a forward attempt started on;
* when every worker succeeds from some point on, the task ends.

Decisions the spec leaves open, written down here:

* Rolling back a task that is not FAILED is a state error (20003, as for retry); 20004 is for a
  FAILED task whose rollback is prohibited.
* Retrying a subtask is refused for any step that failed while the task rolls back: a cancelled
  rollback step carries op CANCEL but is still a rollback step.
* Cancelling a whole task (beyond OCP) is allowed while it is RUNNING: RUNNING subtasks become
  CANCELING, READY ones go back to PENDING, nothing new is promoted until an operator action
  restarts the task (a task or subtask retry / skip, a rollback).
* Operator actions may push READY + RUNNING + CANCELING over the concurrency (a task retry
  readies every FAILED subtask at once, SPEC §4); the engine's own promotions may not.

``DAGTASK_MACHINE_EXAMPLES`` / ``DAGTASK_MACHINE_STEPS`` raise the budget for bug hunting;
``DAGTASK_MACHINE_SHRINK=1`` shrinks a failure to a minimal sequence of steps (slow).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dagtask import TemplateBuilder
from dagtask.errors import (
    DagtaskError,
    OperationNotAllowedError,
    RollbackProhibitedError,
    TaskNotFoundError,
)
from dagtask.expand import expand, task_context
from dagtask.models import EventKind, SubtaskInfo, TaskEvent, TaskInfo
from dagtask.planner import AttemptResult
from dagtask.states import (
    ACTIVE_SUBTASK_STATUSES,
    SUBTASK_TRANSITIONS,
    TASK_OPERATIONS,
    TASK_TRANSITIONS,
    Operation,
    SubtaskStatus,
    TaskStatus,
)
from dagtask.store import db as dbmod
from dagtask.store.sql import Claim, Store
from tests import strategies
from tests.hypo import examples, steps

S = SubtaskStatus
OP = Operation
FORWARD = frozenset({OP.EXECUTE, OP.RETRY, OP.SKIP})
BACKWARD = frozenset({OP.ROLLBACK, OP.ROLLBACK_SKIP})
MISSING = 999_999_999
OPERATOR = "operator"

RESULTS = {
    "ok": AttemptResult(ok=True),
    "failed": AttemptResult(ok=False, message="RuntimeError: boom"),
    "timed out": AttemptResult(ok=False, message="timed out after 1 s"),
    "cancelled": AttemptResult(ok=False, message="cancelled by the operator", cancelled=True),
}

EXAMPLES = int(os.environ.get("DAGTASK_MACHINE_EXAMPLES", str(examples(100))))
STEPS = int(os.environ.get("DAGTASK_MACHINE_STEPS", str(steps(50))))
SHRINK = os.environ.get("DAGTASK_MACHINE_SHRINK") == "1"
"""Shrinking a failure of this machine takes Hypothesis's full five minutes per database, so it
is opt-in: by default a failure is reported at once, with the unshrunk steps."""
Refusal = type[DagtaskError] | None


# ---- the model of SPEC §4: when is an operator action refused, and with which error -------------


def retry_task_refusal(task: TaskInfo) -> Refusal:
    """Retry task: the task is FAILED and its operation is not ROLLBACK (else 20003)."""
    if task.status is not TaskStatus.FAILED or task.operation is OP.ROLLBACK:
        return OperationNotAllowedError
    return None


def rollback_task_refusal(task: TaskInfo) -> Refusal:
    """Roll back task: the task is FAILED (20003) and rollback is not prohibited (20004):
    neither by ``stringMap.prohibit_rollback == "true"`` nor by a flagged subtask that has run
    (is neither PENDING nor READY)."""
    if task.status is not TaskStatus.FAILED:
        return OperationNotAllowedError
    if task.context.string_map.get("prohibit_rollback") == "true":
        return RollbackProhibitedError
    if any(s.prohibit_rollback and s.status not in (S.PENDING, S.READY) for s in task.subtasks):
        return RollbackProhibitedError
    return None


def retry_subtask_refusal(task: TaskInfo, sub: SubtaskInfo | None) -> Refusal:
    """Retry subtask: it is FAILED and is not a failed rollback step."""
    if sub is None:
        return TaskNotFoundError
    if sub.status is not S.FAILED:
        return OperationNotAllowedError
    if sub.operation in BACKWARD or task.operation is OP.ROLLBACK:
        return OperationNotAllowedError
    return None


def skip_subtask_refusal(sub: SubtaskInfo | None) -> Refusal:
    """Skip subtask: it is FAILED."""
    if sub is None:
        return TaskNotFoundError
    return None if sub.status is S.FAILED else OperationNotAllowedError


def cancel_subtask_refusal(sub: SubtaskInfo | None) -> Refusal:
    """Cancel subtask: it is RUNNING."""
    if sub is None:
        return TaskNotFoundError
    return None if sub.status is S.RUNNING else OperationNotAllowedError


def cancel_task_refusal(task: TaskInfo) -> Refusal:
    """Cancel task (beyond OCP): it is RUNNING."""
    return None if task.status is TaskStatus.RUNNING else OperationNotAllowedError


def status_from_subtasks(task: TaskInfo) -> TaskStatus:
    """SPEC §3: RUNNING while anything is active; once idle, SUCCESSFUL when every subtask is
    SUCCESSFUL (forward) or every subtask is PENDING (a rollback), FAILED otherwise."""
    statuses = {s.status for s in task.subtasks}
    if statuses & ACTIVE_SUBTASK_STATUSES:
        return TaskStatus.RUNNING
    done = S.PENDING if task.operation is OP.ROLLBACK else S.SUCCESSFUL
    return TaskStatus.SUCCESSFUL if statuses == {done} else TaskStatus.FAILED


def expected_after_attempt(
    sub: SubtaskInfo, claim: Claim, result: AttemptResult
) -> tuple[S, OP, int]:
    """SPEC §3/§4: the subtask's (status, operation, runTime) once this attempt is recorded."""
    op, run_time = claim.operation, claim.run_time
    if sub.status is S.CANCELING or result.cancelled:
        return S.FAILED, OP.CANCEL, run_time
    if result.ok:
        return (S.PENDING if op in BACKWARD else S.SUCCESSFUL), op, run_time
    if op in (OP.EXECUTE, OP.RETRY) and run_time <= sub.retry_count:
        return S.READY, OP.RETRY, run_time + 1
    return S.FAILED, op, run_time


def state_of(sub: SubtaskInfo) -> tuple[S, OP, int]:
    return sub.status, sub.operation, sub.run_time


# ---- the machine ------------------------------------------------------------------------------


class TaskLife(RuleBasedStateMachine):
    """One task, driven by random worker and operator steps."""

    store: ClassVar[Store]
    foreign_subtask: ClassVar[int]
    """A subtask of another task: naming it with this task's id must be error 20000."""

    def __init__(self) -> None:
        super().__init__()
        self.task_id = 0
        self.task: TaskInfo
        self.inflight: dict[int, tuple[Claim, str]] = {}
        """subtask id -> (the claim a worker holds and has not finished, that worker)"""
        self.finished: list[tuple[Claim, str]] = []
        """Claims already recorded: any later result of theirs is stale."""
        self.dirty: set[int] = set()
        """Subtasks a forward attempt has started on and no rollback has undone yet."""
        self.cancel_requested = False
        self.last_event = 0
        self.replayed: dict[int, tuple[str, str, int]] = {}
        self.replayed_task: tuple[str, str] | None = None
        self.steps = 0
        self.promoted: list[TaskEvent] = []
        """The promotions (PENDING/SUCCESSFUL -> READY) of the last step."""

    # ---- reading and checking -------------------------------------------------------------

    def read(self) -> TaskInfo:
        return self.store.get_task(self.task_id)

    def sub(self, task: TaskInfo, sid: int) -> SubtaskInfo | None:
        return next((s for s in task.subtasks if s.id == sid), None)

    def executor(self, worker: int) -> str:
        return f"machine-t{self.task_id}-w{worker}"

    def check(self, before: TaskInfo, *, operator: bool = False) -> TaskInfo:
        """Read the task back and check every invariant; return what was read.

        ``operator``: the step was an operator action, which may exceed the concurrency.
        """
        task = self.read()
        events = self.store.events(self.task_id, after_id=self.last_event)
        if events:
            self.last_event = events[-1].id
        self.check_history(task, events)
        self.check_status(task)
        self.check_slots(task, before, events, operator=operator)
        self.check_workers(task)
        self.task = task
        self.steps += 1
        return task

    def check_history(self, task: TaskInfo, events: list[TaskEvent]) -> None:
        """The history replays to exactly what is stored: one event per change."""
        self.replay(events)
        for sub in task.subtasks:
            stored = (sub.status.value, sub.operation.value, sub.run_time)
            assert self.replayed[sub.id] == stored, (
                f"subtask {sub.id} is stored as {stored} but its events end at "
                f"{self.replayed[sub.id]}"
            )
        assert self.replayed_task == (task.status.value, task.operation.value), (
            f"task is {task.status}/{task.operation}; its events end at {self.replayed_task}"
        )

    def check_status(self, task: TaskInfo) -> None:
        """SPEC §3: the task's status follows from its subtasks; steps go its direction."""
        assert task.operation in TASK_OPERATIONS, f"task operation {task.operation}"
        assert (task.finish_time is None) == (task.status is TaskStatus.RUNNING), (
            f"task {task.status} with finishTime {task.finish_time}"
        )
        assert task.status is status_from_subtasks(task), (
            f"task is {task.status}/{task.operation} with subtasks "
            f"{sorted((s.id, s.status.value, s.operation.value) for s in task.subtasks)}"
        )
        direction = BACKWARD if task.operation is OP.ROLLBACK else FORWARD
        wrong = [
            (s.id, s.status.value, s.operation.value)
            for s in task.subtasks
            if s.status in ACTIVE_SUBTASK_STATUSES and s.operation not in direction
        ]
        assert not wrong, f"task {task.operation} has active subtasks going the other way: {wrong}"
        if task.status is TaskStatus.SUCCESSFUL and task.operation is OP.ROLLBACK:
            assert not self.dirty, (
                f"rollback ended SUCCESSFUL but subtasks {sorted(self.dirty)} ran forward and "
                "were never rolled back"
            )

    def check_slots(
        self, task: TaskInfo, before: TaskInfo, events: list[TaskEvent], *, operator: bool
    ) -> None:
        """The engine's promotions respect the concurrency and leave no free slot idle."""
        subs = {s.id: s for s in task.subtasks}
        active = [s for s in task.subtasks if s.status in ACTIVE_SUBTASK_STATUSES]
        self.promoted = [
            e
            for e in events
            if e.kind is EventKind.SUBTASK_STATUS
            and e.new_status == S.READY.value
            and e.old_status in (S.PENDING.value, S.SUCCESSFUL.value)
        ]
        if self.promoted:
            assert len(active) <= task.concurrency, (
                f"promoted {[e.subtask_id for e in self.promoted]} to {len(active)} active "
                f"subtasks, over the concurrency {task.concurrency}"
            )
        if not operator:
            was_active = sum(s.status in ACTIVE_SUBTASK_STATUSES for s in before.subtasks)
            assert len(active) <= max(task.concurrency, was_active)
        if (
            task.status is not TaskStatus.RUNNING
            or self.cancel_requested
            or len(active) >= task.concurrency
        ):
            return
        if task.operation is OP.ROLLBACK:
            waiting = [
                s.id
                for s in task.subtasks
                if s.status is S.SUCCESSFUL
                and all(subs[d].status is S.PENDING for d in s.downstreams)
            ]
        else:
            waiting = [
                s.id
                for s in task.subtasks
                if s.status is S.PENDING
                and all(subs[u].status is S.SUCCESSFUL for u in s.upstreams)
            ]
        assert not waiting, (
            f"{len(active)} of {task.concurrency} slots used but {waiting} could start "
            f"(task {task.operation})"
        )

    def check_workers(self, task: TaskInfo) -> None:
        """RUNNING/CANCELING subtasks are exactly the attempts workers hold; only the worker
        running a cancelled subtask is told to stop it."""
        subs = {s.id: s for s in task.subtasks}
        running = {s.id for s in task.subtasks if s.status in (S.RUNNING, S.CANCELING)}
        assert running == set(self.inflight), (
            f"RUNNING/CANCELING {sorted(running)} but workers hold {sorted(self.inflight)}"
        )
        for sid, (claim, executor) in self.inflight.items():
            sub = subs[sid]
            assert (sub.operation, sub.run_time) == (claim.operation, claim.run_time)
            assert sub.executor == executor
        for worker in range(3):
            executor = self.executor(worker)
            expected = {
                (sid, claim.run_time)
                for sid, (claim, ex) in self.inflight.items()
                if ex == executor and subs[sid].status is S.CANCELING
            }
            assert set(self.store.canceling(executor)) == expected

    def replay(self, events: list[TaskEvent]) -> None:
        """Apply new history events to the replayed state, checking each against the table."""
        for e in events:
            if e.kind is EventKind.TASK_SUBMITTED:
                assert self.replayed_task is None, "a second TASK_SUBMITTED event"
                self.replayed_task = (str(e.new_status), str(e.new_operation))
            elif e.kind is EventKind.TASK_STATUS:
                assert self.replayed_task is not None
                assert e.old_status == self.replayed_task[0], (
                    f"task event {e.old_status}->{e.new_status} but the task was "
                    f"{self.replayed_task[0]}"
                )
                pair = (TaskStatus(str(e.old_status)), TaskStatus(str(e.new_status)))
                assert pair in TASK_TRANSITIONS, (
                    f"task event {pair[0]}->{pair[1]} ({e.message}) is not a status change of "
                    "the transition table"
                )
                self.replayed_task = (str(e.new_status), str(e.new_operation))
            else:
                sid = e.subtask_id
                assert sid in self.replayed, f"event for subtask {sid} of another task"
                status, operation, _ = self.replayed[sid]
                assert (e.old_status, e.old_operation) == (status, operation), (
                    f"subtask {sid} event {e.old_status}/{e.old_operation} -> "
                    f"{e.new_status}/{e.new_operation} but it was {status}/{operation}"
                )
                old, new = S(str(e.old_status)), S(str(e.new_status))
                if old is new:
                    assert e.old_operation != e.new_operation, f"event without a change: {e}"
                else:
                    assert (old, new) in SUBTASK_TRANSITIONS, f"illegal {old}->{new}: {e}"
                assert e.run_time is not None
                self.replayed[sid] = (new.value, str(e.new_operation), e.run_time)

    def took(self, claim: Claim, executor: str, view: TaskInfo, *, ready_in_view: bool) -> None:
        """Record a won claim; check it was READY and its dependencies allowed it then."""
        assert claim.task_id == self.task_id
        assert claim.subtask_id not in self.inflight, f"subtask {claim.subtask_id} claimed twice"
        sub = self.sub(view, claim.subtask_id)
        assert sub is not None
        if ready_in_view:
            assert sub.status is S.READY
            assert (sub.operation, sub.run_time) == (claim.operation, claim.run_time)
        # Upstream outputs never disagree here (every output is its input), so no context error.
        assert claim.context_error is None, claim.context_error
        assert (claim.context.parallel, claim.context.parallel_idx) == (
            sub.parallel,
            sub.parallel_idx,
        )
        subs = {s.id: s for s in view.subtasks}
        if claim.operation in FORWARD:
            blocking = [u for u in sub.upstreams if subs[u].status is not S.SUCCESSFUL]
        else:
            blocking = [d for d in sub.downstreams if subs[d].status is not S.PENDING]
        assert not blocking, (
            f"subtask {sub.id} claimed for {claim.operation} while {blocking} were "
            f"{[subs[b].status.value for b in blocking]}"
        )
        self.inflight[claim.subtask_id] = (claim, executor)
        if claim.operation in (OP.EXECUTE, OP.RETRY):
            self.dirty.add(claim.subtask_id)

    # ---- setup ------------------------------------------------------------------------------

    @initialize(spec=strategies.engine_tasks())
    def submit(self, spec: strategies.EngineTask) -> None:
        template = spec.template
        expanded = expand(template, task_context(template, lists=spec.lists))
        self.task_id = self.store.submit(
            expanded, template_id=None, creator="machine", executor="machine"
        )
        first = self.read()
        self.replayed = {s.id: (S.PENDING.value, OP.EXECUTE.value, 1) for s in first.subtasks}
        task = self.check(first)
        roots = {s.id for s in task.subtasks if not s.upstreams}
        ready = {s.id for s in task.subtasks if s.status is S.READY}
        assert (task.status, task.operation) == (TaskStatus.RUNNING, OP.EXECUTE)
        assert len(ready) == min(len(roots), task.concurrency) and ready <= roots
        assert all(state_of(s)[1:] == (OP.EXECUTE, 1) for s in task.subtasks)

    # ---- workers ------------------------------------------------------------------------------

    @rule(limit=st.integers(1, 3), worker=st.integers(0, 2))
    def claim(self, limit: int, worker: int) -> None:
        self.take(limit, worker)

    def take(self, limit: int, worker: int) -> None:
        before = self.task
        executor = self.executor(worker)
        claims = self.store.claim(executor, limit=limit, task_id=self.task_id)
        ready = [s for s in before.subtasks if s.status is S.READY]
        assert len(claims) == min(limit, len(ready)), f"claimed {claims} of READY {ready}"
        for claim in claims:
            self.took(claim, executor, before, ready_in_view=True)
        self.check(before)

    def record(self, sid: int, result: AttemptResult, *, claim_next: bool) -> None:
        """Finish the in-flight attempt of ``sid`` and check what it did to the subtask."""
        before = self.task
        claim, executor = self.inflight.pop(sid)
        self.finished.append((claim, executor))
        sub = self.sub(before, sid)
        assert sub is not None
        expected = expected_after_attempt(sub, claim, result)
        outcome = self.store.finish(
            claim,
            result,
            output=claim.context,
            log_text="attempt\n",
            executor=executor,
            claim_next=claim_next,
        )
        assert outcome.applied, f"the current attempt of subtask {sid} was treated as stale"
        assert outcome.status is expected[0]
        if expected[0] is S.PENDING:
            self.dirty.discard(sid)  # a rollback (or rollback-skip) step succeeded
        after = self.read()
        if outcome.next is not None:
            self.took(outcome.next, executor, after, ready_in_view=False)
            if outcome.next.subtask_id == sid:
                expected = (S.RUNNING, expected[1], expected[2])
        now = self.sub(after, sid)
        assert now is not None and state_of(now) == expected, (
            f"subtask {sid} {state_of(sub)} after {claim.operation} attempt {claim.run_time} "
            f"ended {result}: expected {expected}, got {now and state_of(now)}"
        )
        if after.status is not before.status:
            assert outcome.task_status is after.status
        self.check(before)
        assert outcome.promoted == len(self.promoted), (
            f"finish reports {outcome.promoted} promoted, the history {len(self.promoted)}"
        )

    @precondition(lambda self: self.inflight)
    @rule(data=st.data(), result=st.sampled_from(sorted(RESULTS)), claim_next=st.booleans())
    def finish(self, data: st.DataObject, result: str, claim_next: bool) -> None:
        sid = data.draw(st.sampled_from(sorted(self.inflight)), label="subtask")
        self.record(sid, RESULTS[result], claim_next=claim_next)

    @precondition(lambda self: self.finished)
    @rule(data=st.data(), result=st.sampled_from(sorted(RESULTS)))
    def late_result(self, data: st.DataObject, result: str) -> None:
        """A handler that a timeout (or a cancel grace) already recorded returns at last."""
        # Favour earlier attempts of subtasks that run again: a stale result must not hit them.
        again = [c for c in self.finished if c[0].subtask_id in self.inflight]
        pool = again * 4 + self.finished
        claim, executor = data.draw(st.sampled_from(pool), label="stale claim")
        before = self.task
        outcome = self.store.finish(
            claim, RESULTS[result], output=claim.context, log_text="late\n", executor=executor
        )
        sub = self.sub(before, claim.subtask_id)
        assert not outcome.applied, (
            f"a stale result ({claim.operation} attempt {claim.run_time}) of subtask "
            f"{claim.subtask_id} was applied to it in {sub and state_of(sub)}"
        )
        self.unchanged(before)

    @rule(results=st.lists(st.sampled_from(sorted(RESULTS)), min_size=1, max_size=6))
    def work(self, results: list[str]) -> None:
        """A burst of worker steps: claim what is READY, then record attempts in claim order."""
        self.take(len(results), 0)
        for result in results:
            if self.inflight:
                self.record(min(self.inflight), RESULTS[result], claim_next=False)

    @precondition(lambda self: self.steps >= STEPS // 2)
    @rule()
    def run_to_the_end(self) -> None:
        """Every worker succeeds from now on: the task must end."""
        for _ in range(10 * len(self.task.subtasks) + 10):
            if self.inflight:
                self.record(min(self.inflight), RESULTS["ok"], claim_next=False)
            elif any(s.status is S.READY for s in self.task.subtasks):
                self.take(3, 0)
            else:
                break
        assert self.task.status is not TaskStatus.RUNNING, "the task never ends"

    # ---- the operator ------------------------------------------------------------------------

    def unchanged(self, before: TaskInfo) -> None:
        after = self.read()
        assert after.model_dump() == before.model_dump(), "a refused or stale call changed the task"
        new = self.store.events(self.task_id, after_id=self.last_event)
        assert not new, f"a refused or stale call wrote events: {new}"

    def operate(self, name: str, refusal: Refusal, action: Callable[[], Any]) -> TaskInfo | None:
        """Call an operator action; check the predicted refusal. Return the task before it when
        the action was applied, None when it was refused."""
        before = self.task
        if refusal is None:
            try:
                action()
            except DagtaskError as exc:
                raise AssertionError(f"SPEC §4 allows {name} but the store refused: {exc}") from exc
            return before
        with pytest.raises(DagtaskError) as caught:
            action()
        assert type(caught.value) is refusal, (
            f"{name}: expected {refusal.__name__}, got {type(caught.value).__name__}: "
            f"{caught.value}"
        )
        assert caught.value.code == refusal.code
        self.unchanged(before)
        return None

    def pick(self, data: st.DataObject, *preferred: SubtaskStatus) -> int:
        """A subtask id: usually one in a ``preferred`` status, sometimes any, rarely a wrong id."""
        favoured = [s.id for s in self.task.subtasks if s.status in preferred]
        every = [s.id for s in self.task.subtasks]
        pool = favoured * 4 + every + [MISSING, self.foreign_subtask]
        return data.draw(st.sampled_from(pool), label="target")

    def others_unchanged(self, before: TaskInfo, after: TaskInfo, sid: int) -> None:
        """Other subtasks are untouched, except waiting ones the restarted task now promotes
        (PENDING -> READY in the task's direction, within its concurrency)."""
        for old in before.subtasks:
            if old.id != sid:
                now = self.sub(after, old.id)
                assert now is not None
                promoted = (
                    old.status is S.PENDING
                    and now.status is S.READY
                    and after.operation is not OP.ROLLBACK
                ) or (
                    old.status is S.SUCCESSFUL
                    and now.status is S.READY
                    and after.operation is OP.ROLLBACK
                )
                assert promoted or state_of(now) == state_of(old), (
                    f"an action on subtask {sid} changed subtask {old.id}"
                )

    @rule()
    def retry_task(self) -> None:
        refusal = retry_task_refusal(self.task)
        before = self.operate(
            "retry task", refusal, lambda: self.store.retry_task(self.task_id, OPERATOR)
        )
        if before is None:
            return
        self.cancel_requested = False
        after = self.check(before, operator=True)
        assert (after.status, after.operation) == (TaskStatus.RUNNING, OP.RETRY)
        for old in before.subtasks:
            now = self.sub(after, old.id)
            assert now is not None
            if old.status is S.FAILED:
                assert state_of(now) == (S.READY, OP.RETRY, old.run_time + 1)
            elif old.status is S.SUCCESSFUL:
                assert state_of(now) == state_of(old)
            else:
                assert now.status in (S.PENDING, S.READY)

    @rule()
    def rollback_task(self) -> None:
        refusal = rollback_task_refusal(self.task)
        before = self.operate(
            "roll back task", refusal, lambda: self.store.rollback_task(self.task_id, OPERATOR)
        )
        if before is None:
            return
        self.cancel_requested = False
        after = self.check(before, operator=True)
        assert after.operation is OP.ROLLBACK
        for old in before.subtasks:
            now = self.sub(after, old.id)
            assert now is not None
            if old.status is S.PENDING:
                assert state_of(now) == state_of(old)
            else:
                assert now.operation is OP.ROLLBACK and now.status in (S.READY, S.SUCCESSFUL)
                if old.status is S.FAILED:
                    assert now.status is S.READY and now.run_time == old.run_time + 1

    @rule(data=st.data())
    def retry_subtask(self, data: st.DataObject) -> None:
        sid = self.pick(data, S.FAILED)
        refusal = retry_subtask_refusal(self.task, self.sub(self.task, sid))
        before = self.operate(
            "retry subtask",
            refusal,
            lambda: self.store.retry_subtask(self.task_id, sid, OPERATOR),
        )
        if before is None:
            return
        self.cancel_requested = False
        after = self.check(before, operator=True)
        old, now = self.sub(before, sid), self.sub(after, sid)
        assert old is not None and now is not None
        assert state_of(now) == (S.READY, OP.RETRY, old.run_time + 1)
        assert (after.status, after.operation) == (TaskStatus.RUNNING, before.operation)
        self.others_unchanged(before, after, sid)

    @rule(data=st.data())
    def skip_subtask(self, data: st.DataObject) -> None:
        sid = self.pick(data, S.FAILED)
        refusal = skip_subtask_refusal(self.sub(self.task, sid))
        before = self.operate(
            "skip subtask", refusal, lambda: self.store.skip_subtask(self.task_id, sid, OPERATOR)
        )
        if before is None:
            return
        self.cancel_requested = False
        after = self.check(before, operator=True)
        now = self.sub(after, sid)
        assert now is not None and now.status is S.READY
        skip = OP.ROLLBACK_SKIP if before.operation is OP.ROLLBACK else OP.SKIP
        old = self.sub(before, sid)
        assert old is not None
        assert now.operation is skip and now.run_time == old.run_time + 1
        assert (after.status, after.operation) == (TaskStatus.RUNNING, before.operation)
        self.others_unchanged(before, after, sid)

    @rule(data=st.data())
    def cancel_subtask(self, data: st.DataObject) -> None:
        sid = self.pick(data, S.RUNNING)
        refusal = cancel_subtask_refusal(self.sub(self.task, sid))
        before = self.operate(
            "cancel subtask",
            refusal,
            lambda: self.store.cancel_subtask(self.task_id, sid, OPERATOR),
        )
        if before is None:
            return
        after = self.check(before, operator=True)
        old, now = self.sub(before, sid), self.sub(after, sid)
        assert old is not None and now is not None
        assert state_of(now) == (S.CANCELING, old.operation, old.run_time)
        assert (after.status, after.operation) == (before.status, before.operation)
        self.others_unchanged(before, after, sid)

    @rule()
    def cancel_task(self) -> None:
        refusal = cancel_task_refusal(self.task)
        before = self.operate(
            "cancel task", refusal, lambda: self.store.cancel_task(self.task_id, OPERATOR)
        )
        if before is None:
            return
        self.cancel_requested = True
        after = self.check(before, operator=True)
        assert after.operation is before.operation
        for old in before.subtasks:
            now = self.sub(after, old.id)
            assert now is not None
            if old.status is S.RUNNING:
                assert state_of(now) == (S.CANCELING, old.operation, old.run_time)
            elif old.status is S.READY and old.operation is OP.EXECUTE:
                assert state_of(now) == (S.PENDING, old.operation, old.run_time)
            elif old.status is S.READY:
                # A retry / skip / rollback step has run before: it stays visibly not done.
                assert state_of(now) == (S.FAILED, OP.CANCEL, old.run_time)
            else:
                assert state_of(now) == state_of(old)

    @rule(action=st.sampled_from(["retry", "rollback", "cancel", "retry_subtask", "skip"]))
    def act_on_a_missing_task(self, action: str) -> None:
        store, sid = self.store, self.foreign_subtask
        call: dict[str, Callable[[], Any]] = {
            "retry": lambda: store.retry_task(MISSING, OPERATOR),
            "rollback": lambda: store.rollback_task(MISSING, OPERATOR),
            "cancel": lambda: store.cancel_task(MISSING, OPERATOR),
            "retry_subtask": lambda: store.retry_subtask(MISSING, sid, OPERATOR),
            "skip": lambda: store.skip_subtask(MISSING, sid, OPERATOR),
        }
        self.operate(f"{action} of task {MISSING}", TaskNotFoundError, call[action])


# ---- running it on each database ----------------------------------------------------------------


def run_machine(url: str, examples: int) -> None:
    """Run the machine on the database at ``url`` (one task per example, one shared database)."""
    database = dbmod.open_database(url)
    try:
        store = Store(database)
        one = TemplateBuilder("foreign")
        one.add("only", "tests.handlers.record")
        template = one.build()
        foreign_task = store.submit(
            expand(template, task_context(template)),
            template_id=None,
            creator="machine",
            executor="machine",
        )
        foreign_subtask = store.get_task(foreign_task).subtasks[0].id
        bound = type(
            f"TaskLifeOn{database.dialect.title()}",
            (TaskLife,),
            {"store": store, "foreign_subtask": foreign_subtask},
        )
        run_state_machine_as_test(
            bound,
            settings=settings(
                max_examples=examples,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                phases=list(Phase) if SHRINK else [p for p in Phase if p is not Phase.shrink],
            ),
        )
    finally:
        database.dispose()


def test_task_lives_on_sqlite() -> None:
    """Random task lives on a fresh SQLite file keep every invariant of SPEC §3-§5."""
    with tempfile.TemporaryDirectory() as folder:
        run_machine(f"sqlite:///{Path(folder) / 'machine.db'}", EXAMPLES)


@pytest.mark.postgres
def test_task_lives_on_postgresql(pg_url: str) -> None:
    """The same on a fresh PostgreSQL schema (row locks, SKIP LOCKED), with fewer examples."""
    run_machine(pg_url, max(1, EXAMPLES // 3))
