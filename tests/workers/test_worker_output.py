"""What `dagtask worker` prints: one line per attempt started and ended (text or JSON), failures
with their reason, and what it does when dagtask is upgraded under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dagtask import Engine, TemplateBuilder
from dagtask.states import TaskStatus
from tests.workers.conftest import ROOT, wait_for


def _worker(url: str, *extra: str, prelude: str = "") -> subprocess.Popen[str]:
    program = (
        "import sys\n"
        + prelude
        + "from dagtask.cli import main\n"
        + "sys.exit(main(sys.argv[1:]))\n"
    )
    command = [
        *(sys.executable, "-c", program, "--db", url, "worker", "--name", "w"),
        *("--poll", "0.05", "--lease", "2", *extra),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_the_worker_logs_each_attempt_as_json_lines(sqlite_url: str) -> None:
    t = TemplateBuilder("logged")
    ok = t.add("fine", "tests.handlers.record")
    t.add("broken", "tests.handlers.record", after=[ok])
    with Engine(sqlite_url, workers=0) as engine:
        proc = _worker(sqlite_url, "--log-format", "json")
        try:
            task = engine.submit(t.build(), args={"fail": "broken"})
            done = engine.wait(task.id, timeout=60)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    assert done.status is TaskStatus.FAILED
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records), err
    messages = [(r["level"], r["message"]) for r in records]
    fine, broken = (next(s for s in done.subtasks if s.name == n) for n in ("fine", "broken"))
    assert ("INFO", f"start subtask {fine.id} 'fine' of task {task.id}: EXECUTE, attempt 1") in (
        messages
    )
    assert any(
        level == "INFO" and m.startswith(f"end subtask {fine.id} 'fine'") and "SUCCESSFUL" in m
        for level, m in messages
    ), messages
    assert any(
        level == "WARNING"
        and m.startswith(f"end subtask {broken.id} 'broken'")
        and "FAILED" in m
        and "injected failure in broken" in m
        for level, m in messages
    ), messages


def test_the_worker_logs_text_lines_by_default(sqlite_url: str) -> None:
    t = TemplateBuilder("text log")
    t.add("only", "tests.handlers.record")
    with Engine(sqlite_url, workers=0) as engine:
        proc = _worker(sqlite_url)
        try:
            done = engine.wait(engine.submit(t.build(), args={}).id, timeout=60)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    assert done.status is TaskStatus.SUCCESSFUL
    sid = done.subtasks[0].id
    assert f"INFO start subtask {sid} 'only'" in err, err
    assert f"INFO end subtask {sid} 'only' of task {done.id}: SUCCESSFUL after" in err, err


def test_a_worker_whose_dagtask_was_upgraded_stops_claiming_and_exits_75(
    sqlite_url: str, tmp_path: Path
) -> None:
    stamp = tmp_path / "installed-file"
    stamp.write_text("v1")
    prelude = f"import dagtask.worker.pool as p\np.CODE_FILES = ({str(stamp)!r},)\n"
    t = TemplateBuilder("after the upgrade")
    t.add("only", "tests.handlers.record")
    with Engine(sqlite_url, workers=0) as engine:
        proc = _worker(sqlite_url, prelude=prelude)
        wait_for(lambda: any(w.name == "w" for w in engine.store.workers()), "the worker")
        time.sleep(0.05)
        stamp.write_text("v2")  # what an upgrade does to the installed files
        os.utime(stamp, ns=(time.time_ns(), time.time_ns() + 10**9))
        code = proc.wait(timeout=60)
        _, err = proc.communicate(timeout=30)
        task = engine.submit(t.build(), args={})
        assert engine.get(task.id).status is TaskStatus.RUNNING  # nobody claimed it
        stopped = [w.status for w in engine.store.workers() if w.name == "w"]
    assert code == 75, err
    assert "dagtask was upgraded under it" in err, err
    assert stopped == ["STOPPED"]
