"""Where dagtask follows OCP's observable behaviour (issue: OCP fidelity): the closing log line of
each attempt, ``prohibit_rollback`` in output contexts, and which flag wins at submit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dagtask import (
    Engine,
    Operation,
    OperationNotAllowedError,
    RunContext,
    SubtaskStatus,
    TaskStatus,
    TemplateBuilder,
    fidelity,
    views,
)

UNDO = "tests.handlers.Undoable"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(f"sqlite:///{tmp_path}/f.db", workers=3, poll_interval=0.05) as eng:
        eng.start()
        yield eng


def closing(log: str) -> list[str]:
    """The bare OCP closing lines of a log, in order."""
    return [line for line in log.splitlines() if ", operation:" in line]


def test_every_attempt_closes_with_ocps_line(engine: Engine) -> None:
    t = TemplateBuilder("closing")
    t.add("ok", UNDO)
    t.add("flaky", "tests.handlers.flaky", retry_count=1)
    t.add("bad", UNDO, after=["ok", "flaky"])
    task = engine.run(t.build(), args={"fail_times": "1", "fail": "bad"}, timeout=30)
    assert task.status is TaskStatus.FAILED
    ok, flaky, bad = (task.subtask(n) for n in ("ok", "flaky", "bad"))
    assert closing(engine.logs(task.id, ok.id)) == [
        f"Set state for subtask: {ok.id}, operation:EXECUTE, state: SUCCESSFUL"
    ]
    # The automatic retry: the first attempt closes FAILED, the second (RETRY) SUCCESSFUL.
    assert closing(engine.logs(task.id, flaky.id, attempt=1)) == [
        f"Set state for subtask: {flaky.id}, operation:EXECUTE, state: FAILED"
    ]
    assert closing(engine.logs(task.id, flaky.id, attempt=2)) == [
        f"Set state for subtask: {flaky.id}, operation:RETRY, state: SUCCESSFUL"
    ]
    bad_log = engine.logs(task.id, bad.id)
    # The entity's status line comes first, then the closing line, as in OCP's log.
    assert bad_log.splitlines()[-2:] == [
        bad_log.splitlines()[-2],
        f"Set state for subtask: {bad.id}, operation:EXECUTE, state: FAILED",
    ]
    assert bad_log.splitlines()[-2].endswith(
        f"Set state for subtask: {bad.id}, current state: RUNNING, new state: FAILED"
    )

    # A rollback step closes when its subtask is PENDING again.
    engine.rollback(task.id)
    rolled = engine.wait(task.id, timeout=30)
    assert rolled.status is TaskStatus.SUCCESSFUL
    last = max(s.run_time for s in rolled.subtasks if s.name == "ok")
    assert closing(engine.logs(task.id, ok.id, attempt=last))[-1] == (
        f"Set state for subtask: {ok.id}, operation:ROLLBACK, state: PENDING"
    )


def test_a_cancelled_attempt_closes_with_operation_cancel(engine: Engine) -> None:
    t = TemplateBuilder("cancel me")
    t.add("wait", "tests.handlers.sleep_with_token")
    task = engine.submit(t.build(), args={"seconds": "30"})
    deadline = time.monotonic() + 10
    while engine.get(task.id).subtask("wait").status is not SubtaskStatus.RUNNING:
        assert time.monotonic() < deadline, "the subtask never started"
        time.sleep(0.02)
    sub = task.subtask("wait")
    engine.cancel_subtask(task.id, sub.id)
    done = engine.wait(task.id, timeout=15)
    s = done.subtask("wait")
    assert (s.status, s.operation) == (SubtaskStatus.FAILED, Operation.CANCEL)
    assert closing(engine.logs(task.id, sub.id)) == [
        f"Set state for subtask: {sub.id}, operation:CANCEL, state: FAILED"
    ]


def test_a_subtask_that_prohibits_rollback_says_so_in_its_output(engine: Engine) -> None:
    t = TemplateBuilder("guarded")
    t.add("a", UNDO)
    t.add("b", "tests.handlers.Guarded", after=["a"])  # its class prohibits rollback
    t.add("c", UNDO, after=["a"])
    t.add("d", "tests.handlers.emit", after=["b", "c"])
    task = engine.run(t.build(), timeout=30)
    assert task.status is TaskStatus.SUCCESSFUL, [s.message for s in task.subtasks]
    outputs = {s.name: s.context for s in task.subtasks}
    assert all(ctx is not None for ctx in outputs.values())
    got = {name: ctx.string_map["prohibit_rollback"] for name, ctx in outputs.items() if ctx}
    # b has run, so its output says "true"; c's sibling "false" does not clash with it in d's
    # input: the merge keeps "true" (a rollback of d's work would pass through b).
    assert got == {"a": "false", "b": "true", "c": "false", "d": "true"}
    assert task.context.string_map["prohibit_rollback"] == "false"


def test_the_templates_flag_wins_over_the_callers_argument(engine: Engine) -> None:
    t = TemplateBuilder("never undo", prohibit_rollback=True)
    t.add("a", UNDO)
    task = engine.run(t.build(), args={"prohibit_rollback": "false", "fail": "a"}, timeout=30)
    assert task.context.string_map["prohibit_rollback"] == "true"
    assert task.prohibit_rollback
    assert not engine.rollback_plan(task.id).allowed


class SlowUndo:
    """Fails its first execute; its rollback waits for a cancel (up to 30 s)."""

    def execute(self, ctx: RunContext) -> None:
        if ctx.run_time == 1:
            raise RuntimeError("the first execute fails on purpose")

    def rollback(self, ctx: RunContext) -> None:
        ctx.token.wait(30)
        ctx.token.raise_if_cancelled()

    def retry(self, ctx: RunContext) -> None:
        self.execute(ctx)  # not the default rollback-then-execute


def until_status(engine: Engine, task_id: int, name: str, status: SubtaskStatus) -> None:
    deadline = time.monotonic() + 15
    while engine.get(task_id).subtask(name).status is not status:
        assert time.monotonic() < deadline, f"{name} never became {status}"
        time.sleep(0.02)


@pytest.fixture
def compat() -> Iterator[Callable[..., None]]:
    """Switch dagtask.fidelity's departures back to OCP's for one test."""
    yield lambda **switches: fidelity.configure(fidelity.OcpCompat(**switches))
    fidelity.configure(None)


@pytest.mark.parametrize("ocp", [False, True])
def test_a_subtask_retry_while_the_task_rolls_back(
    engine: Engine, compat: Callable[..., None], ocp: bool
) -> None:
    compat(retry_in_rollback=ocp)
    t = TemplateBuilder("slow undo")
    t.add("a", f"{__name__}.SlowUndo")
    task = engine.run(t.build(), timeout=30)
    assert task.status is TaskStatus.FAILED
    engine.rollback(task.id)
    until_status(engine, task.id, "a", SubtaskStatus.RUNNING)
    sid = task.subtask("a").id
    engine.cancel_subtask(task.id, sid)
    stopped = engine.wait(task.id, timeout=15)
    a = stopped.subtask("a")
    assert (stopped.operation, a.status, a.operation) == (
        Operation.ROLLBACK,
        SubtaskStatus.FAILED,
        Operation.CANCEL,
    )
    if not ocp:
        # dagtask: a forward retry in the middle of a rollback is refused; roll back again.
        with pytest.raises(OperationNotAllowedError, match="its task is rolling back"):
            engine.retry_subtask(task.id, sid)
        assert engine.get(task.id).subtask("a").status is SubtaskStatus.FAILED
        return
    # OCP: only the subtask's own operation counts (CANCEL here), so the retry runs execute.
    engine.retry_subtask(task.id, sid)
    done = engine.wait(task.id, timeout=15)
    a = done.subtask("a")
    assert (a.status, a.operation) == (SubtaskStatus.SUCCESSFUL, Operation.RETRY)
    # The task was rolling back, and a SUCCESSFUL subtask is not rolled back: FAILED, and
    # rolling it back again undoes it.
    assert (done.status, done.operation) == (TaskStatus.FAILED, Operation.ROLLBACK)


def test_ocp_counts_only_task_retries_and_automatic_retries(engine: Engine) -> None:
    t = TemplateBuilder("counted")
    t.add("auto", "tests.handlers.flaky", retry_count=1)  # fails once, retried automatically
    t.add("manual", "tests.handlers.flaky", retry_count=0)  # fails until retried by hand
    task = engine.run(t.build(), args={"fail_times": "2"}, timeout=30)
    auto, manual = task.subtask("auto"), task.subtask("manual")
    # auto: attempt 1 fails, the automatic retry (attempt 2) fails too: both count in OCP.
    assert (auto.status, auto.run_time, auto.ocp_run_time) == (SubtaskStatus.FAILED, 2, 2)
    assert (manual.status, manual.run_time, manual.ocp_run_time) == (SubtaskStatus.FAILED, 1, 1)

    engine.retry_subtask(task.id, manual.id)  # a subtask retry: a new attempt, not in OCP's count
    once = engine.wait(task.id, timeout=15)
    manual = once.subtask("manual")
    assert (manual.status, manual.run_time, manual.ocp_run_time) == (SubtaskStatus.FAILED, 2, 1)

    engine.retry(task.id)  # a task retry counts in both
    done = engine.wait(task.id, timeout=15)
    got = {s.name: (s.status, s.run_time, s.ocp_run_time) for s in done.subtasks}
    assert got == {
        "auto": (SubtaskStatus.SUCCESSFUL, 3, 3),
        "manual": (SubtaskStatus.SUCCESSFUL, 3, 2),
    }


def test_an_unknown_switch_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, fidelity.VARIABLE: "run_time,http_418"}
    env.pop("DAGTASK_DB_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "dagtask", "--db", f"sqlite:///{tmp_path}/x.db", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        "dagtask: error: $DAGTASK_OCP_COMPAT: unknown OCP switch 'http_418'; use a "
        "comma-separated list of run_time, retry_in_rollback, http_400, or all"
    ]
    assert not (tmp_path / "x.db").exists()  # refused before anything was created


def test_the_run_time_switch_shows_ocps_count_in_task_json(
    engine: Engine, compat: Callable[..., None]
) -> None:
    t = TemplateBuilder("shown")
    t.add("manual", "tests.handlers.flaky", retry_count=0)
    task = engine.run(t.build(), args={"fail_times": "1"}, timeout=30)
    sid = task.subtask("manual").id
    engine.retry_subtask(task.id, sid)  # attempt 2; OCP keeps runTime 1
    done = engine.wait(task.id, timeout=15)
    assert done.status is TaskStatus.SUCCESSFUL
    (plain,) = views.task_json(done)["subtasks"]
    assert plain["runTime"] == 2 and "attempt" not in plain
    compat(run_time=True)
    (shown,) = views.task_json(done)["subtasks"]
    assert (shown["runTime"], shown["attempt"]) == (1, 2)
    # The logs stay per attempt: attempt 2 is the retry's.
    assert "############{RETRY}{" in engine.logs(task.id, sid, attempt=shown["attempt"])
