"""What a metrics scrape reads: a handful of grouped counts, one per table, in one read
transaction (:func:`read_figures`).

A scrape must stay cheap on a big database (100k subtasks and more), so every figure is one
``GROUP BY`` (or one probe of an index) and the database does the counting: Python only sees one
row per group. The statements are prebuilt like the hot path's (:mod:`.statements`).

* tasks by status: ``ix_dagtask_task_status``; imported (historical) tasks are left out, as
  :meth:`StoreReads.count_tasks` does;
* subtasks by status: one pass over ``dagtask_subtask`` (historical subtasks, the ones with a
  ``recorded_status``, left out);
* the READY queue's head: the lowest READY id (``ix_dagtask_subtask_claim``, what the next claim
  takes) and the time of its latest READY event (``ix_dagtask_event_task``, that task's events);
* workers by state, judged on the database's clock as the sweep judges them
  (:func:`dagtask.store.workers.late_workers`), with the slots of the live ones;
* webhook deliveries by state (``ix_dagtask_delivery_due``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement

from dagtask.clock import utcnow
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.store.db import Database
from dagtask.store.schema import subtask, task, task_event, webhook_delivery, worker

WORKER_STATES = ("alive", "expired", "lost", "stopped")
"""``alive``: ACTIVE with a fresh lease; ``expired``: ACTIVE but its lease ran out (the next
sweep declares it lost); ``lost``: declared LOST (kept until ``dagtask purge
--workers-older-than`` removes it); ``stopped``: stopped cleanly."""
DELIVERY_STATES = ("PENDING", "DELIVERED", "FAILED")


@dataclass(frozen=True)
class Figures:
    """The database's side of a scrape."""

    tasks: dict[str, int] = field(default_factory=dict)
    """Live tasks by status (every status present, 0 when none)."""
    subtasks: dict[str, int] = field(default_factory=dict)
    """Live subtasks by status (every status present)."""
    ready_head_age: float = 0.0
    """Seconds since the READY subtask the next claim takes became READY (0: none is READY)."""
    workers: dict[str, int] = field(default_factory=dict)
    """Workers by :data:`WORKER_STATES`."""
    alive_slots: int = 0
    """The summed concurrency of the alive workers."""
    deliveries: dict[str, int] = field(default_factory=dict)
    """Webhook deliveries by state."""


class lease_expired(FunctionElement[Any]):
    """Whether a worker row's lease ran out, on the database's clock (no bound parameters, so
    it can be grouped by on every server)."""

    type = sa.Boolean()
    inherit_cache = True


@compiles(lease_expired)
def _expired_default(_element: lease_expired, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "(heartbeat_at < CURRENT_TIMESTAMP)"  # pragma: no cover - every dialect has its own


@compiles(lease_expired, "postgresql")
def _expired_pg(_element: lease_expired, _compiler: SQLCompiler, **_kw: Any) -> str:
    return (
        "(dagtask_worker.heartbeat_at + dagtask_worker.lease_seconds * interval '1 second'"
        " < (now() AT TIME ZONE 'UTC'))"
    )


@compiles(lease_expired, "mysql")
@compiles(lease_expired, "mariadb")
def _expired_mysql(_element: lease_expired, _compiler: SQLCompiler, **_kw: Any) -> str:
    return (
        "(TIMESTAMPADD(SECOND, dagtask_worker.lease_seconds, dagtask_worker.heartbeat_at)"
        " < UTC_TIMESTAMP(6))"
    )


@compiles(lease_expired, "sqlite")
def _expired_sqlite(_element: lease_expired, _compiler: SQLCompiler, **_kw: Any) -> str:
    return (
        "(julianday(dagtask_worker.heartbeat_at) + dagtask_worker.lease_seconds / 86400.0"
        " < julianday('now'))"
    )


tasks_by_status = (
    sa.select(task.c.status, sa.func.count())
    .where(task.c.historical == sa.false())
    .group_by(task.c.status)
)
subtasks_by_status = (
    sa.select(subtask.c.status, sa.func.count())
    .where(subtask.c.recorded_status.is_(None))
    .group_by(subtask.c.status)
)
_head = (
    sa.select(subtask.c.id, subtask.c.task_id)
    .where(subtask.c.status == SubtaskStatus.READY.value)
    .order_by(subtask.c.id)
    .limit(1)
    .subquery("head")
)
ready_head = sa.select(
    sa.select(sa.func.max(task_event.c.time))
    .where(
        task_event.c.task_id == _head.c.task_id,
        task_event.c.subtask_id == _head.c.id,
        task_event.c.new_status == SubtaskStatus.READY.value,
    )
    .scalar_subquery()
    .label("since")
).select_from(_head)
"""When the READY subtask at the head of the claim order became READY (no row: none is)."""
_expired = lease_expired()
workers_by_state = sa.select(
    worker.c.status, _expired, sa.func.count(), sa.func.sum(worker.c.concurrency)
).group_by(worker.c.status, _expired)
deliveries_by_state = sa.select(webhook_delivery.c.state, sa.func.count()).group_by(
    webhook_delivery.c.state
)


def _counts(rows: Any, keys: tuple[str, ...]) -> dict[str, int]:
    found = dict.fromkeys(keys, 0)
    for key, count in rows:
        found[str(key)] = found.get(str(key), 0) + int(count or 0)
    return found


def _worker_state(status: str, expired: Any) -> str:
    if status == "ACTIVE":
        return "expired" if expired else "alive"
    return "lost" if status == "LOST" else "stopped"


def read_figures(db: Database, now: datetime | None = None) -> Figures:
    """Every figure of a scrape, from one read transaction (``now``: naive UTC, for the READY
    head's age; default the clock)."""
    with db.read() as conn:
        tasks = _counts(conn.execute(tasks_by_status), tuple(s.value for s in TaskStatus))
        subtasks = _counts(conn.execute(subtasks_by_status), tuple(s.value for s in SubtaskStatus))
        since = conn.execute(ready_head).scalar() if subtasks["READY"] else None
        workers = dict.fromkeys(WORKER_STATES, 0)
        slots = 0
        for status, expired, count, concurrency in conn.execute(workers_by_state):
            state = _worker_state(str(status), expired)
            workers[state] += int(count)
            if state == "alive":
                slots += int(concurrency or 0)
        deliveries = _counts(conn.execute(deliveries_by_state), DELIVERY_STATES)
    age = 0.0
    if since is not None:
        age = max(0.0, ((now or utcnow()) - since).total_seconds())
    return Figures(
        tasks=tasks,
        subtasks=subtasks,
        ready_head_age=age,
        workers=workers,
        alive_slots=slots,
        deliveries=deliveries,
    )
