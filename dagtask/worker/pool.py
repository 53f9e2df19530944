"""A worker pool: up to ``size`` attempts at a time, under one worker name.

Who does what (each in its own module):

* the **dispatcher** (:mod:`.dispatcher`) is the only thread that reads or writes tasks and
  subtasks: claims, finishes, log flushes, cancel polls, sweeps and reconciliation;
* **runners** (:mod:`.runner`) only call handlers and hand the results over;
* the **watchdog** (:mod:`.watchdog`) ends attempts at their timeout and fences the pool; it
  never touches the database, so timeouts fire while the database is stalled or down;
* the **lease keeper** (:mod:`.lease`) renews the worker's own row, and nothing else.

The state they share lives here, under one condition variable :attr:`cond`: ``live`` (claimed
attempts whose result is not recorded yet), ``done`` (ended attempts waiting to be recorded),
``fenced`` (subtasks stopped without a result, to hand back), ``open`` (busy slots).

**Fencing.** If the lease has not been renewed for :attr:`fence_after` seconds (0.8 of the lease,
counted from when the last successful renewal was *sent*), another worker may soon declare this
one lost and run its subtasks again. So the pool stops first: every running attempt is fenced
(its token set, its handler's ``cancel()`` called, its commands terminated), its result will be
discarded, and nothing more is claimed until the lease is renewed. The token itself reports the
fence the moment the process resumes from a pause, before any thread of the pool has run.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dagtask import handlers, hooks, logs
from dagtask.context import TaskContext
from dagtask.observability import logfields, recorder
from dagtask.planner import AttemptResult
from dagtask.services import Services
from dagtask.store.sql import Claim, FinishOutcome, Store
from dagtask.worker.attempt import Attempt, End
from dagtask.worker.dispatcher import Dispatcher
from dagtask.worker.lease import LeaseKeeper, Listener, OutageLog
from dagtask.worker.runner import run_attempt
from dagtask.worker.watchdog import Watchdog, interrupt

_log = logging.getLogger("dagtask.worker")
_attempts_log = logging.getLogger("dagtask.worker.attempts")
"""One line when an attempt starts and one when it ends (``dagtask worker`` shows them)."""

DEFAULT_LEASE_SECONDS = 30
FENCE_FRACTION = 0.8

_names = itertools.count(1)
_in_use: set[str] = set()
_in_use_lock = threading.Lock()


def _reserve(name: str) -> str:
    """``name``, or ``name#2``, ``#3``... if a pool of this process runs under it already: two
    pools of one process must never share a name (registering it again would recover, i.e.
    fail, what the other one runs)."""
    with _in_use_lock:
        chosen, n = name, 1
        while chosen in _in_use:
            n += 1
            chosen = f"{name}#{n}"
        _in_use.add(chosen)
        return chosen


def _release(name: str) -> None:
    with _in_use_lock:
        _in_use.discard(name)


FinishListener = Callable[[Claim, FinishOutcome], None]


CODE_FILES = ("__init__.py", "worker/pool.py", "store/attempts.py", "store/changes.py")
"""Files of the installed dagtask whose change means the package was upgraded under a worker."""


def code_stamp() -> tuple[int, ...]:
    """The modification times of :data:`CODE_FILES` (-1 for a missing one)."""
    root = Path(__file__).resolve().parent.parent
    stamps = []
    for name in CODE_FILES:
        try:
            stamps.append(os.stat(root / name).st_mtime_ns)
        except OSError:
            stamps.append(-1)
    return tuple(stamps)


def default_worker_name() -> str:
    """``host:pid``: how a worker identifies itself as a subtask's ``executor`` (``host:pid/N``
    for the N-th pool of one process, since a name is one worker at a time)."""
    n = next(_names)
    return f"{socket.gethostname()}:{os.getpid()}" + (f"/{n}" if n > 1 else "")


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
        self.fence_after = lease_seconds * FENCE_FRACTION
        self.capture = logs.capture_handler()
        self.outage = OutageLog(self.name)
        self.cond = threading.Condition()
        self.live: dict[int, Attempt] = {}
        self.done: list[End] = []
        self.fenced: dict[int, tuple[int, str]] = {}
        self.open = 0
        self.signals = 0
        self.stopping = False
        self.rejoin_needed = False
        self.code_changed = False
        """The installed dagtask changed under this pool (an upgrade): it claims nothing more."""
        self._code = code_stamp()
        self.closed = False
        """Set when :meth:`stop` gave up on the dispatcher: it ends at its next turn."""
        self._started = False
        self._renewed = time.monotonic()
        self._fence_reason: str | None = None
        self._work: queue.SimpleQueue[Attempt | None] = queue.SimpleQueue()
        self._runners = 0
        self._idle_runners = 0
        self._counter = itertools.count(1)
        self.metrics = recorder.for_store(store)
        """Where the pool reports claims, ends, timeouts, heartbeats (nothing when off)."""
        self.hooks = hooks.PoolHooks(store)
        self.watchdog = Watchdog(self)
        self.dispatcher = Dispatcher(self)
        self.lease = LeaseKeeper(self)
        self.listener = Listener(self) if store.db.dialect == "postgresql" else None

    # ---- lifecycle -------------------------------------------------------------------------

    def register(self) -> None:
        """Record this worker as ACTIVE in the database (recovering what an earlier process of
        the same name left RUNNING)."""
        sent = time.monotonic()
        handed = self.store.register_worker(
            self.name, concurrency=self.size, lease_seconds=self.lease_seconds
        )
        self.renewed(sent)
        if handed:
            _log.warning("worker %s recovered %d subtasks its previous run left", self.name, handed)

    def start(self) -> None:
        """Register, then start the dispatcher, the watchdog, the lease keeper, the listener."""
        self.name = _reserve(self.name)
        self.outage.name = self.name
        try:
            self.register()
        except BaseException:
            _release(self.name)
            raise
        self._started = True
        self.watchdog.start()
        self.lease.start()
        if self.listener is not None:
            self.listener.start()
        self.dispatcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; let running handlers finish for up to ``timeout`` s; hand back the
        rest by their recovery policy; mark the worker STOPPED."""
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
            while (self.open > 0 or self.done) and time.monotonic() < deadline:
                self.cond.wait(min(0.1, max(0.01, deadline - time.monotonic())))
            left = [a.key for a in self.live.values() if not a.ended]
        if left:
            # Fenced first, so what the interrupted handlers return is discarded; the
            # dispatcher hands their subtasks back by policy.
            self.fence_keys(left, f"worker {self.name} stopped before the subtask ended")
        finished = self.dispatcher.join(timeout=max(5.0, min(30.0, self.lease_seconds)))
        try:
            if finished:
                self.store.stop_worker(self.name)
            else:
                _log.error(
                    "worker %s could not record its stop (the database does not answer); "
                    "its lease runs out in %d s and other workers recover what it held",
                    self.name,
                    self.lease_seconds,
                )
        except Exception:
            _log.exception("worker %s could not record its stop; its lease will run out", self.name)
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()
            self._started = False
            _release(self.name)
            self.watchdog.stop()
            self.lease.stop()
            if self.listener is not None:
                self.listener.stop()
            for _ in range(self._runners):
                self._work.put(None)
            self.hooks.close()

    def wake(self, count: int = 1) -> None:
        """Tell the dispatcher that ``count`` subtasks may have become READY."""
        with self.cond:
            self.signals += count
            self.cond.notify_all()

    def sleep(self, seconds: float) -> None:
        """Back off for ``seconds`` (the dispatcher after a failure), sooner if stopping."""
        deadline = time.monotonic() + seconds
        with self.cond:
            while not self.closed and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())

    def claiming(self) -> bool:
        """Whether new work may be claimed: not stopping, lease fresh, not declared lost."""
        return (
            not self.stopping
            and not self.code_changed
            and not self.rejoin_needed
            and self._fence_reason is None
            and self.fence_reason() is None
        )

    # ---- the lease and the fence -------------------------------------------------------------

    def check_code(self) -> bool:
        """Whether the installed dagtask changed since this pool started (checked by the lease
        keeper). Its modules are half old and half new now: it stops claiming, so that what it
        runs finishes and a restart (``dagtask worker`` exits for its service manager) picks up
        the new code."""
        if not self.code_changed and code_stamp() != self._code:
            self.code_changed = True
            _log.error(
                "worker %s: the installed dagtask changed under it (an upgrade?); it claims "
                "nothing more: restart it to run the new code (`dagtask worker` stops by itself)",
                self.name,
            )
        return self.code_changed

    def renewed(self, sent: float) -> None:
        """The lease was renewed by a statement sent at monotonic time ``sent``."""
        with self.cond:
            if sent > self._renewed:
                self._renewed = sent
            if (
                self._fence_reason is not None
                and time.monotonic() - self._renewed < self.fence_after
            ):
                _log.warning("worker %s renewed its lease; claiming again", self.name)
                self._fence_reason = None
                self.signals += self.size
            self.cond.notify_all()

    def fence_reason(self) -> str | None:
        """Why running handlers must stop now, if they must: the lease is about to run out."""
        silent = time.monotonic() - self._renewed
        if silent < self.fence_after:
            return None
        return (
            f"its worker {self.name} could not renew its lease for {silent:.0f} s "
            f"(lease {self.lease_seconds} s); stopping before another worker takes it over"
        )

    def fence_all(self, reason: str) -> None:
        """Stop every running attempt without a result (see the module docstring)."""
        with self.cond:
            first = self._fence_reason is None
            self._fence_reason = reason
            keys = [a.key for a in self.live.values() if not a.ended]
        if first:
            _log.error("worker %s: %s", self.name, reason)
        if keys:
            self.fence_keys(keys, reason)

    def fence_keys(self, keys: list[tuple[int, int]], reason: str) -> None:
        """Fence these attempts: end them without a result and interrupt their handlers."""
        hit: list[Attempt] = []
        with self.cond:
            for sid, run_time in keys:
                attempt = self.live.get(sid)
                if attempt is None or attempt.claim.run_time != run_time or attempt.ended:
                    continue
                attempt.ended = attempt.fenced = True
                self.open -= 1
                del self.live[sid]
                self.fenced[sid] = (run_time, reason)
                hit.append(attempt)
            self.cond.notify_all()
        for attempt in hit:
            self.watchdog.forget(attempt)
            interrupt(attempt, reason)

    def declared_lost(self) -> None:
        """The lease keeper learnt that this worker was declared lost: stop everything, and
        let the dispatcher record what it can and register again."""
        self.fence_all(
            f"its worker {self.name} was declared lost (no heartbeat within "
            f"{self.lease_seconds} s); its subtasks were recovered elsewhere"
        )
        with self.cond:
            self.rejoin_needed = True
            self.cond.notify_all()

    def rejoin(self) -> None:
        """Register again after being declared lost (the dispatcher, once it reconciled)."""
        self.register()
        with self.cond:
            self.rejoin_needed = False
            self.signals += self.size
            self.cond.notify_all()

    # ---- attempts ------------------------------------------------------------------------------

    def start_attempts(self, claims: list[Claim]) -> None:
        """Hand newly claimed subtasks to runners (the dispatcher, after a claim)."""
        if not claims:
            return
        try:
            found = self.hooks.load({claim.task_id for claim in claims})
        except Exception as exc:
            # Not started, so the next reconcile hands them back to READY: they run later.
            self.outage.failed("reading the hooks of the tasks it claimed", exc)
            self.dispatcher.reconcile_needed = True
            return
        for claim in claims:
            with self.cond:
                if self.stopping:
                    # Claimed while the pool was told to stop, after stop() looked for what
                    # runs: never started, it is handed back by its recovery policy as stop()
                    # hands back what it interrupts (the dispatcher reconciles it).
                    self.fenced[claim.subtask_id] = (
                        claim.run_time,
                        f"worker {self.name} stopped before the subtask ended",
                    )
                    self.cond.notify_all()
                    continue
            known = found[claim.task_id]
            attempt = Attempt(
                claim,
                token=handlers.CancellationToken(self.fence_reason),
                hooks=known.hooks,
                hooks_problem=known.problem,
                trace_parent=known.trace_parent,
                template=known.template,
            )
            _attempts_log.info(
                "start subtask %d %r of task %d: %s, attempt %d",
                claim.subtask_id,
                claim.name,
                claim.task_id,
                claim.operation.value,
                claim.run_time,
                extra=logfields.AttemptFields(claim, attempt.trace_parent),
            )
            with self.cond:
                self.open += 1
                self.live[claim.subtask_id] = attempt
                spawn = self._idle_runners == 0
                if not spawn:
                    self._idle_runners -= 1
            if spawn:
                self._spawn_runner()
            self._work.put(attempt)

    def end(
        self, attempt: Attempt, result: AttemptResult, output: TaskContext | None = None
    ) -> bool:
        """Decide an attempt's end (first caller wins); False if it had ended already."""
        with self.cond:
            if attempt.ended:
                return False
            attempt.ended = True
            self.open -= 1
            self.done.append(End(attempt, result, output))
            self.cond.notify_all()
        self.metrics.attempt_ended(attempt, result.ok)
        return True

    def forget(self, attempt: Attempt) -> None:
        """Under :attr:`cond`: the attempt's result was recorded (or dropped); release it."""
        if self.live.get(attempt.claim.subtask_id) is attempt:
            del self.live[attempt.claim.subtask_id]

    # ---- runner threads ------------------------------------------------------------------------

    def _spawn_runner(self) -> None:
        with self.cond:
            self._runners += 1
        thread = threading.Thread(
            target=self._runner, name=f"dagtask-worker-{next(self._counter)}", daemon=True
        )
        thread.start()

    def _runner(self) -> None:
        while True:
            attempt = self._work.get()
            if attempt is None:
                with self.cond:
                    self._runners -= 1
                return
            run_attempt(self, attempt)
            attempt = None  # an idle runner keeps nothing of its last attempt alive
            with self.cond:
                if self._runners > self.size and self._idle_runners >= self.size:
                    self._runners -= 1  # a spare started while a handler was stuck: retire
                    return
                self._idle_runners += 1
