"""Storing templates and new tasks: one transaction per submit.

Ids come from a hi-lo allocator table, so a task, its subtasks and its edges are bulk-inserted in
one transaction, and its roots are promoted to READY in the same one.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dagtask import states
from dagtask.clock import utcnow
from dagtask.errors import (
    StoreError,
)
from dagtask.expand import ExpandedSubtask, ExpandedTask
from dagtask.models import EventKind
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from dagtask.store import changes, host_locks
from dagtask.store import statements as q
from dagtask.store.db import RETURNING_DIALECTS, Database
from dagtask.store.prepared import execute as run
from dagtask.store.prepared import execute_columns as run_columns
from dagtask.store.schema import task_template as template_table
from dagtask.template import TaskTemplate

S = SubtaskStatus


class SubmitStore:
    """Templates and submission (mixed into :class:`dagtask.store.sql.Store`)."""

    db: Database
    _template_ids: dict[str, int]

    def save_template(self, template: TaskTemplate) -> int:
        """Store ``template`` (once per distinct definition) and return its id.

        A changed definition under an existing name becomes that name's next version.
        """
        known = self._template_ids.get(template.digest())
        if known is not None:
            return known
        for _attempt in range(3):
            try:
                with self.db.begin() as conn:
                    template_id = self._template_id_in(conn, template)
                self._template_ids[template.digest()] = template_id
                return template_id
            except sa.exc.IntegrityError:
                continue  # another process stored the same definition (or version) first
        raise StoreError(f"could not store template {template.name!r}; try again")

    def _template_id_in(self, conn: sa.Connection, template: TaskTemplate) -> int:
        """The id of ``template``'s definition, stored in the caller's transaction if new."""
        digest, dumped = template.digest_and_dump()
        known = self._template_ids.get(digest)
        if known is not None:
            return known
        return stored_template_id(
            conn,
            name=template.name,
            digest=digest,
            definition=dumped if dumped is not None else template.definition,
            now=utcnow(),
        )

    @staticmethod
    def _allocate(conn: sa.Connection, sequence: str, count: int) -> int:
        """Reserve ``count`` consecutive ids of ``sequence`` (in the caller's transaction)."""
        params = {"seq": sequence, "n": count}
        if conn.dialect.name in RETURNING_DIALECTS:  # one statement
            end = run(conn, q.next_ids_returning, params).scalar()
        elif run(conn, q.next_ids, params).rowcount:
            end = run(conn, q.read_next_id, {"seq": sequence}).scalar_one()
        else:
            end = None
        if end is None:
            raise StoreError(
                f"the database has no id sequence {sequence!r} (it was not created by dagtask); "
                "use an empty database or run `dagtask db upgrade`"
            )
        return int(end) - count

    def submit(
        self,
        expanded: ExpandedTask,
        *,
        template_id: int | None = None,
        template: TaskTemplate | None = None,
        creator: str,
        executor: str,
        host_id: int | None = None,
        hosts: Sequence[int] = (),
        source_task_id: int | None = None,
        reused: Mapping[int, Mapping[str, Any]] | None = None,
        definition_id: int = -1,
        task_type: states.TaskType = states.TaskType.MANUAL,
        in_transaction: Callable[[sa.Connection, int], None] | None = None,
        trace_parent: str | None = None,
    ) -> int:
        """Store a new task and its subtasks, make its roots READY; return the task id.

        ``hosts`` are the hosts a host operation acts on: the task holds them while it runs and
        is refused (:class:`~dagtask.errors.HostBusyError`, nothing stored) if another running
        task holds one. ``reused`` maps subtask indexes to output contexts recorded by
        ``source_task_id``: those subtasks start SUCCESSFUL with that output (``dagtask rerun
        --from``) and only the others run.

        ``template``: the template to record the task under, stored (if its definition is new)
        in the same transaction as the task, so a refused submit leaves no template row behind
        (``template_id`` names one stored before).

        ``definition_id`` and ``task_type``: the task definition that created it (a schedule)
        and its type; ``in_transaction(conn, task_id)`` runs inside the submit's transaction
        (a scheduler records its fire there: an exception from it stores nothing).
        ``trace_parent``: the W3C traceparent of the submit's span, for the attempts' spans.
        """
        reused = reused or {}
        subs = sorted(expanded.subtasks, key=lambda s: s.series_id)
        now = utcnow()
        ctx = expanded.context
        task_row: dict[str, Any] = {
            "id": 0,
            "name": expanded.template.name,
            "template_id": template_id,
            "task_definition_id": definition_id,
            "type": task_type.value,
            "status": TaskStatus.RUNNING.value,
            "operation": Operation.EXECUTE.value,
            "creator": creator,
            "executor": executor,
            "context": ctx.to_json(),
            "prohibit_rollback": ctx.prohibit_rollback,
            "host_id": host_id,
            "source_task_id": source_task_id,
            "concurrency": expanded.template.concurrency,
            "trace_parent": trace_parent,
            "create_time": now,
            "start_time": now,
        }
        rows = _Rows(expanded, subs, reused, source_task_id, now)
        host_list = sorted({*hosts, *([host_id] if host_id is not None else [])})
        for attempt in range(3):
            try:
                with self.db.begin() as conn:
                    if template is not None:
                        task_row["template_id"] = self._template_id_in(conn, template)
                    task_id = self._insert_new(conn, task_row, rows, now)
                    if host_list:
                        conn.execute(
                            q.insert_task_hosts,
                            [{"task_id": task_id, "host_id": h} for h in host_list],
                        )
                        host_locks.lock_hosts(conn, task_id, host_list, now)
                    if in_transaction is not None:
                        in_transaction(conn, task_id)
                break
            except sa.exc.IntegrityError:
                if host_list:
                    with self.db.read() as conn:  # lost a race for a host to a concurrent submit
                        conflict = host_locks.host_conflict(conn, host_list)
                    if conflict is not None:
                        raise conflict from None
                if template is None or attempt == 2:
                    raise
                # Another process stored the same template (or its next version) first.
        if template is not None:
            self._template_ids[template.digest()] = int(task_row["template_id"])
        return task_id

    def _insert_new(
        self, conn: sa.Connection, task_row: dict[str, Any], rows: "_Rows", now: datetime
    ) -> int:
        """Allocate the new task's block of ids, insert its rows on them with the submission
        event (and one per reused subtask) and make its first subtasks READY."""
        task_id = self._allocate(conn, "task", 1)
        first = self._allocate(conn, "subtask", len(rows.subs))
        task_row["id"] = task_id
        creator, executor = task_row["creator"], task_row["executor"]
        events = [
            changes.event(
                task_id,
                None,
                now,
                EventKind.TASK_SUBMITTED,
                new_status=TaskStatus.RUNNING.value,
                new_operation=Operation.EXECUTE.value,
                executor=executor,
                message=f"submitted by {creator}: {len(rows.subs)} subtasks",
            )
        ]
        events.extend(
            changes.event(
                task_id,
                first + position,
                now,
                EventKind.SUBTASK_STATUS,
                S.PENDING.value,
                S.SUCCESSFUL.value,
                Operation.EXECUTE.value,
                Operation.EXECUTE.value,
                1,
                executor,
                rows.reused_message,
            )
            for position, sub in enumerate(rows.subs)
            if sub.index in rows.reused
        )
        # On the driver (dagtask.store.prepared): each chunk is one executemany of plain
        # tuples, and only one chunk of rows exists at a time (a 100k-subtask submit's rows
        # would otherwise take more memory than the task's template).
        run(conn, q.insert_task, task_row)
        for columns in rows.subtask_rows(task_id, first):
            run_columns(conn, q.insert_subtasks, columns)
        for columns in rows.edge_rows(task_id, first):
            run_columns(conn, q.insert_edges, columns)
        facts = changes.NewTask(concurrency=task_row["concurrency"])
        promoted, _ = changes.progress(conn, task_id, facts, now, events)
        if events:
            run(conn, q.insert_event, events)
        if promoted:
            changes.notify_ready(conn)
        return task_id


ROW_CHUNK = 10_000
"""Rows per executemany of a submit: few statements, and a bounded amount of rows in memory."""


class _Rows:
    """A new task's subtask and edge rows, made chunk by chunk once its ids are allocated.

    A subtask's id is ``first`` plus its position in seriesId order, so ids grow with
    seriesId (sinks first, as in OCP's sample).
    """

    def __init__(
        self,
        expanded: ExpandedTask,
        subs: list[ExpandedSubtask],
        reused: Mapping[int, Mapping[str, Any]],
        source_task_id: int | None,
        now: datetime,
    ) -> None:
        self.expanded, self.subs, self.reused, self.now = expanded, subs, reused, now
        self.reused_message = f"output reused from task {source_task_id}"
        self.position = {sub.index: i for i, sub in enumerate(subs)}

    def subtask_rows(self, task_id: int, first: int) -> Iterator[dict[str, list[Any]]]:
        """The subtask rows, ``ROW_CHUNK`` at a time, column by column (no dict per row)."""
        now, reused, message = self.now, self.reused, self.reused_message
        for start in range(0, len(self.subs), ROW_CHUNK):
            subs = self.subs[start : start + ROW_CHUNK]
            specs = [sub.spec for sub in subs]
            count = len(subs)
            done = [sub.index in reused for sub in subs] if reused else [False] * count
            yield {
                "id": list(range(first + start, first + start + count)),
                "task_id": [task_id] * count,
                "series_id": [sub.series_id for sub in subs],
                "name": [spec.instance_name for spec in specs],
                "description": [spec.description for spec in specs],
                "class_name": [spec.handler for spec in specs],
                "node_type": ["JAVA_TASK"] * count,
                "operation": [Operation.EXECUTE.value] * count,
                "status": [S.SUCCESSFUL.value if d else S.PENDING.value for d in done],
                "run_time": [1] * count,
                "timeout": [spec.timeout for spec in specs],
                "retry_count": [spec.retry_count for spec in specs],
                "parallel": [sub.parallel for sub in subs],
                "parallel_idx": [sub.parallel_idx for sub in subs],
                "prohibit_rollback": [sub.prohibit_rollback for sub in subs],
                "recovery": [spec.on_worker_lost.value for spec in specs],
                "pending_upstreams": [
                    sum(1 for up in sub.upstreams if up not in reused)
                    if reused
                    else len(sub.upstreams)
                    for sub in subs
                ],
                "create_time": [now] * count,
                "output_context": [
                    dict(reused[sub.index]) if d else None
                    for sub, d in zip(subs, done, strict=True)
                ],
                "message": [message if d else None for d in done],
                "start_time": [now if d else None for d in done],
                "finish_time": [now if d else None for d in done],
            }

    def edge_rows(self, task_id: int, first: int) -> Iterator[dict[str, list[Any]]]:
        """The link rows (upstream, downstream), about ``ROW_CHUNK`` at a time, by column."""
        position = self.position
        ups: list[int] = []
        downs: list[int] = []
        for sub in self.expanded.subtasks:
            down = first + position[sub.index]
            for up in sub.upstreams:
                ups.append(first + position[up])
                downs.append(down)
            if len(ups) >= ROW_CHUNK:
                yield {"upstream_id": ups, "downstream_id": downs, "task_id": [task_id] * len(ups)}
                ups, downs = [], []
        if ups:
            yield {"upstream_id": ups, "downstream_id": downs, "task_id": [task_id] * len(ups)}


def stored_template_id(
    conn: sa.Connection,
    *,
    name: str,
    digest: str,
    definition: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    now: datetime,
    version: int | None = None,
) -> int:
    """The id of the stored definition with ``digest``, inserted (caller's transaction) if it is
    new, as ``name``'s next version, or as ``version`` when that is newer than any stored (an
    imported task keeps the version it was recorded with). ``definition`` may be a callable,
    called only when the definition is inserted."""
    found = conn.execute(
        sa.select(template_table.c.id).where(template_table.c.digest == digest)
    ).scalar()
    if found is not None:
        return int(found)
    latest = conn.execute(
        sa.select(sa.func.max(template_table.c.version)).where(template_table.c.name == name)
    ).scalar()
    if version is None or (latest is not None and version <= latest):
        version = (latest or 0) + 1
    result = conn.execute(
        template_table.insert().values(
            name=name,
            version=version,
            digest=digest,
            definition=dict(definition() if callable(definition) else definition),
            create_time=now,
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])
