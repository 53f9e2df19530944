"""The dispatcher: the one thread of a pool that reads and writes tasks and subtasks.

Each turn of its loop does, in this order, what is due:

1. **reconcile** after any failed write, as soon as the database answers again: compare what the
   database says this worker holds with what it runs (:meth:`Store.reconcile_worker`). A
   subtask held but never started (a claim whose commit reached the server while its reply was
   lost) goes back to READY; a fenced one is handed back by its recovery policy; a result whose
   subtask is no longer held was already recorded (a finish whose reply was lost) or taken away,
   and is dropped. Results that wait are part of what it runs, so they are never taken for
   unknown claims: the audit can never make a finished handler run again;
2. **record** the attempts that ended, in one transaction that also promotes what they unblock,
   settles their tasks and claims work for the slots they freed (:meth:`Store.finish_many`);
3. **claim** for free slots when woken (an in-process submit, a NOTIFY, a recovery) or when an
   idle poll's cheap read saw READY work (an idle worker writes nothing);
4. **flush** running attempts' logs every :attr:`FLUSH_SECONDS` (in order: a failed flush puts
   the text back in front of what came since);
5. **poll for cancels** of this worker's subtasks every :attr:`CANCEL_POLL_SECONDS` while it runs
   something, and **sweep** for lost workers every half lease.

A failed call puts its results back, logs through :class:`OutageLog` and backs off. The
watchdog keeps ending attempts on time meanwhile, so timeouts never wait for the database.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from dagtask.observability import logfields, tracing
from dagtask.states import SubtaskStatus
from dagtask.store.sql import FinishOutcome, Report
from dagtask.worker.attempt import End
from dagtask.worker.lease import RETRY_DELAYS

if TYPE_CHECKING:
    from dagtask.worker.pool import WorkerPool

_log = logging.getLogger("dagtask.worker")


class Dispatcher:
    """Claims, records, flushes, polls and reconciles for one pool."""

    FLUSH_SECONDS = 1.0
    CANCEL_POLL_SECONDS = 0.25
    MAX_IDLE_POLL = 2.0
    """An idle pool's poll interval doubles up to this (it drops back at the first work)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.store = pool.store
        self.reconcile_needed = False
        self._poll = pool.poll_interval
        now = time.monotonic()
        self._next_poll = now
        self._next_flush = now + self.FLUSH_SECONDS
        self._next_cancel_poll = now + self.CANCEL_POLL_SECONDS
        self._sweep_every = max(0.5, pool.lease_seconds / 2)
        self._next_sweep = now + min(1.0, self._sweep_every)
        self._maybe_ready = True
        self._thread = threading.Thread(target=self._loop, name="dagtask-dispatcher", daemon=True)

    def start(self) -> None:
        """Start the dispatcher thread."""
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for the dispatcher to end; whether it did."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        tracing.preload()
        self.store.db.keep_hot_connection()
        try:
            self._turns()
        finally:
            self.store.db.release_hot()

    def _turns(self) -> None:
        pool = self.pool
        delays = iter(RETRY_DELAYS)
        while True:
            turn = self._await_turn()
            if turn is None:
                return
            pending, free, woken, polled = turn
            try:
                self._turn(pending, free, woken, polled)
                pool.outage.ok()
                delays = iter(RETRY_DELAYS)
            except Exception as exc:
                pool.outage.failed("recording results and claiming work", exc)
                with pool.cond:
                    pool.done[:0] = pending
                    pool.signals += woken
                self.reconcile_needed = True
                pool.sleep(next(delays, RETRY_DELAYS[-1]))

    def _await_turn(self) -> tuple[list[End], int, int, bool] | None:
        """Wait until something is due; take the ended attempts and the free slots. None when
        the pool stopped and nothing is left to do."""
        pool = self.pool
        with pool.cond:
            while True:
                if pool.closed:
                    return None
                now = time.monotonic()
                running = bool(pool.live)
                free = pool.size - pool.open if pool.claiming() else 0
                polled = free > 0 and now >= self._next_poll
                timers = (
                    running and (now >= self._next_flush or now >= self._next_cancel_poll)
                ) or (now >= self._next_sweep and pool.claiming())
                if (
                    pool.done
                    or (free > 0 and pool.signals > 0)
                    or polled
                    or timers
                    or pool.fenced
                    or pool.rejoin_needed
                ):
                    pending, pool.done = pool.done, []
                    woken, pool.signals = (pool.signals, 0) if free > 0 else (0, pool.signals)
                    return pending, free, woken, polled
                if pool.stopping and not pool.live and not pool.fenced:
                    return None
                wake = [self._next_sweep]
                if free > 0:
                    wake.append(self._next_poll)
                if running:
                    wake += [self._next_flush, self._next_cancel_poll]
                pool.cond.wait(max(0.005, min(wake) - now))

    def _turn(self, pending: list[End], free: int, woken: int, polled: bool) -> None:
        pool = self.pool
        if self.reconcile_needed or pool.fenced:
            pending = self._reconcile(pending)
        if pool.rejoin_needed:
            if pending:
                self._record(pending, 0)
                pending = []
            self._reconcile([])
            pool.rejoin()
            return
        if pending:
            # A wake-up taken with the results (READY work a submit, NOTIFY or an earlier
            # promotion left unclaimed) makes the finish look for READY work beyond what it
            # unblocks itself; dropping it left that work to the next idle poll (up to 2 s).
            self._record(pending, free, search=woken > 0)
        elif free > 0 and (woken or polled):
            self._claim(free, woken, polled)
        now = time.monotonic()
        if pool.live and now >= self._next_flush:
            self._next_flush = now + self.FLUSH_SECONDS
            self._flush()
        if pool.live and now >= self._next_cancel_poll:
            self._next_cancel_poll = now + self.CANCEL_POLL_SECONDS
            self._poll_cancels()
        if now >= self._next_sweep and pool.claiming():
            self._next_sweep = now + self._sweep_every
            self._sweep()

    # ---- the steps -------------------------------------------------------------------------

    def _claim(self, free: int, woken: int, polled: bool) -> None:
        pool = self.pool
        if polled:
            self._next_poll = time.monotonic() + self._poll
            if not woken and not self.store.any_ready(pool.task_id):
                # Idle: nothing to claim, so no write transaction; poll less often.
                self._poll = min(self._poll * 2, max(pool.poll_interval, self.MAX_IDLE_POLL))
                return
        started = time.perf_counter()
        claims = self.store.claim(pool.name, limit=free, task_id=pool.task_id)
        pool.metrics.claimed(started, len(claims))
        self._maybe_ready = len(claims) == free
        if claims:
            self._poll = pool.poll_interval
        pool.start_attempts(claims)

    def _record(self, pending: list[End], free: int, search: bool = False) -> None:
        pool = self.pool
        reports = [
            Report(e.attempt.claim, e.result, e.output, e.attempt.log.drain()) for e in pending
        ]
        claim_any = self._maybe_ready or search
        started = time.perf_counter()
        try:
            batch = self.store.finish_many(
                reports,
                executor=pool.name,
                claim_limit=free,
                claim_task=pool.task_id,
                claim_any=claim_any,
            )
        except BaseException:
            for end, report in zip(pending, reports, strict=True):
                end.attempt.log.unshift(report.log_text)
            raise
        pool.metrics.finished(started, len(batch.claims))
        if claim_any:
            self._maybe_ready = len(batch.claims) == free
        if batch.claims:
            self._poll = pool.poll_interval
        with pool.cond:
            for end in pending:
                pool.forget(end.attempt)
        pool.start_attempts(batch.claims)
        promoted = 0
        for end, outcome in zip(pending, batch.outcomes, strict=True):
            promoted += outcome.promoted
            _log_end(end, outcome)
            if outcome.task_status is not None:
                pool.hooks.task_ended(end.attempt.claim.task_id, outcome.task_status)
            if pool.on_finish is not None:
                pool.on_finish(end.attempt.claim, outcome)
        if promoted > len(batch.claims):
            pool.wake(promoted - len(batch.claims))

    def _reconcile(self, pending: list[End]) -> list[End]:
        """Settle what the database says this worker holds against what it runs; return the
        ``pending`` results that still have to be recorded."""
        pool = self.pool
        with pool.cond:
            live = {sid: a.claim.run_time for sid, a in pool.live.items()}
            fenced = dict(pool.fenced)
        outcome = self.store.reconcile_worker(pool.name, live=live, fenced=fenced)
        if outcome.never_started:
            _log.warning(
                "worker %s handed back %d claims whose reply it never got (not started)",
                pool.name,
                outcome.never_started,
            )
        if outcome.handed_back:
            _log.warning(
                "worker %s handed back %d subtasks it stopped running",
                pool.name,
                outcome.handed_back,
            )
        gone: list[tuple[int, int]] = []
        with pool.cond:
            for sid, reason_run in fenced.items():
                if pool.fenced.get(sid) == reason_run:
                    del pool.fenced[sid]
            kept = []
            for end in pending:
                if end.attempt.key in outcome.held:
                    kept.append(end)
                else:  # recorded by a commit whose reply was lost, or taken away meanwhile
                    pool.forget(end.attempt)
            for attempt in list(pool.live.values()):
                if attempt.key not in outcome.held and not attempt.ended:
                    gone.append(attempt.key)
        if gone:
            pool.fence_keys(gone, "its subtask is no longer held by this worker")
        self.reconcile_needed = False
        return kept

    def _flush(self) -> None:
        pool = self.pool
        with pool.cond:
            running = [a for a in pool.live.values() if not a.ended]
        parts = [(a, a.log.drain()) for a in running]
        parts = [(a, text) for a, text in parts if text]
        if not parts:
            return
        try:
            self.store.append_logs(
                [(a.claim.subtask_id, a.claim.run_time, text) for a, text in parts]
            )
        except BaseException:
            for attempt, text in parts:
                attempt.log.unshift(text)
            raise

    def _poll_cancels(self) -> None:
        pool = self.pool
        marked = set(self.store.canceling(pool.name))
        if not marked:
            return
        with pool.cond:
            hit = [
                a
                for a in pool.live.values()
                if a.key in marked and not a.ended and not a.token.cancelled
            ]
        for attempt in hit:
            pool.watchdog.cancel_requested(attempt)

    def _sweep(self) -> None:
        pool = self.pool
        lost = self.store.recover_lost_workers(pool.name)
        if lost:
            pool.metrics.workers_recovered(len(lost))
            _log.warning("recovered the subtasks of lost workers: %s", ", ".join(lost))
            pool.wake(pool.size)


_attempts_log = logging.getLogger("dagtask.worker.attempts")


def _log_end(end: End, outcome: FinishOutcome) -> None:
    """One line for an attempt's recorded end: INFO when it succeeded (or goes on as a retry),
    WARNING with the reason when it failed, DEBUG when the result was stale."""
    claim = end.attempt.claim
    took = time.monotonic() - end.attempt.started
    what = f"subtask {claim.subtask_id} {claim.name!r} of task {claim.task_id}"
    fields = logfields.AttemptFields(claim, end.attempt.trace_parent)
    if not outcome.applied:
        _attempts_log.debug(
            "end %s: result discarded (the attempt had ended already)", what, extra=fields
        )
    elif outcome.status is SubtaskStatus.FAILED:
        _attempts_log.warning(
            "end %s: FAILED after %.2f s: %s",
            what,
            took,
            end.result.message or "failed",
            extra=fields,
        )
    elif end.result.ok:
        _attempts_log.info(
            "end %s: %s after %.2f s",
            what,
            outcome.status.value if outcome.status else "",
            took,
            extra=fields,
        )
    else:  # failed, but it goes on (an automatic retry)
        _attempts_log.warning(
            "end %s: failed after %.2f s (%s); %s",
            what,
            took,
            end.result.message or "failed",
            "retrying" if outcome.status is SubtaskStatus.READY else "recorded",
            extra=fields,
        )
