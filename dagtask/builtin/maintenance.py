"""Built-in maintenance: "Purge finished tasks" and the SYS_SCHEDULED definition that runs it.

The definition ``purge-finished-tasks`` (created, enabled, the first time a scheduler starts on
a database) fires every day at 03:00 UTC and purges the tasks that finished more than
``stringMap.older_than`` ago (default ``30d``) with their subtasks, events and logs, in short
batches (:mod:`dagtask.store.retention`), and the STOPPED and LOST workers not seen for
``stringMap.workers_older_than`` (default ``7d``). Change the ages with ``dagtask schedule set
purge-finished-tasks --set older_than=90d``, stop it with ``dagtask schedule disable``.
"""

from __future__ import annotations

from dagtask.arguments import parse_age
from dagtask.handlers import Handler, HandlerResult, RunContext
from dagtask.store import retention
from dagtask.template import TaskTemplate, TemplateBuilder

PURGE_FINISHED_TASKS = "Purge finished tasks"
PURGE_DEFINITION = "purge-finished-tasks"
PURGE_RULE = "0 0 3 * * ?"
DEFAULT_AGE = "30d"
DEFAULT_WORKER_AGE = "7d"


class PurgeFinishedTasks(Handler):
    """Purge the finished tasks older than ``stringMap.older_than`` and the workers gone for
    ``stringMap.workers_older_than``; the counts go to the log."""

    prohibit_rollback = True
    """What is purged cannot come back (export first: ``dagtask purge --export``)."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """One purge, batch after batch; each batch's counts are logged."""
        age = parse_age(ctx.string_map.get("older_than", DEFAULT_AGE), "stringMap.older_than")
        worker_age = parse_age(
            ctx.string_map.get("workers_older_than", DEFAULT_WORKER_AGE),
            "stringMap.workers_older_than",
        )
        ctx.log.info("Purging the tasks that finished more than %s ago", age)

        def progress(step: retention.PurgeProgress) -> None:
            ctx.token.raise_if_cancelled()
            ctx.log.info(
                "batch %d: %d tasks (%d subtasks, %d events) in %.3f s",
                step.batch,
                step.tasks,
                step.subtasks,
                step.events,
                step.seconds,
            )

        report = retention.purge_tasks(ctx.services.db, older_than=age, on_batch=progress)
        ctx.log.info(
            "Purged %d tasks (%d subtasks, %d events, %d log rows) in %d batches",
            report.tasks,
            report.subtasks,
            report.events,
            report.logs,
            report.batches,
        )
        workers = retention.purge_workers(ctx.services.db, older_than=worker_age)
        ctx.log.info("Removed %d workers not seen for %s", workers, worker_age)
        return ctx.output(purged_tasks=str(report.tasks), purged_workers=str(workers))


def purge_finished_tasks() -> TaskTemplate:
    """The template the built-in retention definition fires."""
    t = TemplateBuilder(
        PURGE_FINISHED_TASKS,
        description="Purge finished tasks older than stringMap.older_than (default 30d)",
        concurrency=1,
    )
    t.add(
        "Purge finished tasks",
        f"{__name__}:PurgeFinishedTasks",
        timeout=3600,
    )
    return t.build()
