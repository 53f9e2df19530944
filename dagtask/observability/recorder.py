"""The recorder a worker pool reports its events to: one call per event, nothing when off.

Every :class:`~dagtask.store.sql.Store` has one :class:`Recorder` (:func:`for_store`): the pools
and the webhook notifier of an engine share it. Until metrics are switched on for the engine
(:func:`dagtask.observability.metrics.for_engine`, which attaches a :class:`Sink`), each method
is an attribute check and a return, so the hot path (thousands of claims and finishes a second)
pays nothing measurable and no optional package is imported. A sink attached later is seen by
pools started earlier too.

The recorder adds no SQL: the template name an attempt is labelled with is the attempt's own
(``Attempt.template``), from what a pool reads anyway, once per task, with the task's hooks
(:meth:`dagtask.hooks.PoolHooks.load`).
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dagtask.store.sql import Claim, Store
    from dagtask.worker.attempt import Attempt

UNKNOWN_TEMPLATE = "unknown"
"""The template label of an attempt whose task's template this process has not read."""


class Sink(Protocol):
    """Where a :class:`Recorder` sends events once metrics are on (:mod:`.metrics`)."""

    def claimed(self, seconds: float, count: int) -> None:
        """A claim transaction took ``seconds`` and won ``count`` subtasks."""

    def finished(self, seconds: float, claimed: int) -> None:
        """A finish transaction took ``seconds`` (and claimed ``claimed`` successors)."""

    def attempt_ended(self, template: str, claim: Claim, ok: bool, seconds: float) -> None:
        """An attempt of a task of ``template`` ended after ``seconds``."""

    def timed_out(self, claim: Claim) -> None:
        """The watchdog ended an attempt at its timeout."""

    def heartbeat(self, outcome: str) -> None:
        """A lease renewal: ``ok``, ``failed`` (no answer) or ``lost`` (declared lost)."""

    def workers_recovered(self, count: int) -> None:
        """A sweep of this process declared ``count`` workers lost and recovered them."""

    def webhook_attempt(self, outcome: str) -> None:
        """A webhook POST: ``delivered``, ``retrying``, ``failed`` or ``dropped``."""


class Recorder:
    """One store's event recorder (see the module docstring)."""

    def __init__(self) -> None:
        self.sink: Sink | None = None

    # ---- the pool's events ---------------------------------------------------------------------

    def claimed(self, started: float, count: int) -> None:
        """A claim transaction that began at ``started`` (``time.perf_counter()``) won
        ``count`` subtasks."""
        sink = self.sink
        if sink is not None:
            sink.claimed(time.perf_counter() - started, count)

    def finished(self, started: float, claimed: int) -> None:
        """A finish transaction that began at ``started`` (``time.perf_counter()``) committed."""
        sink = self.sink
        if sink is not None:
            sink.finished(time.perf_counter() - started, claimed)

    def attempt_ended(self, attempt: Attempt, ok: bool) -> None:
        """The end of ``attempt`` was decided (its handler returned, or the watchdog ended it):
        it took from its claim until now, whenever the database records it."""
        sink = self.sink
        if sink is not None:
            template = attempt.template or UNKNOWN_TEMPLATE
            sink.attempt_ended(template, attempt.claim, ok, time.monotonic() - attempt.started)

    def timed_out(self, claim: Claim) -> None:
        """The watchdog ended the attempt of ``claim`` at its timeout."""
        sink = self.sink
        if sink is not None:
            sink.timed_out(claim)

    def heartbeat(self, outcome: str) -> None:
        """A lease renewal ended with ``outcome`` (``ok``, ``failed``, ``lost``)."""
        sink = self.sink
        if sink is not None:
            sink.heartbeat(outcome)

    def workers_recovered(self, count: int) -> None:
        """This process recovered ``count`` lost workers."""
        sink = self.sink
        if sink is not None:
            sink.workers_recovered(count)

    def webhook_attempt(self, outcome: str) -> None:
        """A webhook POST ended with ``outcome``."""
        sink = self.sink
        if sink is not None:
            sink.webhook_attempt(outcome)


_recorders: weakref.WeakKeyDictionary[Store, Recorder] = weakref.WeakKeyDictionary()
_recorders_lock = threading.Lock()


def for_store(store: Store) -> Recorder:
    """The recorder of ``store`` (made on first use)."""
    with _recorders_lock:
        found = _recorders.get(store)
        if found is None:
            found = _recorders[store] = Recorder()
        return found
