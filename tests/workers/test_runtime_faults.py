"""The worker runtime under injected faults, on SQLite, PostgreSQL and MariaDB.

Every "exactly once" here counts runs: the ``ledger`` handler appends a line per start and end
to a file, and the history's events are counted per attempt.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from dagtask import Engine, Recovery, TemplateBuilder, history
from dagtask.errors import HostBusyError
from dagtask.planner import AttemptResult
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.store.sql import Report, Store
from dagtask.worker import Attempt
from tests import handlers
from tests.faults import Faults, hold_write_lock
from tests.workers.conftest import read_ledger, wait_for

LEDGER = "tests.handlers.ledger"


def _status_events(engine: Engine, task_id: int, sid: int) -> Counter[tuple[str, str, int]]:
    """(old status, new status, runTime) -> how many events the history has of it."""
    return Counter(
        (e.old_status or "", e.new_status or "", e.run_time or 0)
        for e in engine.store.events(task_id)
        if e.subtask_id == sid
    )


def _nothing_held(engine: Engine, task_id: int) -> None:
    task = engine.get(task_id)
    held = [s.name for s in task.subtasks if s.status in (SubtaskStatus.RUNNING, "CANCELING")]
    assert held == [], f"still held: {held}"


def _pool(engine: Engine):  # type: ignore[no-untyped-def]
    pool = engine._pool
    assert pool is not None
    return pool


# ---- 1. an outage while a handler finishes ------------------------------------------------------


def test_outage_while_a_handler_finishes_records_it_once(db_url: str, tmp_path: Path) -> None:
    """A claim fails (so the pool must audit what it holds), the handler returns during the
    outage, the database comes back: the result is recorded once and the handler never runs
    again, under the FAIL policy as under any other."""
    ledger = tmp_path / "ledger"
    t = TemplateBuilder("outage at the finish")
    t.add("slow", LEDGER, on_worker_lost=Recovery.FAIL)
    with Engine(db_url, workers=2, poll_interval=0.05) as engine:
        task = engine.submit(t.build(), args={"ledger": str(ledger), "sleep_ms": "600"})
        engine.start()
        sid = task.subtasks[0].id
        wait_for(lambda: read_ledger(ledger)[(sid, 1, "start")] == 1, "the handler to start")
        pool = _pool(engine)
        with Faults(engine.database) as faults, faults.outage():
            before = pool.outage.failures
            pool.wake(1)  # a claim during the outage: it fails, the pool must reconcile later
            wait_for(lambda: pool.outage.failures > before, "a claim to fail", timeout=10)
            wait_for(lambda: read_ledger(ledger)[(sid, 1, "end")] == 1, "the handler to end")
            failed = pool.outage.failures
            wait_for(lambda: pool.outage.failures > failed, "the finish to fail", timeout=10)
        done = engine.wait(task.id, timeout=30)
        assert done.status is TaskStatus.SUCCESSFUL
        runs = read_ledger(ledger)
        assert runs == Counter({(sid, 1, "start"): 1, (sid, 1, "end"): 1}), runs
        events = _status_events(engine, task.id, sid)
        assert events[("RUNNING", "SUCCESSFUL", 1)] == 1, events
        assert events[("READY", "RUNNING", 1)] == 1, events
        _nothing_held(engine, task.id)


# ---- 2. a commit whose reply is lost ------------------------------------------------------------


def _is_finish(sql: str) -> bool:
    text = sql.lower()
    return text.startswith("update dagtask_subtask") and "output_context" in text


def test_lost_reply_of_a_finish_strands_nothing(db_url: str, tmp_path: Path) -> None:
    """The finish of ``first`` commits (and, in the same transaction, takes ``second``) but the
    worker never hears back: ``second`` must not stay RUNNING under a live worker; each handler
    runs once and each attempt has one finish event."""
    ledger = tmp_path / "ledger"
    t = TemplateBuilder("lost finish reply")
    first = t.add("first", LEDGER)
    t.add("second", LEDGER, after=[first])
    with Engine(db_url, workers=2, poll_interval=0.05) as engine:
        task = engine.submit(t.build(), args={"ledger": str(ledger), "sleep_ms": "200"})
        with Faults(engine.database) as faults:
            lost = faults.lose_commit_reply(_is_finish)
            engine.start()
            done = engine.wait(task.id, timeout=60)
            assert lost.fired == 1
        assert done.status is TaskStatus.SUCCESSFUL, [(s.name, s.status) for s in done.subtasks]
        runs = read_ledger(ledger)
        by_sub = Counter(sid for (sid, _rt, phase) in runs.elements() if phase == "start")
        assert sorted(by_sub.values()) == [1, 1], runs  # each handler started exactly once
        for sub in done.subtasks:
            events = _status_events(engine, task.id, sub.id)
            finishes = sum(n for (old, new, _rt), n in events.items() if new == "SUCCESSFUL")
            assert finishes == 1, (sub.name, events)
        _nothing_held(engine, task.id)


def _is_claim(sql: str) -> bool:
    text = sql.lower()
    return text.startswith("update dagtask_subtask set status=") and "executor=" in text


def test_lost_reply_of_a_claim_hands_the_claim_back(db_url: str, tmp_path: Path) -> None:
    """A claim that committed unseen: the subtask goes back to READY (its handler never ran)
    and then runs exactly once."""
    ledger = tmp_path / "ledger"
    t = TemplateBuilder("lost claim reply")
    t.add("only", LEDGER)
    with Engine(db_url, workers=1, poll_interval=0.05) as engine:
        with Faults(engine.database) as faults:
            lost = faults.lose_commit_reply(_is_claim)
            task = engine.submit(t.build(), args={"ledger": str(ledger), "sleep_ms": "10"})
            engine.start()
            done = engine.wait(task.id, timeout=60)
            assert lost.fired == 1
        assert done.status is TaskStatus.SUCCESSFUL
        sid = done.subtasks[0].id
        starts = [k for k, n in read_ledger(ledger).items() if k[2] == "start" for _ in range(n)]
        assert len(starts) == 1 and starts[0][0] == sid, starts
        # The history names the attempt the hand-back ended (1, LOST), not the next one, which
        # the READY event already numbers: each attempt ends once.
        attempts = history.attempts(engine, task.id)
        assert [(a.run_time, a.result.value) for a in attempts] == [
            (1, "LOST"),
            (2, "SUCCEEDED"),
        ], attempts
        ended = [e for e in history.events(engine, task.id) if e.kind == "attempt_ended"]
        assert [e.attempt for e in ended] == [1, 2], ended
        assert ended[0].describe().startswith("only: EXECUTE attempt 1 LOST"), ended[0].describe()
        _nothing_held(engine, task.id)


# ---- 3. several runs at once on one Engine, several Engines in one process ----------------------


def test_concurrent_runs_on_one_engine_and_several_engines(db_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    t = TemplateBuilder("side by side")
    t.add("only", LEDGER, on_worker_lost=Recovery.FAIL)
    template = t.build()
    args = {"ledger": str(ledger), "sleep_ms": "400"}
    results: dict[str, TaskStatus] = {}
    errors: list[BaseException] = []

    def run(engine: Engine, key: str) -> None:
        try:
            results[key] = engine.run(template, args=args, timeout=60).status
        except BaseException as exc:  # reported below
            errors.append(exc)

    with Engine(db_url, workers=1) as one, Engine(db_url, workers=1) as other:
        threads = []
        for engine, key in ((one, "a"), (one, "b"), (other, "c")):
            # Each run starts once the one before it is running its handler: a run that
            # registered under the same worker name would "recover" (fail) that handler.
            started = len(read_ledger(ledger))
            thread = threading.Thread(target=run, args=(engine, key))
            thread.start()
            threads.append(thread)
            wait_for(lambda n=started: len(read_ledger(ledger)) > n, f"run {key} to start")
        for thread in threads:
            thread.join(90)
    assert not errors, errors
    assert results == {k: TaskStatus.SUCCESSFUL for k in "abc"}, results
    runs = read_ledger(ledger)
    assert sorted(n for (_s, _r, phase), n in runs.items() if phase == "start") == [1, 1, 1]


# ---- 4. handlers that raise BaseException -------------------------------------------------------


def test_base_exceptions_fail_the_subtask_and_free_the_slot(db_url: str) -> None:
    kinds = {
        "exit": "SystemExit",
        "interrupt": "KeyboardInterrupt",
        "genexit": "GeneratorExit",
        "argparse": "parser.error",
    }
    t = TemplateBuilder("base exceptions")
    for name in kinds:
        t.add(name, "tests.handlers.raise_base")
    t.add("after all", "tests.handlers.raise_base", after=list(kinds))
    t.add("independent", "tests.handlers.raise_base")
    with Engine(db_url, workers=1) as engine:  # one slot: a lost slot would hang the rest
        done = engine.run(t.build(), args=kinds, timeout=60)
    by_name = {s.name: s for s in done.subtasks}
    assert done.status is TaskStatus.FAILED
    for name, kind in kinds.items():
        sub = by_name[name]
        assert sub.status is SubtaskStatus.FAILED, name
        expected = "SystemExit" if kind == "parser.error" else kind
        assert sub.message is not None and sub.message.startswith(expected), sub.message
    assert by_name["independent"].status is SubtaskStatus.SUCCESSFUL
    assert by_name["after all"].status is SubtaskStatus.PENDING


# ---- 5. timeouts do not wait for the database ---------------------------------------------------


def test_timeout_fires_while_the_database_is_stalled(db_url: str) -> None:
    handlers.TOKEN_SEEN.clear()
    t = TemplateBuilder("timeout under a stall")
    t.add("waits", "tests.handlers.wait_for_token", timeout=1)
    with Engine(db_url, workers=1) as engine:
        task = engine.submit(t.build(), args={"seconds": "30"})
        sid = task.subtasks[0].id
        engine.start()
        wait_for(lambda: bool(handlers.TOKEN_SEEN[sid]), "the handler to start")
        with hold_write_lock(engine.database):
            wait_for(lambda: len(handlers.TOKEN_SEEN[sid]) == 2, "the timeout", timeout=5)
            time.sleep(0.3)  # the write lock is still held: the store cannot have been asked
        (_, started), (_, seen) = handlers.TOKEN_SEEN[sid]
        assert seen - started < 1.5, f"the timeout fired {seen - started:.2f} s after the start"
        done = engine.wait(task.id, timeout=60)
    sub = done.subtasks[0]
    assert sub.status is SubtaskStatus.FAILED
    assert sub.message == "timed out after 1 s"


# ---- 6. one attempt, one finish, one set of events ----------------------------------------------


def test_an_attempt_reported_twice_in_one_batch_is_recorded_once(db_url: str) -> None:
    t = TemplateBuilder("double report")
    t.add("only", "dagtask.builtin.noop")
    with Engine(db_url, workers=0) as engine:
        task = engine.submit(t.build(), args={})
        store: Store = engine.store
        store.register_worker("w", concurrency=1, lease_seconds=30)
        (claim,) = store.claim("w")
        timed_out = Report(claim, AttemptResult(ok=False, message="timed out after 1 s"))
        late = Report(claim, AttemptResult(ok=True))
        batch = store.finish_many([timed_out, late], executor="w")
        assert [o.applied for o in batch.outcomes] == [True, False]
        events = _status_events(engine, task.id, claim.subtask_id)
        assert events[("RUNNING", "FAILED", 1)] == 1, events
        assert sum(n for (old, _n, _r), n in events.items() if old == "RUNNING") == 1, events


def test_a_handler_returning_at_its_timeout_ends_once(db_url: str) -> None:
    t = TemplateBuilder("return at the deadline")
    for n in range(6):
        t.add(f"s{n}", "tests.handlers.sleep_ignoring_token", timeout=1)
    with Engine(db_url, workers=6) as engine:
        done = engine.run(t.build(), args={"seconds": "1.0"}, timeout=60)
        for sub in done.subtasks:
            events = _status_events(engine, done.id, sub.id)
            ends = sum(n for (old, _new, _r), n in events.items() if old == "RUNNING")
            assert ends == 1, (sub.name, events)


# ---- 7. operator actions racing workers ---------------------------------------------------------


@pytest.mark.parametrize("action", ["cancel_task", "cancel_subtasks"])
def test_operator_actions_racing_claims_never_error(db_url: str, action: str) -> None:
    t = TemplateBuilder("race", concurrency=400)
    for n in range(120):
        t.add(f"s{n:03d}", "dagtask.builtin.noop")
    with Engine(db_url, workers=0) as engine:
        store = engine.store
        task = engine.submit(t.build(), args={})
        store.register_worker("racer", concurrency=8, lease_seconds=30)
        stop = threading.Event()
        errors: list[BaseException] = []

        def claim_forever() -> None:
            try:
                while not stop.is_set() and store.claim("racer", limit=3):
                    pass
            except BaseException as exc:  # reported below
                errors.append(exc)

        claimer = threading.Thread(target=claim_forever)
        claimer.start()
        try:
            if action == "cancel_task":
                engine.cancel(task.id)
            else:
                for sub in engine.get(task.id).subtasks[:30]:
                    try:
                        engine.cancel_subtask(task.id, sub.id)
                    except Exception as exc:  # only the clear refusal of a non-RUNNING one
                        assert "error 20003" in str(exc), exc
        finally:
            stop.set()
            claimer.join(30)
        assert not errors, errors
        statuses = Counter(s.status for s in engine.get(task.id).subtasks)
        if action == "cancel_task":
            assert SubtaskStatus.READY not in statuses, statuses


# ---- 12. idle costs nothing ---------------------------------------------------------------------


def _writes(sql: str) -> bool:
    head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
    return head in ("UPDATE", "INSERT", "DELETE") or "BEGIN IMMEDIATE" in sql.upper()


def test_an_idle_worker_writes_nothing_and_backs_off(sqlite_url: str) -> None:
    with Engine(sqlite_url, workers=4, poll_interval=0.05) as engine:
        engine.start()
        time.sleep(0.3)  # past its start-up
        with Faults(engine.database) as faults:
            time.sleep(3.0)  # idle on purpose: what it does meanwhile is the measurement
            writes = [sql for sql in faults.calls if _writes(sql)]
            polls = faults.count("FROM dagtask_subtask")
        assert writes == [], writes
        # 0.05 s doubling up to 2 s: a handful of reads, not 60.
        assert polls <= 10, polls


def test_an_outage_logs_a_line_when_it_starts_and_when_it_ends(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dagtask.worker")
    with Engine(sqlite_url, workers=2, poll_interval=0.05) as engine:
        engine.start()
        pool = _pool(engine)
        with Faults(engine.database) as faults, faults.outage():
            for _ in range(20):
                pool.wake(1)
                time.sleep(0.05)
            wait_for(lambda: pool.outage.failures >= 5, "several failed calls", timeout=20)
        wait_for(lambda: not pool.outage.down, "the database to answer again", timeout=20)
    lines = [r.getMessage() for r in caplog.records if r.name == "dagtask.worker"]
    assert sum("did not answer" in line for line in lines) == 1, lines
    assert sum("answers again" in line for line in lines) == 1, lines
    assert len(lines) <= 3, lines


# ---- 13. memory and log order -------------------------------------------------------------------


def test_finished_attempts_are_released_at_once(sqlite_url: str) -> None:
    t = TemplateBuilder("wide fan", concurrency=300)
    for n in range(300):
        t.add(f"s{n:03d}", "dagtask.builtin.noop", timeout=3600)
    with Engine(sqlite_url, workers=8) as engine:
        done = engine.run(t.build(), args={}, timeout=120)
        assert done.status is TaskStatus.SUCCESSFUL
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, Attempt)]
        assert alive == [], f"{len(alive)} finished attempts are still referenced"


def test_logs_stay_in_order_when_flushes_fail(db_url: str) -> None:
    t = TemplateBuilder("ordered logs")
    t.add("talks", "tests.handlers.log_lines")
    with Engine(db_url, workers=1) as engine:
        task = engine.submit(t.build(), args={"lines": "40", "gap_ms": "60"})
        with Faults(engine.database) as faults:
            failing = faults.fail("INSERT INTO dagtask_subtask_log", count=2)
            engine.start()
            done = engine.wait(task.id, timeout=60)
            assert failing.fired == 2
        assert done.status is TaskStatus.SUCCESSFUL
        text = engine.store.read_log(task.id, done.subtasks[0].id)
    numbers = [int(line.rsplit("line ", 1)[1]) for line in text.splitlines() if "line " in line]
    assert numbers == list(range(40)), numbers


def _race(actions: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Run ``actions`` at once (behind a barrier); what each one gave."""
    barrier = threading.Barrier(len(actions))
    outcomes: dict[str, str] = {}

    def attempt(key: str) -> None:
        barrier.wait()
        try:
            actions[key]()
            outcomes[key] = "ok"
        except HostBusyError:
            outcomes[key] = "busy"
        except Exception as exc:  # reported to the caller
            outcomes[key] = f"{type(exc).__name__}: {exc}"

    racers = [threading.Thread(target=attempt, args=(key,)) for key in actions]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(30)
    return outcomes


def test_a_retry_racing_a_submit_for_its_host_is_409_not_500(db_url: str, tmp_path: Path) -> None:
    """Retry (which takes the task's host locks again) and a new submit race for one host:
    exactly one wins, the other is told the host is busy (409), never a database error."""
    with Engine(db_url, workers=0) as setup:
        host = str(setup.hosts.add("web-1", "127.0.0.1", str(tmp_path / "agent")).id)
    for _round in range(4):
        with Engine(db_url, workers=0) as one, Engine(db_url, workers=0) as other:
            first = one.submit("Stop OCP agent", args={"host_id": host})
            one.cancel(first.id)  # FAILED: its host is free again
            outcomes = _race(
                {
                    "retry": lambda: one.retry(first.id),  # noqa: B023 - run before the loop goes on
                    "submit": lambda: other.submit("Restart OCP agent", args={"host_id": host}),
                }
            )
            assert sorted(outcomes.values()) == ["busy", "ok"], outcomes
            for task in one.list().tasks:
                if task.status is TaskStatus.RUNNING:
                    one.cancel(task.id)
