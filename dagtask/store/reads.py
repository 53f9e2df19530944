"""Reads of the task store: tasks, pages of tasks, logs, history events, stored templates.

Rows are mapped to the domain models of :mod:`dagtask.models` here (and in :mod:`.hosts` for the
inventory), nowhere else.

A task and a page of tasks are each read from one snapshot (:meth:`StoreReads._snapshot`): their
several SELECTs run in one REPEATABLE READ transaction on PostgreSQL and MariaDB/MySQL (whose
engine otherwise reads at READ COMMITTED, a fresh snapshot per statement), so a worker committing
between them can never show a RUNNING task whose subtasks have all ended. SQLite's deferred read
transaction in WAL mode already sees one snapshot from its first read on.

Logs are returned with the secret values of the subtask's contexts masked
(:mod:`dagtask.secrets`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from dagtask import states
from dagtask.context import TaskContext
from dagtask.errors import TaskNotFoundError
from dagtask.models import SubtaskInfo, TaskEvent, TaskInfo, TaskPage
from dagtask.secrets import mask_values, secret_values
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from dagtask.store import statements as q
from dagtask.store.db import Database
from dagtask.store.schema import subtask, subtask_edge, subtask_log, task, task_event, task_host
from dagtask.store.schema import task_template as template_table

S = SubtaskStatus


class StoreReads:
    """The read side of :class:`dagtask.store.sql.Store`."""

    db: Database

    def any_ready(self, task_id: int | None = None) -> bool:
        """Whether any subtask (of ``task_id``, if given) is READY: the cheap read an idle worker
        makes instead of a claim, so that idling writes nothing."""
        with self.db.read() as conn:
            if task_id is None:
                return conn.execute(q.any_ready).first() is not None
            return conn.execute(q.any_ready_of_task, {"task_id": task_id}).first() is not None

    def task_status(self, task_id: int) -> TaskStatus:
        """The task's status (raises TaskNotFoundError)."""
        with self.db.read() as conn:
            value = conn.execute(q.task_status, {"task_id": task_id}).scalar()
        if value is None:
            raise _not_found(task_id)
        return TaskStatus(value)

    @contextmanager
    def _snapshot(self) -> Iterator[sa.Connection]:
        """A read-only transaction whose every SELECT sees the same committed state."""
        if self.db.is_sqlite:
            with self.db.read() as conn:
                yield conn
            return
        options: dict[str, Any] = {"isolation_level": "REPEATABLE READ"}
        if self.db.dialect == "postgresql":
            options["postgresql_readonly"] = True
        # Per connection: the pool resets the isolation level when the connection goes back.
        with self.db.read_engine.connect() as conn:
            conn.execution_options(**options)
            with conn.begin():
                yield conn

    def get_task(self, task_id: int, *, outputs: bool = True) -> TaskInfo:
        """The task with its subtasks and their links, read from one snapshot (``outputs``:
        with each subtask's output context; without, a page that shows none skips decoding
        them, which is most of the cost of a big fan-out)."""
        with self._snapshot() as conn:
            row = conn.execute(sa.select(task).where(task.c.id == task_id)).one_or_none()
            if row is None:
                raise _not_found(task_id)
            columns = subtask.c if outputs else _NO_OUTPUT
            subs = conn.execute(
                sa.select(*columns)
                .where(subtask.c.task_id == task_id)
                .order_by(subtask.c.series_id.desc())
            ).all()
            edges = conn.execute(
                sa.select(subtask_edge.c.upstream_id, subtask_edge.c.downstream_id).where(
                    subtask_edge.c.task_id == task_id
                )
            ).all()
        return _task_info(row, subs, edges, outputs=outputs)

    def count_tasks(self, statuses: Sequence[TaskStatus]) -> int:
        """How many live (not imported) tasks have one of ``statuses``: one indexed count."""
        with self.db.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(task)
                    .where(
                        task.c.status.in_([s.value for s in statuses]),
                        task.c.historical == sa.false(),
                    )
                ).scalar()
                or 0
            )

    def list_tasks(
        self,
        *,
        page: int = 1,
        size: int = 20,
        name: str | None = None,
        statuses: Sequence[TaskStatus] = (),
        host_id: int | None = None,
        types: Sequence[states.TaskType] = (),
        descending: bool = True,
        since: datetime | None = None,
        until: datetime | None = None,
        creator: str | None = None,
    ) -> TaskPage:
        """One page of tasks (newest first by default), with their subtasks, from one snapshot.

        ``name`` matches a part of the name, literally (``%`` and ``_`` are not wildcards);
        ``host_id`` matches single-host tasks and batches that act on that host; ``since`` /
        ``until`` bound the creation time (aware times are converted to UTC; naive ones are
        taken as UTC, as stored); ``creator`` matches exactly.

        A page holds what a list shows, in three queries whatever its size (the count, the
        tasks, their subtasks): its subtasks carry no links (``upstreams``/``downstreams`` are
        empty), no output context and no message; :meth:`get_task` has those.
        """
        where: list[sa.ColumnElement[bool]] = []
        if name:
            where.append(task.c.name.contains(name, autoescape=True))
        if types:
            where.append(task.c.type.in_([t.value for t in types]))
        if statuses:
            wanted = [s.value for s in statuses]
            # A historical task is listed under the status it was recorded with.
            where.append(
                sa.or_(
                    sa.and_(task.c.recorded_status.is_(None), task.c.status.in_(wanted)),
                    task.c.recorded_status.in_(wanted),
                )
            )
        if since is not None:
            where.append(task.c.create_time >= _naive_utc(since))
        if until is not None:
            where.append(task.c.create_time <= _naive_utc(until))
        if creator is not None:
            where.append(task.c.creator == creator)
        if host_id is not None:
            batches = sa.select(task_host.c.task_id).where(task_host.c.host_id == host_id)
            where.append(sa.or_(task.c.host_id == host_id, task.c.id.in_(batches)))
        order = task.c.id.desc() if descending else task.c.id.asc()
        with self._snapshot() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(task).where(*where)
            ).scalar()
            rows = conn.execute(
                sa.select(*_LIST_TASK_COLUMNS)
                .where(*where)
                .order_by(order)
                .limit(size)
                .offset((page - 1) * size)
            ).all()
            ids = [r.id for r in rows]
            subs = (
                conn.execute(
                    sa.select(*_LIST_SUBTASK_COLUMNS)
                    .where(subtask.c.task_id.in_(ids))
                    .order_by(subtask.c.task_id, subtask.c.series_id.desc())
                ).all()
                if ids
                else []
            )
            # Imported tasks show what OCP sent (creator, cluster, tenant objects) from their
            # origin, which other rows do not have and a list does not read otherwise.
            imported = [r.id for r in rows if r.historical]
            origins = (
                dict(
                    conn.execute(
                        sa.select(task.c.id, task.c.origin).where(task.c.id.in_(imported))
                    ).all()
                )
                if imported
                else {}
            )
        by_task: dict[int, list[Any]] = {}
        for sub in subs:
            by_task.setdefault(sub.task_id, []).append(sub)
        tasks = [
            _task_info(r, by_task.get(r.id, []), (), listed=True, origin=origins.get(r.id))
            for r in rows
        ]
        return TaskPage(tasks=tasks, number=page, size=size, total_elements=int(total or 0))

    def read_log(self, task_id: int, subtask_id: int, run_time: int | None = None) -> str:
        """Every attempt's log of one subtask (or attempt ``run_time``'s only), in order, with
        the secret values of the task's context, the subtask's output and its upstreams'
        outputs masked."""
        with self.db.read() as conn:
            owner = conn.execute(
                sa.select(subtask.c.task_id).where(subtask.c.id == subtask_id)
            ).scalar()
            if owner != task_id:
                raise _no_subtask(task_id, subtask_id)
            query = sa.select(subtask_log.c.text).where(subtask_log.c.subtask_id == subtask_id)
            if run_time is not None:
                query = query.where(subtask_log.c.run_time == run_time)
            parts = conn.execute(query.order_by(subtask_log.c.run_time, subtask_log.c.id)).scalars()
            text = "".join(parts)
            return mask_values(text, _log_secrets(conn, task_id, subtask_id)) if text else text

    def task_logs(self, task_id: int) -> list[tuple[int, int, str]]:
        """``(subtask id, runTime, text)`` of every attempt of every subtask of the task that
        logged anything, by subtask id then attempt (one query), with the secret values of the
        task's context and of all its subtasks' outputs masked."""
        with self.db.read() as conn:
            found = conn.execute(sa.select(task.c.context).where(task.c.id == task_id)).first()
            if found is None:
                raise _not_found(task_id)
            rows = conn.execute(
                sa.select(subtask_log.c.subtask_id, subtask_log.c.run_time, subtask_log.c.text)
                .join(subtask, subtask.c.id == subtask_log.c.subtask_id)
                .where(subtask.c.task_id == task_id)
                .order_by(subtask_log.c.subtask_id, subtask_log.c.run_time, subtask_log.c.id)
            ).all()
            outputs = conn.execute(
                sa.select(subtask.c.output_context).where(
                    subtask.c.task_id == task_id, subtask.c.output_context.is_not(None)
                )
            ).scalars()
            secrets = secret_values(found.context, *outputs)
        attempts: dict[tuple[int, int], list[str]] = {}
        for row in rows:
            attempts.setdefault((row.subtask_id, row.run_time), []).append(row.text)
        return [
            (sid, run_time, mask_values("".join(parts), secrets))
            for (sid, run_time), parts in attempts.items()
            if any(parts)
        ]

    def log_since(
        self, task_id: int, subtask_id: int, after_id: int, run_time: int | None = None
    ) -> tuple[str, int, S, int]:
        """Log text written after log row ``after_id`` (of attempt ``run_time`` only, if given;
        secrets masked), the last row id, the subtask's status and its runTime (for following a
        running subtask's log)."""
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(subtask.c.task_id, subtask.c.status, subtask.c.run_time).where(
                    subtask.c.id == subtask_id
                )
            ).one_or_none()
            if row is None or row.task_id != task_id:
                raise _no_subtask(task_id, subtask_id)
            query = sa.select(subtask_log.c.id, subtask_log.c.text).where(
                subtask_log.c.subtask_id == subtask_id, subtask_log.c.id > after_id
            )
            if run_time is not None:
                query = query.where(subtask_log.c.run_time == run_time)
            parts = conn.execute(query.order_by(subtask_log.c.id)).all()
            secrets = _log_secrets(conn, task_id, subtask_id) if parts else []
        last = parts[-1].id if parts else after_id
        text = mask_values("".join(p.text for p in parts), secrets)
        return text, last, S(row.status), int(row.run_time)

    def events(self, task_id: int, after_id: int = 0) -> list[TaskEvent]:
        """The task's history events with id greater than ``after_id``, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(task_event)
                .where(task_event.c.task_id == task_id, task_event.c.id > after_id)
                .order_by(task_event.c.id)
            ).all()
        return [TaskEvent.model_validate(row._asdict()) for row in rows]

    def template_definition(self, template_id: int) -> dict[str, Any]:
        """The stored definition of a template version."""
        with self.db.read() as conn:
            value = conn.execute(
                sa.select(template_table.c.definition).where(template_table.c.id == template_id)
            ).scalar_one()
        return dict(value)

    def stored_template(self, name: str) -> dict[str, Any] | None:
        """The newest stored definition of the template called ``name``, if any."""
        with self.db.read() as conn:
            value = conn.execute(
                sa.select(template_table.c.definition)
                .where(template_table.c.name == name)
                .order_by(template_table.c.version.desc())
                .limit(1)
            ).scalar()
        return None if value is None else dict(value)

    def task_run_facts(self, task_ids: Collection[int]) -> dict[int, TaskRunFacts]:
        """What a worker needs once per task it runs, for each task of ``task_ids`` (tasks that
        do not exist are left out), in one query: its template's name (for metrics) and the
        hooks of its stored definition (:mod:`dagtask.hooks`), and the task span's traceparent.

        Only the definition's ``hooks`` member is read (a JSON path in SQL): a 100,000-subtask
        template's definition is tens of megabytes, and its subtasks are not needed here."""
        if not task_ids:
            return {}
        joined = task.outerjoin(template_table, task.c.template_id == template_table.c.id)
        hooks = template_table.c.definition["hooks"]
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(
                    task.c.id, template_table.c.name, hooks.label("hooks"), task.c.trace_parent
                )
                .select_from(joined)
                .where(task.c.id.in_(sorted(task_ids)))
            ).all()
        return {int(r.id): TaskRunFacts(r.name, r.hooks, r.trace_parent) for r in rows}

    def stored_templates(self) -> list[tuple[str, int, int]]:
        """(name, newest version, id) of every template name stored in the database."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(
                    template_table.c.name, template_table.c.version, template_table.c.id
                ).order_by(template_table.c.name, template_table.c.version)
            ).all()
        newest: dict[str, tuple[str, int, int]] = {}
        for name, version, tid in rows:
            newest[name] = (name, version, tid)
        return list(newest.values())


class TaskRunFacts(NamedTuple):
    """What :meth:`StoreReads.task_run_facts` reads of one task."""

    template: str | None
    """Its template's name (None for a task stored without one)."""
    hooks: Any
    """The ``hooks`` member of its template's stored definition, as stored (None if absent)."""
    trace_parent: str | None
    """The W3C traceparent of its span, when a tracer recorded its submit."""


def _not_found(task_id: int) -> TaskNotFoundError:
    return TaskNotFoundError(
        f"error 20000: task {task_id} does not exist; list tasks with `dagtask list`"
    )


_LIST_TASK_COLUMNS = [c for c in task.c if c.name != "origin"]
"""What a listed task needs: every column but the import origin (a list does not show it)."""

_LIST_SUBTASK_COLUMNS = [c for c in subtask.c if c.name not in ("output_context", "message")]
"""What a listed subtask needs: neither its output context nor its (possibly long) message."""


def _log_secrets(conn: sa.Connection, task_id: int, subtask_id: int) -> list[str]:
    """The secret values a subtask's log may show: those of the task's context, of the
    subtask's own output and of its upstreams' outputs (its input)."""
    context = conn.execute(sa.select(task.c.context).where(task.c.id == task_id)).scalar()
    upstreams = sa.select(subtask_edge.c.upstream_id).where(
        subtask_edge.c.downstream_id == subtask_id
    )
    outputs = conn.execute(
        sa.select(subtask.c.output_context).where(
            sa.or_(subtask.c.id == subtask_id, subtask.c.id.in_(upstreams)),
            subtask.c.output_context.is_not(None),
        )
    ).scalars()
    return secret_values(context, *outputs)


_NO_OUTPUT = [c for c in subtask.c if c.name != "output_context"]
"""A subtask's columns but its output context (a JSON document the driver would decode)."""


def _task_info(
    row: Any,
    subs: Sequence[Any],
    edges: Sequence[Any],
    *,
    listed: bool = False,
    outputs: bool = True,
    origin: Any = None,
) -> TaskInfo:
    """Map a task row, its subtask rows and its edge rows to the domain model (``listed``:
    rows of a list page, without output contexts, messages or origin)."""
    ups: dict[int, list[int]] = {}
    downs: dict[int, list[int]] = {}
    for edge in edges:
        ups.setdefault(edge.downstream_id, []).append(edge.upstream_id)
        downs.setdefault(edge.upstream_id, []).append(edge.downstream_id)
    # model_construct: these rows were validated when they were written, and a task can have
    # ten thousand subtasks.
    subtasks = [
        SubtaskInfo.model_construct(
            id=s.id,
            task_id=s.task_id,
            name=s.name,
            description=s.description,
            class_name=s.class_name,
            node_type=s.node_type,
            operation=Operation(s.operation),
            status=S(s.recorded_status or s.status),
            series_id=s.series_id,
            run_time=s.run_time,
            ocp_run_time=s.ocp_run_time,
            timeout=s.timeout,
            retry_count=s.retry_count,
            parallel=s.parallel,
            parallel_idx=s.parallel_idx,
            prohibit_rollback=s.prohibit_rollback,
            upstreams=sorted(ups.get(s.id, [])),
            downstreams=sorted(downs.get(s.id, [])),
            executor=s.executor,
            context=None
            if listed or not outputs or not s.output_context
            else TaskContext.from_json(s.output_context),
            message=None if listed else s.message,
            original_id=s.original_id,
            create_time=s.create_time,
            start_time=s.start_time,
            finish_time=s.finish_time,
        )
        for s in subs
    ]
    return TaskInfo(
        id=row.id,
        name=row.name,
        template_id=row.template_id,
        task_definition_id=row.task_definition_id,
        type=states.TaskType(row.type),
        status=TaskStatus(row.recorded_status or row.status),
        operation=Operation(row.operation),
        creator=row.creator,
        executor=row.executor,
        context=TaskContext.from_json(row.context),
        prohibit_rollback=row.prohibit_rollback,
        host_id=row.host_id,
        cluster_id=row.cluster_id,
        tenant_id=row.tenant_id,
        concurrency=row.concurrency,
        create_time=row.create_time,
        start_time=row.start_time,
        finish_time=row.finish_time,
        subtasks=subtasks,
        source_task_id=row.source_task_id,
        historical=row.historical,
        origin=(dict(origin) if origin else None)
        if listed
        else (dict(row.origin) if row.origin else None),
        trace_parent=row.trace_parent,
    )


def _naive_utc(moment: datetime) -> datetime:
    """``moment`` as the naive UTC time the tables store."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _no_subtask(task_id: int, subtask_id: int) -> TaskNotFoundError:
    return TaskNotFoundError(
        f"error 20000: task {task_id} has no subtask {subtask_id}; "
        f"see the subtask ids with `dagtask show {task_id}`"
    )
