"""Leases, recovery and host locks on the real store (SQLite, PostgreSQL, MariaDB).

A worker's lease is judged on the database's clock; these tests make a worker late by moving its
``heartbeat_at`` back in the database, which is what a worker that stopped heartbeating looks like.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dagtask import Engine, Recovery, TemplateBuilder
from dagtask.errors import ArgumentError, HostBusyError
from dagtask.planner import MAX_LOST_RETRIES, AttemptResult
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from dagtask.store.schema import worker as worker_table
from dagtask.store.sql import Store

NOOP = "dagtask.builtin.noop"


def _engine(url: str) -> Engine:
    return Engine(url, workers=0)


def _template(policy: Recovery, retry_count: int = 0) -> object:
    t = TemplateBuilder(f"lease {policy.value}")
    first = t.add("first", NOOP, on_worker_lost=policy, retry_count=retry_count)
    t.add("second", NOOP, after=[first])
    return t.build()


def _make_late(store: Store, name: str, seconds: int = 3600) -> None:
    where = worker_table.c.name == name
    with store.db.begin() as conn:
        seen = conn.execute(sa.select(worker_table.c.heartbeat_at).where(where)).scalar_one()
        conn.execute(
            worker_table.update()
            .where(where)
            .values(heartbeat_at=seen - timedelta(seconds=seconds))
        )


def _claim_as(store: Store, name: str, lease: int = 5) -> int:
    store.register_worker(name, concurrency=1, lease_seconds=lease)
    (claim,) = store.claim(name)
    return claim.subtask_id


def test_fail_policy_fails_the_subtask_of_a_lost_worker(db_url: str) -> None:
    with _engine(db_url) as engine:
        task = engine.submit(_template(Recovery.FAIL), args={})  # type: ignore[arg-type]
        sid = _claim_as(engine.store, "w-lost")
        engine.store.register_worker("w-sweeper", concurrency=1, lease_seconds=5)

        assert engine.store.recover_lost_workers("w-sweeper") == []  # nobody is late yet
        _make_late(engine.store, "w-lost")
        assert engine.store.recover_lost_workers("w-sweeper") == ["w-lost"]
        assert engine.store.recover_lost_workers("w-sweeper") == []  # recovered once only

        done = engine.get(task.id)
        sub = next(s for s in done.subtasks if s.id == sid)
        assert (sub.status, sub.operation, sub.run_time) == (
            SubtaskStatus.FAILED,
            Operation.EXECUTE,
            1,
        )
        assert "worker w-lost lost: no heartbeat for" in (sub.message or "")
        assert "recovery policy FAIL" in (sub.message or "")
        assert done.status is TaskStatus.FAILED  # nothing else can run: the operator decides
        lost = [e for e in engine.events(task.id) if e.subtask_id == sid][-1]
        assert (lost.old_status, lost.new_status, lost.executor) == (
            SubtaskStatus.RUNNING,
            SubtaskStatus.FAILED,
            "w-sweeper",
        )
        log = engine.logs(task.id, sid)
        assert "worker w-lost lost" in log
        assert f"Set state for subtask: {sid}, current state: RUNNING, new state: FAILED" in log
        statuses = {w.name: w.status for w in engine.store.workers()}
        assert statuses == {"w-lost": "LOST", "w-sweeper": "ACTIVE"}

        # The operator retries it; another worker finishes the task.
        engine.retry(task.id)
        assert engine.run_task(task.id, timeout=30).status is TaskStatus.SUCCESSFUL


def test_retry_policy_runs_the_subtask_again_elsewhere(db_url: str) -> None:
    with _engine(db_url) as engine:
        task = engine.submit(_template(Recovery.RETRY), args={})  # type: ignore[arg-type]
        sid = _claim_as(engine.store, "w-lost")
        _make_late(engine.store, "w-lost")
        assert engine.store.recover_lost_workers("w-other") == ["w-lost"]

        sub = next(s for s in engine.get(task.id).subtasks if s.id == sid)
        assert (sub.status, sub.operation, sub.run_time) == (
            SubtaskStatus.READY,
            Operation.EXECUTE,
            2,
        )
        engine.store.register_worker("w-other", concurrency=1, lease_seconds=5)
        (again,) = engine.store.claim("w-other")
        assert (again.subtask_id, again.run_time) == (sid, 2)
        engine.store.finish(again, AttemptResult(ok=True), output=again.context)
        done = engine.run_task(task.id, timeout=30)
        assert done.status is TaskStatus.SUCCESSFUL
        sub = next(s for s in done.subtasks if s.id == sid)
        assert sub.executor == "w-other"


def test_retry_recovery_gives_up_after_the_limit(db_url: str) -> None:
    with _engine(db_url) as engine:
        task = engine.submit(_template(Recovery.RETRY), args={})  # type: ignore[arg-type]
        for n in range(MAX_LOST_RETRIES + 1):
            name = f"w-{n}"
            sid = _claim_as(engine.store, name)
            _make_late(engine.store, name)
            assert engine.store.recover_lost_workers("sweeper") == [name]
        sub = next(s for s in engine.get(task.id).subtasks if s.id == sid)
        assert sub.status is SubtaskStatus.FAILED
        assert f"lost its worker {MAX_LOST_RETRIES + 1} times" in (sub.message or "")


def test_a_canceling_subtask_of_a_lost_worker_ends_cancelled(db_url: str) -> None:
    with _engine(db_url) as engine:
        task = engine.submit(_template(Recovery.RETRY), args={})  # type: ignore[arg-type]
        sid = _claim_as(engine.store, "w-lost")
        engine.cancel_subtask(task.id, sid, operator="alice")
        _make_late(engine.store, "w-lost")
        engine.store.recover_lost_workers("sweeper")
        sub = next(s for s in engine.get(task.id).subtasks if s.id == sid)
        assert (sub.status, sub.operation) == (SubtaskStatus.FAILED, Operation.CANCEL)
        assert (sub.message or "").startswith("cancelled by the operator; worker w-lost lost")


def test_a_fresh_heartbeat_is_not_lost_and_a_late_one_must_rejoin(db_url: str) -> None:
    with _engine(db_url) as engine:
        store = engine.store
        store.register_worker("w", concurrency=1, lease_seconds=2)
        assert store.heartbeat("w")
        assert store.recover_lost_workers("other") == []
        _make_late(store, "w")
        assert store.recover_lost_workers("other") == ["w"]
        assert not store.heartbeat("w")  # it learns it was declared lost
        store.register_worker("w", concurrency=1, lease_seconds=2)
        assert store.heartbeat("w")


def test_a_worker_name_in_use_is_refused(db_url: str) -> None:
    with _engine(db_url) as engine:
        store = engine.store
        store.register_worker("w", concurrency=1, lease_seconds=30)
        with store.db.begin() as conn:  # as if another process held the name
            conn.execute(worker_table.update().values(pid=1, host="elsewhere"))
        with pytest.raises(ArgumentError, match="worker name 'w' is in use by elsewhere pid 1"):
            store.register_worker("w", concurrency=1, lease_seconds=30)


def test_a_restarted_worker_recovers_what_its_previous_run_left(db_url: str) -> None:
    with _engine(db_url) as engine:
        task = engine.submit(_template(Recovery.FAIL), args={})  # type: ignore[arg-type]
        sid = _claim_as(engine.store, "fixed-name")
        with engine.store.db.begin() as conn:  # the previous run was another process
            conn.execute(worker_table.update().values(pid=1))
        _make_late(engine.store, "fixed-name")
        assert engine.store.register_worker("fixed-name", concurrency=1, lease_seconds=5) == 1
        sub = next(s for s in engine.get(task.id).subtasks if s.id == sid)
        assert sub.status is SubtaskStatus.FAILED
        assert "restarted before it ended" in (sub.message or "")


def test_hand_back_unknown_requeues_claims_the_worker_never_started(db_url: str) -> None:
    with _engine(db_url) as engine:
        task = engine.submit(_template(Recovery.FAIL), args={})  # type: ignore[arg-type]
        sid = _claim_as(engine.store, "w")
        assert engine.store.hand_back_unknown("w", known={sid}) == 0
        assert engine.store.hand_back_unknown("w", known=set()) == 1
        sub = next(s for s in engine.get(task.id).subtasks if s.id == sid)
        assert (sub.status, sub.run_time) == (SubtaskStatus.READY, 2)


# ---- one host operation per host at a time ------------------------------------------------------


def _host(engine: Engine, tmp_path: object, name: str) -> int:
    return engine.hosts.add(name, "127.0.0.1", f"{tmp_path}/{name}").id


def test_a_second_operation_on_a_busy_host_is_refused(db_url: str, tmp_path: object) -> None:
    with _engine(db_url) as engine:
        host = _host(engine, tmp_path, "web-1")
        other = _host(engine, tmp_path, "web-2")
        first = engine.submit("Stop OCP agent", args={"host_id": host})
        with pytest.raises(HostBusyError) as refused:
            engine.submit("Restart OCP agent", args={"host_id": host})
        assert refused.value.http_status == 409
        assert refused.value.task_id == first.id
        assert f"task {first.id} 'Stop OCP agent' (RUNNING)" in str(refused.value)
        with pytest.raises(HostBusyError):  # a batch naming the busy host is refused whole
            engine.submit("Batch stop OCP agent", lists={"host_ids": [str(other), str(host)]})
        assert engine.list().total_elements == 1
        engine.submit("Stop OCP agent", args={"host_id": other})  # another host is free

        engine.cancel(first.id)
        assert engine.get(first.id).status is TaskStatus.FAILED
        second = engine.submit("Restart OCP agent", args={"host_id": host})  # released
        # Retrying the first task while the second holds the host is refused too.
        with pytest.raises(HostBusyError):
            engine.retry(first.id)
        assert engine.get(first.id).status is TaskStatus.FAILED
        assert second.status is TaskStatus.RUNNING


def test_concurrent_submits_for_one_host_let_exactly_one_in(db_url: str, tmp_path: object) -> None:
    with _engine(db_url) as setup:
        host = _host(setup, tmp_path, "web-1")
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def submit() -> None:
        with _engine(db_url) as engine:
            barrier.wait()
            try:
                engine.submit("Stop OCP agent", args={"host_id": host})
                outcomes.append("ok")
            except HostBusyError:
                outcomes.append("busy")

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["busy"] * 5 + ["ok"]
    with _engine(db_url) as engine:
        with engine.database.read() as conn:
            held = conn.execute(sa.text("SELECT count(*) FROM dagtask_host_lock")).scalar()
        assert held == 1
