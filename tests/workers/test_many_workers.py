"""Many `dagtask worker` processes on one database: exactly-once execution, kill -9 recovery,
graceful stop, cancels that reach the right worker, a database restart, claim races."""

from __future__ import annotations

import multiprocessing
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from dagtask import Engine, Recovery, TemplateBuilder
from dagtask.planner import AttemptResult
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from dagtask.store.db import open_database
from dagtask.store.sql import Store
from tests.workers.conftest import PrivateServer, Workers, read_ledger, wait_for

LEDGER = "tests.handlers.ledger"
NOOP = "dagtask.builtin.noop"


def _layered_dag(layers: int, width: int, seed: int, **options: object) -> TemplateBuilder:
    rng = random.Random(seed)
    t = TemplateBuilder(f"dag {layers}x{width}", concurrency=200)
    above: list[str] = []
    for layer in range(layers):
        row = []
        for i in range(width):
            ups = rng.sample(above, k=min(len(above), rng.randint(1, 3))) if above else []
            row.append(t.add(f"n{layer:02d}-{i:03d}", LEDGER, after=ups, **options))
        above = row
    return t


def _status_counts(engine: Engine, task_id: int) -> Counter[str]:
    return Counter(s.status.value for s in engine.get(task_id).subtasks)


def test_four_workers_run_a_2000_subtask_dag_exactly_once(
    db_url: str, workers_on: Callable[[str], Workers], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    with Engine(db_url, workers=0) as engine:
        workers = workers_on(db_url)
        names = [f"w{i}" for i in range(4)]
        for name in names:
            workers.start(name, concurrency=8)
        workers.wait_registered(engine, names)

        task = engine.submit(_layered_dag(20, 100, seed=7).build(), args={"ledger": str(ledger)})
        done = engine.wait(task.id, timeout=240)

        assert done.status is TaskStatus.SUCCESSFUL, _status_counts(engine, task.id)
        assert len(done.subtasks) == 2000
        ran = read_ledger(ledger)
        ids = {s.id for s in done.subtasks}
        assert {sid for sid, _, _ in ran} == ids
        assert set(ran.values()) == {1}  # one start and one end each...
        assert {run_time for _, run_time, _ in ran} == {1}  # ...in one attempt each
        claims = Counter(
            e.subtask_id
            for e in engine.events(task.id)
            if e.subtask_id is not None and e.new_status == SubtaskStatus.RUNNING
        )
        assert set(claims) == ids and set(claims.values()) == {1}
        # The work was shared. (Not necessarily by all four: a worker takes what its own finish
        # unblocks, so on one-writer SQLite a worker that only polls may find nothing left.)
        executors = {s.executor for s in done.subtasks}
        assert executors <= set(names) and len(executors) >= 2, executors


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def test_kill_9_at_random_moments_loses_nothing(
    server: str,
    request: pytest.FixtureRequest,
    workers_on: Callable[[str], Workers],
    tmp_path: Path,
) -> None:
    url = str(request.getfixturevalue("pg_url" if server == "postgres" else "mysql_url"))
    rng = random.Random(20261128)
    ledger = tmp_path / "ledger"
    t = TemplateBuilder("kill me", concurrency=6)
    for chain in range(6):
        policy = Recovery.RETRY if chain % 2 else Recovery.FAIL
        previous: list[str] = []
        for step in range(6):
            name = f"{policy.value.lower()}-{chain}-{step}"
            previous = [t.add(name, LEDGER, after=previous, on_worker_lost=policy)]
    with Engine(url, workers=0) as engine:
        workers = workers_on(url)
        live = [f"w{i}" for i in range(3)]
        for name in live:
            workers.start(name, lease=2)
        workers.wait_registered(engine, live)
        task = engine.submit(t.build(), args={"ledger": str(ledger), "sleep_ms": "400"})
        policy_of = {s.id: s.name.split("-")[0] for s in task.subtasks}

        killed: dict[str, set[int]] = {}  # worker -> the subtasks it was running
        for round_ in range(5):
            wanted = "fail" if round_ == 0 else None  # make sure a FAIL subtask is hit once

            def victim(wanted: str | None = wanted) -> str | None:
                running = [
                    sub.executor
                    for sub in engine.get(task.id).subtasks
                    if sub.status is SubtaskStatus.RUNNING
                    and sub.executor in live
                    and wanted in (None, policy_of[sub.id])
                ]
                return rng.choice(running) if running else None

            wait_for(lambda: victim() is not None, "a worker running a subtask", timeout=30)
            name = victim()
            assert name is not None
            killed[name] = {
                s.id
                for s in engine.get(task.id).subtasks
                if s.executor == name and s.status is SubtaskStatus.RUNNING
            }
            workers.kill(name)
            live.remove(name)
            replacement = f"w{3 + round_}"
            workers.start(replacement, lease=2)
            live.append(replacement)
            time.sleep(rng.uniform(0.1, 0.8))  # a random moment before the next kill

        done = engine.wait(task.id, timeout=120)
        lost_fail = {sid for ids in killed.values() for sid in ids if policy_of[sid] == "fail"}
        lost_retry = {sid for ids in killed.values() for sid in ids if policy_of[sid] == "retry"}
        assert lost_fail, "the first kill hit a FAIL-policy subtask"
        assert done.status is TaskStatus.FAILED
        subs = {s.id: s for s in done.subtasks}
        for sid in lost_fail:
            assert subs[sid].status is SubtaskStatus.FAILED
            assert "lost: no heartbeat" in (subs[sid].message or ""), subs[sid].message
        for sid in lost_retry:
            # Run again, as a new attempt, by a worker that did not lose it.
            sub = subs[sid]
            assert sub.run_time >= 2
            if sub.status is SubtaskStatus.SUCCESSFUL:
                assert sub.executor not in {w for w, ids in killed.items() if sid in ids}
            else:  # lost too often: RETRY recovery gave up on it
                assert sub.status is SubtaskStatus.FAILED
                assert "lost its worker" in (sub.message or ""), sub
        assert not [s for s in done.subtasks if s.status is SubtaskStatus.RUNNING]

        # The operator retries the task: the live workers finish it.
        engine.retry(task.id)
        final = engine.wait(task.id, timeout=120)
        assert final.status is TaskStatus.SUCCESSFUL, _status_counts(engine, task.id)
        completions = Counter(
            e.subtask_id
            for e in engine.events(task.id)
            if e.subtask_id is not None and e.new_status == SubtaskStatus.SUCCESSFUL
        )
        assert set(completions) == set(subs) and set(completions.values()) == {1}
        for name in killed:
            assert {w.name: w.status for w in engine.store.workers()}[name] == "LOST"


def test_sigterm_hands_back_what_a_worker_cannot_finish(
    db_url: str, workers_on: Callable[[str], Workers], tmp_path: Path
) -> None:
    t = TemplateBuilder("long")
    t.add("long", "tests.handlers.sleep_with_token", on_worker_lost=Recovery.RETRY)
    with Engine(db_url, workers=0) as engine:
        workers = workers_on(db_url)
        first = workers.start("leaving", stop_timeout=1)
        workers.wait_registered(engine, ["leaving"])
        task = engine.submit(t.build(), args={"seconds": "20"})
        wait_for(
            lambda: engine.get(task.id).subtasks[0].status is SubtaskStatus.RUNNING, "the claim"
        )
        first.terminate()
        assert first.wait(15) == 0
        sub = engine.get(task.id).subtasks[0]
        assert (sub.status, sub.run_time) == (SubtaskStatus.READY, 2), sub
        assert "worker leaving stopped before the subtask ended" in (sub.message or "")
        assert {w.name: w.status for w in engine.store.workers()}["leaving"] == "STOPPED"

        workers.start("staying")
        wait_for(lambda: engine.get(task.id).subtasks[0].executor == "staying", "the other worker")
        engine.cancel(task.id)
        assert engine.wait(task.id, timeout=30).status is TaskStatus.FAILED


def test_sigterm_lets_a_short_handler_finish(
    db_url: str, workers_on: Callable[[str], Workers], tmp_path: Path
) -> None:
    t = TemplateBuilder("short")
    t.add("short", "tests.handlers.sleep_with_token")
    with Engine(db_url, workers=0) as engine:
        workers = workers_on(db_url)
        proc = workers.start("w", stop_timeout=30)
        workers.wait_registered(engine, ["w"])
        task = engine.submit(t.build(), args={"seconds": "1.5"})
        wait_for(
            lambda: engine.get(task.id).subtasks[0].status is SubtaskStatus.RUNNING, "the claim"
        )
        proc.terminate()
        assert proc.wait(15) == 0
        done = engine.get(task.id)
        assert done.status is TaskStatus.SUCCESSFUL
        assert done.subtasks[0].executor == "w"


def test_cancel_reaches_the_worker_running_the_subtask(
    db_url: str, workers_on: Callable[[str], Workers]
) -> None:
    t = TemplateBuilder("two sleepers")
    t.add("a", "tests.handlers.sleep_with_token")
    t.add("b", "tests.handlers.sleep_with_token")
    with Engine(db_url, workers=0) as engine:
        workers = workers_on(db_url)
        for name in ("w1", "w2"):
            workers.start(name, concurrency=1)
        workers.wait_registered(engine, ["w1", "w2"])
        task = engine.submit(t.build(), args={"seconds": "60"})

        def running() -> list[object]:
            return [s for s in engine.get(task.id).subtasks if s.status is SubtaskStatus.RUNNING]

        wait_for(lambda: len(running()) == 2, "both subtasks to run")
        subs = engine.get(task.id).subtasks
        assert {s.executor for s in subs} == {"w1", "w2"}  # one each (concurrency 1)
        target, other = subs
        engine.cancel_subtask(task.id, target.id, operator="alice")
        wait_for(
            lambda: engine.get(task.id).subtasks[0].status is SubtaskStatus.FAILED,
            "the cancel",
            timeout=15,
        )
        after = {s.id: s for s in engine.get(task.id).subtasks}
        assert (after[target.id].operation, after[target.id].executor) == (
            Operation.CANCEL,
            target.executor,
        )
        assert after[other.id].status is SubtaskStatus.RUNNING  # the other worker carries on
        assert f"executor={target.executor}" in engine.logs(task.id, target.id)
        engine.cancel(task.id)
        assert engine.wait(task.id, timeout=30).status is TaskStatus.FAILED


@pytest.mark.parametrize("server", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_database_restart_mid_run(
    server: str,
    private_pg: PrivateServer,
    workers_on: Callable[[str], Workers],
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger"
    t = TemplateBuilder("through a restart")
    previous: list[str] = []
    for i in range(30):
        previous = [t.add(f"step-{i:02d}", LEDGER, after=previous)]
    with Engine(private_pg.url, workers=0) as engine:
        workers = workers_on(private_pg.url)
        for name in ("w1", "w2"):
            workers.start(name, lease=10)
        workers.wait_registered(engine, ["w1", "w2"])
        task = engine.submit(t.build(), args={"ledger": str(ledger), "sleep_ms": "100"})
        wait_for(lambda: len(read_ledger(ledger)) >= 10, "a few steps")
        private_pg.restart(pause=2.0)
        done = engine.wait(task.id, timeout=120)
        assert done.status is TaskStatus.SUCCESSFUL, _status_counts(engine, task.id)
        assert all(p.poll() is None for p in workers.procs.values())  # they rode it out
        ends = Counter(sid for sid, _, phase in read_ledger(ledger) if phase == "end")
        assert set(ends) == {s.id for s in done.subtasks}


# ---- claim races ---------------------------------------------------------------------------------


def _claim_loop(url: str, name: str, seed: int, out: multiprocessing.Queue[list[int]]) -> None:
    store = Store(open_database(url))
    rng = random.Random(seed)
    won: list[int] = []
    while claims := store.claim(name, limit=rng.randint(1, 25)):
        won += [c.subtask_id for c in claims]
        for claim in claims:
            store.finish(claim, AttemptResult(ok=True), output=claim.context)
    out.put(won)


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def test_two_processes_racing_to_claim_never_share_a_subtask(
    server: str, request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue("pg_url" if server == "postgres" else "mysql_url"))
    width = 3000
    t = TemplateBuilder("race", concurrency=width)
    leaves = [t.add(f"leaf-{i:04d}", NOOP) for i in range(width)]
    assert len(leaves) == width
    with Engine(url, workers=0) as engine:
        task = engine.submit(t.build())
        ctx = multiprocessing.get_context("spawn")
        out: multiprocessing.Queue[list[int]] = ctx.Queue()
        procs = [
            ctx.Process(target=_claim_loop, args=(url, f"racer-{i}", i, out)) for i in range(2)
        ]
        for proc in procs:
            proc.start()
        won = [out.get(timeout=240) for _ in procs]
        for proc in procs:
            proc.join(30)
        assert all(proc.exitcode == 0 for proc in procs)
        assert not set(won[0]) & set(won[1])  # never both
        assert len(won[0]) + len(won[1]) == width  # and none missed
        assert min(len(won[0]), len(won[1])) > 0  # both really raced
        assert engine.get(task.id).status is TaskStatus.SUCCESSFUL
