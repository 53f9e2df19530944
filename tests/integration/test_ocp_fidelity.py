"""Where dagtask follows OCP's observable behaviour (issue: OCP fidelity): the closing log line of
each attempt, ``prohibit_rollback`` in output contexts, and which flag wins at submit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagtask import Engine, Operation, SubtaskStatus, TaskStatus, TemplateBuilder

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
