"""The engine running real tasks: order, retries, timeouts, concurrency, random DAGs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagtask import Engine, Operation, SubtaskStatus, TaskStatus, TemplateBuilder
from dagtask.errors import HandlerImportError, TaskTimeoutError
from tests import handlers
from tests.hypo import examples
from tests.strategies import Dag, dags


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path = tmp_path_factory.mktemp("engine") / "e.db"
    with Engine(f"sqlite:///{path}", workers=4, poll_interval=0.05) as eng:
        eng.start()
        yield eng


def started_before_all_downstreams(dag: Dag, journal: list[tuple[str, str, float]]) -> None:
    start = {name: t for name, phase, t in journal if phase == "start"}
    end = {name: t for name, phase, t in journal if phase == "end"}
    for up, down in dag.edges:
        if down in start:
            assert up in end and end[up] <= start[down], f"{down} started before {up} ended"


@settings(
    max_examples=examples(25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(dag=dags())
def test_random_dag_runs_every_subtask_once_in_dependency_order(engine: Engine, dag: Dag) -> None:
    task = engine.submit(dag.template(concurrency=7))
    done = engine.wait(task.id, timeout=60)
    assert done.status is TaskStatus.SUCCESSFUL
    journal = handlers.JOURNAL.pop(task.id)
    starts = [name for name, phase, _ in journal if phase == "start"]
    assert sorted(starts) == sorted(dag.names)  # each exactly once
    started_before_all_downstreams(dag, journal)
    assert all(s.status is SubtaskStatus.SUCCESSFUL for s in done.subtasks)


@settings(
    max_examples=examples(25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data(), dag=dags())
def test_failures_stop_exactly_their_descendants(
    engine: Engine, dag: Dag, data: st.DataObject
) -> None:
    failing = data.draw(st.sets(st.sampled_from(dag.names), min_size=1, max_size=3))
    task = engine.submit(dag.template(), args={"fail": ",".join(sorted(failing))})
    done = engine.wait(task.id, timeout=60)
    assert done.status is TaskStatus.FAILED
    journal = handlers.JOURNAL.pop(task.id)
    ran = {name for name, phase, _ in journal if phase == "start"}
    blocked = dag.descendants(failing)
    assert ran == set(dag.names) - blocked
    started_before_all_downstreams(dag, journal)
    by_name = {s.name: s for s in done.subtasks}
    for name in dag.names:
        expected = (
            SubtaskStatus.PENDING
            if name in blocked
            else SubtaskStatus.FAILED
            if name in failing
            else SubtaskStatus.SUCCESSFUL
        )
        assert by_name[name].status is expected, name
    assert "injected failure" in (by_name[sorted(failing - blocked)[0]].message or "")


def test_automatic_retries_then_success(engine: Engine) -> None:
    t = TemplateBuilder("flaky")
    t.add("wobble", "tests.handlers.flaky", retry_count=2)
    done = engine.run(t.build(), args={"fail_times": "2"}, timeout=30)
    assert done.status is TaskStatus.SUCCESSFUL
    sub = done.subtask("wobble")
    assert (sub.run_time, sub.operation) == (3, Operation.RETRY)
    log = engine.logs(done.id, sub.id)
    assert log.count("############{") == 3
    assert "############{RETRY}" in log
    assert "attempt 1 fails on purpose" in log


def test_retries_are_spent_then_the_task_fails(engine: Engine) -> None:
    t = TemplateBuilder("flaky-out")
    t.add("wobble", "tests.handlers.flaky", retry_count=1)
    done = engine.run(t.build(), args={"fail_times": "5"}, timeout=30)
    assert done.status is TaskStatus.FAILED
    sub = done.subtask("wobble")
    assert (sub.status, sub.run_time) == (SubtaskStatus.FAILED, 2)


@pytest.mark.parametrize(
    "handler", ["tests.handlers.sleep_ignoring_token", "tests.handlers.sleep_with_token"]
)
def test_watchdog_fails_a_subtask_that_runs_too_long(engine: Engine, handler: str) -> None:
    t = TemplateBuilder(f"slow-{handler}")
    t.add("slow", handler, timeout=1)
    t.add("after", "dagtask.builtin.noop", after=["slow"])
    began = time.monotonic()
    done = engine.run(t.build(), args={"seconds": "4"}, timeout=30)
    took = time.monotonic() - began
    assert done.status is TaskStatus.FAILED
    sub = done.subtask("slow")
    assert sub.status is SubtaskStatus.FAILED
    assert sub.message == "timed out after 1 s"
    assert took < 3.5, f"the timeout fired after {took:.1f} s"
    assert done.subtask("after").status is SubtaskStatus.PENDING
    assert "timed out after 1 s" in engine.logs(done.id, sub.id)


def test_a_stuck_handler_does_not_cost_a_worker(tmp_path: Path) -> None:
    with Engine(f"sqlite:///{tmp_path}/s.db", workers=1, poll_interval=0.05) as eng:
        eng.start()
        t = TemplateBuilder("stuck")
        t.add("stuck", "tests.handlers.sleep_ignoring_token", timeout=1)
        stuck = eng.submit(t.build(), args={"seconds": "6"})
        assert eng.wait(stuck.id, timeout=10).status is TaskStatus.FAILED
        quick = TemplateBuilder("quick")
        quick.add("q", "dagtask.builtin.noop")
        # The only worker thread is still inside the stuck handler; a spare runs this task.
        assert eng.run(quick.build(), timeout=3).status is TaskStatus.SUCCESSFUL


def test_concurrency_is_honoured(engine: Engine) -> None:
    t = TemplateBuilder("wide", concurrency=2)
    for i in range(8):
        t.add(f"w{i}", "tests.handlers.hold")
    done = engine.run(t.build(), timeout=30)
    assert done.status is TaskStatus.SUCCESSFUL
    journal = handlers.JOURNAL.pop(done.id)
    running = peak = 0
    for _, phase, _ in sorted(journal, key=lambda e: (e[2], e[1] == "start")):
        running += 1 if phase == "start" else -1
        peak = max(peak, running)
    assert peak == 2


def test_outputs_flow_to_downstreams_and_conflicts_are_20002(engine: Engine) -> None:
    t = TemplateBuilder("flow")
    t.add("a", "tests.handlers.emit")
    t.add("b", "tests.handlers.emit")
    t.add("c", "tests.handlers.record", after=["a", "b"])
    done = engine.run(t.build(), args={"key": "same"}, timeout=30)
    assert done.status is TaskStatus.FAILED
    c = done.subtask("c")
    assert c.status is SubtaskStatus.FAILED and "20002" in (c.message or "")
    t2 = TemplateBuilder("flow-ok")
    t2.add("a", "tests.handlers.emit")
    t2.add("c", "tests.handlers.record", after=["a"])
    ok = engine.run(t2.build(), args={"key": "from"}, timeout=30)
    assert ok.status is TaskStatus.SUCCESSFUL
    assert ok.subtask("c").context is not None
    assert ok.subtask("c").context.string_map["from"] == "a"  # type: ignore[union-attr]
    assert "task_instance_id" not in ok.subtask("c").context.string_map  # type: ignore[union-attr]


def test_a_handler_changing_its_context_in_place_changes_no_other_subtasks(
    engine: Engine,
) -> None:
    # Siblings (and the next task) get the same stored upstream output, parsed once and
    # shared by their claims: what one handler appends to its lists must stay its own.
    t = TemplateBuilder("in-place")
    t.add("root", "tests.handlers.record")
    for name in ("b1", "b2", "b3", "b4"):
        t.add(name, "tests.handlers.change_lists_in_place", after=["root"])
    template = t.build()
    for _ in range(2):
        done = engine.run(template, lists={"hosts": ["h1", "h2"]}, timeout=30)
        assert done.status is TaskStatus.SUCCESSFUL
        seen = {n: handlers.SEEN_LISTS.pop((done.id, n)) for n in ("b1", "b2", "b3", "b4")}
        assert seen == {n: ["h1", "h2"] for n in seen}
        assert done.context.list_map == {"hosts": ["h1", "h2"]}
        assert done.subtask("root").context.list_map == {"hosts": ["h1", "h2"]}  # type: ignore[union-attr]


def test_handler_logs_are_captured_with_the_engine_lines(engine: Engine) -> None:
    t = TemplateBuilder("chatty")
    t.add("talk", "tests.handlers.chatty")
    done = engine.run(t.build(), timeout=30)
    log = engine.logs(done.id, done.subtask("talk").id)
    lines = log.splitlines()
    assert lines[0].startswith("############{EXECUTE}{") and lines[0].endswith("}############")
    assert any("hello from talk" in line and " INFO " in line for line in lines)
    assert "Run subtask, id=" in log and "task_operation': 'execute'" in log
    sid = done.subtask("talk").id
    # OCP's two lines: the entity's status change, then the bare closing line of the attempt.
    assert lines[-2].endswith(
        f"Set state for subtask: {sid}, current state: RUNNING, new state: SUCCESSFUL"
    )
    assert lines[-1] == f"Set state for subtask: {sid}, operation:EXECUTE, state: SUCCESSFUL"


def test_bad_handler_is_refused_before_anything_is_stored(engine: Engine) -> None:
    before = engine.list().total_elements
    t = TemplateBuilder("broken")
    t.add("x", "no.such.module.Handler")
    with pytest.raises(HandlerImportError):
        engine.submit(t.build())
    assert engine.list().total_elements == before


def test_wait_times_out_with_advice(tmp_path: Path) -> None:
    with Engine(f"sqlite:///{tmp_path}/w.db", workers=0) as eng:
        t = TemplateBuilder("idle")
        t.add("x", "dagtask.builtin.noop")
        task = eng.submit(t.build())
        with pytest.raises(TaskTimeoutError, match="still RUNNING"):
            eng.wait(task.id, timeout=0.2)


def test_two_engines_on_one_database_share_the_work(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    with Engine(url, workers=2, name="one") as a, Engine(url, workers=2, name="two") as b:
        t = TemplateBuilder("shared", concurrency=20)
        for i in range(40):
            t.add(f"x{i}", "tests.handlers.hold")
        task = a.submit(t.build())
        a.start()
        b.start()
        done = b.wait(task.id, timeout=30)
    assert done.status is TaskStatus.SUCCESSFUL
    assert {s.executor for s in done.subtasks} == {"one", "two"}
    assert len(handlers.JOURNAL.pop(done.id)) == 80


def test_a_template_once_submitted_can_be_run_by_name_later(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/named.db"
    t = TemplateBuilder("Nightly cleanup")
    t.add("clean", "dagtask.builtin.noop")
    with Engine(url, workers=0) as first:
        first.submit(t.build())
    with Engine(url, workers=1) as later:
        assert "Nightly cleanup" in [x.name for x in later.templates()]
        done = later.run("nightly-cleanup", timeout=30)
    assert done.status is TaskStatus.SUCCESSFUL and done.template_id is not None


def test_the_cheap_submit_and_wait_read_no_task_back(tmp_path: Path) -> None:
    """submit_id stores the task like submit but reads nothing of it back; wait_status waits
    on the status alone: what a caller submitting many tasks uses."""
    from tests.faults import Faults

    t = TemplateBuilder("cheap")
    first = t.add("first", "dagtask.builtin.noop")
    t.add("second", "dagtask.builtin.noop", after=[first])
    with Engine(f"sqlite:///{tmp_path}/cheap.db", workers=2) as engine:
        template = t.build()
        with Faults(engine.database) as faults:
            task_id = engine.submit_id(template, args={})
            reads_of_links = faults.count("FROM dagtask_subtask_edge")
        assert isinstance(task_id, int)
        assert reads_of_links == 0  # submit() reads the task, links and all, back
        statuses = {s.name: s.status for s in engine.get(task_id).subtasks}
        assert statuses == {"first": SubtaskStatus.READY, "second": SubtaskStatus.PENDING}
        with pytest.raises(TaskTimeoutError):
            engine.wait_status(task_id, timeout=0.2)  # no worker runs yet
        engine.start()
        assert engine.wait_status(task_id, timeout=30) is TaskStatus.SUCCESSFUL
        with Faults(engine.database) as faults:
            assert engine.submit(template, args={}).status is TaskStatus.RUNNING
            assert faults.count("FROM dagtask_subtask_edge") >= 1
