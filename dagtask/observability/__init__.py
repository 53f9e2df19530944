"""What an operations team watches dagtask with: metrics, health probes, structured logs.

* :mod:`.recorder`: the tiny object a worker pool (and a webhook notifier) reports its events
  to: it does nothing until metrics are switched on, and needs no optional package;
* :mod:`.metrics`: the Prometheus side (``pip install 'dagtask[metrics]'``): one
  ``CollectorRegistry`` per engine, with figures read from the database at scrape time and the
  counters and histograms of this process's own work;
* :mod:`.health`: ``/health`` (the process answers) and ``/ready`` (the database answers in time
  and its schema is the one this dagtask needs), never raising, never hanging;
* :mod:`.http`: those endpoints and ``/metrics`` in ``dagtask serve``'s FastAPI application;
* :mod:`.server`: the same three on a small HTTP server inside ``dagtask worker``;
* :mod:`.logfields`: the ``task_id`` / ``subtask_id`` / ``attempt`` / ``trace_id`` fields of
  JSON log lines.

``docs/observability.md`` lists every metric, endpoint and log field.
"""

from __future__ import annotations

from dagtask.errors import ArgumentError

METRICS_MISSING = "metrics need the metrics extra: pip install 'dagtask[metrics]'"


def metrics_available() -> bool:
    """Whether prometheus_client (the ``metrics`` extra) can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def require_metrics() -> None:
    """Raise an :class:`~dagtask.errors.ArgumentError` saying :data:`METRICS_MISSING` unless
    the metrics extra is installed (the CLI turns it into one line and exit 2)."""
    if not metrics_available():
        raise ArgumentError(METRICS_MISSING)
