"""Workers: claim READY subtasks, run their handlers under a watchdog, record the results.

A :class:`WorkerPool` is one worker process's (or one embedded engine's) share of the work; see
:mod:`dagtask.worker.pool` for who does what, and ``docs/guarantees.md`` for what a user can rely
on when a worker, a handler or the database fails.
"""

from dagtask.worker.attempt import Attempt
from dagtask.worker.pool import DEFAULT_LEASE_SECONDS, WorkerPool, default_worker_name

__all__ = ["DEFAULT_LEASE_SECONDS", "Attempt", "WorkerPool", "default_worker_name"]
