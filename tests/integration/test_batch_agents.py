"""Batch and restart OCP agent tasks end to end: engine workers, SQLite, real agent processes.

Three local demo hosts each run a real stand-in agent (three processes). The tests drive the
built-in templates through :class:`Engine` as an operator would, including a host whose agent
cannot start (``<agent_home>/FAIL_START``) and what retry, skip and rollback then do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagtask import Engine
from dagtask.hosts import local
from dagtask.hosts.inventory import AgentStatus
from dagtask.models import HostInfo, SubtaskInfo, TaskInfo
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from tests.processes import is_running, kill_processes_under, wait_until

LOG = logging.getLogger("test.batch_agents")
WAIT_SECONDS = 120.0
PREPARE = "Prepare restart OCP agent"
POS_PROXY = "Restart pos proxy"
STOP_ALL = "Stop all OCP agent processes"
START_ALL = "Start all OCP agent processes"
FINISH = "Finish OCP agent operation"
WAIT = "Wait node"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine with background workers; every agent process under tmp_path dies afterwards."""
    eng = Engine("sqlite:///" + str(tmp_path / "b.db"), workers=6, poll_interval=0.05)
    try:
        eng.start()
        yield eng
    finally:
        eng.close()
        kill_processes_under(tmp_path)


@pytest.fixture
def hosts(engine: Engine, tmp_path: Path) -> list[HostInfo]:
    """Three demo hosts whose agents run (ONLINE)."""
    found = []
    for i in range(3):
        host = engine.hosts.add(
            f"demo-{i}", "127.0.0.1", str(tmp_path / f"agent-{i}"), agent_status="ONLINE"
        )
        engine.services.connector(host).start_agent(host, log=LOG)
        found.append(host)
    return found


def pids_of(engine: Engine, host: HostInfo) -> list[int]:
    """The pids of the host's live agent processes."""
    return [p.pid for p in engine.services.connector(host).agent_processes(host) if p.alive]


def status_of(engine: Engine, host: HostInfo) -> AgentStatus:
    return engine.hosts.agent_status(host.id)


def ids(hosts: list[HostInfo]) -> dict[str, list[str]]:
    return {"host_ids": [str(h.id) for h in hosts]}


def copies(task: TaskInfo, name: str) -> list[SubtaskInfo]:
    """The parallel copies of one step, by parallelIdx (= position in listMap.host_ids)."""
    return sorted((s for s in task.subtasks if s.name == name), key=lambda s: s.parallel_idx)


def statuses(task: TaskInfo, name: str) -> list[SubtaskStatus]:
    return [s.status for s in copies(task, name)]


def finished(engine: Engine, task_id: int) -> TaskInfo:
    return engine.wait(task_id, timeout=WAIT_SECONDS)


def test_batch_stop_stops_every_agent(engine: Engine, hosts: list[HostInfo]) -> None:
    before = {h.id: pids_of(engine, h) for h in hosts}
    assert all(len(pids) == 3 for pids in before.values())

    task = engine.run("batch-stop-ocp-agent", lists=ids(hosts), timeout=WAIT_SECONDS)

    assert task.status is TaskStatus.SUCCESSFUL, [(s.name, s.message) for s in task.subtasks]
    assert {s.status for s in task.subtasks} == {SubtaskStatus.SUCCESSFUL}
    for host in hosts:
        assert not any(is_running(pid) for pid in before[host.id])
        assert engine.services.connector(host).agent_processes(host) == []
        assert status_of(engine, host) is AgentStatus.STOPPED
    for idx, host in enumerate(hosts):
        log = engine.logs(task.id, copies(task, STOP_ALL)[idx].id)
        assert f"OCP agent on host {host.id} stopped: terminated" in log


def test_batch_restart_replaces_every_agents_processes(
    engine: Engine, hosts: list[HostInfo]
) -> None:
    before = {h.id: pids_of(engine, h) for h in hosts}

    task = engine.run("Batch restart OCP agent", lists=ids(hosts), timeout=WAIT_SECONDS)

    assert task.status is TaskStatus.SUCCESSFUL, [(s.name, s.message) for s in task.subtasks]
    for host in hosts:
        after = pids_of(engine, host)
        assert len(after) == 3 and all(is_running(pid) for pid in after)
        assert set(after).isdisjoint(before[host.id]), "the processes really were restarted"
        assert not any(is_running(pid) for pid in before[host.id])
        assert status_of(engine, host) is AgentStatus.ONLINE


def test_restart_starts_a_stopped_agent_again(engine: Engine, hosts: list[HostInfo]) -> None:
    host = hosts[0]
    stopped = engine.run("stop-ocp-agent", args={"host_id": str(host.id)}, timeout=WAIT_SECONDS)
    assert stopped.status is TaskStatus.SUCCESSFUL
    assert pids_of(engine, host) == []

    task = engine.run("restart-ocp-agent", args={"host_id": str(host.id)}, timeout=WAIT_SECONDS)

    assert task.status is TaskStatus.SUCCESSFUL, [(s.name, s.message) for s in task.subtasks]
    assert task.host_id == host.id
    assert len(pids_of(engine, host)) == 3
    assert status_of(engine, host) is AgentStatus.ONLINE
    # What each step recorded for its rollback: nothing to undo for the stop, a start to undo.
    stop_output, start_output = task.subtask(STOP_ALL).context, task.subtask(START_ALL).context
    assert stop_output is not None and start_output is not None
    assert stop_output.string_map["ocp_agent_stopped"] == "false"
    assert start_output.string_map["ocp_agent_started"] == "true"


@pytest.fixture
def failed_restart(engine: Engine, hosts: list[HostInfo]) -> TaskInfo:
    """A batch restart in which the agent of the middle host cannot start: the task FAILED."""
    (Path(hosts[1].agent_home) / "FAIL_START").touch()
    task = engine.run("Batch restart OCP agent", lists=ids(hosts), timeout=WAIT_SECONDS)
    assert task.status is TaskStatus.FAILED
    return task


def test_an_agent_that_cannot_start_fails_only_its_own_copy(
    engine: Engine, hosts: list[HostInfo], failed_restart: TaskInfo
) -> None:
    task = failed_restart
    assert statuses(task, START_ALL) == [
        SubtaskStatus.SUCCESSFUL,
        SubtaskStatus.FAILED,
        SubtaskStatus.SUCCESSFUL,
    ]
    for name in (PREPARE, POS_PROXY, STOP_ALL):
        assert statuses(task, name) == [SubtaskStatus.SUCCESSFUL] * 3, name
    # The barrier after the Start stage holds: no host is finished while one is broken.
    assert statuses(task, FINISH) == [SubtaskStatus.PENDING] * 3
    assert [w.status for w in copies(task, WAIT)].count(SubtaskStatus.PENDING) == 1

    failed = copies(task, START_ALL)[1]
    assert failed.message and "refusing to start because" in failed.message
    assert "FAIL_START exists" in engine.logs(task.id, failed.id)
    assert pids_of(engine, hosts[1]) == []
    for host in (hosts[0], hosts[2]):
        assert len(pids_of(engine, host)) == 3
    assert {status_of(engine, h) for h in hosts} == {AgentStatus.RESTARTING}


def test_fixing_the_host_and_retrying_completes_the_batch(
    engine: Engine, hosts: list[HostInfo], failed_restart: TaskInfo
) -> None:
    healthy = {h.id: pids_of(engine, h) for h in (hosts[0], hosts[2])}
    (Path(hosts[1].agent_home) / "FAIL_START").unlink()

    engine.retry(failed_restart.id)
    task = finished(engine, failed_restart.id)

    assert (task.status, task.operation) == (TaskStatus.SUCCESSFUL, Operation.RETRY)
    retried = copies(task, START_ALL)[1]
    assert (retried.operation, retried.run_time) == (Operation.RETRY, 2)
    assert [s.run_time for s in copies(task, START_ALL)] == [1, 2, 1], "only the failed copy ran"
    for host in hosts:
        assert len(pids_of(engine, host)) == 3
        assert status_of(engine, host) is AgentStatus.ONLINE
    for host_id, pids in healthy.items():
        host = engine.hosts.get(host_id)
        assert pids_of(engine, host) == pids, "a retry does not restart the healthy hosts again"


def test_skipping_the_failed_start_finishes_and_records_the_truth(
    engine: Engine, hosts: list[HostInfo], failed_restart: TaskInfo
) -> None:
    failed = copies(failed_restart, START_ALL)[1]

    engine.skip_subtask(failed_restart.id, failed.id)
    task = finished(engine, failed_restart.id)

    assert task.status is TaskStatus.SUCCESSFUL
    skipped = copies(task, START_ALL)[1]
    assert (skipped.status, skipped.operation) == (SubtaskStatus.SUCCESSFUL, Operation.SKIP)
    assert statuses(task, FINISH) == [SubtaskStatus.SUCCESSFUL] * 3
    assert status_of(engine, hosts[0]) is status_of(engine, hosts[2]) is AgentStatus.ONLINE
    # The skipped host's agent does not run, and Finish says so instead of claiming ONLINE.
    assert pids_of(engine, hosts[1]) == []
    assert status_of(engine, hosts[1]) is AgentStatus.STOPPED
    finish_log = engine.logs(task.id, copies(task, FINISH)[1].id)
    assert "Not every OCP agent process" in finish_log


def test_rolling_back_a_failed_batch_restart_brings_every_agent_back(
    engine: Engine, hosts: list[HostInfo], failed_restart: TaskInfo
) -> None:
    task_id = failed_restart.id
    plan = engine.rollback_plan(task_id)
    assert plan.allowed and plan.refusals == []
    # Reverse topological order, stage by stage; the Finish copies never ran and are left out.
    assert [sorted({step.name for step in wave}) for wave in plan.waves] == [
        [START_ALL],
        [WAIT],
        [STOP_ALL],
        [WAIT],
        [POS_PROXY],
        [WAIT],
        [PREPARE],
    ]
    assert [len(wave) for wave in plan.waves] == [3, 1, 3, 1, 3, 1, 3]

    # Still broken, the middle host's agent cannot be started again by Stop all's rollback.
    engine.rollback(task_id)
    task = finished(engine, task_id)
    assert (task.status, task.operation) == (TaskStatus.FAILED, Operation.ROLLBACK)
    assert statuses(task, START_ALL) == [SubtaskStatus.PENDING] * 3, "Start copies undone"
    assert statuses(task, STOP_ALL) == [
        SubtaskStatus.PENDING,
        SubtaskStatus.FAILED,
        SubtaskStatus.PENDING,
    ]
    assert statuses(task, PREPARE) == [SubtaskStatus.SUCCESSFUL] * 3, "held by the barrier"
    for host in (hosts[0], hosts[2]):
        assert len(pids_of(engine, host)) == 3, "the stop was undone on the healthy hosts"

    # The operator fixes the host and rolls back again: the failed step runs again.
    (Path(hosts[1].agent_home) / "FAIL_START").unlink()
    engine.rollback(task_id)
    task = finished(engine, task_id)
    assert (task.status, task.operation) == (TaskStatus.SUCCESSFUL, Operation.ROLLBACK)
    assert {s.status for s in task.subtasks} == {SubtaskStatus.PENDING}
    assert copies(task, STOP_ALL)[1].run_time == 2
    for host in hosts:
        assert len(pids_of(engine, host)) == 3
        assert status_of(engine, host) is AgentStatus.ONLINE, "Prepare restored the status"


def test_rolling_back_a_cancelled_stop_restarts_the_agent(engine: Engine, tmp_path: Path) -> None:
    host = engine.hosts.add(
        "stubborn", "127.0.0.1", str(tmp_path / "stubborn"), agent_status="ONLINE"
    )
    home = Path(host.agent_home)
    stubborn = local.start_agent_process(home, "ocp_agentd", ("--ignore-sigterm",))
    others = engine.services.connector(host).start_agent(host, log=LOG)[1:]

    # A long grace period: the stop waits for the process that ignores SIGTERM.
    task = engine.submit(
        "Stop OCP agent", args={"host_id": str(host.id), "stop_grace_seconds": "120"}
    )
    stop = engine.get(task.id).subtask(STOP_ALL)
    wait_until(lambda: not any(is_running(pid) for pid in others), "SIGTERM to stop the others", 30)
    assert engine.get(task.id).subtask(STOP_ALL).status is SubtaskStatus.RUNNING
    engine.cancel_subtask(task.id, stop.id)
    task = finished(engine, task.id)
    assert task.status is TaskStatus.FAILED
    cancelled = task.subtask(STOP_ALL)
    assert (cancelled.status, cancelled.operation) == (SubtaskStatus.FAILED, Operation.CANCEL)
    assert is_running(stubborn) and status_of(engine, host) is AgentStatus.STOPPING

    plan = engine.rollback_plan(task.id)
    assert [[step.name for step in wave] for wave in plan.waves] == [
        [STOP_ALL],
        ["Prepare stop OCP agent"],
    ]
    engine.rollback(task.id)
    task = finished(engine, task.id)

    assert (task.status, task.operation) == (TaskStatus.SUCCESSFUL, Operation.ROLLBACK)
    pids = pids_of(engine, host)
    assert len(pids) == 3 and stubborn in pids, "the missing processes were started again"
    assert status_of(engine, host) is AgentStatus.ONLINE, "the status before the task"
