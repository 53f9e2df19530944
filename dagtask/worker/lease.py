"""The pool's lease, its wake-up channel, and how an outage is reported.

* :class:`LeaseKeeper` renews the worker's heartbeat every third of the lease. It touches only
  the worker's own row, so a task write stalled behind a lock never costs the lease. When a
  renewal comes back "you were declared lost" (the process was paused or cut off longer than
  the lease, and another worker recovered its subtasks), it fences the pool and asks the
  dispatcher to rejoin.
* :class:`Listener` (PostgreSQL only) wakes the pool on ``NOTIFY dagtask_ready``.
* :class:`OutageLog` makes an outage three kinds of lines, not thousands: one when it starts,
  one about every :attr:`OutageLog.EVERY` seconds while it lasts, one when it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagtask.worker.pool import WorkerPool

_log = logging.getLogger("dagtask.worker")

RETRY_DELAYS = (0.05, 0.2, 1.0, 2.0, 5.0)
"""Back-off between attempts to reach the database again (the last one repeats)."""


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class OutageLog:
    """One pool's view of whether the database answers, logged sparingly."""

    EVERY = 30.0

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._since: float | None = None
        self._last_line = 0.0
        self.failures = 0

    @property
    def down(self) -> bool:
        """Whether the last database call failed."""
        return self._since is not None

    def failed(self, what: str, exc: BaseException) -> None:
        """A database call failed."""
        now = time.monotonic()
        with self._lock:
            self.failures += 1
            if self._since is None:
                self._since, self._last_line = now, now
                _log.warning(
                    "worker %s: the database did not answer (%s: %s); retrying with back-off",
                    self.name,
                    what,
                    _one_line(exc),
                )
                _log.debug("the failure", exc_info=exc)
            elif now - self._last_line >= self.EVERY:
                self._last_line = now
                _log.warning(
                    "worker %s: the database has not answered for %.0f s (%s: %s)",
                    self.name,
                    now - self._since,
                    what,
                    _one_line(exc),
                )

    def ok(self) -> None:
        """A database call succeeded."""
        if self._since is None:
            return
        with self._lock:
            if self._since is not None:
                _log.warning(
                    "worker %s: the database answers again after %.1f s",
                    self.name,
                    time.monotonic() - self._since,
                )
                self._since = None


class LeaseKeeper:
    """Renews the pool's lease every third of it; reports a declared-lost worker."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dagtask-lease", daemon=True)

    def start(self) -> None:
        """Start renewing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        pool = self.pool
        every = max(0.2, pool.lease_seconds / 3)
        while not self._stopped.wait(every if not pool.outage.down else min(every, 1.0)):
            pool.check_code()
            sent = time.monotonic()  # before the statement: the server's time is later
            try:
                alive = pool.store.heartbeat(pool.name)
            except Exception as exc:
                pool.metrics.heartbeat("failed")
                pool.outage.failed("renewing the lease", exc)
                continue
            pool.metrics.heartbeat("ok" if alive else "lost")
            pool.outage.ok()
            if alive:
                pool.renewed(sent)
            else:
                pool.declared_lost()


class Listener:
    """PostgreSQL only: wakes the pool when another process makes subtasks READY.

    It holds one extra connection in autocommit mode, ``LISTEN dagtask_ready``, and reconnects
    after a failure (a database restart) with a back-off. Other databases have no such channel:
    their idle workers poll instead.
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
        if self._thread.is_alive():
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
            except Exception as exc:
                if self._stopped.is_set():
                    return
                self.pool.outage.failed("listening for new work", exc)
                self._stopped.wait(next(delays, RETRY_DELAYS[-1]))
