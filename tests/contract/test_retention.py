"""Retention (``dagtask purge``) on SQLite, PostgreSQL and MariaDB: what goes, what stays, what
an export brings back. Tasks are made old by moving their ``finish_time`` back in SQL."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from dagtask import Engine, TaskTemplate, TemplateBuilder
from dagtask.cli import main
from dagtask.clock import utcnow
from dagtask.errors import ArgumentError, TaskNotFoundError
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.store import history as store_history
from dagtask.store import retention
from dagtask.store.db import Database
from dagtask.store.schema import subtask, subtask_edge, subtask_log, task, task_event, worker
from tests.history.support import normalise

MONTH = timedelta(days=30)
WAIT = 60.0


def rows_of(db: Database, task_ids: list[int]) -> dict[str, int]:
    """Rows per table that belong to ``task_ids`` (direct SQL, not the store's reads)."""
    subs = sa.select(subtask.c.id).where(subtask.c.task_id.in_(task_ids))
    counts = {
        "tasks": sa.select(sa.func.count()).where(task.c.id.in_(task_ids)),
        "subtasks": sa.select(sa.func.count()).where(subtask.c.task_id.in_(task_ids)),
        "links": sa.select(sa.func.count()).where(subtask_edge.c.task_id.in_(task_ids)),
        "events": sa.select(sa.func.count()).where(task_event.c.task_id.in_(task_ids)),
        "logs": sa.select(sa.func.count()).where(subtask_log.c.subtask_id.in_(subs)),
    }
    with db.read() as conn:
        return {name: int(conn.execute(query).scalar_one()) for name, query in counts.items()}


def age(db: Database, task_ids: list[int], days: int = 60) -> None:
    """Move the tasks ``days`` back in time: every time of the task, its subtasks, events and
    logs (so that an export still replays to the stored state)."""
    shift = timedelta(days=days)
    subs = sa.select(subtask.c.id).where(subtask.c.task_id.in_(task_ids))
    tables = [
        (task, task.c.id.in_(task_ids), ["create_time", "start_time", "finish_time"]),
        (subtask, subtask.c.task_id.in_(task_ids), ["create_time", "start_time", "finish_time"]),
        (task_event, task_event.c.task_id.in_(task_ids), ["time"]),
        (subtask_log, subtask_log.c.subtask_id.in_(subs), ["create_time"]),
    ]
    with db.begin() as conn:
        for table, where, columns in tables:
            key = table.c.id
            for row in conn.execute(sa.select(key, *(table.c[c] for c in columns)).where(where)):
                values = {c: row[i + 1] - shift for i, c in enumerate(columns) if row[i + 1]}
                conn.execute(table.update().where(key == row[0]).values(**values))


def template() -> TaskTemplate:
    t = TemplateBuilder("Retention demo", concurrency=2)
    t.add("prepare", "tests.handlers.record")
    t.add("work", "tests.handlers.record", after=["prepare"])
    t.add("side", "tests.handlers.record", after=["prepare"])
    t.add("finish", "tests.handlers.record", after=["work", "side"])
    return t.build()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    with Engine(db_url, workers=2, poll_interval=0.05) as eng:
        yield eng


def finished(engine: Engine, **args: str) -> int:
    """A task run to its end here (FAILED when ``fail`` names a subtask)."""
    info = engine.submit(template(), args=args)
    engine.run_task(info.id, WAIT)
    return info.id


@pytest.fixture
def tasks(engine: Engine) -> dict[str, int]:
    """Old SUCCESSFUL and FAILED tasks, a recent one, an old RUNNING one and an old finished one
    with a READY subtask (a fault, or an operator's retry caught half-way)."""
    found = {
        "old_ok": finished(engine),
        "old_failed": finished(engine, fail="work"),
        "new": finished(engine),
        "old_running": engine.submit(template()).id,
        "old_ready": finished(engine),
    }
    db = engine.database
    with db.begin() as conn:
        conn.execute(
            subtask.update()
            .where(subtask.c.task_id == found["old_ready"], subtask.c.name == "finish")
            .values(status=SubtaskStatus.READY.value)
        )
    age(db, [v for k, v in found.items() if k != "new"])
    assert engine.get(found["old_failed"]).status is TaskStatus.FAILED
    return found


def test_old_finished_tasks_go_with_all_their_rows_and_the_rest_stays(
    engine: Engine, tasks: dict[str, int]
) -> None:
    db = engine.database
    gone = [tasks["old_ok"], tasks["old_failed"]]
    kept = [tasks["new"], tasks["old_running"], tasks["old_ready"]]
    before, kept_before = rows_of(db, gone), rows_of(db, kept)
    assert before["logs"] > 0 and before["events"] > 0 and before["links"] == 2 * 4
    progress: list[retention.PurgeProgress] = []

    report = retention.purge_tasks(db, older_than=MONTH, batch=1, on_batch=progress.append)

    assert (report.tasks, report.subtasks, report.links) == (2, before["subtasks"], 8)
    assert (report.events, report.logs) == (before["events"], before["logs"])
    assert report.batches == 2 and [p.batch for p in progress] == [1, 2]
    assert [p.total_tasks for p in progress] == [1, 2]
    assert not report.dry_run and report.exported is None and report.kept == 0
    assert rows_of(db, gone) == dict.fromkeys(before, 0)
    assert rows_of(db, kept) == kept_before
    for task_id in gone:
        with pytest.raises(TaskNotFoundError):
            engine.get(task_id)
    # Nothing left to do: a second purge finds nothing.
    again = engine.purge(MONTH)
    assert (again.tasks, again.batches) == (0, 0)


def test_a_dry_run_counts_what_would_go_and_changes_nothing(
    engine: Engine, tasks: dict[str, int], tmp_path: Path
) -> None:
    db = engine.database
    everything = list(tasks.values())
    before = rows_of(db, everything)
    gone = rows_of(db, [tasks["old_ok"], tasks["old_failed"]])
    target = tmp_path / "purge.jsonl"

    report = engine.purge(MONTH, dry_run=True, export_to=target)

    assert report.dry_run and report.exported == target and not target.exists()
    assert (report.tasks, report.subtasks, report.events, report.logs, report.links) == (
        gone["tasks"],
        gone["subtasks"],
        gone["events"],
        gone["logs"],
        gone["links"],
    )
    assert rows_of(db, everything) == before


def test_an_export_before_the_purge_imports_back_as_it_was(
    engine: Engine, tasks: dict[str, int], tmp_path: Path
) -> None:
    gone = [tasks["old_ok"], tasks["old_failed"]]
    originals = {}
    for task_id in gone:
        buffer = io.StringIO()
        engine.export(task_id, buffer)
        originals[task_id] = buffer.getvalue()
    target = tmp_path / "purge.jsonl"

    report = engine.purge(MONTH, export_to=str(target))

    assert report.exported == target and report.tasks == 2
    assert rows_of(engine.database, gone)["tasks"] == 0
    imported = engine.import_files([target])
    assert sorted(item.original_id for item in imported) == sorted(gone)  # type: ignore[type-var]
    for item in imported:
        back = io.StringIO()
        engine.export(item.task_id, back)
        assert normalise(back.getvalue()) == normalise(originals[item.original_id])  # type: ignore[index]
    # Imported records are not purged again, however old they are.
    assert engine.purge(timedelta(0)).tasks == 1  # only "new"
    assert rows_of(engine.database, [i.task_id for i in imported])["tasks"] == 2
    # An export file is never overwritten.
    with pytest.raises(ArgumentError, match="already exists"):
        engine.purge(MONTH, export_to=target)


def test_the_cli_imports_a_purge_export(
    engine: Engine, tasks: dict[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "purge.jsonl"
    code = main(
        ["--db", engine.database.url, "purge", "--older-than", "30d", "--export", str(target)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "purged 2 tasks (" in out and f"exported to {target}" in out
    code = main(["--db", engine.database.url, "import", str(target)])
    assert code == 0
    assert "2 tasks imported" in capsys.readouterr().out


@pytest.mark.parametrize("export", [False, True], ids=["plain", "with-export"])
def test_a_task_retried_between_the_read_and_the_delete_is_not_touched(
    engine: Engine,
    tasks: dict[str, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    export: bool,
) -> None:
    """The operator retries the FAILED task after the batch picked it, before it locks it."""
    failed = tasks["old_failed"]
    retried = []
    if export:
        reading = store_history.read_record

        def read_then_retry(db: Database, task_id: int) -> object:
            record = reading(db, task_id)
            if task_id == failed and not retried:
                retried.append(engine.retry(failed, operator="alice"))
            return record

        monkeypatch.setattr(store_history, "read_record", read_then_retry)
    else:
        picking = retention._candidates

        def pick_then_retry(*args: object) -> list[tuple[int, int]]:
            picked = picking(*args)  # type: ignore[arg-type]
            if any(task_id == failed for task_id, _ in picked) and not retried:
                retried.append(engine.retry(failed, operator="alice"))
            return picked

        monkeypatch.setattr(retention, "_candidates", pick_then_retry)
    target = tmp_path / "purge.jsonl"
    before = rows_of(engine.database, [failed])

    report = engine.purge(MONTH, export_to=target if export else None)

    assert retried, "the retry did not happen inside the window"
    assert (report.tasks, report.kept) == (1, 1)
    assert rows_of(engine.database, [failed])["subtasks"] == before["subtasks"]
    assert engine.get(failed).status is TaskStatus.RUNNING
    if export:
        records = [json.loads(line) for line in target.read_text().splitlines()]
        assert {r["task_id"] for r in records if r["record"] == "header"} == {tasks["old_ok"]}


def test_stopped_and_lost_workers_leave_the_registry_active_ones_stay(
    engine: Engine, tasks: dict[str, int]
) -> None:
    db = engine.database
    now = utcnow()
    old, recent = now - timedelta(days=10), now - timedelta(days=2)
    rows = [
        ("active-old", "ACTIVE", old, None),
        ("stopped-old", "STOPPED", old, old),
        ("lost-old", "LOST", old, None),
        ("stopped-recent", "STOPPED", old, recent),
        ("lost-recent", "LOST", recent, None),
        ("lost-holding", "LOST", old, None),
    ]
    with db.begin() as conn:
        conn.execute(worker.delete())
        conn.execute(
            worker.insert(),
            [
                {
                    "name": name,
                    "host": "h",
                    "pid": 1,
                    "concurrency": 1,
                    "lease_seconds": 30,
                    "status": status,
                    "started_at": old,
                    "heartbeat_at": beat,
                    "stopped_at": stopped,
                }
                for name, status, beat, stopped in rows
            ],
        )
        # A lost worker whose subtask is not recovered yet keeps its row: recovery needs it.
        conn.execute(
            subtask.update()
            .where(subtask.c.task_id == tasks["old_running"], subtask.c.name == "prepare")
            .values(status=SubtaskStatus.RUNNING.value, executor="lost-holding")
        )

    assert retention.purge_workers(db, dry_run=True) == 2
    assert retention.purge_workers(db) == 2
    with db.read() as conn:
        left = set(conn.execute(sa.select(worker.c.name)).scalars())
    assert left == {"active-old", "stopped-recent", "lost-recent", "lost-holding"}
    assert retention.purge_workers(db, older_than=timedelta(days=1)) == 2  # the recent ones
    with db.read() as conn:
        left = set(conn.execute(sa.select(worker.c.name)).scalars())
    assert left == {"active-old", "lost-holding"}


@pytest.mark.parametrize(
    ("option", "value"),
    [("--older-than", "30x"), ("--older-than", "d30"), ("--workers-older-than", "1 week")],
)
def test_a_bad_age_is_one_line_and_exit_2(
    engine: Engine, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    extra = [option, value] if option != "--older-than" else []
    age_arg = value if option == "--older-than" else "30d"
    code = main(["--db", engine.database.url, "purge", "--older-than", age_arg, *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert captured.err == (
        f"dagtask: error: {option} {value!r}: use a number and a unit, e.g. 30d, 12h, 90m "
        "(or 2w for weeks)\n"
    )


def test_the_cli_prints_counts_as_json_and_a_dry_run_says_would(
    engine: Engine, tasks: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    url = engine.database.url
    gone = rows_of(engine.database, [tasks["old_ok"], tasks["old_failed"]])
    assert main(["--db", url, "purge", "--older-than", "4w", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        f"would purge 2 tasks ({gone['subtasks']} subtasks, {gone['events']} events, "
        f"{gone['logs']} log rows) finished before "
    )
    assert lines[0].endswith(" UTC in 1 batch")
    assert lines[1].startswith("would remove ")

    assert main(["--db", url, "purge", "--older-than", "30d", "--batch", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {k: data[k] for k in ("dryRun", "tasks", "subtasks", "events", "logs", "links")} == {
        "dryRun": False,
        **{k: gone[k] for k in ("tasks", "subtasks", "events", "logs", "links")},
    }
    assert data["batches"] == 2 and data["exported"] is None and data["workers"] == 0
    assert data["cutoff"].endswith("+00:00")
    assert rows_of(engine.database, [tasks["old_ok"], tasks["old_failed"]])["tasks"] == 0
