"""Retention: purge finished tasks (with their subtasks, links, events and logs) and old workers.

What goes: a task SUCCESSFUL or FAILED whose ``finish_time`` is older than the cutoff, and that
has no subtask READY, RUNNING or CANCELING. FAILED counts as finished, as in OCP, which purges by
finish time: a FAILED task waits for an operator, and one left alone for the whole retention
period is abandoned (retrying it moves it back to RUNNING, so it is no longer a candidate).
Imported (historical) tasks are kept: they are records an operator brought in on purpose, and
``dagtask import`` of a purge's export must not be undone by the next purge.

How: in batches, each its own short transaction, so that workers (on SQLite: every writer) wait
at most one batch. A batch picks up to ``batch`` candidate ids with a read, walking the primary
key from where the previous batch stopped (old tasks have the low ids; the walk is one pass over
the table, so no index on ``finish_time`` is needed), and reads their exports if asked. Its write
transaction then locks those task rows (in id order, as every transaction does) and checks them
again with a new statement: a task an operator retried or rolled back between the read and the
lock is RUNNING and stays, and one whose history grew since its export was read stays too (it is
picked up by the next purge). Operator actions lock the task row first, so they either commit
before the re-check or wait for the batch and then find no task. Child rows go first, by id
lists: logs, events, links, the task's host list, subtasks, then the tasks.

An export (``export_to``) is written for each batch inside its transaction, before the commit
(flushed and synced): a task is never deleted without its record on disk. If the batch fails
before its commit, the file is cut back to where the batch began.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from dagtask.clock import utcnow
from dagtask.errors import ArgumentError
from dagtask.history import exchange
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.store import history
from dagtask.store.db import Database, retrying
from dagtask.store.schema import (
    host_lock,
    subtask,
    subtask_edge,
    subtask_log,
    task,
    task_event,
    task_host,
    worker,
)

FINISHED = (TaskStatus.SUCCESSFUL.value, TaskStatus.FAILED.value)
ACTIVE = (SubtaskStatus.READY.value, SubtaskStatus.RUNNING.value, SubtaskStatus.CANCELING.value)
HELD = (SubtaskStatus.RUNNING.value, SubtaskStatus.CANCELING.value)
GONE_WORKERS = ("STOPPED", "LOST")
DEFAULT_BATCH = 200
MAX_BATCH = 10_000
CHUNK = 500
"""Ids per IN list: far below every database's limit on bound parameters."""
MAX_BATCH_SUBTASKS = 2_000
"""A batch takes fewer tasks when they are large, so that its transaction stays short."""
WORKER_AGE = timedelta(days=7)


@dataclass(frozen=True)
class PurgeProgress:
    """One batch of a purge, as it committed (or, on a dry run, was counted)."""

    batch: int
    """1 for the first batch."""
    tasks: int
    subtasks: int
    events: int
    logs: int
    links: int
    seconds: float
    """How long the batch's write transaction took (on a dry run: its counting)."""
    total_tasks: int
    """Tasks purged (or counted) so far, this batch included."""


@dataclass
class PurgeReport:
    """What a purge removed (or, on a dry run, would remove): rows per table."""

    cutoff: datetime
    """Tasks that finished before this (naive UTC) were purged."""
    dry_run: bool
    tasks: int = 0
    subtasks: int = 0
    events: int = 0
    logs: int = 0
    """Log rows (chunks), not lines."""
    links: int = 0
    hosts: int = 0
    """Rows of the host lists of host operations."""
    batches: int = 0
    kept: int = 0
    """Candidates that changed between a batch's read and its lock (retried, rolled back) and
    were left alone."""
    exported: Path | None = None
    """The file the purged tasks were written to (on a dry run: would be); None: no export, or
    nothing to export."""
    seconds: float = 0.0
    """The whole purge."""
    longest_batch: float = 0.0
    """The longest batch transaction, in seconds: how long a worker may have waited."""
    workers: int | None = None
    """Worker rows removed, when the caller purged workers too."""
    batch_seconds: list[float] = field(default_factory=list)

    def add(self, progress: PurgeProgress) -> None:
        """Count one batch in."""
        self.batches += 1
        self.tasks += progress.tasks
        self.subtasks += progress.subtasks
        self.events += progress.events
        self.logs += progress.logs
        self.links += progress.links
        self.batch_seconds.append(progress.seconds)
        self.longest_batch = max(self.longest_batch, progress.seconds)


def cutoff_of(older_than: timedelta, now: datetime | None = None) -> datetime:
    """The finish time before which tasks are purged (naive UTC); ArgumentError for a
    negative age."""
    if older_than < timedelta(0):
        raise ArgumentError(f"the age must not be negative, got {older_than}; e.g. 30 days")
    when = now or utcnow()
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when - older_than


def _eligible(cutoff: datetime, *, walk: bool = False) -> sa.ColumnElement[bool]:
    """Whether a task may be purged. ``walk``: in a form no index on the status serves, for
    SQLite, whose planner would otherwise read every finished task after the cursor through the
    status index and sort them, in every batch; walking the primary key stops at the batch's
    last task. (PostgreSQL and MariaDB walk the primary key by themselves, and the opaque form
    would only spoil their estimates.)"""
    busy = sa.exists().where(subtask.c.task_id == task.c.id, subtask.c.status.in_(ACTIVE))
    status: sa.ColumnElement[str] = sa.func.coalesce(task.c.status, "") if walk else task.c.status
    return sa.and_(
        status.in_(FINISHED),
        task.c.finish_time.is_not(None),
        task.c.finish_time < cutoff,
        task.c.historical == sa.false(),
        ~busy,
    )


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start : start + CHUNK])


def _candidates(db: Database, cutoff: datetime, after: int, batch: int) -> list[tuple[int, int]]:
    """Up to ``batch`` purgeable tasks after id ``after``, with their subtask counts, cut to
    :data:`MAX_BATCH_SUBTASKS` subtasks (at least one task)."""
    query = (
        sa.select(task.c.id)
        .where(task.c.id > after, _eligible(cutoff, walk=db.is_sqlite))
        .order_by(task.c.id)
        .limit(batch)
    )
    with db.read() as conn:
        ids = list(conn.execute(query).scalars())
        sizes: dict[int, int] = {}
        for chunk in _chunks(ids):
            counted = conn.execute(
                sa.select(subtask.c.task_id, sa.func.count())
                .where(subtask.c.task_id.in_(chunk))
                .group_by(subtask.c.task_id)
            )
            sizes.update((int(task_id), int(size)) for task_id, size in counted)
    picked: list[tuple[int, int]] = []
    total = 0
    for task_id in ids:
        size = sizes.get(task_id, 0)
        if picked and total + size > MAX_BATCH_SUBTASKS:
            break
        picked.append((task_id, size))
        total += size
    return picked


def _count(conn: sa.Connection, table: sa.Table, column: sa.Column[Any], ids: list[int]) -> int:
    return sum(
        int(
            conn.execute(
                sa.select(sa.func.count()).select_from(table).where(column.in_(chunk))
            ).scalar_one()
        )
        for chunk in _chunks(ids)
    )


def _delete(conn: sa.Connection, table: sa.Table, column: sa.Column[Any], ids: list[int]) -> int:
    return sum(
        conn.execute(table.delete().where(column.in_(chunk))).rowcount for chunk in _chunks(ids)
    )


@dataclass
class _Rows:
    tasks: int = 0
    subtasks: int = 0
    events: int = 0
    logs: int = 0
    links: int = 0
    hosts: int = 0


def _remove(conn: sa.Connection, task_ids: list[int], *, count_only: bool) -> _Rows:
    """Delete (or count) every row of ``task_ids``, child tables first."""
    act = _count if count_only else _delete
    sub_ids: list[int] = []
    for chunk in _chunks(task_ids):
        sub_ids.extend(
            conn.execute(sa.select(subtask.c.id).where(subtask.c.task_id.in_(chunk))).scalars()
        )
    rows = _Rows()
    rows.logs = act(conn, subtask_log, subtask_log.c.subtask_id, sub_ids)
    rows.events = act(conn, task_event, task_event.c.task_id, task_ids)
    rows.links = act(conn, subtask_edge, subtask_edge.c.task_id, task_ids)
    rows.hosts = act(conn, task_host, task_host.c.task_id, task_ids)
    if not count_only:
        # A finished task holds no host lock; one left by a fault would block its hosts forever
        # once the task is gone.
        _delete(conn, host_lock, host_lock.c.task_id, task_ids)
    rows.subtasks = act(conn, subtask, subtask.c.task_id, task_ids)
    rows.tasks = act(conn, task, task.c.id, task_ids)
    return rows


def _last_event(conn: sa.Connection, cutoff: datetime, ids: list[int]) -> dict[int, int]:
    """The ids (of ``ids``) still purgeable, each with its newest event id (0: none)."""
    newest = (
        sa.select(sa.func.coalesce(sa.func.max(task_event.c.id), 0))
        .where(task_event.c.task_id == task.c.id)
        .scalar_subquery()
    )
    still: dict[int, int] = {}
    for chunk in _chunks(ids):
        found = conn.execute(
            sa.select(task.c.id, newest).where(task.c.id.in_(chunk), _eligible(cutoff))
        )
        still.update((int(task_id), int(last)) for task_id, last in found)
    return still


def check_export_path(path: Path) -> None:
    """Refuse an export file that exists (with something in it) or cannot be created."""
    if path.is_dir():
        raise ArgumentError(f"{str(path)!r} is a folder; give a file for the export")
    if path.exists() and path.stat().st_size > 0:
        raise ArgumentError(
            f"{str(path)!r} already exists; give a new file for the export "
            "(a purge never overwrites or appends to one)"
        )
    if not path.resolve().parent.is_dir():
        raise ArgumentError(f"cannot write {str(path)!r}: its folder does not exist")


class _Export:
    """The purge's export file, opened when the first batch has something to write."""

    def __init__(self, path: Path) -> None:
        check_export_path(path)
        self.path = path
        self.file: IO[str] | None = None
        self.written: set[int] = set()

    @contextmanager
    def batch(self) -> Iterator[Callable[[dict[int, list[str]]], None]]:
        """A writer for one batch; anything written is cut off again if the block fails."""
        start = self.file.tell() if self.file is not None else 0
        done = False

        def write(lines: dict[int, list[str]]) -> None:
            nonlocal done
            fresh = {k: v for k, v in lines.items() if k not in self.written}
            if fresh:
                if self.file is None:
                    self.file = self.path.open("w", encoding="utf-8")
                for task_lines in fresh.values():
                    self.file.write("".join(line + "\n" for line in task_lines))
                self.file.flush()
                os.fsync(self.file.fileno())
            self.written.update(fresh)
            done = True

        try:
            yield write
        except BaseException:
            # Cut back only what the commit never covered: after a failed commit the tasks
            # may be gone, and the file is then their only copy.
            if not done and self.file is not None:
                self.file.seek(start)
                self.file.truncate()
            raise

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def purge_tasks(
    db: Database,
    *,
    older_than: timedelta,
    now: datetime | None = None,
    batch: int = DEFAULT_BATCH,
    dry_run: bool = False,
    export_to: Path | None = None,
    on_batch: Callable[[PurgeProgress], None] | None = None,
) -> PurgeReport:
    """Delete the tasks that finished more than ``older_than`` before ``now`` (default: now),
    with their subtasks, links, events and logs, ``batch`` tasks per transaction.

    ``dry_run``: count what would go and change nothing (no file is written either).
    ``export_to``: first write each purged task's export (JSON lines, as ``dagtask export``)
    into that new file, so that ``dagtask import`` can bring them back. ``on_batch`` is called
    after each batch. See the module's docstring for what is purged and how.
    """
    if not 1 <= batch <= MAX_BATCH:
        raise ArgumentError(f"the batch size must be between 1 and {MAX_BATCH}, got {batch}")
    cutoff = cutoff_of(older_than, now)
    report = PurgeReport(cutoff=cutoff, dry_run=dry_run)
    if export_to is not None and dry_run:
        check_export_path(export_to)
    export = _Export(export_to) if export_to is not None and not dry_run else None
    began = time.perf_counter()
    after = 0
    try:
        while picked := _candidates(db, cutoff, after, batch):
            ids = [task_id for task_id, _size in picked]
            after = ids[-1]
            if dry_run:
                clock = time.perf_counter()
                with db.read() as conn:
                    rows = _remove(conn, ids, count_only=True)
                seconds = time.perf_counter() - clock
            else:
                rows, seconds, kept = _purge_batch(db, cutoff, ids, export)
                report.kept += kept
                if not rows.tasks:
                    continue
            report.hosts += rows.hosts
            progress = PurgeProgress(
                batch=report.batches + 1,
                tasks=rows.tasks,
                subtasks=rows.subtasks,
                events=rows.events,
                logs=rows.logs,
                links=rows.links,
                seconds=seconds,
                total_tasks=report.tasks + rows.tasks,
            )
            report.add(progress)
            if on_batch is not None:
                on_batch(progress)
    finally:
        if export is not None:
            export.close()
    if export_to is not None and (dry_run or (export is not None and export.written)):
        report.exported = export_to
    report.seconds = time.perf_counter() - began
    return report


def _purge_batch(
    db: Database, cutoff: datetime, ids: list[int], export: _Export | None
) -> tuple[_Rows, float, int]:
    """One batch: (rows removed, seconds its transaction took, candidates kept)."""
    lines: dict[int, list[str]] = {}
    fences: dict[int, int] = {}
    if export is not None:
        # Read (and render) outside the write transaction: it is the slow part.
        for task_id in ids:
            record = history.read_record(db, task_id)
            lines[task_id] = list(exchange.export_lines(record))
            fences[task_id] = max((e.id for e in record.events), default=0)

    def attempt() -> tuple[_Rows, float, int]:
        clock = time.perf_counter()
        if export is None:
            rows, kept = _locked_delete(db, cutoff, ids, fences, None)
        else:
            with export.batch() as write:
                rows, kept = _locked_delete(
                    db, cutoff, ids, fences, lambda keep: write({i: lines[i] for i in keep})
                )
        return rows, time.perf_counter() - clock, kept

    return retrying(attempt)


def _locked_delete(
    db: Database,
    cutoff: datetime,
    ids: list[int],
    fences: dict[int, int],
    write: Callable[[list[int]], None] | None,
) -> tuple[_Rows, int]:
    """Lock ``ids``, keep those still purgeable (and, with ``write``, unchanged since their
    export was read: newest event id as in ``fences``), delete them, and hand them to ``write``
    before the commit. Returns the rows removed and how many of ``ids`` were kept."""
    with db.begin() as conn:
        locked: list[int] = []
        for chunk in _chunks(ids):  # ids ascend: the locks are taken in id order
            locked.extend(
                conn.execute(
                    sa.select(task.c.id)
                    .where(task.c.id.in_(chunk))
                    .order_by(task.c.id)
                    .with_for_update()
                ).scalars()
            )
        # A new statement, after the locks: it sees what any action committed meanwhile.
        still = _last_event(conn, cutoff, locked) if locked else {}
        keep = sorted(
            task_id
            for task_id, newest in still.items()
            if write is None or fences.get(task_id) == newest
        )
        rows = _remove(conn, keep, count_only=False) if keep else _Rows()
        if write is not None and keep:
            write(keep)
    return rows, len(ids) - len(keep)


def purge_workers(
    db: Database,
    *,
    older_than: timedelta = WORKER_AGE,
    now: datetime | None = None,
    dry_run: bool = False,
) -> int:
    """Remove STOPPED and LOST workers last seen (heartbeat or stop) more than ``older_than``
    ago; return how many (``dry_run``: how many would go, removing none). ACTIVE workers stay,
    and so does a worker that still holds a RUNNING or CANCELING subtask (its recovery needs
    the row)."""
    cutoff = cutoff_of(older_than, now)
    holds = sa.exists().where(subtask.c.executor == worker.c.name, subtask.c.status.in_(HELD))
    gone = sa.and_(
        worker.c.status.in_(GONE_WORKERS),
        sa.func.coalesce(worker.c.stopped_at, worker.c.heartbeat_at) < cutoff,
        worker.c.heartbeat_at < cutoff,
        ~holds,
    )
    if dry_run:
        with db.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(worker).where(gone)
                ).scalar_one()
            )

    def attempt() -> int:
        with db.begin() as conn:
            return int(conn.execute(worker.delete().where(gone)).rowcount)

    return retrying(attempt)
