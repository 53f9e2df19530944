"""SQL of the history feature: whole-task records for export and import, stored templates.

Reads map rows to :class:`dagtask.models.TaskRecord`; :func:`insert_tasks` stores records as
*historical* tasks, all in one transaction (a file is imported completely or not at all).

A historical task is a record of a task run elsewhere. Nothing here may run or change it, so its
live columns are frozen in states no worker, watchdog or operator action acts on: the task is
SUCCESSFUL (every operator action on it is refused with 20003) and each subtask is SUCCESSFUL or
PENDING (never READY, which claims select, nor RUNNING, CANCELING or FAILED). The status it was
recorded with is kept in ``recorded_status``, which the reads show.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dagtask.errors import StoreError, TaskNotFoundError
from dagtask.models import (
    EdgeRow,
    EventRow,
    LogRow,
    SubtaskRow,
    TaskRecord,
    TaskRow,
    TemplateRecord,
)
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.store.db import Database
from dagtask.store.schema import subtask, subtask_edge, subtask_log, task, task_event
from dagtask.store.schema import task_template as template_table
from dagtask.store.submit import stored_template_id

S = SubtaskStatus


@dataclass(frozen=True)
class StoredTemplate:
    """A template version stored in the database."""

    id: int
    name: str
    version: int
    digest: str
    definition: dict[str, Any]

    def record(self) -> TemplateRecord:
        """The template as a portable record."""
        return TemplateRecord(
            name=self.name, version=self.version, digest=self.digest, definition=self.definition
        )


@dataclass(frozen=True)
class Import:
    """A record to store as a historical task, and where it came from."""

    record: TaskRecord
    origin: dict[str, Any]
    original_ids: dict[int, int] | None = None
    """Subtask id in the record -> id in the source system (default: the record's ids)."""


def _stored(row: Any) -> StoredTemplate:
    return StoredTemplate(row.id, row.name, row.version, row.digest, dict(row.definition))


def template_by_id(db: Database, template_id: int) -> StoredTemplate | None:
    """The stored template version ``template_id``."""
    with db.read() as conn:
        row = conn.execute(
            sa.select(template_table).where(template_table.c.id == template_id)
        ).one_or_none()
    return None if row is None else _stored(row)


def template_by_name(db: Database, name: str, version: int | None = None) -> StoredTemplate | None:
    """The stored template ``name`` at ``version`` (default: its newest version)."""
    query = sa.select(template_table).where(template_table.c.name == name)
    if version is not None:
        query = query.where(template_table.c.version == version)
    with db.read() as conn:
        row = conn.execute(query.order_by(template_table.c.version.desc()).limit(1)).first()
    return None if row is None else _stored(row)


def template_versions(db: Database, name: str) -> list[int]:
    """The stored versions of the template ``name``."""
    with db.read() as conn:
        return list(
            conn.execute(
                sa.select(template_table.c.version)
                .where(template_table.c.name == name)
                .order_by(template_table.c.version)
            ).scalars()
        )


def read_record(db: Database, task_id: int) -> TaskRecord:
    """Everything stored about one task, as it shows (raises TaskNotFoundError)."""
    with db.read() as conn:
        row = conn.execute(sa.select(task).where(task.c.id == task_id)).one_or_none()
        if row is None:
            raise TaskNotFoundError(
                f"error 20000: task {task_id} does not exist; list tasks with `dagtask list`"
            )
        subs = conn.execute(
            sa.select(subtask).where(subtask.c.task_id == task_id).order_by(subtask.c.id)
        ).all()
        edges = conn.execute(
            sa.select(subtask_edge.c.upstream_id, subtask_edge.c.downstream_id)
            .where(subtask_edge.c.task_id == task_id)
            .order_by(subtask_edge.c.upstream_id, subtask_edge.c.downstream_id)
        ).all()
        events = conn.execute(
            sa.select(task_event).where(task_event.c.task_id == task_id).order_by(task_event.c.id)
        ).all()
        ids = [s.id for s in subs]
        logs = (
            conn.execute(
                sa.select(subtask_log)
                .where(subtask_log.c.subtask_id.in_(ids))
                .order_by(subtask_log.c.id)
            ).all()
            if ids
            else []
        )
        template = None
        if row.template_id is not None:
            found = conn.execute(
                sa.select(template_table).where(template_table.c.id == row.template_id)
            ).one_or_none()
            template = None if found is None else _stored(found).record()
    origin = dict(row.origin) if row.origin else {}
    return TaskRecord(
        template=template,
        task=TaskRow(
            id=row.id,
            name=row.name,
            task_definition_id=row.task_definition_id,
            type=row.type,
            status=row.recorded_status or row.status,
            operation=row.operation,
            creator=row.creator,
            executor=row.executor,
            context=dict(row.context),
            prohibit_rollback=row.prohibit_rollback,
            host_id=row.host_id,
            cluster_id=row.cluster_id,
            tenant_id=row.tenant_id,
            concurrency=row.concurrency,
            # An imported task keeps its lineage as recorded (the id is in the source database).
            source_task_id=row.source_task_id
            if not row.historical
            else origin.get("source_task_id"),
            create_time=row.create_time,
            start_time=row.start_time,
            finish_time=row.finish_time,
        ),
        subtasks=[
            SubtaskRow(
                id=s.id,
                series_id=s.series_id,
                name=s.name,
                description=s.description,
                class_name=s.class_name,
                node_type=s.node_type,
                operation=s.operation,
                status=s.recorded_status or s.status,
                run_time=s.run_time,
                timeout=s.timeout,
                retry_count=s.retry_count,
                parallel=s.parallel,
                parallel_idx=s.parallel_idx,
                prohibit_rollback=s.prohibit_rollback,
                executor=s.executor,
                recovery=s.recovery,
                lost_count=s.lost_count,
                output_context=dict(s.output_context) if s.output_context else None,
                message=s.message,
                create_time=s.create_time,
                start_time=s.start_time,
                finish_time=s.finish_time,
            )
            for s in subs
        ],
        edges=[EdgeRow(upstream_id=e.upstream_id, downstream_id=e.downstream_id) for e in edges],
        events=[
            EventRow.model_validate({k: v for k, v in e._asdict().items() if k != "task_id"})
            for e in events
        ],
        logs=[
            LogRow(
                subtask_id=log.subtask_id,
                run_time=log.run_time,
                text=log.text,
                create_time=log.create_time,
            )
            for log in logs
        ],
    )


def insert_tasks(db: Database, imports: Sequence[Import], now: datetime) -> list[int]:
    """Store every record as a new historical task in one transaction; return the new ids.

    Ids are new (from the id allocator); templates are matched by digest and otherwise stored
    under their recorded version when it is newer than any stored one (else the next version).
    """
    from dagtask.store.sql import Store  # the id allocator; sql.py does not import this module

    new_ids: list[int] = []
    try:
        with db.begin() as conn:
            for item in imports:
                new_ids.append(_insert_one(conn, Store._allocate, item, now))
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(
            f"could not import into the database (nothing was imported): {exc}; "
            "check that it is reachable and up to date (`dagtask db upgrade`)"
        ) from exc
    return new_ids


def _template_id(conn: sa.Connection, template: TemplateRecord, now: datetime) -> int:
    return stored_template_id(
        conn,
        name=template.name,
        digest=template.digest,
        definition=template.definition,
        now=now,
        version=template.version,
    )


def _insert_one(
    conn: sa.Connection,
    allocate: Callable[[sa.Connection, str, int], int],
    item: Import,
    now: datetime,
) -> int:
    record = item.record
    task_id = int(allocate(conn, "task", 1))
    first = int(allocate(conn, "subtask", len(record.subtasks))) if record.subtasks else 0
    ids = {sub.id: first + i for i, sub in enumerate(record.subtasks)}
    originals = item.original_ids or {sub.id: sub.id for sub in record.subtasks}
    live = {
        sub.id: S.SUCCESSFUL if sub.status is S.SUCCESSFUL else S.PENDING for sub in record.subtasks
    }
    waiting = {sub.id: 0 for sub in record.subtasks}
    for edge in record.edges:
        if live[edge.upstream_id] is not S.SUCCESSFUL:
            waiting[edge.downstream_id] += 1
    t = record.task
    origin = {**item.origin}
    if t.source_task_id is not None:
        origin["source_task_id"] = t.source_task_id
    conn.execute(
        task.insert(),
        {
            "id": task_id,
            "name": t.name,
            "template_id": _template_id(conn, record.template, now) if record.template else None,
            "task_definition_id": t.task_definition_id,
            "type": t.type.value,
            "status": TaskStatus.SUCCESSFUL.value,
            "recorded_status": t.status.value,
            "historical": True,
            "origin": origin,
            "operation": t.operation.value,
            "creator": t.creator,
            "executor": t.executor,
            "context": t.context,
            "prohibit_rollback": t.prohibit_rollback,
            "host_id": t.host_id,
            "cluster_id": t.cluster_id,
            "tenant_id": t.tenant_id,
            "concurrency": t.concurrency,
            "source_task_id": None,
            "cancel_requested": False,
            "create_time": t.create_time,
            "start_time": t.start_time,
            "finish_time": t.finish_time,
        },
    )
    if record.subtasks:
        conn.execute(
            subtask.insert(),
            [
                {
                    "id": ids[s.id],
                    "task_id": task_id,
                    "series_id": s.series_id,
                    "name": s.name,
                    "description": s.description,
                    "class_name": s.class_name,
                    "node_type": s.node_type,
                    "operation": s.operation.value,
                    "status": live[s.id].value,
                    "recorded_status": s.status.value,
                    "original_id": originals.get(s.id),
                    "run_time": s.run_time,
                    # OCP's count is what an OCP document recorded as runTime (an export of a
                    # dagtask task carries dagtask's, its upper bound).
                    "ocp_run_time": s.run_time,
                    "timeout": s.timeout,
                    "retry_count": s.retry_count,
                    "parallel": s.parallel,
                    "parallel_idx": s.parallel_idx,
                    "prohibit_rollback": s.prohibit_rollback,
                    "pending_upstreams": waiting[s.id],
                    "executor": s.executor,
                    "recovery": s.recovery,
                    "lost_count": s.lost_count,
                    "output_context": s.output_context,
                    "message": s.message,
                    "create_time": s.create_time,
                    "start_time": s.start_time,
                    "finish_time": s.finish_time,
                }
                for s in record.subtasks
            ],
        )
    if record.edges:
        conn.execute(
            subtask_edge.insert(),
            [
                {
                    "upstream_id": ids[e.upstream_id],
                    "downstream_id": ids[e.downstream_id],
                    "task_id": task_id,
                }
                for e in record.edges
            ],
        )
    if record.events:
        conn.execute(
            task_event.insert(),
            [
                {
                    **e.model_dump(exclude={"id"}),
                    "kind": e.kind.value,
                    "task_id": task_id,
                    "subtask_id": None if e.subtask_id is None else ids[e.subtask_id],
                }
                for e in record.events
            ],
        )
    if record.logs:
        conn.execute(
            subtask_log.insert(),
            [{**log.model_dump(), "subtask_id": ids[log.subtask_id]} for log in record.logs],
        )
    return task_id
