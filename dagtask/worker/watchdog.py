"""The watchdog: ends attempts on time and fences the pool, without touching the database.

It keeps every running attempt's deadline in a heap and ends the attempt the moment it passes,
whatever the database is doing (stalled, locked, down): the slot is freed and the result
("timed out after N s") waits for the dispatcher. It also ends an attempt whose handler ignores
an operator's cancel for :attr:`CANCEL_GRACE_SECONDS`, and it fences the whole pool when the
lease has not been renewed for :attr:`WorkerPool.fence_after` seconds (see ``docs/design.md``):
past that point another worker may recover the subtasks, so this one must stop running them.

Interrupting a handler (setting its token, calling its ``cancel()``, terminating the commands it
started) is user code that may block, so it runs on a short-lived thread of its own.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING

from dagtask import logs
from dagtask.planner import AttemptResult
from dagtask.worker.attempt import Attempt

if TYPE_CHECKING:
    from dagtask.worker.pool import WorkerPool

_log = logging.getLogger("dagtask.worker")

TIMEOUT, CANCEL = "timeout", "cancel"


class Watchdog:
    """Deadlines of the pool's running attempts, and the pool's fence."""

    CANCEL_GRACE_SECONDS = 5.0

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._heap: list[tuple[float, int, tuple[int, int], str]] = []
        self._watched: dict[tuple[int, int], Attempt] = {}
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
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def watch(self, attempt: Attempt) -> None:
        """Track a started attempt (its deadline, if it has a timeout)."""
        with self._cond:
            self._watched[attempt.key] = attempt
            if attempt.claim.timeout > 0:
                self._push(time.monotonic() + attempt.claim.timeout, attempt, TIMEOUT)

    def forget(self, attempt: Attempt) -> None:
        """Stop tracking an attempt that ended; it is released at once (nothing here keeps it)."""
        with self._cond:
            self._watched.pop(attempt.key, None)
            # The heap holds keys only; compact it when ended attempts' entries dominate.
            if len(self._heap) > 64 and len(self._heap) > 2 * len(self._watched):
                self._heap = [e for e in self._heap if e[2] in self._watched]
                heapq.heapify(self._heap)

    def cancel_requested(self, attempt: Attempt) -> None:
        """An operator cancelled the attempt: interrupt it now, and end it as cancelled if its
        handler has not returned :attr:`CANCEL_GRACE_SECONDS` later."""
        interrupt(attempt, "cancelled by the operator")
        with self._cond:
            if attempt.key in self._watched:
                self._push(time.monotonic() + self.CANCEL_GRACE_SECONDS, attempt, CANCEL)

    def _push(self, deadline: float, attempt: Attempt, kind: str) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), attempt.key, kind))
        self._cond.notify()

    def _loop(self) -> None:
        pool = self.pool
        check_fence = min(1.0, max(0.05, pool.lease_seconds / 20))
        while True:
            due: list[tuple[Attempt, str]] = []
            with self._cond:
                if self._stopped:
                    return
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, key, kind = heapq.heappop(self._heap)
                    attempt = self._watched.get(key)
                    if attempt is not None:
                        due.append((attempt, kind))
                if not due:
                    wake = self._heap[0][0] if self._heap else now + check_fence
                    self._cond.wait(max(0.0, min(wake - now, check_fence)))
            for attempt, kind in due:
                self._overrun(attempt, kind)
            reason = pool.fence_reason()
            if reason is not None:
                pool.fence_all(reason)

    def _overrun(self, attempt: Attempt, kind: str) -> None:
        claim = attempt.claim
        if kind == TIMEOUT:
            message = f"timed out after {claim.timeout} s"
            # The end first: the slot is free and the result fixed before any user code runs.
            if self.pool.end(attempt, AttemptResult(ok=False, message=message)):
                self.pool.metrics.timed_out(claim)
                interrupt(attempt, message)
            return
        attempt.log.write(
            logs.line(
                f"The handler of subtask {claim.subtask_id} did not stop within "
                f"{self.CANCEL_GRACE_SECONDS:g} s; recording the cancel",
                "ERROR",
            )
        )
        result = AttemptResult(ok=False, message="cancelled by the operator", cancelled=True)
        self.pool.end(attempt, result)


def interrupt(attempt: Attempt, reason: str) -> None:
    """Ask an attempt's handler to stop: log why, set its token (which terminates the commands
    it started) and call its ``cancel()``, on a thread of their own."""
    claim = attempt.claim
    attempt.log.write(
        logs.line(f"Subtask {claim.subtask_id} {reason}; asking the handler to stop", "WARN")
    )

    def stop() -> None:
        attempt.token.cancel(reason)
        if attempt.handler is not None:
            try:
                attempt.handler.cancel()
            except Exception:
                _log.exception("handler cancel() of subtask %s failed", claim.subtask_id)

    threading.Thread(target=stop, name="dagtask-interrupt", daemon=True).start()
