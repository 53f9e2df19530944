"""Real `dagtask worker` processes that are frozen (SIGSTOP past their lease) or killed and
restarted at once under their name, and a worker declared lost while a claim was in flight."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from dagtask import Engine, Recovery, TemplateBuilder
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.store.schema import worker as worker_table
from tests.workers.conftest import Workers, wait_for


def _ticks(path: Path) -> list[tuple[str, int, int, int, float]]:
    """(phase, subtask id, runTime, pid, wall time) of every line the ticker wrote."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            phase, sid, rt, pid, when = line.split()
            rows.append((phase, int(sid), int(rt), int(pid), float(when)))
    return rows


@pytest.mark.parametrize(
    "server",
    [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"],
)
def test_a_frozen_worker_never_runs_a_subtask_beside_its_successor(
    server: str,
    request: pytest.FixtureRequest,
    workers_on: Callable[[str], Workers],
    tmp_path: Path,
) -> None:
    """Worker A is frozen (SIGSTOP) longer than its lease while it runs a RETRY subtask; B
    recovers it and runs it again. When A resumes, its handler must already be fenced: no tick
    of A is checked after B started."""
    url = str(request.getfixturevalue("pg_url" if server == "postgres" else "sqlite_url"))
    ledger = tmp_path / "ticks"
    t = TemplateBuilder("frozen")
    t.add("ticks", "tests.handlers.ticker", on_worker_lost=Recovery.RETRY)
    with Engine(url, workers=0) as engine:
        workers = workers_on(url)
        a = workers.start("a", concurrency=1, lease=2)
        workers.wait_registered(engine, ["a"])
        task = engine.submit(t.build(), args={"ledger": str(ledger), "seconds": "6"})
        wait_for(lambda: any(r[0] == "tick" for r in _ticks(ledger)), "A to tick")
        a.send_signal(signal.SIGSTOP)
        try:
            workers.start("b", concurrency=1, lease=2)
            wait_for(
                lambda: any(r[0] == "start" and r[3] != a.pid for r in _ticks(ledger)),
                "B to take the subtask over",
                timeout=60,
            )
        finally:
            a.send_signal(signal.SIGCONT)
        done = engine.wait(task.id, timeout=60)
        time.sleep(0.5)  # let A's resumed threads do whatever they would do
        rows = _ticks(ledger)
        b_start = min(r[4] for r in rows if r[0] == "start" and r[3] != a.pid)
        late = [r for r in rows if r[3] == a.pid and r[4] > b_start]
        assert late == [], f"A ran beside B after B started at {b_start}: {late[:5]}"
        assert done.status is TaskStatus.SUCCESSFUL
        assert done.subtasks[0].run_time == 2
        wait_for(lambda: a.poll() is None and "a" in _active(engine), "A to rejoin", timeout=30)


def _active(engine: Engine) -> set[str]:
    return {w.name for w in engine.store.workers() if w.status == "ACTIVE"}


def test_a_killed_worker_restarted_under_its_name_takes_over_at_once(
    db_url: str, workers_on: Callable[[str], Workers], tmp_path: Path
) -> None:
    t = TemplateBuilder("restarted")
    t.add("long", "tests.handlers.ledger", on_worker_lost=Recovery.RETRY)
    ledger = tmp_path / "ledger"
    with Engine(db_url, workers=0) as engine:
        workers = workers_on(db_url)
        workers.start("w1", concurrency=1, lease=60)
        workers.wait_registered(engine, ["w1"])
        task = engine.submit(t.build(), args={"ledger": str(ledger), "sleep_ms": "1500"})
        wait_for(lambda: ledger.exists() and "start" in ledger.read_text(), "the first start")
        workers.kill("w1")
        begun = time.monotonic()
        again = workers.start("w1", concurrency=1, lease=60)
        done = engine.wait(task.id, timeout=40)
        took = time.monotonic() - begun
        assert again.poll() is None, workers.log("w1")
        assert "Traceback" not in workers.log("w1"), workers.log("w1")
        assert done.status is TaskStatus.SUCCESSFUL
        assert done.subtasks[0].run_time == 2  # recovered by the new process, run again
        assert took < 30, f"the restarted worker waited {took:.0f} s (lease 60 s)"


def test_claims_of_a_worker_declared_lost_are_recovered_when_it_dies(db_url: str) -> None:
    """A worker declared LOST whose claim was in flight holds that claim; if it never comes back,
    a later sweep recovers it."""
    t = TemplateBuilder("zombie claim")
    t.add("only", "dagtask.builtin.noop", on_worker_lost=Recovery.RETRY)
    with Engine(db_url, workers=0) as engine:
        store = engine.store
        task = engine.submit(t.build(), args={})
        store.register_worker("zombie", concurrency=1, lease_seconds=5)
        store.register_worker("sweeper", concurrency=1, lease_seconds=5)
        _make_late(engine, "zombie")
        assert store.recover_lost_workers("sweeper") == ["zombie"]
        (claim,) = store.claim("zombie")  # the claim that was in flight
        assert store.get_task(task.id).subtasks[0].status is SubtaskStatus.RUNNING
        store.recover_lost_workers("sweeper")
        sub = store.get_task(task.id).subtasks[0]
        assert sub.status is SubtaskStatus.READY and sub.run_time == claim.run_time + 1


def _make_late(engine: Engine, name: str) -> None:
    where = worker_table.c.name == name
    with engine.store.db.begin() as conn:
        seen = conn.execute(sa.select(worker_table.c.heartbeat_at).where(where)).scalar_one()
        conn.execute(
            worker_table.update().where(where).values(heartbeat_at=seen - timedelta(hours=1))
        )
