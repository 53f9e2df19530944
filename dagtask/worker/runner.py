"""Runner threads: they call handlers (and their hooks) and hand the results over, nothing else.

A runner takes an attempt from the pool's queue, runs its task's before-subtask hooks, its
handler and its after-subtask hooks (:mod:`dagtask.hooks`) with the attempt's log bound to the
thread, and gives the result to :meth:`WorkerPool.end`. It never touches the database.
Whatever the handler raises, ``BaseException`` included (``SystemExit`` from argparse's
``parser.error``, ``KeyboardInterrupt``, ``GeneratorExit``), the attempt ends FAILED with the
exception named and the runner goes on: a handler can never take its runner, its slot or its
timeout down with it.
"""

from __future__ import annotations

import functools
import logging
import traceback
from typing import TYPE_CHECKING

from dagtask import handlers, hooks, logs, planner, secrets
from dagtask.context import PROHIBIT_ROLLBACK, TaskContext
from dagtask.errors import ContextError
from dagtask.observability import tracing
from dagtask.planner import AttemptResult
from dagtask.states import Operation
from dagtask.worker.attempt import Attempt

if TYPE_CHECKING:
    from dagtask.worker.pool import WorkerPool


def run_attempt(pool: WorkerPool, attempt: Attempt) -> None:
    """Run one attempt's hooks and handler and hand its end to the pool (first end wins)."""
    claim = attempt.claim
    log = attempt.log
    log.write(logs.separator(claim.operation.value, claim.start_time))
    log.write(logs.state_line(claim.subtask_id, "READY", "RUNNING", when=claim.start_time))
    with tracing.attempt_span(claim, attempt.trace_parent, pool.name) as span:
        result, output = _run(pool, attempt)
        span.ended(result)
    pool.end(attempt, result, output)


def _run(pool: WorkerPool, attempt: Attempt) -> tuple[AttemptResult, TaskContext | None]:
    claim = attempt.claim
    log = attempt.log
    pool.watchdog.watch(attempt)
    pool.capture.bind(log)
    output: TaskContext | None = None
    ctx: handlers.RunContext | None = None
    try:
        try:
            if claim.context_error:
                raise ContextError(claim.context_error)
            given = claim.context
            # The claim's context is shared with other claims (parsed once per stored text):
            # the handler gets containers of its own, so what it changes in place stays its own.
            seen = given.model_copy(
                update={
                    "string_map": {
                        **given.string_map,
                        "task_instance_id": str(claim.task_id),
                        "sub_task_instance_id": str(claim.subtask_id),
                        "task_operation": claim.operation.value.lower(),
                        "latest_execution_start_time": logs.iso_ms(claim.start_time),
                    },
                    "list_map": {key: list(items) for key, items in given.list_map.items()},
                }
            )
            shown = secrets.mask_json(seen.to_json())
            log.write(
                logs.line(
                    f"Run subtask, id={claim.subtask_id}, context={shown}, executor={pool.name}"
                )
            )
            if claim.operation in (Operation.SKIP, Operation.ROLLBACK_SKIP):
                log.write(logs.line(f"Skip subtask {claim.subtask_id}: nothing is run"))
                output = seen
            else:
                ctx = _run_context(pool, attempt, seen)
                output = _call_handler(attempt, ctx)
            result = AttemptResult(ok=True)
        except hooks.Refused as exc:
            log.write(logs.line(f"Subtask {claim.subtask_id} failed: {exc}", level="ERROR"))
            result = AttemptResult(ok=False, message=str(exc))
        except BaseException as exc:  # the outcome is always recorded
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if not isinstance(exc, Exception):
                message += " (raised by the handler; the worker goes on)"
            log.write(logs.line(f"Subtask {claim.subtask_id} failed: {message}", level="ERROR"))
            log.write("".join(traceback.format_exception(exc)))
            result = AttemptResult(ok=False, message=message, cancelled=False)
        if ctx is not None and attempt.hooks.after_subtask:
            # Still inside the attempt (its timeout, its log): the hooks see how it ended.
            if attempt.token.cancelled:
                result = AttemptResult(ok=False, message=attempt.token.reason)
            result, output = hooks.run_after(attempt.hooks, ctx, result, output, log)
    finally:
        pool.capture.unbind()
        pool.watchdog.forget(attempt)
    if attempt.token.cancelled:
        # Asked to stop (timeout, fence, a stopping worker): whatever the handler did, the
        # attempt failed for that reason (if the watchdog ended it first, this is discarded).
        result = AttemptResult(ok=False, message=attempt.token.reason)
    return result, output


def _run_context(pool: WorkerPool, attempt: Attempt, given: TaskContext) -> handlers.RunContext:
    claim = attempt.claim
    return handlers.RunContext(
        context=given,
        task_id=claim.task_id,
        subtask_id=claim.subtask_id,
        operation=claim.operation,
        run_time=claim.run_time,
        token=attempt.token,
        services=pool.services,
        log=_handler_logger(claim.class_name),
        subtask_name=claim.name,
    )


@functools.cache
def _handler_logger(class_name: str) -> logging.Logger:
    """``dagtask.handler.<ClassName>``: the logger a handler's ``ctx.log`` writes to."""
    return logging.getLogger(f"{logs.HANDLER_LOGGER}.{class_name.rsplit('.', 1)[-1]}")


def _call_handler(attempt: Attempt, ctx: handlers.RunContext) -> TaskContext:
    claim = attempt.claim
    if attempt.hooks_problem:
        raise hooks.Refused(attempt.hooks_problem)
    if attempt.hooks.before_subtask:
        hooks.run_before(attempt.hooks, ctx, attempt.log)
        attempt.token.raise_if_cancelled()  # timed out in a hook: the handler does not start
    handler = handlers.resolve(claim.class_name)()
    attempt.handler = handler
    if claim.operation is Operation.ROLLBACK:
        result = handler.rollback(ctx)
    elif claim.operation is Operation.RETRY:
        result = handler.retry(ctx)
    else:
        result = handler.execute(ctx)
    output = handlers.output_context(result, ctx.context)
    if claim.prohibit_rollback and claim.operation in planner.FORWARD_OPERATIONS:
        # OCP: a subtask that prohibits rollback says so in its output once it has run, so its
        # downstreams (and whoever reads the task) see that the work cannot be undone.
        output = output.with_strings({PROHIBIT_ROLLBACK: "true"})
    return output
