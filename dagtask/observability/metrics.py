"""Prometheus metrics of one engine (``pip install 'dagtask[metrics]'``).

:func:`for_engine` gives an engine its :class:`EngineMetrics`: a ``CollectorRegistry`` of its
own (never prometheus_client's global one, so two engines of one process do not clash) holding

* :class:`DatabaseCollector`: figures read from the database at scrape time (tasks and subtasks
  by status, the READY queue, workers by liveness, webhook deliveries by state), a few grouped
  queries in one read transaction (:mod:`dagtask.store.metrics_reads`), bounded by
  :data:`SCRAPE_TIMEOUT_SECONDS`: a database that hangs makes ``dagtask_database_up`` 0, it
  never makes the scrape hang;
* :class:`ProcessMetrics`: counters and histograms of what this process's worker pools and
  webhook notifier did, fed by their :class:`~dagtask.observability.recorder.Recorder`;
* prometheus_client's process collector (CPU, memory, open files of this process).

Label values are bounded: statuses, handlers and template/subtask names (bounded by the
templates; past :data:`MAX_SERIES` distinct ones they are counted under ``other``), never a
task or subtask id. ``docs/observability.md`` lists every metric.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from dagtask.observability import recorder
from dagtask.observability.health import Bounded
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.store import metrics_reads
from dagtask.store.db import Database

if TYPE_CHECKING:
    from dagtask.engine import Engine
    from dagtask.store.sql import Claim

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The content type of :meth:`EngineMetrics.exposition` (Prometheus' text format)."""
SCRAPE_TIMEOUT_SECONDS = 5.0
"""How long a scrape waits for the database's figures (Prometheus' default scrape timeout is
10 s); past it, ``dagtask_database_up`` is 0 and the process's own figures are still served."""
MAX_SERIES = 2000
"""Distinct label combinations kept per metric of the process; more are counted as ``other``."""
OTHER = "other"

DB_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ATTEMPT_SECONDS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class ProcessMetrics:
    """The counters and histograms of this process's work (a :class:`recorder.Sink`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.claim_seconds = Histogram(
            "dagtask_claim_duration_seconds",
            "Time of the claim transactions of this process's worker pools.",
            buckets=DB_SECONDS,
            registry=registry,
        )
        self.finish_seconds = Histogram(
            "dagtask_finish_duration_seconds",
            "Time of the finish transactions (record ended attempts, promote, claim successors).",
            buckets=DB_SECONDS,
            registry=registry,
        )
        self.claimed_total = Counter(
            "dagtask_subtasks_claimed",
            "Subtasks claimed by this process (by claims and by finishes that took successors).",
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            "dagtask_attempt_duration_seconds",
            "Duration of attempts run in this process, from the claim to the end (handler "
            "returned, failed or timed out).",
            ["template", "subtask"],
            buckets=ATTEMPT_SECONDS,
            registry=registry,
        )
        self.attempts_ended = Counter(
            "dagtask_attempts_ended",
            "Attempts ended in this process, by result and handler.",
            ["status", "handler"],
            registry=registry,
        )
        self.timeouts = Counter(
            "dagtask_attempt_timeouts",
            "Attempts the watchdog of this process ended at their timeout, by handler.",
            ["handler"],
            registry=registry,
        )
        self.heartbeats = Counter(
            "dagtask_worker_heartbeats",
            "Lease renewals of this process's workers: ok, failed (no answer), lost (the worker "
            "had been declared lost).",
            ["outcome"],
            registry=registry,
        )
        self.recovered = Counter(
            "dagtask_lost_workers_recovered",
            "Workers this process found lost (lease run out) and recovered the subtasks of.",
            registry=registry,
        )
        self.webhooks = Counter(
            "dagtask_webhook_delivery_attempts",
            "Webhook POSTs of this process: delivered, retrying (failed, tried again later), "
            "failed (the last attempt failed), dropped (the task was purged).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("ok", "failed", "lost"):
            self.heartbeats.labels(outcome)
        for outcome in ("delivered", "retrying", "failed", "dropped"):
            self.webhooks.labels(outcome)
        self._lock = threading.Lock()
        self._durations: dict[tuple[str, str], Histogram] = {}
        self._ends: dict[tuple[bool, str], Counter] = {}
        self._timeouts: dict[str, Counter] = {}

    # The children are looked up in plain dicts first: labels() takes a lock and builds a key.

    def _duration(self, template: str, subtask: str) -> Histogram:
        key = (template, subtask)
        child = self._durations.get(key)
        if child is None:
            with self._lock:
                if len(self._durations) >= MAX_SERIES:
                    key = (OTHER, OTHER)
                child = self._durations.get(key) or self.attempt_seconds.labels(*key)
                self._durations[key] = child
        return child

    def _end(self, ok: bool, handler: str) -> Counter:
        key = (ok, handler)
        child = self._ends.get(key)
        if child is None:
            with self._lock:
                if len(self._ends) >= MAX_SERIES:
                    key = (ok, OTHER)
                status = SubtaskStatus.SUCCESSFUL if ok else SubtaskStatus.FAILED
                child = self._ends.get(key) or self.attempts_ended.labels(status.value, key[1])
                self._ends[key] = child
        return child

    def claimed(self, seconds: float, count: int) -> None:
        """A claim transaction."""
        self.claim_seconds.observe(seconds)
        if count:
            self.claimed_total.inc(count)

    def finished(self, seconds: float, claimed: int) -> None:
        """A finish transaction."""
        self.finish_seconds.observe(seconds)
        if claimed:
            self.claimed_total.inc(claimed)

    def attempt_ended(self, template: str, claim: Claim, ok: bool, seconds: float) -> None:
        """An attempt ended."""
        self._duration(template, claim.name).observe(seconds)
        self._end(ok, claim.class_name).inc()

    def timed_out(self, claim: Claim) -> None:
        """An attempt timed out."""
        child = self._timeouts.get(claim.class_name)
        if child is None:
            with self._lock:
                handler = claim.class_name if len(self._timeouts) < MAX_SERIES else OTHER
                child = self._timeouts[handler] = self.timeouts.labels(handler)
        child.inc()

    def heartbeat(self, outcome: str) -> None:
        """A lease renewal."""
        self.heartbeats.labels(outcome).inc()

    def workers_recovered(self, count: int) -> None:
        """Lost workers recovered."""
        self.recovered.inc(count)

    def webhook_attempt(self, outcome: str) -> None:
        """A webhook POST."""
        self.webhooks.labels(outcome).inc()


class DatabaseCollector:
    """The database's figures, read at scrape time (a custom prometheus_client collector)."""

    def __init__(self, db: Database, timeout: float = SCRAPE_TIMEOUT_SECONDS) -> None:
        self.db = db
        self._read = Bounded(lambda: metrics_reads.read_figures(db), timeout, "dagtask-scrape")

    def describe(self) -> Iterable[Metric]:
        """The metric families (without reading anything), for the registry's name check."""
        return self._families(None, 0.0, describe=True)

    def collect(self) -> Iterable[Metric]:
        """The figures now; ``dagtask_database_up`` 0 (and no other figure) when the database
        fails or does not answer in time."""
        started = time.perf_counter()
        try:
            figures: metrics_reads.Figures | None = self._read()
        except Exception:
            figures = None
        return self._families(figures, time.perf_counter() - started)

    def _families(
        self, figures: metrics_reads.Figures | None, seconds: float, describe: bool = False
    ) -> list[Metric]:
        up = GaugeMetricFamily(
            "dagtask_database_up",
            "1 if the database answered this scrape's reads in time, else 0.",
            value=0.0 if figures is None else 1.0,
        )
        took = GaugeMetricFamily(
            "dagtask_database_scrape_duration_seconds",
            "How long this scrape's reads of the database took.",
            value=seconds,
        )
        tasks = GaugeMetricFamily(
            "dagtask_tasks",
            "Tasks by status (imported historical ones left out).",
            labels=["status"],
        )
        subtasks = GaugeMetricFamily(
            "dagtask_subtasks",
            "Subtasks by status (imported historical ones left out).",
            labels=["status"],
        )
        depth = GaugeMetricFamily(
            "dagtask_ready_queue_depth", "READY subtasks: waiting for a worker to claim them."
        )
        age = GaugeMetricFamily(
            "dagtask_ready_queue_oldest_age_seconds",
            "Seconds since the READY subtask claimed next (the lowest id) became READY; 0 "
            "when none is READY.",
        )
        workers = GaugeMetricFamily(
            "dagtask_workers",
            "Workers by state: alive, expired (lease run out, not yet declared lost), lost, "
            "stopped.",
            labels=["state"],
        )
        slots = GaugeMetricFamily(
            "dagtask_worker_slots", "Subtasks the alive workers may run at a time (summed)."
        )
        deliveries = GaugeMetricFamily(
            "dagtask_webhook_deliveries", "Webhook deliveries by state.", labels=["state"]
        )
        families: list[Metric] = [up, took]
        figured: list[Metric] = [tasks, subtasks, depth, age, workers, slots, deliveries]
        if figures is None:
            return [*families, *figured] if describe else families
        for status in TaskStatus:
            tasks.add_metric([status.value], figures.tasks.get(status.value, 0))
        for sub_status in SubtaskStatus:
            subtasks.add_metric([sub_status.value], figures.subtasks.get(sub_status.value, 0))
        depth.add_metric([], figures.subtasks.get(SubtaskStatus.READY.value, 0))
        age.add_metric([], figures.ready_head_age)
        for state in metrics_reads.WORKER_STATES:
            workers.add_metric([state], figures.workers.get(state, 0))
        slots.add_metric([], figures.alive_slots)
        for delivery_state in metrics_reads.DELIVERY_STATES:
            deliveries.add_metric([delivery_state], figures.deliveries.get(delivery_state, 0))
        return [*families, *figured]


class EngineMetrics:
    """One engine's registry: the database's figures and this process's (see the module)."""

    def __init__(self, engine: Engine, *, scrape_timeout: float = SCRAPE_TIMEOUT_SECONDS) -> None:
        self.registry = CollectorRegistry()
        self.database = DatabaseCollector(engine.database, scrape_timeout)
        self.registry.register(self.database)
        self.process = ProcessMetrics(self.registry)
        ProcessCollector(registry=self.registry)
        recorder.for_store(engine.store).sink = self.process

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


_by_engine: weakref.WeakKeyDictionary[Engine, EngineMetrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def for_engine(engine: Engine) -> EngineMetrics:
    """The metrics of ``engine``, switched on at the first call (later calls return the same
    object). From then on its worker pools and webhook notifier feed them."""
    with _lock:
        found = _by_engine.get(engine)
        if found is None:
            found = _by_engine[engine] = EngineMetrics(engine)
        return found
