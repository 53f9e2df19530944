"""Workers: claim READY subtasks, run their handlers under a watchdog, report the result.

A :class:`WorkerPool` is a set of threads in one process. Each thread loops: claim a subtask
(one conditional UPDATE), run its handler with the input context, hand the result to the store
(one transaction that also promotes successors). A worker that just completed a subtask claims
again at once, so a newly READY successor starts without waiting; idle threads sleep on a
condition that in-process completions and submissions signal, with a short bounded poll for work
that other processes create.

The :class:`Watchdog` thread enforces timeouts: at the deadline it sets the attempt's cancellation
token, calls the handler's ``cancel()`` and fails the subtask ("timed out after N s") itself, so
the subtask ends on time even if the handler ignores the token. The pool then starts a spare
thread so a stuck handler does not cost capacity; when the stuck thread returns, its late result
is discarded by the store and the spare retires. The watchdog also flushes running attempts'
logs every second.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from dagtask import handlers, logs
from dagtask.context import TaskContext
from dagtask.errors import ContextError
from dagtask.planner import AttemptResult
from dagtask.services import Services
from dagtask.states import Operation
from dagtask.store.sql import Claim, FinishOutcome, Store

_log = logging.getLogger(__name__)


def default_worker_name() -> str:
    """``host:pid``: how a worker identifies itself as a subtask's ``executor``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Attempt:
    """One run of one subtask by this process."""

    claim: Claim
    token: handlers.CancellationToken = field(default_factory=handlers.CancellationToken)
    log: logs.AttemptLog = field(default_factory=logs.AttemptLog)
    handler: handlers.Handler | None = None


FinishListener = Callable[[Claim, FinishOutcome], None]


class Watchdog:
    """Ends attempts that overrun: timeouts, and operator cancels a handler does not obey.

    * At an attempt's timeout it sets the token, calls the handler's ``cancel()`` and records
      the failure ("timed out after N s") itself.
    * Every :attr:`CANCEL_POLL_SECONDS` it asks the store which of this worker's subtasks an
      operator marked CANCELING (from any process), and interrupts those attempts the same way;
      if a handler has not returned :attr:`CANCEL_GRACE_SECONDS` later, it records the cancel.
    * Every :attr:`FLUSH_SECONDS` it stores what running attempts logged so far.
    """

    FLUSH_SECONDS = 1.0
    CANCEL_POLL_SECONDS = 0.25
    CANCEL_GRACE_SECONDS = 5.0

    def __init__(
        self, store: Store, executor: str, on_overrun: Callable[[Attempt, FinishOutcome], None]
    ) -> None:
        self.store = store
        self.executor = executor
        self.on_overrun = on_overrun
        self._heap: list[tuple[float, int, Attempt, str]] = []
        self._running: dict[int, Attempt] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="dagtask-watchdog", daemon=True)

    def start(self) -> None:
        """Start the watchdog thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the watchdog thread."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def watch(self, attempt: Attempt) -> None:
        """Track a started attempt (its deadline, if it has a timeout, and its log)."""
        with self._cond:
            self._running[id(attempt)] = attempt
            if attempt.claim.timeout > 0:
                self._push(time.monotonic() + attempt.claim.timeout, attempt, "timeout")

    def forget(self, attempt: Attempt) -> None:
        """Stop tracking an attempt that ended."""
        with self._cond:
            self._running.pop(id(attempt), None)

    def _push(self, deadline: float, attempt: Attempt, kind: str) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), attempt, kind))
        self._cond.notify()

    def _loop(self) -> None:
        now = time.monotonic()
        next_flush = now + self.FLUSH_SECONDS
        next_poll = now + self.CANCEL_POLL_SECONDS
        while True:
            due: list[tuple[Attempt, str]] = []
            with self._cond:
                if self._stopped:
                    return
                now = time.monotonic()
                while self._heap and (
                    self._heap[0][0] <= now or id(self._heap[0][2]) not in self._running
                ):
                    _, _, attempt, kind = heapq.heappop(self._heap)
                    if self._running.pop(id(attempt), None) is not None:
                        due.append((attempt, kind))
                if not due:
                    wake = min(next_flush, next_poll, *(e[0] for e in self._heap[:1]))
                    self._cond.wait(max(0.0, wake - now))
                running = list(self._running.values())
            for attempt, kind in due:
                self._overrun(attempt, kind)
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + self.CANCEL_POLL_SECONDS
                if running:
                    self._poll_cancels(running)
            if now >= next_flush:
                next_flush = now + self.FLUSH_SECONDS
                for attempt in running:
                    self._flush(attempt)

    def _poll_cancels(self, running: list[Attempt]) -> None:
        try:
            marked = set(self.store.canceling(self.executor))
        except Exception:
            _log.exception("could not look for cancelled subtasks")
            return
        for attempt in running:
            claim = attempt.claim
            if (claim.subtask_id, claim.run_time) in marked and not attempt.token.cancelled:
                self._interrupt(attempt, "cancelled by the operator")
                with self._cond:
                    if id(attempt) in self._running:
                        self._push(time.monotonic() + self.CANCEL_GRACE_SECONDS, attempt, "cancel")

    def _interrupt(self, attempt: Attempt, reason: str) -> None:
        claim = attempt.claim
        attempt.log.write(
            logs.line(f"Subtask {claim.subtask_id} {reason}; asking the handler to stop", "WARN")
        )
        attempt.token.cancel(reason)
        if attempt.handler is not None:
            try:
                attempt.handler.cancel()
            except Exception:
                _log.exception("handler cancel() of subtask %s failed", claim.subtask_id)

    def _flush(self, attempt: Attempt) -> None:
        text = attempt.log.drain()
        if text:
            try:
                self.store.append_log(attempt.claim.subtask_id, attempt.claim.run_time, text)
            except Exception:
                _log.exception("could not flush the log of subtask %s", attempt.claim.subtask_id)
                attempt.log.write(text)

    def _overrun(self, attempt: Attempt, kind: str) -> None:
        claim = attempt.claim
        if kind == "timeout":
            message = f"timed out after {claim.timeout} s"
            self._interrupt(attempt, message)
            result = AttemptResult(ok=False, message=message)
        else:
            message = "cancelled by the operator"
            attempt.log.write(
                logs.line(
                    f"The handler of subtask {claim.subtask_id} did not stop within "
                    f"{self.CANCEL_GRACE_SECONDS:g} s; recording the cancel",
                    "ERROR",
                )
            )
            result = AttemptResult(ok=False, message=message, cancelled=True)
        try:
            outcome = self.store.finish(
                claim, result, log_text=attempt.log.drain(), executor=self.executor
            )
        except Exception:
            _log.exception("could not record the overrun of subtask %s", claim.subtask_id)
            return
        self.on_overrun(attempt, outcome)


class WorkerPool:
    """``size`` threads that claim and run READY subtasks (of one task only, if ``task_id``)."""

    def __init__(
        self,
        store: Store,
        services: Services,
        *,
        size: int = 4,
        name: str | None = None,
        task_id: int | None = None,
        poll_interval: float = 0.25,
        on_finish: FinishListener | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.store = store
        self.services = services
        self.size = size
        self.name = name or default_worker_name()
        self.task_id = task_id
        self.poll_interval = poll_interval
        self.on_finish = on_finish
        self.watchdog = Watchdog(store, self.name, self._overran)
        self._capture = logs.capture_handler()
        self._work = threading.Condition()
        self._signals = 0
        self._running = False
        self._spares = 0
        self._threads: list[threading.Thread] = []
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the threads and the watchdog."""
        self._running = True
        self.watchdog.start()
        for _ in range(self.size):
            self._spawn()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; wait up to ``timeout`` s for running handlers to return."""
        with self._work:
            self._running = False
            self._work.notify_all()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        self.watchdog.stop()

    def wake(self, count: int = 1) -> None:
        """Tell idle threads that ``count`` subtasks may have become READY."""
        with self._work:
            self._signals += count
            self._work.notify(count)

    def _spawn(self) -> None:
        thread = threading.Thread(
            target=self._loop, name=f"dagtask-worker-{next(self._counter)}", daemon=True
        )
        with self._lock:
            self._threads.append(thread)
        thread.start()

    # ---- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        while self._running:
            try:
                claims = self.store.claim(self.name, limit=1, task_id=self.task_id)
            except Exception:
                _log.exception("claim failed; retrying in %.2f s", self.poll_interval)
                time.sleep(self.poll_interval)
                continue
            if not claims:
                self._idle()
                continue
            for claim in claims:
                follow: Claim | None = claim
                while follow is not None and self._running:
                    follow = self._run(follow)
            with self._lock:
                if self._spares > 0:  # a spare took over while this thread was stuck
                    self._spares -= 1
                    self._threads.remove(threading.current_thread())
                    return

    def _idle(self) -> None:
        with self._work:
            if not self._running:
                return
            if self._signals > 0:
                self._signals -= 1
                return
            self._work.wait(self.poll_interval)
            if self._signals > 0:
                self._signals -= 1

    def _run(self, claim: Claim) -> Claim | None:
        """Run one attempt; return the successor claimed with its result, if any."""
        attempt = Attempt(claim)
        log = attempt.log
        log.write(logs.separator(claim.operation.value, claim.start_time))
        log.write(logs.state_line(claim.subtask_id, "READY", "RUNNING", when=claim.start_time))
        self.watchdog.watch(attempt)
        self._capture.bind(log)
        output: TaskContext | None = None
        try:
            if claim.context_error:
                raise ContextError(claim.context_error)
            given = claim.context
            seen = given.with_strings(
                {
                    "task_instance_id": str(claim.task_id),
                    "sub_task_instance_id": str(claim.subtask_id),
                    "task_operation": claim.operation.value.lower(),
                    "latest_execution_start_time": logs.iso_ms(claim.start_time),
                }
            )
            log.write(
                logs.line(
                    f"Run subtask, id={claim.subtask_id}, context={seen.to_json()}, "
                    f"executor={self.name}"
                )
            )
            output = self._call_handler(attempt, seen)
            result = AttemptResult(ok=True)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            log.write(logs.line(f"Subtask {claim.subtask_id} failed: {message}", level="ERROR"))
            log.write("".join(traceback.format_exception(exc)))
            result = AttemptResult(ok=False, message=message, cancelled=False)
        finally:
            self._capture.unbind()
            self.watchdog.forget(attempt)
        if attempt.token.cancelled:
            # Asked to stop (timeout): whatever the handler did, the attempt failed for that
            # reason. The watchdog records it too; the store keeps whichever comes first.
            result = AttemptResult(ok=False, message=attempt.token.reason)
        return self._report(attempt, result, output)

    def _call_handler(self, attempt: Attempt, given: TaskContext) -> TaskContext:
        claim = attempt.claim
        if claim.operation in (Operation.SKIP, Operation.ROLLBACK_SKIP):
            attempt.log.write(logs.line(f"Skip subtask {claim.subtask_id}: nothing is run"))
            return given
        handler = handlers.resolve(claim.class_name)()
        attempt.handler = handler
        ctx = handlers.RunContext(
            context=given,
            task_id=claim.task_id,
            subtask_id=claim.subtask_id,
            operation=claim.operation,
            run_time=claim.run_time,
            token=attempt.token,
            services=self.services,
            log=logging.getLogger(f"{logs.HANDLER_LOGGER}.{claim.class_name.rsplit('.', 1)[-1]}"),
            subtask_name=claim.name,
        )
        if claim.operation is Operation.ROLLBACK:
            result = handler.rollback(ctx)
        elif claim.operation is Operation.RETRY:
            result = handler.retry(ctx)
        else:
            result = handler.execute(ctx)
        return handlers.output_context(result, given)

    def _report(
        self, attempt: Attempt, result: AttemptResult, output: TaskContext | None
    ) -> Claim | None:
        claim = attempt.claim
        log_text = attempt.log.drain()
        outcome: FinishOutcome | None = None
        for delay in (0.05, 0.2, 1.0, 5.0, None):
            try:
                outcome = self.store.finish(
                    claim,
                    result,
                    output=output,
                    log_text=log_text,
                    executor=self.name,
                    claim_next=self._running,
                )
                break
            except Exception:
                if delay is None:
                    # The subtask stays RUNNING; the operator sees it and can cancel it.
                    _log.exception("giving up recording the result of subtask %s", claim.subtask_id)
                    return None
                _log.warning(
                    "recording subtask %s failed; retrying", claim.subtask_id, exc_info=True
                )
                time.sleep(delay)
        assert outcome is not None
        # Wake idle threads for what this finish made READY beyond the one this thread took.
        extra = outcome.promoted - (1 if outcome.next is not None else 0)
        if extra > 0:
            self.wake(extra)
        if self.on_finish is not None:
            self.on_finish(claim, outcome)
        return outcome.next

    def _overran(self, attempt: Attempt, outcome: FinishOutcome) -> None:
        with self._lock:
            self._spares += 1
        if self._running:
            self._spawn()
        if outcome.promoted:
            self.wake(outcome.promoted)
        if self.on_finish is not None:
            self.on_finish(attempt.claim, outcome)
