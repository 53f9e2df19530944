"""The operator actions of the ``dagtask`` command line (SPEC §4) and ``logs --follow`` (SPEC §6).

Tasks come from small YAML templates written into tmp_path, whose handlers live in a package next
to them (``acts.ops``). What needs a process of its own runs as one (``python -m dagtask``): the
foreground worker that runs a long subtask while another process cancels it or follows its log,
and the refusals as a user sees them. The rest calls :func:`dagtask.cli.main` in-process.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dagtask import Engine
from tests.integration.cli.support import Cli, Run

OPS = '''
import time
from pathlib import Path


def _named(ctx, key):
    return ctx.subtask_name in ctx.string_map.get(key, "").split(",")


class Step:
    """Fails when stringMap.fail names it; its rollback is appended to stringMap.journal."""

    def execute(self, ctx):
        ctx.log.info("executing %s", ctx.subtask_name)
        if _named(ctx, "fail"):
            raise RuntimeError(ctx.subtask_name + " fails on purpose")

    def rollback(self, ctx):
        journal = ctx.string_map.get("journal")
        if journal:
            with open(journal, "a") as out:
                out.write(ctx.subtask_name + "\\n")


def gate(ctx):
    """Log a line, wait until the file stringMap.gate exists (or a cancel), log another."""
    gate = Path(ctx.string_map["gate"])
    ctx.log.info("waiting for the gate %s", gate.name)
    deadline = time.monotonic() + 120
    while not gate.exists():
        if ctx.token.wait(0.05):
            ctx.token.raise_if_cancelled()
        if time.monotonic() > deadline:
            raise TimeoutError("the gate never opened")
    ctx.log.info("the gate %s opened", gate.name)
'''

DIAMOND = """
name: Diamond
subtasks:
  - {name: a, handler: acts.ops.Step, timeout: 30}
  - {name: b, handler: acts.ops.Step, timeout: 30, upstreams: [a]}
  - {name: c, handler: acts.ops.Step, timeout: 30, upstreams: [a]}
  - {name: d, handler: acts.ops.Step, timeout: 30, upstreams: [b, c]}
"""

GATED = """
name: Gated
subtasks:
  - {name: Wait, handler: acts.ops.gate, timeout: 120}
  - {name: After, handler: acts.ops.Step, timeout: 30, upstreams: [Wait]}
"""


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def files(tmp_path: Path) -> Iterator[None]:
    """The templates and their handler package in tmp_path; ``acts`` imported fresh each test."""
    (tmp_path / "acts").mkdir()
    (tmp_path / "acts" / "__init__.py").write_text("")
    (tmp_path / "acts" / "ops.py").write_text(OPS)
    (tmp_path / "diamond.yaml").write_text(DIAMOND)
    (tmp_path / "gated.yaml").write_text(GATED)
    yield
    for name in [m for m in sys.modules if m == "acts" or m.startswith("acts.")]:
        del sys.modules[name]


class Proc:
    """A ``python -m dagtask`` subprocess whose stdout lines are collected as they come."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "dagtask", *argv],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)

    def wait_for_line(self, pattern: str, seconds: float) -> str:
        """The first stdout line (from now on) that matches ``pattern``."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no line matching {pattern!r} within {seconds} s: {self.out}")
            with contextlib.suppress(queue.Empty):
                line = self.lines.get(timeout=min(left, 0.5))
                self.out.append(line)
                if re.search(pattern, line):
                    return line

    def finish(self, seconds: float) -> tuple[int, str, str]:
        """Wait for the process to exit; its code, the rest of stdout, and stderr."""
        try:
            _, err = self.popen.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the process did not exit within {seconds} s: {self.out}")
        self._reader.join(timeout=10)
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        self.out += rest
        return self.popen.returncode, "".join(rest), err

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            self.popen.communicate(timeout=10)


@pytest.fixture
def spawn(tmp_path: Path, db_url: str, env: dict[str, str]) -> Iterator[Callable[..., Proc]]:
    """Start ``python -m dagtask ARGS --db <tmp db>`` in the background; killed at the end."""
    procs: list[Proc] = []

    def start(*args: str) -> Proc:
        proc = Proc(["--db", db_url, *args], tmp_path, env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


@pytest.fixture
def worker(spawn: Callable[..., Proc]) -> Iterator[Proc]:
    """A foreground ``dagtask worker``; stopped with SIGTERM at the end (killed if it hangs)."""
    proc = spawn("worker", "--concurrency", "2")
    yield proc
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=15)


def task_of(dt: Run, task_id: int) -> dict[str, Any]:
    code, out, err = dt("show", str(task_id), "--json")
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def subtasks_of(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {sub["name"]: sub for sub in task["subtasks"]}


def parsed(result: tuple[int, str, str], code: int) -> Any:
    """The JSON a command printed, after checking its exit code."""
    got, out, err = result
    assert got == code, out + err
    return json.loads(out)


def one_error_line(result: tuple[int, str, str], starts: str, code: int = 4) -> str:
    """The one error line of a refusal by the engine (exit 4), or of a usage mistake (2)."""
    got, out, err = result
    assert got == code, out + err
    assert err.startswith(starts), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def failed_diamond(dt: Run, *args: str) -> dict[str, Any]:
    """A Diamond task run here to its end, FAILED (``args`` name what fails)."""
    task: dict[str, Any] = parsed(dt("run", "diamond.yaml", *args, "--wait", "--json"), 1)
    assert task["status"] == "FAILED"
    return task


# ---- retry and skip ------------------------------------------------------------------------------


def test_retry_still_fails_then_skip_finishes_the_task(dt: Run, db_url: str) -> None:
    task = failed_diamond(dt, "--set", "fail=c")
    task_id = str(task["id"])
    c = subtasks_of(task)["c"]
    assert (c["status"], c["runTime"]) == ("FAILED", 1)

    again = parsed(dt("retry", task_id, "--wait", "--json"), 1)
    assert (again["status"], again["operation"]) == ("FAILED", "RETRY")
    c = subtasks_of(again)["c"]
    assert (c["status"], c["operation"], c["runTime"]) == ("FAILED", "RETRY", 2)
    assert subtasks_of(again)["d"]["status"] == "PENDING"

    # OCP's subtask retry returns the subtask: here as it is once the task has ended.
    sub = parsed(dt("subtask", "retry", task_id, str(c["id"]), "--wait", "--json"), 1)
    assert (sub["id"], sub["name"]) == (c["id"], "c")
    assert (sub["status"], sub["operation"], sub["runTime"]) == ("FAILED", "RETRY", 3)

    code, out, err = dt("subtask", "skip", task_id, str(c["id"]), "--wait", "--operator", "alice")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == (
        f"subtask {c['id']} c of task {task_id} skipped by alice: READY (SKIP); "
        "task RUNNING (RETRY); running the task in this process"
    )
    # Live progress starts at the action, not at the beginning of the task's history.
    progress = [line for line in lines if re.match(r"  \[\d\d:\d\d:\d\d\.\d{3}\] ", line)]
    assert "c: FAILED -> READY (operation SKIP)" in progress[0], progress
    assert any("d: RUNNING -> SUCCESSFUL" in line for line in progress), progress
    assert not any("a: " in line for line in progress), progress
    assert re.search(rf"^task {task_id} Diamond: SUCCESSFUL \(RETRY\)", out, re.M), out

    done = task_of(dt, int(task_id))
    assert done["status"] == "SUCCESSFUL"
    statuses = {name: (s["status"], s["operation"]) for name, s in subtasks_of(done).items()}
    assert statuses == {
        "a": ("SUCCESSFUL", "EXECUTE"),
        "b": ("SUCCESSFUL", "EXECUTE"),
        "c": ("SUCCESSFUL", "SKIP"),
        "d": ("SUCCESSFUL", "EXECUTE"),
    }
    # Who acted is in the task's history: --operator, else the OS user.
    with Engine(db_url, workers=0) as engine:
        actors = {e.executor for e in engine.events(int(task_id)) if e.message}
    assert {"alice", getpass.getuser()} <= actors, actors


def test_actions_without_wait_leave_the_work_to_workers(dt: Run) -> None:
    task = failed_diamond(dt, "--set", "fail=b")
    task_id = str(task["id"])
    b = subtasks_of(task)["b"]

    code, out, err = dt("subtask", "retry", task_id, str(b["id"]), "--operator", "bob")
    assert code == 0, err
    assert out.splitlines() == [
        f"subtask {b['id']} b of task {task_id} retried by bob: READY (RETRY); task RUNNING "
        "(EXECUTE)",
        f"  run it with `dagtask worker` (or add --wait here); follow it with "
        f"`dagtask show {task_id}`",
    ]
    assert subtasks_of(task_of(dt, int(task_id)))["b"]["status"] == "READY"

    # Cancel the task (beyond OCP): the READY retry is withdrawn (it ran before, so it shows
    # FAILED / CANCEL rather than PENDING) and the task ends FAILED.
    cancelled = parsed(dt("cancel", task_id, "--json"), 0)
    assert cancelled["status"] == "FAILED"
    assert (subtasks_of(cancelled)["b"]["status"], subtasks_of(cancelled)["b"]["operation"]) == (
        "FAILED",
        "CANCEL",
    )


# ---- rollback ------------------------------------------------------------------------------------


def test_rollback_plan_then_rollback(dt: Run, tmp_path: Path) -> None:
    journal = tmp_path / "journal.txt"
    task = failed_diamond(dt, "--set", "fail=d", "--set", f"journal={journal}")
    task_id = str(task["id"])
    ids = {name: sub["id"] for name, sub in subtasks_of(task).items()}

    code, out, err = dt("rollback", task_id, "--plan")
    assert code == 0, err
    assert out.startswith(f"rollback of task {task_id} is allowed: 4 subtasks to undo in 3 waves")
    rows = re.findall(r"^  (\d)\s+(\d+)\s+(\w)\s+(\w+)\s+(yes|no)$", out, re.M)
    waves: dict[str, set[tuple[int, str, str, str]]] = {}
    for wave, sid, name, status, prohibits in rows:
        waves.setdefault(wave, set()).add((int(sid), name, status, prohibits))
    assert waves == {
        "1": {(ids["d"], "d", "FAILED", "no")},
        "2": {(ids["b"], "b", "SUCCESSFUL", "no"), (ids["c"], "c", "SUCCESSFUL", "no")},
        "3": {(ids["a"], "a", "SUCCESSFUL", "no")},
    }, out

    plan = parsed(dt("rollback", task_id, "--plan", "--json"), 0)
    assert set(plan) == {"taskId", "allowed", "refusals", "waves"}
    assert (plan["taskId"], plan["allowed"], plan["refusals"]) == (int(task_id), True, [])
    assert [sorted(step["name"] for step in wave) for wave in plan["waves"]] == [
        ["d"],
        ["b", "c"],
        ["a"],
    ]
    assert plan["waves"][0] == [
        {"id": ids["d"], "name": "d", "status": "FAILED", "prohibitRollback": False}
    ]
    assert journal.exists() is False  # the plan changed nothing
    assert task_of(dt, int(task_id))["status"] == "FAILED"

    rolled = parsed(dt("rollback", task_id, "--wait", "--json"), 0)
    assert (rolled["status"], rolled["operation"]) == ("SUCCESSFUL", "ROLLBACK")
    shown = task_of(dt, int(task_id))
    assert (shown["status"], shown["operation"]) == ("SUCCESSFUL", "ROLLBACK")
    assert {sub["status"] for sub in shown["subtasks"]} == {"PENDING"}
    undone = journal.read_text().split()
    assert undone[0] == "d" and undone[-1] == "a" and sorted(undone[1:3]) == ["b", "c"], undone

    # Rolled back: nothing left to roll back.
    code, out, _ = dt("rollback", task_id, "--plan")
    assert code == 1
    assert "is refused" in out
    assert "refused: it is SUCCESSFUL; only a FAILED task can be rolled back" in out


def test_refused_actions_print_one_line_and_exit_4(dt: Run, cli: Cli) -> None:
    task = parsed(dt("run", "diamond.yaml", "--wait", "--json"), 0)
    task_id = str(task["id"])
    a = subtasks_of(task)["a"]

    # As a user sees it from a real process: one line, OCP's code once, no traceback.
    retried = cli("retry", task_id)
    result = (retried.returncode, retried.stdout, retried.stderr)
    err = one_error_line(result, f"dagtask: error 20003: cannot retry task {task_id}: ")
    assert "SUCCESSFUL" in err

    for action in ("retry", "skip", "cancel"):
        err = one_error_line(dt("subtask", action, task_id, str(a["id"])), "dagtask: error 20003: ")
        assert f"subtask {a['id']} of task {task_id}" in err
    one_error_line(dt("cancel", task_id), "dagtask: error 20003: ")
    one_error_line(dt("subtask", "skip", task_id, "999"), "dagtask: error 20000: ")
    one_error_line(dt("rollback", "999", "--plan"), "dagtask: error 20000: ")

    prohibited = failed_diamond(dt, "--set", "fail=d", "--set", "prohibit_rollback=true")
    pid = str(prohibited["id"])
    err = one_error_line(dt("rollback", pid), f"dagtask: error 20004: task {pid} cannot be ")
    assert "prohibit_rollback" in err
    code, out, _ = dt("rollback", pid, "--plan")
    assert code == 1
    assert "refused: the task's stringMap.prohibit_rollback is 'true'" in out
    plan = parsed(dt("rollback", pid, "--plan", "--json"), 1)
    assert plan["allowed"] is False
    assert plan["refusals"] == ["the task's stringMap.prohibit_rollback is 'true'"]
    assert task_of(dt, int(pid))["status"] == "FAILED"  # nothing changed

    # Mistakes in the command line itself.
    assert "--wait" in one_error_line(
        dt("retry", pid, "--timeout", "5"), "dagtask: error: ", code=2
    )
    assert "--plan" in one_error_line(
        dt("rollback", pid, "--plan", "--wait"), "dagtask: error: ", code=2
    )
    assert "--operator" in one_error_line(
        dt("retry", pid, "--operator", " "), "dagtask: error: ", code=2
    )
    assert "--json" in one_error_line(
        dt("logs", pid, str(a["id"]), "--follow", "--json"), "dagtask: error: ", code=2
    )


# ---- with a worker in another process ------------------------------------------------------------


def submit_gated(dt: Run, tmp_path: Path) -> tuple[str, int, Path]:
    """A Gated task whose Wait subtask a worker is running: (task id, Wait's id, its gate)."""
    gate = tmp_path / "gate"
    task = parsed(dt("run", "gated.yaml", "--set", f"gate={gate}", "--json"), 0)
    wait_id = subtasks_of(task)["Wait"]["id"]
    wait_until(
        lambda: subtasks_of(task_of(dt, task["id"]))["Wait"]["status"] == "RUNNING",
        60,
        "the worker to start the Wait subtask",
    )
    return str(task["id"]), wait_id, gate


def test_subtask_cancel_interrupts_the_worker_running_it(
    dt: Run, cli: Cli, worker: Proc, tmp_path: Path
) -> None:
    task_id, wait_id, gate = submit_gated(dt, tmp_path)

    started = time.monotonic()
    cancelled = cli("subtask", "cancel", task_id, str(wait_id), "--operator", "bob")
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert cancelled.stdout.startswith(
        f"subtask {wait_id} Wait of task {task_id} cancel requested by bob: "
    )

    def wait_failed() -> bool:
        wait = subtasks_of(task_of(dt, int(task_id)))["Wait"]
        return bool(wait["status"] == "FAILED")

    wait_until(wait_failed, 20, "the cancelled subtask to end")
    assert time.monotonic() - started < 15
    assert not gate.exists()
    wait_until(lambda: task_of(dt, int(task_id))["status"] == "FAILED", 20, "the task to end")
    subs = subtasks_of(task_of(dt, int(task_id)))
    assert (subs["Wait"]["status"], subs["Wait"]["operation"]) == ("FAILED", "CANCEL")
    assert subs["Wait"]["runTime"] == 1  # a cancelled subtask is not retried
    assert subs["After"]["status"] == "PENDING"
    assert worker.popen.poll() is None


def test_cancel_task_waits_until_it_stopped(
    dt: Run, cli: Cli, worker: Proc, tmp_path: Path
) -> None:
    task_id, _, gate = submit_gated(dt, tmp_path)

    started = time.monotonic()
    cancelled = cli("cancel", task_id, "--wait", "--timeout", "60", "--json")
    # A cancelled task ends FAILED, so --wait exits 1 as for any task that ends FAILED.
    assert cancelled.returncode == 1, cancelled.stdout + cancelled.stderr
    assert time.monotonic() - started < 30
    task = json.loads(cancelled.stdout)
    assert (task["status"], task["operation"]) == ("FAILED", "EXECUTE")
    subs = subtasks_of(task)
    assert (subs["Wait"]["status"], subs["Wait"]["operation"]) == ("FAILED", "CANCEL")
    assert subs["After"]["status"] == "PENDING"
    assert not gate.exists()


def test_logs_follow_prints_lines_as_they_come(
    dt: Run, spawn: Callable[..., Proc], worker: Proc, tmp_path: Path
) -> None:
    task_id, wait_id, gate = submit_gated(dt, tmp_path)

    # Ctrl-C stops following quietly.
    first = spawn("logs", task_id, str(wait_id), "--follow")
    first.wait_for_line(r"waiting for the gate gate$", 30)
    first.popen.send_signal(signal.SIGINT)
    code, _, err = first.finish(30)
    assert (code, err) == (130, "")

    follower = spawn("logs", task_id, str(wait_id), "--follow")
    assert "############{EXECUTE}{" in follower.wait_for_line(r"^#+\{EXECUTE\}", 30)
    follower.wait_for_line(r"waiting for the gate gate$", 30)
    assert follower.popen.poll() is None  # still following: the subtask still runs
    gate.touch()
    follower.wait_for_line(r"the gate gate opened$", 30)
    code, _, err = follower.finish(30)
    assert code == 0, err
    text = "".join(follower.out)
    assert "current state: RUNNING, new state: SUCCESSFUL" in text, text

    # Following an ended subtask prints its log once and returns.
    assert dt("logs", task_id, str(wait_id), "--follow") == dt("logs", task_id, str(wait_id))


def test_logs_of_the_whole_task_printed_or_zipped(dt: Run, tmp_path: Path) -> None:
    task = failed_diamond(dt, "--set", "fail=c")
    task_id = str(task["id"])
    subs = subtasks_of(task)
    code, text, err = dt("logs", task_id)
    assert (code, err) == (0, "")
    headers = [line for line in text.splitlines() if line.startswith("==> ")]
    # In the task's order (roots first, as `dagtask show` lists them), the ones that ran.
    ran = [(s["id"], s["name"]) for s in task["subtasks"] if s["status"] != "PENDING"]
    assert headers == [f"==> subtask {sid} {name!r}, attempt 1 <==" for sid, name in ran]
    assert headers[0] == f"==> subtask {subs['a']['id']} 'a', attempt 1 <=="
    assert "c fails on purpose" in text

    listed = parsed(dt("logs", task_id, "--json"), 0)
    assert [(e["subtaskId"], e["runTime"]) for e in listed] == [(sid, 1) for sid, _ in ran]

    code, said, err = dt("logs", task_id, "--zip", "all.zip")
    assert (code, err) == (0, "")
    assert said == f"task {task_id}: every log, its JSON and its history written to all.zip\n"
    with zipfile.ZipFile(tmp_path / "all.zip") as archive:
        logs = sorted(n for n in archive.namelist() if n.startswith("logs/"))
        assert logs == sorted(f"logs/{sid}-{name}/attempt-1.log" for sid, name in ran)
        assert (
            "c fails on purpose" in archive.read(f"logs/{subs['c']['id']}-c/attempt-1.log").decode()
        )

    # Mistakes: one line, exit 2, nothing written.
    refused = dt("logs", task_id, "a", "--zip", "x.zip")
    assert refused[0] == 2 and "--zip writes every log of the task" in refused[2]
    assert not (tmp_path / "x.zip").exists()
    nowhere = dt("logs", task_id, "--zip", str(tmp_path / "no" / "such" / "x.zip"))
    assert nowhere[0] == 2 and "cannot write" in nowhere[2] and len(nowhere[2].splitlines()) == 1
    assert dt("logs", "424242", "--zip", "y.zip")[0] == 4
    assert not (tmp_path / "y.zip").exists()
