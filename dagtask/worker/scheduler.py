"""The scheduler thread every worker process runs: fires due task definitions.

It sleeps until the earliest next fire time of an enabled definition (one index read), at most
:data:`MAX_SLEEP` so that definitions added by other processes are seen, and then runs one
:meth:`dagtask.schedules.Schedules.tick`. Any number of processes may run it at once: the fire
rows make each tick fire once (docs/schedules.md). A failing database makes it log once per
outage and try again; it never stops the workers.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from dagtask.clock import utcnow

if TYPE_CHECKING:
    from dagtask.schedules import Schedules

_log = logging.getLogger("dagtask.schedules")

MAX_SLEEP = 1.0
"""The longest the scheduler sleeps between two looks at the definitions (seconds)."""


class Scheduler:
    """A daemon thread firing the due definitions of ``schedules`` as ``executor``."""

    def __init__(self, schedules: Schedules, executor: str, max_sleep: float = MAX_SLEEP) -> None:
        self.schedules = schedules
        self.executor = executor
        self.max_sleep = max_sleep
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dagtask-scheduler", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        builtin_ready = False
        while not self._stop.is_set():
            try:
                if not builtin_ready:
                    self.schedules.ensure_builtin()
                    builtin_ready = True
                self.schedules.tick(self.executor)
                self.passes += 1
                upcoming = self.schedules.store.next_due()
                if self._failing:
                    _log.warning("scheduler %s: the database answers again", self.executor)
                    self._failing = False
            except Exception as exc:  # an outage: say so once, keep trying
                if not self._failing:
                    _log.warning("scheduler %s: cannot fire schedules: %s", self.executor, exc)
                    self._failing = True
                self._stop.wait(self.max_sleep)
                continue
            wait = self.max_sleep
            if upcoming is not None:
                wait = min(wait, max(0.0, (upcoming - utcnow()) / timedelta(seconds=1)))
            # Wake a hair after the fire time, so the tick is due when we look.
            self._stop.wait(wait + 0.002)
            time.sleep(0)
