"""The history features through the Engine's own methods."""

from __future__ import annotations

import io
import json
from pathlib import Path

from dagtask import Engine, TaskStatus, TemplateBuilder


def test_engine_history_replay_export_import_and_rerun(tmp_path: Path) -> None:
    t = TemplateBuilder("three steps")
    first = t.add("first", "tests.handlers.record")
    second = t.add("second", "tests.handlers.record", after=[first])
    t.add("third", "tests.handlers.record", after=[second])
    with Engine(f"sqlite:///{tmp_path}/a.db", workers=2) as engine:
        done = engine.run(t.build(), timeout=30)
        assert done.status is TaskStatus.SUCCESSFUL

        told = engine.history(done.id)
        assert len(told.attempts) == 3
        assert engine.replay(done.id) == engine.replay(done.id, step=len(told.events))
        assert engine.replay(done.id, step=1) != engine.replay(done.id)

        out = io.StringIO()
        engine.export(done.id, out)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert len(lines) > 3
        (tmp_path / "task.jsonl").write_text(out.getvalue())

        again = engine.rerun(done.id, from_subtask="second")
        assert again.source_task_id == done.id
        finished = engine.run_task(again.id, timeout=30)
        assert finished.status is TaskStatus.SUCCESSFUL
        reused = [s for s in finished.subtasks if s.name == "first"]
        assert reused[0].message == f"output reused from task {done.id}"

    with Engine(f"sqlite:///{tmp_path}/b.db", workers=0) as other:
        [imported] = other.import_files([tmp_path / "task.jsonl"])
        assert other.get(imported.task_id).historical
