"""Workers: claim READY subtasks, run their handlers under a watchdog, report the results.

A :class:`WorkerPool` is one worker process's (or one embedded engine's) share of the work. Its
name is the ``executor`` of every subtask it runs, and it has a row in the database that it
heartbeats (:mod:`dagtask.store.workers`). Three kinds of threads:

* the **dispatcher** does all of the pool's hot-path SQL. It claims up to as many READY subtasks
  as it has free slots in one transaction, and reports finished attempts in batches: one
  transaction records every attempt that ended since the last one, promotes their successors,
  settles their tasks and claims new work for the slots they freed (so a successor starts at
  once). Idle, it sleeps until a slot frees, an in-process submit wakes it, a PostgreSQL
  ``NOTIFY`` arrives (:class:`Listener`) or a short poll interval passes (other databases);
* **runner** threads call the handlers, one attempt each at a time. A runner stuck in a handler
  that ignores its timeout does not cost capacity: the watchdog ends the attempt, its slot is
  freed and another runner is started; the stuck one retires when it returns;
* the **watchdog** ends attempts that overrun their timeout or ignore an operator's cancel,
  flushes running attempts' logs every second, renews the pool's lease, and sweeps for workers
  whose lease ran out so that what they held is recovered (:class:`Watchdog`).

:meth:`WorkerPool.stop` is graceful: it stops claiming, lets running handlers finish for up to
``timeout`` seconds, then interrupts the rest and hands them back by their recovery policy
(RETRY → READY for another worker, FAIL → FAILED), and marks the worker STOPPED.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dagtask import handlers, logs
from dagtask.context import TaskContext
from dagtask.errors import ContextError
from dagtask.planner import AttemptResult
from dagtask.services import Services
from dagtask.states import Operation
from dagtask.store.sql import Claim, FinishOutcome, Report, Store

_log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 30
RETRY_DELAYS = (0.05, 0.2, 1.0, 2.0, 5.0)
"""Back-off between attempts to reach the database again (the last one repeats)."""


_names = itertools.count(1)


def default_worker_name() -> str:
    """``host:pid``: how a worker identifies itself as a subtask's ``executor`` (``host:pid/N``
    for the N-th pool of one process, since a name is one worker at a time)."""
    n = next(_names)
    return f"{socket.gethostname()}:{os.getpid()}" + (f"/{n}" if n > 1 else "")


@dataclass(eq=False)
class Attempt:
    """One run of one subtask by this process."""

    claim: Claim
    token: handlers.CancellationToken = field(default_factory=handlers.CancellationToken)
    log: logs.AttemptLog = field(default_factory=logs.AttemptLog)
    handler: handlers.Handler | None = None
    reported: bool = False
    """Its end was handed to the dispatcher (by its runner or by the watchdog): slot freed."""


FinishListener = Callable[[Claim, FinishOutcome], None]


class Watchdog:
    """Ends attempts that overrun, keeps the pool's lease, recovers lost workers.

    * At an attempt's timeout it sets the token, calls the handler's ``cancel()`` and reports the
      failure ("timed out after N s") itself, so the subtask ends on time whatever the handler
      does.
    * Every :attr:`CANCEL_POLL_SECONDS` it asks the store which of this worker's subtasks an
      operator marked CANCELING (from any process), and interrupts those attempts the same way;
      if a handler has not returned :attr:`CANCEL_GRACE_SECONDS` later, it reports the cancel.
    * Every :attr:`FLUSH_SECONDS` it stores what running attempts logged so far.
    * Every third of the lease it renews the worker's heartbeat, and every half lease it sweeps
      for workers whose lease ran out.
    """

    FLUSH_SECONDS = 1.0
    CANCEL_POLL_SECONDS = 0.25
    CANCEL_GRACE_SECONDS = 5.0

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.store = pool.store
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

    def running(self) -> list[Attempt]:
        """The attempts whose handlers are running now."""
        with self._cond:
            return list(self._running.values())

    def _push(self, deadline: float, attempt: Attempt, kind: str) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), attempt, kind))
        self._cond.notify()

    def _loop(self) -> None:
        pool = self.pool
        now = time.monotonic()
        next_flush = now + self.FLUSH_SECONDS
        next_poll = now + self.CANCEL_POLL_SECONDS
        beat_every = max(0.2, pool.lease_seconds / 3)
        sweep_every = max(0.5, pool.lease_seconds / 2)
        next_beat, next_sweep = now + beat_every, now + min(1.0, sweep_every)
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
                    wake = min(
                        next_flush,
                        next_poll,
                        next_beat,
                        next_sweep,
                        *(e[0] for e in self._heap[:1]),
                    )
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
            if now >= next_beat:
                next_beat = now + beat_every
                self._heartbeat()
            if now >= next_sweep:
                next_sweep = now + sweep_every
                self._sweep()

    def _heartbeat(self) -> None:
        pool = self.pool
        try:
            alive = self.store.heartbeat(pool.name)
            if not alive:
                # Declared lost (paused or cut off longer than the lease): what it ran was
                # recovered elsewhere, so stop those handlers and register again.
                _log.error(
                    "worker %s was declared lost (no heartbeat within %d s); its subtasks were "
                    "recovered by another worker. Interrupting what it still runs and rejoining",
                    pool.name,
                    pool.lease_seconds,
                )
                for attempt in self.running():
                    self.interrupt(attempt, "its worker was declared lost")
                pool.register()
        except Exception:
            _log.warning("could not renew the lease of worker %s", pool.name, exc_info=True)

    def _sweep(self) -> None:
        try:
            lost = self.store.recover_lost_workers(self.pool.name)
        except Exception:
            _log.warning("could not look for lost workers", exc_info=True)
            return
        if lost:
            _log.warning("recovered the subtasks of lost workers: %s", ", ".join(lost))
            self.pool.wake(self.pool.size)

    def _poll_cancels(self, running: list[Attempt]) -> None:
        try:
            marked = set(self.store.canceling(self.pool.name))
        except Exception:
            _log.exception("could not look for cancelled subtasks")
            return
        for attempt in running:
            claim = attempt.claim
            if (claim.subtask_id, claim.run_time) in marked and not attempt.token.cancelled:
                self.interrupt(attempt, "cancelled by the operator")
                with self._cond:
                    if id(attempt) in self._running:
                        self._push(time.monotonic() + self.CANCEL_GRACE_SECONDS, attempt, "cancel")

    @staticmethod
    def interrupt(attempt: Attempt, reason: str) -> None:
        """Ask an attempt's handler to stop (token and ``cancel()``)."""
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
            self.interrupt(attempt, message)
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
        self.pool.report(attempt, result, None, overrun=True)


class Listener:
    """PostgreSQL only: wakes the pool when another process makes subtasks READY.

    It holds one extra connection in autocommit mode, ``LISTEN dagtask_ready``, and reconnects
    after a failure (a database restart) with a back-off. Other databases have no such channel:
    their idle workers poll every ``poll_interval`` seconds instead.
    """

    CHANNEL = "dagtask_ready"

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dagtask-listener", daemon=True)

    def start(self) -> None:
        """Start listening."""
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (within a second)."""
        self._stopped.set()
        self._thread.join(timeout=3)

    def _connect(self) -> Any:
        import psycopg

        engine = self.pool.store.db.engine
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        conn = psycopg.connect(*cargs, **cparams, autocommit=True)
        conn.execute(f"LISTEN {self.CHANNEL}")
        return conn

    def _loop(self) -> None:
        delays = iter(RETRY_DELAYS)
        while not self._stopped.is_set():
            try:
                with self._connect() as conn:
                    delays = iter(RETRY_DELAYS)
                    self.pool.wake(self.pool.size)  # anything missed while not listening
                    while not self._stopped.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.pool.wake(self.pool.size)
            except Exception:
                if self._stopped.is_set():
                    return
                _log.warning("lost the notification channel; reconnecting", exc_info=True)
                self._stopped.wait(next(delays, RETRY_DELAYS[-1]))


class WorkerPool:
    """Up to ``size`` attempts at a time, claimed from READY subtasks (of one task only, if
    ``task_id``), under the worker name ``name``."""

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
        lease_seconds: int = DEFAULT_LEASE_SECONDS,
    ) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        if lease_seconds < 1:
            raise ValueError("a worker's lease must be at least 1 second")
        self.store = store
        self.services = services
        self.size = size
        self.name = name or default_worker_name()
        self.task_id = task_id
        self.poll_interval = poll_interval
        self.on_finish = on_finish
        self.lease_seconds = lease_seconds
        self.watchdog = Watchdog(self)
        self.listener = Listener(self) if store.db.dialect == "postgresql" else None
        self._capture = logs.capture_handler()
        self._cond = threading.Condition()
        self._done: list[tuple[Attempt, AttemptResult, TaskContext | None]] = []
        self._open = 0  # attempts claimed and not yet reported
        self._signals = 0
        self._running = False
        self._audit = False  # a claim failed: it may have committed unseen
        self._maybe_ready = True  # READY subtasks may exist beyond what finishes unblock
        self._dispatching = threading.Lock()
        """Held by whoever records results and claims: the dispatcher, or a runner that found
        it free (see :meth:`_continue_inline`)."""
        self._attempts: dict[int, Attempt] = {}  # subtask id -> attempt not yet reported
        self._work: queue.SimpleQueue[Attempt | None] = queue.SimpleQueue()
        self._runners = 0
        self._idle_runners = 0
        self._counter = itertools.count(1)
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="dagtask-dispatcher", daemon=True
        )

    # ---- lifecycle -------------------------------------------------------------------------

    def register(self) -> None:
        """Record this worker as ACTIVE in the database (recovering what an earlier process of
        the same name left RUNNING)."""
        handed = self.store.register_worker(
            self.name, concurrency=self.size, lease_seconds=self.lease_seconds
        )
        if handed:
            _log.warning("worker %s recovered %d subtasks its previous run left", self.name, handed)

    def start(self) -> None:
        """Register, then start the dispatcher, the watchdog and the listener."""
        self.register()
        self._running = True
        self.watchdog.start()
        if self.listener is not None:
            self.listener.start()
        self._dispatcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; let running handlers finish for up to ``timeout`` s; hand back the
        rest by their recovery policy; mark the worker STOPPED."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._running = False
            self._cond.notify_all()
            while (self._open > 0 or self._done) and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.01, deadline - time.monotonic())))
            left = self._open
        try:
            if left:
                # Recorded first, so what the interrupted handlers return is stale.
                handed = self.store.hand_back(
                    self.name, f"worker {self.name} stopped before the subtask ended"
                )
                _log.warning("worker %s handed back %d running subtasks", self.name, handed)
                for attempt in self.watchdog.running():
                    self.watchdog.interrupt(attempt, "its worker stopped")
                with self._cond:
                    for attempt in list(self._attempts.values()):
                        self.report(attempt, AttemptResult(ok=False, message="stopped"), None)
            self._dispatcher.join(timeout=5.0)
            self.store.stop_worker(self.name)
        except Exception:
            _log.exception("worker %s could not record its stop; its lease will run out", self.name)
        finally:
            self.watchdog.stop()
            if self.listener is not None:
                self.listener.stop()
            for _ in range(self._runners):
                self._work.put(None)

    def wake(self, count: int = 1) -> None:
        """Tell the dispatcher that ``count`` subtasks may have become READY."""
        with self._cond:
            self._signals += count
            self._cond.notify_all()

    # ---- the dispatcher ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        backoff = iter(RETRY_DELAYS)
        while True:
            with self._cond:
                if not self._await_work():
                    return
            with self._dispatching:  # a runner may be recording results meanwhile
                pending, free = self._take_pending()
                try:
                    if self._audit:
                        self._hand_back_unknown()
                    if pending:
                        self._report(pending, free)
                    elif free > 0:
                        self._claim(free)
                    backoff = iter(RETRY_DELAYS)
                    continue
                except Exception:
                    delay = next(backoff, RETRY_DELAYS[-1])
                    _log.warning(
                        "the database did not answer; trying again in %.2f s",
                        delay,
                        exc_info=True,
                    )
                    self._requeue(pending)
            time.sleep(delay)

    def _take_pending(
        self,
    ) -> tuple[list[tuple[Attempt, AttemptResult, TaskContext | None]], int]:
        """The results waiting to be recorded, and the free slots (under ``_dispatching``)."""
        with self._cond:
            pending = list(self._done)
            self._done.clear()
            free = self.size - self._open if self._running else 0
            if self._signals > 0:
                self._maybe_ready = True
            self._signals = 0
            return pending, free

    def _requeue(self, pending: list[tuple[Attempt, AttemptResult, TaskContext | None]]) -> None:
        """After a failed transaction: keep its results for the next try (a failed claim may
        have committed before the error: look for claims this pool does not know)."""
        with self._cond:
            if pending:
                self._done[:0] = pending
            else:
                self._audit = True
            self._cond.notify_all()

    def _continue_inline(self) -> Attempt | None:
        """Called by a runner whose handler just returned: if no one else is recording results,
        record them now in this thread and return a successor to run here, so a chain of
        subtasks goes on without handing over between threads."""
        if not self._running or not self._dispatching.acquire(blocking=False):
            return None
        try:
            pending, free = self._take_pending()
            if not pending:
                return None
            try:
                return self._report(pending, free, keep_one=True)
            except Exception:
                self._requeue(pending)  # the dispatcher retries with its back-off
                return None
        finally:
            self._dispatching.release()

    def _await_work(self) -> bool:
        """Under ``_cond``: wait until there are results to report or slots to fill (woken by
        a signal, or by a poll); False when the pool stopped and nothing is left to report."""
        while not self._done:
            if not self._running:
                if self._open == 0:
                    return False
                self._cond.wait(0.1)
                continue
            if self._open >= self.size:
                self._cond.wait()
                continue
            if self._signals > 0:
                return True
            if not self._cond.wait(self.poll_interval) and self._open < self.size:
                self._maybe_ready = True  # a poll: another process may have made work READY
                return True
        return True

    def _claim(self, free: int) -> None:
        claims = self.store.claim(self.name, limit=free, task_id=self.task_id)
        self._maybe_ready = len(claims) == free  # a full claim may have left more behind
        self._start(claims)

    def _report(
        self,
        pending: list[tuple[Attempt, AttemptResult, TaskContext | None]],
        free: int,
        *,
        keep_one: bool = False,
    ) -> Attempt | None:
        """Record ``pending`` and start what the same transaction claimed; with ``keep_one``,
        the first claim is returned to the caller to run instead of queued."""
        reports = [Report(a.claim, result, output, a.log.drain()) for a, result, output in pending]
        # Look beyond what this batch unblocks only when there may be READY work elsewhere: a
        # signal, a poll, or a claim that found as much as it asked for.
        claim_any = self._maybe_ready
        batch = self.store.finish_many(
            reports,
            executor=self.name,
            claim_limit=free,
            claim_task=self.task_id,
            claim_any=claim_any,
        )
        if claim_any:
            self._maybe_ready = len(batch.claims) == free
        kept = self._start(batch.claims, keep_one=keep_one)
        promoted = 0
        for (attempt, _, _), outcome in zip(pending, batch.outcomes, strict=True):
            promoted += outcome.promoted
            if self.on_finish is not None:
                self.on_finish(attempt.claim, outcome)
        if promoted > len(batch.claims):
            self.wake(promoted - len(batch.claims))
        return kept

    def _start(self, claims: list[Claim], *, keep_one: bool = False) -> Attempt | None:
        kept: Attempt | None = None
        for claim in claims:
            attempt = Attempt(claim)
            with self._cond:
                self._open += 1
                self._attempts[claim.subtask_id] = attempt
                if keep_one and kept is None:
                    kept = attempt
                    continue
                spawn = self._idle_runners == 0
                if not spawn:
                    self._idle_runners -= 1
            if spawn:
                self._spawn_runner()
            self._work.put(attempt)
        return kept

    def _hand_back_unknown(self) -> None:
        """After a failed claim: hand back subtasks that claim committed but this pool never
        saw (their handlers never ran, so they go back to READY)."""
        with self._cond:
            known = set(self._attempts)
        count = self.store.hand_back_unknown(self.name, known)
        if count:
            _log.warning("worker %s handed back %d claims it never started", self.name, count)
        self._audit = False

    def report(
        self,
        attempt: Attempt,
        result: AttemptResult,
        output: TaskContext | None,
        *,
        overrun: bool = False,
    ) -> None:
        """Queue an attempt's end for the dispatcher (from a runner, or the watchdog)."""
        with self._cond:
            first = not attempt.reported
            attempt.reported = True
            if first:
                self._open -= 1
                self._attempts.pop(attempt.claim.subtask_id, None)
            if first or not overrun:
                self._done.append((attempt, result, output))
            self._cond.notify_all()

    # ---- runners ---------------------------------------------------------------------------

    def _spawn_runner(self) -> None:
        with self._cond:
            self._runners += 1
        thread = threading.Thread(
            target=self._runner, name=f"dagtask-worker-{next(self._counter)}", daemon=True
        )
        thread.start()

    def _runner(self) -> None:
        while True:
            attempt = self._work.get()
            if attempt is None:
                with self._cond:
                    self._runners -= 1
                return
            while attempt is not None:
                self._run(attempt)
                attempt = self._continue_inline()
            with self._cond:
                if self._runners > self.size and self._idle_runners >= self.size:
                    self._runners -= 1  # a spare started while a handler was stuck: retire
                    return
                self._idle_runners += 1

    def _run(self, attempt: Attempt) -> None:
        """Run one attempt and queue its result."""
        claim = attempt.claim
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
            # Asked to stop (timeout, a stopping worker): whatever the handler did, the attempt
            # failed for that reason. The watchdog may report it too; the store keeps the first.
            result = AttemptResult(ok=False, message=attempt.token.reason)
        self.report(attempt, result, output)

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
