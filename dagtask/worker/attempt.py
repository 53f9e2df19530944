"""One attempt of one subtask in this process, and the rule that it ends exactly once.

An attempt can end three ways: its handler returns (the runner), its timeout or cancel grace
passes (the watchdog), or its worker fences it (lease not renewed, worker declared lost, worker
stopping). Whichever comes first wins, under the pool's lock (:meth:`WorkerPool.end`); the
others find ``ended`` set and change nothing, so an attempt is recorded once, with one set of
events. A fenced attempt's result is never recorded at all: the pool hands its subtask back by
its recovery policy instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dagtask import handlers, logs
from dagtask.context import TaskContext
from dagtask.planner import AttemptResult
from dagtask.store.sql import Claim
from dagtask.template import Hooks


@dataclass(eq=False)
class Attempt:
    """One run of one subtask by this process."""

    claim: Claim
    token: handlers.CancellationToken = field(default_factory=handlers.CancellationToken)
    log: logs.AttemptLog = field(default_factory=logs.AttemptLog)
    handler: handlers.Handler | None = None
    hooks: Hooks = field(default_factory=Hooks)
    """Its task's before- and after-subtask hooks (:mod:`dagtask.hooks`)."""
    hooks_problem: str = ""
    """Why its task's hooks cannot be used: it fails saying so, its handler not run."""
    trace_parent: str | None = None
    """Its task's span (W3C traceparent), the parent of this attempt's span, if traced."""
    template: str = ""
    """Its task's template name (for metrics; "" when the task was stored without one)."""
    ended: bool = False
    """Its end was decided (by its runner, the watchdog or a fence): its slot is free. Changed
    only under the pool's lock."""
    fenced: bool = False
    """It was stopped without a result: its subtask is handed back, never finished."""
    started: float = field(default_factory=time.monotonic)
    """When this process took it (monotonic), for the duration its end is logged with."""

    @property
    def key(self) -> tuple[int, int]:
        """``(subtask id, runTime)``: which attempt of which subtask this is."""
        return self.claim.subtask_id, self.claim.run_time


@dataclass(frozen=True, eq=False)
class End:
    """An attempt's result, waiting for the dispatcher to record it."""

    attempt: Attempt
    result: AttemptResult
    output: TaskContext | None = None
