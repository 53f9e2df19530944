"""Task definitions: checked at definition time, fired once per tick by any number of
schedulers, with the missed-fire and overlap policies (time controlled through ``tick(now=)``),
and under real `dagtask worker` processes, one of them killed midway."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from dagtask import Engine, TemplateBuilder
from dagtask.errors import ArgumentError, TemplateError
from dagtask.states import TaskStatus, TaskType
from dagtask.store.schema import schedule_fire, task
from tests.workers.conftest import ROOT, Workers, wait_for

TEMPLATE = "scheduled tick"


def _template() -> object:
    t = TemplateBuilder(TEMPLATE)
    t.add("only", "tests.handlers.record")
    return t.build()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine that runs nothing by itself (its tasks stay RUNNING unless a test starts it)."""
    with Engine(db_url, workers=0) as eng:
        eng.register_template(_template())  # type: ignore[arg-type]
        yield eng


def _tasks_of(engine: Engine, definition_id: int) -> list[tuple[int, str, str, str]]:
    with engine.database.read() as conn:
        rows = conn.execute(
            sa.select(task.c.id, task.c.type, task.c.creator, task.c.status)
            .where(task.c.task_definition_id == definition_id)
            .order_by(task.c.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


# ---- checked before anything is stored ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron_rule": "0 0/2 * * *  x ?"}, "cron rule"),
        ({"cron_rule": "61 * * * * ?"}, "61"),
        ({"cron_rule": "* * * * * ?", "tz": "Mars/Base"}, "time zone 'Mars/Base' is unknown"),
        ({"cron_rule": "* * * * * ?", "missed": "LATER"}, "use SKIP or CATCH_UP"),
        ({"cron_rule": "* * * * * ?", "overlap": "NEVER"}, "use SKIP, ALLOW or QUEUE"),
        ({"once": "2001-01-01 00:00"}, "never fires after now"),
        ({"once": "tomorrow-ish"}, "tomorrow-ish"),
        (
            {"cron_rule": "* * * * * ?", "start": "2030-01-02", "end": "2030-01-01"},
            "start is not before its end",
        ),
        ({"cron_rule": "* * * * * ?", "once": "2030-01-01"}, "not both"),
    ],
)
def test_a_bad_definition_is_refused_and_nothing_stored(
    engine: Engine, kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(ArgumentError) as caught:
        engine.schedules.add("bad", TEMPLATE, **kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert engine.schedules.list() == []


def test_an_unknown_template_is_refused(engine: Engine) -> None:
    with pytest.raises(TemplateError, match="no template named 'nope'"):
        engine.schedules.add("bad", "nope", cron_rule="* * * * * ?")
    assert engine.schedules.list() == []


def test_the_cli_refuses_a_bad_rule_with_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    command = [sys.executable, "-m", "dagtask", "--db", url, "schedule", "add", "x", "check-hosts"]
    bad = subprocess.run(
        [*command, "--cron", "0 0/2 * * * ? 2026 x"], capture_output=True, text=True, cwd=ROOT
    )
    assert bad.returncode == 2, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "cron rule" in bad.stderr and "Traceback" not in bad.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "dagtask", "--db", url, "schedule", "list"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert listed.returncode == 0 and "no task definitions yet" in listed.stdout


# ---- the policies, with time given to tick() ----------------------------------------------------


def _minutely(engine: Engine, **kwargs: str) -> tuple[int, datetime]:
    found = engine.schedules.add("minutely", TEMPLATE, cron_rule="0 * * * * ?", **kwargs)  # type: ignore[arg-type]
    assert found.next_fire_time is not None and found.next_fire_time.second == 0
    return found.id, found.next_fire_time


def test_a_tick_fires_one_scheduled_task(engine: Engine) -> None:
    did, first = _minutely(engine)
    assert engine.schedules.tick("s1", now=first - timedelta(seconds=1)) == []
    fired = engine.schedules.tick("s1", now=first + timedelta(milliseconds=300))
    assert [f.fire_time for f in fired] == [first]
    # The same tick seen again by another scheduler fires nothing more.
    assert engine.schedules.tick("s2", now=first + timedelta(milliseconds=400)) == []
    tasks = _tasks_of(engine, did)
    assert len(tasks) == 1
    _, kind, creator, status = tasks[0]
    assert kind == TaskType.SCHEDULED.value and status == TaskStatus.RUNNING.value
    assert creator == engine.schedules.get(did).creator
    assert engine.schedules.get(did).next_fire_time == first + timedelta(minutes=1)
    assert [f.outcome for f in engine.schedules.fires(did)] == ["FIRED"]


def test_missed_ticks_are_skipped_or_caught_up_once(engine: Engine) -> None:
    skip_id, first = _minutely(engine)
    catch = engine.schedules.add(
        "catching up", TEMPLATE, cron_rule="0 * * * * ?", missed="CATCH_UP"
    )
    later = first + timedelta(hours=1, seconds=20)  # 61 ticks went by while nobody ran
    engine.schedules.tick("s1", now=later)
    assert _tasks_of(engine, skip_id) == []
    (missed,) = engine.schedules.fires(skip_id)
    assert missed.outcome == "MISSED" and "61 ticks missed" in (missed.message or "")
    assert len(_tasks_of(engine, catch.id)) == 1
    (caught,) = engine.schedules.fires(catch.id)
    assert caught.outcome == "FIRED" and caught.fire_time == first + timedelta(hours=1)
    assert "61 ticks in one" in (caught.message or "")
    for did in (skip_id, catch.id):
        assert engine.schedules.get(did).next_fire_time == first + timedelta(hours=1, minutes=1)


@pytest.mark.parametrize(("policy", "second_tick"), [("SKIP", 1), ("ALLOW", 2), ("QUEUE", 1)])
def test_overlap_policies(engine: Engine, policy: str, second_tick: int) -> None:
    did, first = _minutely(engine, overlap=policy)
    engine.schedules.tick("s1", now=first + timedelta(seconds=1))
    (running,) = _tasks_of(engine, did)  # nobody runs it: it stays RUNNING
    second = first + timedelta(minutes=1, seconds=1)
    engine.schedules.tick("s1", now=second)
    assert len(_tasks_of(engine, did)) == second_tick
    outcomes = [f.outcome for f in engine.schedules.fires(did)]
    if policy == "SKIP":
        assert outcomes == ["SKIPPED", "FIRED"]
    if policy == "QUEUE":
        assert outcomes == ["FIRED"]  # held
        engine.cancel(running[0])
        assert engine.get(running[0]).status is not TaskStatus.RUNNING
        engine.schedules.tick("s1", now=second + timedelta(seconds=1))
        assert len(_tasks_of(engine, did)) == 2  # fired as soon as the previous one ended


def test_disable_enable_run_now_and_delete(engine: Engine) -> None:
    did, first = _minutely(engine)
    engine.schedules.disable(did)
    assert engine.schedules.tick("s1", now=first + timedelta(seconds=1)) == []
    task_id = engine.schedules.run_now(did, creator="ops")
    assert _tasks_of(engine, did) == [(task_id, "SCHEDULED", "ops", "RUNNING")]
    enabled = engine.schedules.enable("minutely")
    assert enabled.enabled and enabled.next_fire_time is not None
    engine.schedules.delete(did)
    assert engine.schedules.list() == []
    assert engine.get(task_id).task_definition_id == did  # its tasks stay


def test_a_stale_claim_is_taken_over_and_fires_once(engine: Engine) -> None:
    """A scheduler that claimed a tick and died before creating its task: another takes over."""
    did, first = _minutely(engine)
    found = engine.schedules.get(did)
    claim = engine.schedules.store.claim(
        did,
        first,
        "dead-scheduler",
        outcome="CLAIMED",
        current_next=found.next_fire_time,
        new_next=first + timedelta(minutes=1),
    )
    assert claim is not None
    engine.schedules.tick("s1", now=claim.claimed_at + timedelta(seconds=1))
    assert _tasks_of(engine, did) == []  # too early to take over
    with engine.database.begin() as conn:  # the claim is now old
        conn.execute(
            sa.update(schedule_fire).values(claimed_at=claim.claimed_at - timedelta(minutes=5))
        )
    engine.schedules.tick("s1", now=claim.claimed_at + timedelta(seconds=2))
    assert len(_tasks_of(engine, did)) == 1
    (fire,) = engine.schedules.fires(did)
    assert (fire.outcome, fire.executor) == ("FIRED", "s1")


# ---- exactly once, for real ---------------------------------------------------------------------


def _assert_one_task_per_tick(engine: Engine, did: int) -> list[datetime]:
    fires = engine.schedules.fires(did, 10_000)
    fired = sorted(f.fire_time for f in fires if f.outcome == "FIRED")
    assert fired, [(f.fire_time, f.outcome) for f in fires]
    per_tick = Counter(f.fire_time for f in fires)
    assert max(per_tick.values()) == 1
    tasks = _tasks_of(engine, did)
    assert len(tasks) == len(fired), (len(tasks), len(fired))
    with engine.database.read() as conn:
        linked = conn.execute(
            sa.select(schedule_fire.c.task_id).where(
                schedule_fire.c.definition_id == did, schedule_fire.c.outcome == "FIRED"
            )
        ).scalars()
        assert sorted(linked) == sorted(t[0] for t in tasks)
    # Every second between the first and the last fire made a task (no tick lost).
    span = int((fired[-1] - fired[0]).total_seconds()) + 1
    assert len(fired) == span, (span, fired)
    return fired


def test_three_schedulers_in_one_process_fire_each_tick_once(db_url: str) -> None:
    engines = [Engine(db_url, workers=2, poll_interval=0.02, name=f"s{n}") for n in range(3)]
    try:
        engines[0].register_template(_template())  # type: ignore[arg-type]
        # ALLOW: a tick whose previous task still runs must fire too (this is about firing once).
        did = (
            engines[0]
            .schedules.add("every second", TEMPLATE, cron_rule="* * * * * ?", overlap="ALLOW")
            .id
        )
        for eng in engines:
            eng.start()
        wait_for(lambda: len(_tasks_of(engines[0], did)) >= 5, "five fires", timeout=30)
        engines[0].schedules.disable(did)
        for eng in engines:
            eng.stop()
        fired = _assert_one_task_per_tick(engines[0], did)
        executors = {f.executor for f in engines[0].schedules.fires(did)}
        assert executors <= {"s0", "s1", "s2"} and len(fired) >= 5
    finally:
        for eng in engines:
            eng.close()


RUN_SECONDS = 30


@pytest.mark.slow
def test_worker_processes_fire_each_tick_once_and_survive_a_kill(
    db_url: str, workers_on: Callable[[str], Workers]
) -> None:
    """`dagtask worker` processes (three on a server, two on one SQLite file) and a 1 s rule
    for 30 s; one worker is SIGKILLed halfway: every second made exactly one task."""
    names = ["w1", "w2"] if db_url.startswith("sqlite") else ["w1", "w2", "w3"]
    with Engine(db_url, workers=0) as engine:
        engine.register_template(_template())  # type: ignore[arg-type]
        workers = workers_on(db_url)
        for name in names:
            workers.start(name)
        workers.wait_registered(engine, names)
        # ALLOW: under load a tick's task may still run at the next tick, which SKIP would
        # record as SKIPPED; this test is about each tick firing exactly once.
        did = engine.schedules.add(
            "every second", TEMPLATE, cron_rule="* * * * * ?", overlap="ALLOW"
        ).id
        started = time.monotonic()
        killed = threading.Event()
        while time.monotonic() - started < RUN_SECONDS:
            if not killed.is_set() and time.monotonic() - started > RUN_SECONDS / 2:
                workers.kill(names[0])
                killed.set()
            time.sleep(0.2)
        engine.schedules.disable(did)
        # A tick the killed worker had claimed but not yet made a task for is taken over.
        wait_for(
            lambda: all(f.outcome != "CLAIMED" for f in engine.schedules.fires(did, 10_000)),
            "no claimed fire left",
            timeout=60,
        )
        fired = _assert_one_task_per_tick(engine, did)
        assert len(fired) >= RUN_SECONDS - 3, len(fired)
        assert {f.executor for f in engine.schedules.fires(did, 10_000)} >= set(names[1:])
        # The killed worker's share ends too (lease recovery), and nothing is left RUNNING.
        wait_for(
            lambda: all(t[3] != "RUNNING" for t in _tasks_of(engine, did)),
            "the scheduled tasks to end",
            timeout=60,
        )


def test_the_builtin_purge_definition_purges_old_finished_tasks(db_url: str) -> None:
    with Engine(db_url, workers=2, poll_interval=0.02) as engine:
        engine.register_template(_template())  # type: ignore[arg-type]
        old = engine.run(TEMPLATE, timeout=30).id
        recent = engine.run(TEMPLATE, timeout=30).id
        with engine.database.begin() as conn:
            conn.execute(
                sa.update(task)
                .where(task.c.id == old)
                .values(finish_time=datetime(2020, 1, 1), create_time=datetime(2020, 1, 1))
            )
        engine.start()  # its scheduler creates the built-in definitions
        wait_for(
            lambda: any(d.name == "purge-finished-tasks" for d in engine.schedules.list()),
            "the built-in purge definition",
        )
        builtin = engine.schedules.get("purge-finished-tasks")
        assert builtin.type is TaskType.SYS_SCHEDULED and builtin.creator == "SYSTEM"
        assert builtin.cron == "0 0 3 * * ?" and builtin.args["older_than"] == "30d"
        task_id = engine.schedules.run_now("purge-finished-tasks")
        done = engine.wait(task_id, timeout=60)
        assert done.status is TaskStatus.SUCCESSFUL, engine.logs(task_id, done.subtasks[0].id)
        assert (done.type, done.creator, done.task_definition_id) == (
            TaskType.SYS_SCHEDULED,
            "SYSTEM",
            builtin.id,
        )
        assert done.subtasks[0].context is not None
        assert done.subtasks[0].context.string_map["purged_tasks"] == "1"
        ids = {t.id for t in engine.list(size=100).tasks}
        assert old not in ids and {recent, task_id} <= ids
