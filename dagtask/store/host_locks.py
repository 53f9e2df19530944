"""One host operation per host at a time: the host locks a host task holds while it runs.

``dagtask_task_host`` lists the hosts a task acts on; ``dagtask_host_lock`` has the host id as
its primary key, so of two transactions taking the same host only one commits. A host task takes
its hosts' locks in its submit transaction (and again in a retry or rollback) and releases them
when it stops RUNNING (:func:`dagtask.store.changes.settle_task`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from dagtask.errors import HostBusyError
from dagtask.store import statements as q


def lock_hosts(conn: sa.Connection, task_id: int, hosts: Sequence[int], now: datetime) -> None:
    """Make ``task_id`` the running host operation of ``hosts``, or raise :class:`HostBusyError`.

    The lock table's primary key is the host id, so of two transactions taking the same host only
    one commits; the loser's ``IntegrityError`` is turned into the same error by :func:`busy`.
    """
    if not hosts:
        return
    holders = conn.execute(q.lock_holders, {"hosts": list(hosts)}).all()
    for row in holders:
        if row.task_id != task_id:
            raise busy(row.host_id, row.task_id, row.name, row.status)
    held = {row.host_id for row in holders}
    rows = [{"host_id": h, "task_id": task_id, "since": now} for h in hosts if h not in held]
    if rows:
        conn.execute(q.insert_host_locks, rows)


def busy(host_id: int, task_id: int, name: str | None, status: str | None) -> HostBusyError:
    """The error for a host that task ``task_id`` holds."""
    what = f"task {task_id} {name!r} ({status})" if name else f"task {task_id}"
    return HostBusyError(
        f"error 409: host {host_id} already has a running host operation: {what}; "
        f"only one host operation runs per host at a time. Wait for it to end "
        f"(`dagtask show {task_id}`) or cancel it (`dagtask cancel {task_id}`), then try again",
        host_id=host_id,
        task_id=task_id,
    )


def host_conflict(conn: sa.Connection, hosts: Sequence[int]) -> HostBusyError | None:
    """After a lost race for ``hosts``: the error naming the task that won, if any."""
    rows = conn.execute(q.lock_holders, {"hosts": list(hosts)}).all()
    if not rows:
        return None
    row = rows[0]
    return busy(row.host_id, row.task_id, row.name, row.status)
