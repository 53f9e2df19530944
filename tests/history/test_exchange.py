"""Export and import: self-contained, portable, identical after a round trip, all or nothing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dagtask import ArgumentError, Engine, OperationNotAllowedError, history
from dagtask.store.schema import subtask, subtask_log, task, task_event
from tests.history import support


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh SQLite file, with workers, holding one task with a rich history."""
    with Engine(f"sqlite:///{tmp_path / 'source.db'}", workers=2) as engine:
        yield engine


def export_text(engine: Engine, task_id: int) -> str:
    buffer = io.StringIO()
    history.export_task(engine, task_id, buffer)
    return buffer.getvalue()


def counts(engine: Engine) -> dict[str, int]:
    with engine.database.read() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in (task, subtask, task_event, subtask_log)
        }


def test_export_import_export_is_identical_apart_from_ids(
    source: Engine, db_url: str, tmp_path: Path
) -> None:
    done = support.failed_then_retried_then_skipped(source)
    first = export_text(source, done.id)
    kinds = [json.loads(line)["record"] for line in first.splitlines()]
    assert kinds[:3] == ["header", "template", "task"] and kinds[-1] == "end"
    assert {"subtask", "edge", "event", "log"} <= set(kinds)
    path = tmp_path / "task.jsonl"
    path.write_text(first)
    with Engine(db_url, workers=0) as target:
        target.submit(support.template("Other"))  # the target already has its own ids
        imported = history.import_files(target, [path])
        assert len(imported) == 1 and imported[0].original_id == done.id
        new_id = imported[0].task_id
        assert new_id != done.id
        second = export_text(target, new_id)
        assert second != first  # the ids differ ...
        assert support.normalise(second) == support.normalise(first)  # ... nothing else
        copy = target.get(new_id)
        assert copy.historical and copy.status.value == "SUCCESSFUL"
        assert [s.original_id for s in sorted(copy.subtasks, key=lambda s: s.id)] == sorted(
            s.id for s in done.subtasks
        )
        assert history.replay(target, new_id) == history.snapshot(target, new_id)
        # Logs and the template version travel with the task.
        work = copy.subtask("work")
        assert "injected failure in work" in target.logs(new_id, work.id)
        h = history.task_history(target, new_id)
        assert h.template is not None and h.template.version == 1
        assert [a.operator for a in h.actions] == ["alice", "bob"]


def test_an_imported_task_is_never_run_or_changed(source: Engine, tmp_path: Path) -> None:
    task = source.submit(support.template())  # RUNNING, its first subtask READY: never run
    path = tmp_path / "running.jsonl"
    path.write_text(export_text(source, task.id))
    with Engine(f"sqlite:///{tmp_path / 'target.db'}", workers=2) as target:
        new_id = history.import_files(target, [path])[0].task_id
        before = target.get(new_id)
        assert before.status.value == "RUNNING"
        assert before.subtask("prepare").status.value == "READY"
        assert not target.store.any_ready()
        assert target.store.claim("intruder", limit=10) == []
        prepare = before.subtask("prepare").id
        for action in (target.retry, target.rollback, target.cancel):
            with pytest.raises(OperationNotAllowedError):
                action(new_id, operator="mallory")
        for sub_action in (target.retry_subtask, target.skip_subtask, target.cancel_subtask):
            with pytest.raises(OperationNotAllowedError):
                sub_action(new_id, prepare, operator="mallory")
        # Workers that run a live task to its end (polling for READY work all along) leave the
        # imported one alone.
        target.start()
        live = target.submit(support.template("Live"))
        assert target.wait(live.id, support.WAIT).status.value == "SUCCESSFUL"
        target.stop()
        assert target.get(new_id).model_dump() == before.model_dump()
        assert len(target.events(new_id)) == len(source.events(task.id))


@pytest.mark.parametrize(
    ("damage", "line", "says"),
    [
        ("truncate_lines", None, "truncated"),
        ("truncate_mid_line", None, "not valid JSON"),
        ("bad_status", "subtask", "invalid subtask record"),
        ("state_differs", "subtask", "differs from the replay"),
        ("unknown_key", "event", "invalid event record"),
        ("dangling_link", "edge", "not in this task"),
        ("missing_record", "end", "records are missing"),
    ],
)
def test_a_corrupt_or_truncated_file_is_refused_with_its_line_and_imports_nothing(
    source: Engine, tmp_path: Path, damage: str, line: str | None, says: str
) -> None:
    done = support.failed_then_retried_then_skipped(source)
    lines = export_text(source, done.id).splitlines()
    kinds = [json.loads(item)["record"] for item in lines]
    where = kinds.index(line) if line else None
    if damage == "truncate_lines":
        lines = lines[: len(lines) // 2]
        expected = len(lines) + 1
    elif damage == "truncate_mid_line":
        lines[-3] = lines[-3][: len(lines[-3]) // 2]
        lines = lines[:-2]
        expected = len(lines)
    else:
        assert where is not None
        data = json.loads(lines[where])
        if damage == "bad_status":
            data["status"] = "DONE"
        elif damage == "state_differs":
            sub = next(
                i
                for i, k in enumerate(kinds)
                if k == "subtask" and json.loads(lines[i])["name"] == "work"
            )
            where, data = sub, json.loads(lines[sub])
            data["run_time"] = 1
        elif damage == "unknown_key":
            data["colour"] = "blue"
        elif damage == "dangling_link":
            data["upstream_id"] = 999_999
        elif damage == "missing_record":
            del lines[kinds.index("log")]
            where = kinds.index("end") - 1
        if damage != "missing_record":
            lines[where] = json.dumps(data)
        expected = where + 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    good = tmp_path / "good.jsonl"
    good.write_text(export_text(source, done.id))
    with Engine(f"sqlite:///{tmp_path / 'target.db'}", workers=0) as target:
        before = counts(target)
        with pytest.raises(ArgumentError) as caught:
            history.import_files(target, [good, bad])  # one bad file: nothing at all
        message = str(caught.value)
        assert f"bad.jsonl line {expected}:" in message, message
        assert says in message and "nothing was imported" in message
        assert counts(target) == before
        assert target.list().total_elements == 0


def test_a_file_with_two_tasks_imports_both(source: Engine, tmp_path: Path) -> None:
    one = support.failed_then_retried_then_skipped(source)
    two = source.submit(support.template())
    path = tmp_path / "two.jsonl"
    path.write_text(export_text(source, one.id) + export_text(source, two.id))
    with Engine(f"sqlite:///{tmp_path / 'target.db'}", workers=0) as target:
        done = history.import_files(target, [path])
        assert [d.original_id for d in done] == [one.id, two.id]
        assert [target.get(d.task_id).status.value for d in done] == ["SUCCESSFUL", "RUNNING"]
