"""The history commands as a user runs them: history, replay, export, import, rerun, timeline,
compat."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.history.conftest import Run

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "ocp"
TEMPLATE = """\
name: CLI history
concurrency: 2
subtasks:
  - name: prepare
    handler: tests.handlers.Undoable
  - name: work
    handler: tests.handlers.Undoable
    retry_count: 1
    upstreams: [prepare]
  - name: finish
    handler: tests.handlers.Undoable
    upstreams: [work]
"""


def task_id(text: str) -> int:
    found = re.search(r"task (\d+)", text)
    assert found, text
    return int(found.group(1))


def failed_retried_skipped(dt: Run, tmp_path: Path) -> int:
    (tmp_path / "flow.yaml").write_text(TEMPLATE)
    code, out, _ = dt("run", "flow.yaml", "--set", "fail=work", "--wait")
    assert code == 1, out
    tid = task_id(out)
    assert dt("retry", str(tid), "--operator", "alice", "--wait")[0] == 1
    code, out, _ = dt("show", str(tid), "--json")
    work = next(s for s in json.loads(out)["subtasks"] if s["name"] == "work")
    assert dt("subtask", "skip", str(tid), str(work["id"]), "--operator", "bob", "--wait")[0] == 0
    return tid


def test_history_replay_and_timeline(dt: Run, tmp_path: Path) -> None:
    tid = failed_retried_skipped(dt, tmp_path)
    code, out, err = dt("history", str(tid))
    assert code == 0, err
    assert "template 'CLI history' version 1" in out
    assert "retry task by alice" in out and "skip subtask by bob" in out
    assert "RuntimeError: injected failure in work" in out
    assert re.search(r"work\s+2\s+RETRY\s+\S+\s+.*FAILED", out), out
    code, out, _ = dt("history", str(tid), "--json")
    data = json.loads(out)
    assert [a["operator"] for a in data["actions"]] == ["alice", "bob"]
    steps = len(data["events"])
    code, out, _ = dt("replay", str(tid))
    assert code == 0 and "the replay equals the stored task" in out
    code, out, _ = dt("replay", str(tid), "--step", "2")
    assert code == 0 and f"after step 2 of {steps}" in out
    assert re.search(r"prepare\s+READY", out), out
    start = data["attempts"][0]["start"]  # naive UTC
    code, out, _ = dt("replay", str(tid), "--at", start + "+00:00", "--json")
    assert code == 0 and json.loads(out)["time"] == start
    code, out, err = dt("replay", str(tid), "--step", "999")
    assert code == 2 and "--step must be between 0 and" in err
    code, out, _ = dt("timeline", str(tid), "--no-colour")
    assert code == 0
    work_line = next(line for line in out.splitlines() if line.strip().startswith("work"))
    assert "e" in work_line and "S" in work_line and "4 attempts, last SUCCEEDED" in work_line
    code, out, _ = dt("timeline", str(tid), "--html", "t.html")
    page = (tmp_path / "t.html").read_text()
    assert code == 0 and page.startswith("<!DOCTYPE html>")
    assert page.count('class="attempt"') == len(data["attempts"])
    assert 'data-op="SKIP"' in page and 'data-result="FAILED"' in page
    assert "injected failure in work" in page  # the hover details
    # Self-contained: nothing is loaded from elsewhere.
    assert not re.search(r"<link|<img|\bsrc=|url\(|@import", page)
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"]


def test_export_import_into_another_database(dt: Run, tmp_path: Path) -> None:
    tid = failed_retried_skipped(dt, tmp_path)
    code, out, _ = dt("export", str(tid))
    assert code == 0
    (tmp_path / "task.jsonl").write_text(out)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    code, out, err = dt("import", "task.jsonl", db=other)
    assert code == 0, err
    assert f"imported from dagtask task {tid} (task.jsonl)" in out
    new = task_id(out)
    code, out, _ = dt("show", str(new), db=other)
    assert "historical: imported from dagtask task" in out and "ORIGINAL ID" in out
    code, out, _ = dt("history", str(new), db=other)
    assert "skip subtask by bob" in out
    code, again, _ = dt("export", str(new), db=other)
    assert len(again.splitlines()) == len((tmp_path / "task.jsonl").read_text().splitlines())
    # A truncated copy is refused with its line, and nothing is imported.
    lines = (tmp_path / "task.jsonl").read_text().splitlines()
    (tmp_path / "cut.jsonl").write_text("\n".join(lines[:5]) + "\n")
    third = f"sqlite:///{tmp_path / 'third.db'}"
    code, out, err = dt("import", "cut.jsonl", db=third)
    assert code == 2 and "cut.jsonl line 6:" in err and "truncated" in err
    assert "no tasks" in dt("list", db=third)[1]


def test_import_ocp_documents(dt: Run) -> None:
    files = [str(SAMPLES / "stop-ocp-agent.json"), str(SAMPLES / "query-task-list.json")]
    code, out, err = dt("import", *files)
    assert code == 0, err
    assert "3 tasks imported as historical records" in out
    new = task_id(out)
    code, out, _ = dt("show", str(new))
    ocp_id = json.loads((SAMPLES / "stop-ocp-agent.json").read_text())["data"]["id"]
    assert f"historical: imported from OCP task {ocp_id} " in out and "Stop OCP agent" in out
    code, out, err = dt("import", str(SAMPLES / "subtask-log.json"))
    assert code == 2 and "a subtask log" in err


def test_rerun_from_a_subtask(dt: Run, tmp_path: Path) -> None:
    tid = failed_retried_skipped(dt, tmp_path)
    code, out, err = dt("rerun", str(tid), "--from", "finish", "--wait", "--operator", "erin")
    assert code == 0, out + err
    assert f"rerun of task {tid}, 2 subtasks reuse its outputs" in out
    new = task_id(out.split("rerun of")[0])
    code, out, _ = dt("history", str(new))
    assert f"rerunning task {tid}" in out and out.count("output reused from task") == 2


def test_compat(dt: Run, tmp_path: Path) -> None:
    tid = failed_retried_skipped(dt, tmp_path)
    code, out, _ = dt("compat", str(tid), "--template", "CLI history:1")
    assert code == 0 and "nothing differs" in out
    (tmp_path / "v2.yaml").write_text(
        TEMPLATE.replace("name: work", "name: the work").replace(
            "upstreams: [work]", "upstreams: [the work]"
        )
    )
    code, out, _ = dt("compat", str(tid), "--template", "v2.yaml")
    assert code == 1
    assert "rollback: would NOT fit" in out and "renamed" in out
    code, out, err = dt("compat", str(tid), "--template", "CLI history:7")
    assert code == 2 and "stored versions: 1" in err
