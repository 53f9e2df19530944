"""Storing templates and new tasks: one transaction per submit.

Ids come from a hi-lo allocator table, so a task, its subtasks and its edges are bulk-inserted in
one transaction, and its roots are promoted to READY in the same one.
"""

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dagtask import states
from dagtask.clock import utcnow
from dagtask.errors import (
    StoreError,
)
from dagtask.expand import ExpandedTask
from dagtask.models import EventKind
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from dagtask.store import changes, host_locks
from dagtask.store import statements as q
from dagtask.store.db import Database
from dagtask.store.prepared import execute as run
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
        digest = template.digest()
        known = self._template_ids.get(digest)
        if known is not None:
            return known
        return stored_template_id(
            conn, name=template.name, digest=digest, definition=template.definition(), now=utcnow()
        )

    @staticmethod
    def _allocate(conn: sa.Connection, sequence: str, count: int) -> int:
        """Reserve ``count`` consecutive ids of ``sequence`` (in the caller's transaction)."""
        if not conn.execute(q.next_ids, {"seq": sequence, "n": count}).rowcount:
            raise StoreError(
                f"the database has no id sequence {sequence!r} (it was not created by dagtask); "
                "use an empty database or run `dagtask db upgrade`"
            )
        end = conn.execute(q.read_next_id, {"seq": sequence}).scalar_one()
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
        # Rows are built with ids relative to the task's block of ids, shifted once the block
        # is allocated inside the transaction (one transaction per submit).
        ids = {sub.index: i for i, sub in enumerate(subs)}
        task_id = 0
        now = utcnow()
        ctx = expanded.context
        task_row: dict[str, Any] = {
            "id": task_id,
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
        sub_rows: list[dict[str, Any]] = [
            {
                "id": ids[sub.index],
                "task_id": task_id,
                "series_id": sub.series_id,
                "name": sub.spec.instance_name,
                "description": sub.spec.description,
                "class_name": sub.spec.handler,
                "node_type": "JAVA_TASK",
                "operation": Operation.EXECUTE.value,
                "status": S.PENDING.value,
                "run_time": 1,
                "timeout": sub.spec.timeout,
                "retry_count": sub.spec.retry_count,
                "parallel": sub.parallel,
                "parallel_idx": sub.parallel_idx,
                "prohibit_rollback": sub.prohibit_rollback,
                "recovery": sub.spec.on_worker_lost.value,
                "pending_upstreams": (
                    sum(1 for up in sub.upstreams if up not in reused)
                    if reused
                    else len(sub.upstreams)
                ),
                "create_time": now,
            }
            for sub in subs
        ]
        for row, sub in zip(sub_rows, subs, strict=True):
            done = sub.index in reused
            row.update(
                status=S.SUCCESSFUL.value if done else S.PENDING.value,
                output_context=dict(reused[sub.index]) if done else None,
                message=f"output reused from task {source_task_id}" if done else None,
                start_time=now if done else None,
                finish_time=now if done else None,
            )
        edge_rows: list[dict[str, Any]] = [
            {"upstream_id": ids[up], "downstream_id": ids[down], "task_id": task_id}
            for up, down in expanded.edges
        ]
        host_list = sorted({*hosts, *([host_id] if host_id is not None else [])})
        for attempt in range(3):
            try:
                with self.db.begin() as conn:
                    if template is not None:
                        task_row["template_id"] = self._template_id_in(conn, template)
                    task_id = self._insert_new(conn, expanded, task_row, sub_rows, edge_rows, now)
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
        self,
        conn: sa.Connection,
        expanded: ExpandedTask,
        task_row: dict[str, Any],
        sub_rows: list[dict[str, Any]],
        edge_rows: list[dict[str, Any]],
        now: datetime,
    ) -> int:
        """Allocate the new task's block of ids, shift its rows onto them, insert them with the
        submission event (and one per reused subtask) and make its first subtasks READY."""
        task_id = self._allocate(conn, "task", 1)
        first = self._allocate(conn, "subtask", len(sub_rows))
        task_row["id"] = task_id
        for row in sub_rows:
            row["id"] += first
            row["task_id"] = task_id
        for row in edge_rows:
            row["upstream_id"] += first
            row["downstream_id"] += first
            row["task_id"] = task_id
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
                message=f"submitted by {creator}: {len(sub_rows)} subtasks",
            )
        ]
        events.extend(
            changes.event(
                task_id,
                row["id"],
                now,
                EventKind.SUBTASK_STATUS,
                S.PENDING.value,
                S.SUCCESSFUL.value,
                Operation.EXECUTE.value,
                Operation.EXECUTE.value,
                1,
                executor,
                row["message"],
            )
            for row in sub_rows
            if row["status"] == S.SUCCESSFUL.value
        )
        # On the driver (dagtask.store.prepared): a 100k-subtask submit is two executemany calls
        # of plain tuples, not 300k rows of per-row statement processing.
        run(conn, q.insert_task, task_row)
        run(conn, q.insert_subtasks, sub_rows)
        if edge_rows:
            run(conn, q.insert_edges, edge_rows)
        promoted, _ = changes.progress(
            conn, task_id, changes.relock_task(conn, task_id), now, events
        )
        if events:
            run(conn, q.insert_event, events)
        if promoted:
            changes.notify_ready(conn)
        return task_id


def stored_template_id(
    conn: sa.Connection,
    *,
    name: str,
    digest: str,
    definition: Mapping[str, Any],
    now: datetime,
    version: int | None = None,
) -> int:
    """The id of the stored definition with ``digest``, inserted (caller's transaction) if it is
    new, as ``name``'s next version, or as ``version`` when that is newer than any stored (an
    imported task keeps the version it was recorded with)."""
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
            name=name, version=version, digest=digest, definition=dict(definition), create_time=now
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])
