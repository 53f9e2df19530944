"""``dagtask purge``: remove finished tasks older than an age, and workers gone for a week.

It calls :meth:`dagtask.Engine.purge` (see :mod:`dagtask.store.retention` for what goes and
how) and prints one summary line per kind of row, or with ``--json`` the counts as JSON.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagtask.arguments import parse_age
from dagtask.cli import output as out
from dagtask.cli.common import json_flag, open_engine, positive
from dagtask.store import retention

if TYPE_CHECKING:
    from dagtask.cli.common import Commands


def _utc(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _n(number: int) -> str:
    return f"{number:,}"


def summary(report: retention.PurgeReport) -> str:
    """The line ``dagtask purge`` prints about tasks."""
    verb = "would purge" if report.dry_run else "purged"
    noun = "task" if report.tasks == 1 else "tasks"
    rows = f"{_n(report.subtasks)} subtasks, {_n(report.events)} events, {_n(report.logs)} log rows"
    batches = f"{_n(report.batches)} {'batch' if report.batches == 1 else 'batches'}"
    line = (
        f"{verb} {_n(report.tasks)} {noun} ({rows}) finished before {_utc(report.cutoff)} "
        f"in {batches}"
    )
    if report.exported is not None:
        line += f"; {'would export' if report.dry_run else 'exported'} to {report.exported}"
    if report.kept:
        line += f"; {_n(report.kept)} changed meanwhile (retried or rolled back) and were kept"
    return line


def _workers_line(count: int, cutoff: datetime, dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    noun = "worker" if count == 1 else "workers"
    return f"{verb} {_n(count)} {noun} stopped or lost before {_utc(cutoff)}"


def _json(report: retention.PurgeReport, workers_cutoff: datetime) -> dict[str, Any]:
    def iso(when: datetime) -> str:
        return when.replace(tzinfo=UTC).isoformat(timespec="milliseconds")

    return {
        "dryRun": report.dry_run,
        "cutoff": iso(report.cutoff),
        "tasks": report.tasks,
        "subtasks": report.subtasks,
        "events": report.events,
        "logs": report.logs,
        "links": report.links,
        "hosts": report.hosts,
        "batches": report.batches,
        "kept": report.kept,
        "exported": str(report.exported) if report.exported is not None else None,
        "seconds": round(report.seconds, 3),
        "longestBatchSeconds": round(report.longest_batch, 3),
        "workers": report.workers,
        "workersCutoff": iso(workers_cutoff),
    }


def cmd_purge(args: argparse.Namespace) -> int:
    """Delete finished tasks older than an age (with their subtasks, events and logs)."""
    age = parse_age(args.older_than, "--older-than")
    worker_age = parse_age(args.workers_older_than, "--workers-older-than")
    export = Path(args.export) if args.export else None
    now = datetime.now(UTC).replace(tzinfo=None)
    with open_engine(args, read_only=True) as engine:
        report = engine.purge(age, dry_run=args.dry_run, export_to=export, batch=args.batch)
        report.workers = retention.purge_workers(
            engine.database, older_than=worker_age, now=now, dry_run=args.dry_run
        )
    workers_cutoff = retention.cutoff_of(worker_age, now)
    if args.json:
        out.print_json(_json(report, workers_cutoff))
        return 0
    print(summary(report))
    print(_workers_line(report.workers, workers_cutoff, args.dry_run))
    return 0


def add_commands(commands: Commands) -> None:
    """Add ``dagtask purge``."""
    purge = commands.add(
        "purge",
        cmd_purge,
        epilog="Purged: SUCCESSFUL and FAILED tasks whose finish time is older than the age, "
        "with nothing READY or RUNNING; imported tasks stay. Each batch is one short "
        "transaction, so running workers wait at most one batch. --export writes the tasks "
        "first (dagtask import brings them back). STOPPED and LOST workers last seen before "
        "--workers-older-than leave the registry too.",
    )
    purge.add_argument(
        "--older-than",
        required=True,
        metavar="AGE",
        help="purge tasks that finished more than AGE ago: 30d, 12h, 90m or 2w",
    )
    purge.add_argument("--dry-run", action="store_true", help="count what would go; change nothing")
    purge.add_argument(
        "--export",
        metavar="FILE",
        help="write the purged tasks to FILE (a new file, JSON lines as dagtask export) first",
    )
    purge.add_argument(
        "--batch",
        type=positive(int, retention.MAX_BATCH),
        default=retention.DEFAULT_BATCH,
        metavar="N",
        help=f"tasks per transaction (default {retention.DEFAULT_BATCH}; fewer when they are "
        f"large: at most {retention.MAX_BATCH_SUBTASKS:,} subtasks)",
    )
    purge.add_argument(
        "--workers-older-than",
        default="1w",
        metavar="AGE",
        help="remove STOPPED and LOST workers last seen more than AGE ago (default 1w)",
    )
    json_flag(purge, "the counts as JSON")
