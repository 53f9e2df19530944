"""The OCP agent handlers (stop, restart, batch), run directly on real agent processes."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagtask.builtin import ocp_agent
from dagtask.builtin.ocp_agent import (
    FinishOcpAgentOperationTask,
    PrepareRestartOcpAgentTask,
    PrepareStopOcpAgentTask,
    RestartPosProxyTask,
    StartAllOcpAgentProcessesTask,
    StopAllOcpAgentProcessesTask,
    WaitNode,
)
from dagtask.context import TaskContext, merge
from dagtask.errors import ArgumentError, ContextError, HostError, HostNotFoundError
from dagtask.handlers import (
    CancellationToken,
    CancelledError,
    Handler,
    RunContext,
    output_context,
)
from dagtask.hosts import local
from dagtask.hosts.inventory import AgentStatus, HostStatus
from dagtask.models import HostInfo
from dagtask.services import Services
from dagtask.states import Operation
from dagtask.store.db import open_database
from tests.processes import is_running, kill_processes_under

LOG = logging.getLogger("test.ocp_agent")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Services on a fresh SQLite file; every agent process under tmp_path dies with the test."""
    db = open_database("sqlite:///" + str(tmp_path / "t.db"))
    try:
        yield Services(db)
    finally:
        kill_processes_under(tmp_path)
        db.dispose()


def add_host(services: Services, tmp_path: Path, name: str = "db1", **kwargs: str) -> HostInfo:
    """A local host, its agent stated ONLINE unless ``agent_status`` says otherwise."""
    kwargs.setdefault("agent_status", "ONLINE")
    return services.hosts.add(name, "127.0.0.1", str(tmp_path / name), **kwargs)


@pytest.fixture
def host(services: Services, tmp_path: Path) -> HostInfo:
    """A host whose agent is running."""
    host = add_host(services, tmp_path)
    services.connector(host).start_agent(host, log=LOG)
    return host


def run_ctx(
    services: Services,
    context: TaskContext,
    operation: Operation = Operation.EXECUTE,
    token: CancellationToken | None = None,
) -> RunContext:
    return RunContext(
        context=context,
        task_id=1,
        subtask_id=1,
        operation=operation,
        run_time=1,
        token=token or CancellationToken(),
        services=services,
        log=LOG,
    )


def single(host_id: int, **strings: str) -> TaskContext:
    return TaskContext(
        string_map={"host_id": str(host_id), "prohibit_rollback": "false", **strings}
    )


def agent_pids(services: Services, host: HostInfo) -> list[int]:
    return [p.pid for p in services.connector(host).agent_processes(host) if p.alive]


def test_stop_chain_stops_the_agent_and_marks_it_stopped(
    services: Services, host: HostInfo, caplog: pytest.LogCaptureFixture
) -> None:
    pids = agent_pids(services, host)
    assert len(pids) == 3
    caplog.set_level(logging.INFO, logger=LOG.name)

    given = single(host.id)
    prepared = output_context(PrepareStopOcpAgentTask().execute(run_ctx(services, given)), given)
    assert services.hosts.agent_status(host.id) is AgentStatus.STOPPING
    assert prepared.string_map["ocp_agent_origin_status"] == "ONLINE"
    assert prepared.string_map["host_id"] == str(host.id)

    stopped = StopAllOcpAgentProcessesTask().execute(run_ctx(services, prepared))
    assert stopped == {"ocp_agent_stopped": "true"}, "tells its rollback there is a stop to undo"
    assert not any(is_running(pid) for pid in pids)
    assert services.connector(host).agent_processes(host) == []
    assert services.hosts.agent_status(host.id) is AgentStatus.STOPPING

    FinishOcpAgentOperationTask().execute(run_ctx(services, prepared))
    assert services.hosts.agent_status(host.id) is AgentStatus.STOPPED

    messages = [record.getMessage() for record in caplog.records]
    assert "[PrepareStopOcpAgentTask] begin" in messages
    assert f"Updating OCP agent status, hostId={host.id}, status=STOPPING" in messages
    assert "[StopAllOcpAgentProcessesTask] end" in messages
    assert f"Updating OCP agent status, hostId={host.id}, status=STOPPED" in messages


def test_prepare_rollback_restores_the_recorded_status(services: Services, host: HostInfo) -> None:
    services.hosts.set_agent_status(host.id, AgentStatus.UNKNOWN)
    given = single(host.id)
    prepare = PrepareStopOcpAgentTask()
    prepared = output_context(prepare.execute(run_ctx(services, given)), given)
    assert services.hosts.agent_status(host.id) is AgentStatus.STOPPING
    assert prepare.rollback(run_ctx(services, prepared, Operation.ROLLBACK)) is None
    assert services.hosts.agent_status(host.id) is AgentStatus.UNKNOWN
    assert len(agent_pids(services, host)) == 3, "Prepare never touches the processes"


def test_prepare_rollback_without_a_record_follows_the_processes(
    services: Services, host: HostInfo, tmp_path: Path
) -> None:
    services.hosts.set_agent_status(host.id, AgentStatus.STOPPING)
    PrepareStopOcpAgentTask().rollback(run_ctx(services, single(host.id), Operation.ROLLBACK))
    assert services.hosts.agent_status(host.id) is AgentStatus.ONLINE

    idle = add_host(services, tmp_path, "db2", agent_status="STOPPING")
    PrepareStopOcpAgentTask().rollback(run_ctx(services, single(idle.id), Operation.ROLLBACK))
    assert services.hosts.agent_status(idle.id) is AgentStatus.STOPPED


def test_prepare_rollback_leaves_a_status_another_operation_set(
    services: Services, host: HostInfo
) -> None:
    given = single(host.id)
    prepared = output_context(PrepareStopOcpAgentTask().execute(run_ctx(services, given)), given)
    services.hosts.set_agent_status(host.id, AgentStatus.RESTARTING)
    PrepareStopOcpAgentTask().rollback(run_ctx(services, prepared, Operation.ROLLBACK))
    assert services.hosts.agent_status(host.id) is AgentStatus.RESTARTING


def test_unknown_host_is_host_not_found(services: Services) -> None:
    for handler in (
        PrepareStopOcpAgentTask(),
        StopAllOcpAgentProcessesTask(),
        FinishOcpAgentOperationTask(),
    ):
        with pytest.raises(HostNotFoundError, match="host 42 does not exist"):
            handler.execute(run_ctx(services, single(42)))


def test_bad_or_missing_host_id_is_an_argument_error(services: Services) -> None:
    with pytest.raises(ArgumentError, match="host id 'db1' is not a number"):
        PrepareStopOcpAgentTask().execute(
            run_ctx(services, TaskContext(string_map={"host_id": "db1"}))
        )
    with pytest.raises(ContextError, match="no stringMap\\['host_id'\\]"):
        PrepareStopOcpAgentTask().execute(run_ctx(services, TaskContext()))


@pytest.mark.parametrize("busy", [AgentStatus.STARTING, AgentStatus.RESTARTING])
def test_prepare_refuses_an_agent_another_operation_owns(
    services: Services, tmp_path: Path, busy: AgentStatus
) -> None:
    host = add_host(services, tmp_path, agent_status=busy)
    with pytest.raises(HostError, match=f"is {busy}: another operation is starting or restarting"):
        PrepareStopOcpAgentTask().execute(run_ctx(services, single(host.id)))
    assert services.hosts.agent_status(host.id) is busy


def test_prepare_refuses_an_offline_host(services: Services, tmp_path: Path) -> None:
    host = add_host(services, tmp_path, status=HostStatus.OFFLINE)
    with pytest.raises(HostError, match="is OFFLINE, so its OCP agent cannot be stopped"):
        PrepareStopOcpAgentTask().execute(run_ctx(services, single(host.id)))
    assert services.hosts.agent_status(host.id) is AgentStatus.ONLINE


def test_stop_all_is_idempotent(services: Services, host: HostInfo) -> None:
    ctx = run_ctx(services, single(host.id))
    StopAllOcpAgentProcessesTask().execute(ctx)
    StopAllOcpAgentProcessesTask().execute(ctx)
    assert agent_pids(services, host) == []


def test_stop_grace_seconds_sets_when_sigkill_comes(
    services: Services, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = add_host(services, tmp_path)
    stubborn = local.start_agent_process(Path(host.agent_home), "ocp_agentd", ("--ignore-sigterm",))
    caplog.set_level(logging.INFO, logger=LOG.name)
    started = time.monotonic()
    StopAllOcpAgentProcessesTask().execute(
        run_ctx(services, single(host.id, stop_grace_seconds="0.3"))
    )
    assert 0.3 <= time.monotonic() - started < 10
    assert not is_running(stubborn)
    assert any("signal=SIGKILL" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("bad", ["soon", "-1", "nan", "inf"])
def test_bad_stop_grace_seconds_is_an_argument_error(
    services: Services, host: HostInfo, bad: str
) -> None:
    with pytest.raises(ArgumentError, match="stop_grace_seconds must be a number of seconds >= 0"):
        StopAllOcpAgentProcessesTask().execute(
            run_ctx(services, single(host.id, stop_grace_seconds=bad))
        )
    assert len(agent_pids(services, host)) == 3


def test_cancelled_token_stops_the_handlers_before_they_act(
    services: Services, host: HostInfo
) -> None:
    token = CancellationToken()
    token.cancel("subtask timed out")
    for handler in (PrepareStopOcpAgentTask(), StopAllOcpAgentProcessesTask()):
        with pytest.raises(CancelledError, match="subtask timed out"):
            handler.execute(run_ctx(services, single(host.id), token=token))
    assert services.hosts.agent_status(host.id) is AgentStatus.ONLINE
    assert len(agent_pids(services, host)) == 3


def test_finish_is_idempotent_and_its_rollback_hands_back_to_prepare(
    services: Services, host: HostInfo
) -> None:
    services.hosts.set_agent_status(host.id, AgentStatus.UNKNOWN)
    given = single(host.id)
    prepare = PrepareStopOcpAgentTask()
    prepared = output_context(prepare.execute(run_ctx(services, given)), given)
    finish = FinishOcpAgentOperationTask()
    finish.execute(run_ctx(services, prepared))
    finish.execute(run_ctx(services, prepared))
    assert services.hosts.agent_status(host.id) is AgentStatus.STOPPED
    # Rolled back in reverse order, Finish puts back STOPPING and Prepare the original status.
    assert finish.rollback(run_ctx(services, prepared, Operation.ROLLBACK)) is None
    assert services.hosts.agent_status(host.id) is AgentStatus.STOPPING
    prepare.rollback(run_ctx(services, prepared, Operation.ROLLBACK))
    assert services.hosts.agent_status(host.id) is AgentStatus.UNKNOWN
    # A status another operation set meanwhile is left alone.
    services.hosts.set_agent_status(host.id, AgentStatus.RESTARTING)
    finish.rollback(run_ctx(services, prepared, Operation.ROLLBACK))
    assert services.hosts.agent_status(host.id) is AgentStatus.RESTARTING


def test_batch_copy_works_on_its_own_host_under_its_own_key(
    services: Services, tmp_path: Path
) -> None:
    first = add_host(services, tmp_path, "db1")
    second = add_host(services, tmp_path, "db2", agent_status="UNKNOWN")
    services.connector(second).start_agent(second, log=LOG)
    host_ids = [str(first.id), str(second.id)]
    given = TaskContext(list_map={"host_ids": host_ids}, parallel=True, parallel_idx=1)
    prepared = output_context(PrepareStopOcpAgentTask().execute(run_ctx(services, given)), given)
    assert prepared.string_map == {
        f"ocp_agent_origin_status_{second.id}": "UNKNOWN",
        "ocp_agent_operation": "STOP",
    }
    StopAllOcpAgentProcessesTask().execute(run_ctx(services, prepared))
    FinishOcpAgentOperationTask().execute(run_ctx(services, prepared))
    assert services.hosts.agent_status(second.id) is AgentStatus.STOPPED
    assert services.hosts.agent_status(first.id) is AgentStatus.ONLINE
    assert agent_pids(services, second) == []


def test_template_metadata_matches_ocp() -> None:
    assert [(s.name, s.description, s.timeout) for s in ocp_agent.STOP_OCP_AGENT_STEPS] == [
        ("Prepare stop OCP agent", "Prepare stop OCP agent", 60),
        ("Stop all OCP agent processes", "Stop all OCP agent processes", 600),
        ("Finish OCP agent operation", "Finish OCP agent operation", 60),
    ]
    assert [s.handler.__name__ for s in ocp_agent.STOP_OCP_AGENT_STEPS] == [
        "PrepareStopOcpAgentTask",
        "StopAllOcpAgentProcessesTask",
        "FinishOcpAgentOperationTask",
    ]


# ---- Restart OCP agent ------------------------------------------------------------------------


def stopped_host(services: Services, tmp_path: Path, name: str = "db1") -> HostInfo:
    """A host whose agent is stopped (and marked so)."""
    return add_host(services, tmp_path, name, agent_status="STOPPED")


def test_restart_chain_replaces_the_processes_and_marks_the_agent_online(
    services: Services, host: HostInfo
) -> None:
    old = agent_pids(services, host)
    ctx = single(host.id)
    first: list[Handler] = [PrepareRestartOcpAgentTask(), RestartPosProxyTask()]
    for handler in first:
        ctx = output_context(handler.execute(run_ctx(services, ctx)), ctx)
    assert services.hosts.agent_status(host.id) is AgentStatus.RESTARTING
    assert ctx.string_map["ocp_agent_origin_status"] == "ONLINE"
    assert ctx.string_map["ocp_agent_operation"] == "RESTART"
    then: list[Handler] = [StopAllOcpAgentProcessesTask(), StartAllOcpAgentProcessesTask()]
    for handler in then:
        ctx = output_context(handler.execute(run_ctx(services, ctx)), ctx)
    assert (ctx.string_map["ocp_agent_stopped"], ctx.string_map["ocp_agent_started"]) == (
        "true",
        "true",
    )
    new = agent_pids(services, host)
    assert len(new) == 3 and set(new).isdisjoint(old)
    assert not any(is_running(pid) for pid in old)
    FinishOcpAgentOperationTask().execute(run_ctx(services, ctx))
    assert services.hosts.agent_status(host.id) is AgentStatus.ONLINE


@pytest.mark.parametrize("busy", [AgentStatus.STARTING, AgentStatus.STOPPING])
def test_prepare_restart_refuses_an_agent_another_operation_owns(
    services: Services, tmp_path: Path, busy: AgentStatus
) -> None:
    host = add_host(services, tmp_path, agent_status=busy)
    with pytest.raises(HostError, match=f"is {busy}: another operation is starting or stopping"):
        PrepareRestartOcpAgentTask().execute(run_ctx(services, single(host.id)))
    assert services.hosts.agent_status(host.id) is busy


def test_prepare_restart_repairs_a_failed_restart_and_rolls_back(
    services: Services, tmp_path: Path
) -> None:
    host = add_host(services, tmp_path, agent_status="RESTARTING")
    given = single(host.id)
    prepare = PrepareRestartOcpAgentTask()
    prepared = output_context(prepare.execute(run_ctx(services, given)), given)
    assert prepared.string_map["ocp_agent_origin_status"] == "RESTARTING"
    services.hosts.set_agent_status(host.id, AgentStatus.ONLINE)
    prepare.rollback(run_ctx(services, prepared, Operation.ROLLBACK))
    assert services.hosts.agent_status(host.id) is AgentStatus.ONLINE, "not its status any more"

    offline = add_host(services, tmp_path, "db2", status=HostStatus.OFFLINE)
    with pytest.raises(HostError, match="is OFFLINE, so its OCP agent cannot be restarted"):
        prepare.execute(run_ctx(services, single(offline.id)))


def test_restart_pos_proxy_prepares_the_agent_home_and_changes_nothing_else(
    services: Services, tmp_path: Path
) -> None:
    fresh = stopped_host(services, tmp_path)
    RestartPosProxyTask().execute(run_ctx(services, single(fresh.id)))
    home = Path(fresh.agent_home)
    assert (home / "run").is_dir() and (home / "log").is_dir()
    assert list((home / "run").iterdir()) == [], "no probe file is left behind"
    assert services.hosts.agent_status(fresh.id) is AgentStatus.STOPPED

    broken = stopped_host(services, tmp_path, "db2")
    Path(broken.agent_home).mkdir()
    (Path(broken.agent_home) / "run").write_text("not a folder")
    with pytest.raises(HostError, match="could not be started again: cannot write to"):
        RestartPosProxyTask().execute(run_ctx(services, single(broken.id)))


def test_start_all_is_idempotent_and_its_rollback_stops_what_it_started(
    services: Services, tmp_path: Path
) -> None:
    host = stopped_host(services, tmp_path)
    start = StartAllOcpAgentProcessesTask()
    given = single(host.id)
    first = output_context(start.execute(run_ctx(services, given)), given)
    assert first.string_map["ocp_agent_started"] == "true"
    pids = agent_pids(services, host)
    assert len(pids) == 3
    second = output_context(start.retry(run_ctx(services, given, Operation.RETRY)), given)
    assert second.string_map["ocp_agent_started"] == "false"
    assert agent_pids(services, host) == pids, "a running agent is not started twice"

    # The attempt that found everything running started nothing, so it undoes nothing.
    start.rollback(run_ctx(services, second, Operation.ROLLBACK))
    assert agent_pids(services, host) == pids
    start.rollback(run_ctx(services, first, Operation.ROLLBACK))
    assert agent_pids(services, host) == []
    assert not any(is_running(pid) for pid in pids)


def test_start_all_failure_quotes_the_agents_last_log_line(
    services: Services, tmp_path: Path
) -> None:
    host = stopped_host(services, tmp_path)
    home = Path(host.agent_home)
    home.mkdir()
    (home / "FAIL_START").touch()
    with pytest.raises(HostError, match=re.escape(f"refusing to start because {home}/FAIL_START")):
        StartAllOcpAgentProcessesTask().execute(run_ctx(services, single(host.id)))
    assert agent_pids(services, host) == []
    # Without a record of the failed attempt, its rollback stops whatever it may have left.
    StartAllOcpAgentProcessesTask().rollback(run_ctx(services, single(host.id), Operation.ROLLBACK))
    (home / "FAIL_START").unlink()
    StartAllOcpAgentProcessesTask().execute(run_ctx(services, single(host.id)))
    assert len(agent_pids(services, host)) == 3


def test_start_all_catches_a_process_that_dies_right_after_start_up(
    services: Services, tmp_path: Path
) -> None:
    host = stopped_host(services, tmp_path)
    home = Path(host.agent_home)
    home.mkdir()
    (home / "CRASH_AFTER_START").touch()
    # The crash may be seen while starting or during the settle check: both quote the log.
    with pytest.raises(HostError, match="crashed after start-up because"):
        StartAllOcpAgentProcessesTask().execute(run_ctx(services, single(host.id)))
    assert agent_pids(services, host) == []


def test_stop_all_rollback_starts_only_an_agent_it_stopped(
    services: Services, host: HostInfo, tmp_path: Path
) -> None:
    stop = StopAllOcpAgentProcessesTask()
    given = single(host.id)
    stopped = output_context(stop.execute(run_ctx(services, given)), given)
    again = output_context(stop.retry(run_ctx(services, given, Operation.RETRY)), given)
    assert again.string_map["ocp_agent_stopped"] == "false"
    assert agent_pids(services, host) == [], "a retry stops, it does not start first"

    stop.rollback(run_ctx(services, again, Operation.ROLLBACK))
    assert agent_pids(services, host) == []
    stop.rollback(run_ctx(services, stopped, Operation.ROLLBACK))
    assert len(agent_pids(services, host)) == 3


@pytest.mark.parametrize(("origin", "restarted"), [("ONLINE", True), ("STOPPED", False)])
def test_rollback_of_a_failed_stop_follows_the_status_before_the_task(
    services: Services, tmp_path: Path, origin: str, restarted: bool
) -> None:
    host = stopped_host(services, tmp_path)
    # A failed attempt has no output: its rollback sees Prepare's output only.
    given = single(host.id, ocp_agent_origin_status=origin)
    StopAllOcpAgentProcessesTask().rollback(run_ctx(services, given, Operation.ROLLBACK))
    assert len(agent_pids(services, host)) == (3 if restarted else 0)


def test_finish_restart_marks_online_only_a_running_agent(
    services: Services, host: HostInfo, tmp_path: Path
) -> None:
    context = single(host.id, ocp_agent_operation="RESTART")
    FinishOcpAgentOperationTask().execute(run_ctx(services, context))
    assert services.hosts.agent_status(host.id) is AgentStatus.ONLINE

    # E.g. the operator skipped a Start that failed: the inventory must not claim ONLINE.
    idle = add_host(services, tmp_path, "db2", agent_status="RESTARTING")
    context = single(idle.id, ocp_agent_operation="RESTART")
    FinishOcpAgentOperationTask().execute(run_ctx(services, context))
    assert services.hosts.agent_status(idle.id) is AgentStatus.STOPPED
    FinishOcpAgentOperationTask().rollback(run_ctx(services, context, Operation.ROLLBACK))
    assert services.hosts.agent_status(idle.id) is AgentStatus.STOPPED, "not what Finish set"


def test_wait_node_is_a_no_op(services: Services) -> None:
    given = TaskContext(string_map={"a": "b"})
    assert WaitNode().execute(run_ctx(services, given)) is None
    assert WaitNode().rollback(run_ctx(services, given, Operation.ROLLBACK)) is None


def test_batch_copy_refuses_a_host_listed_twice(services: Services, tmp_path: Path) -> None:
    host = add_host(services, tmp_path)
    given = TaskContext(list_map={"host_ids": [str(host.id)] * 2}, parallel=True, parallel_idx=0)
    for prepare in (PrepareStopOcpAgentTask(), PrepareRestartOcpAgentTask()):
        with pytest.raises(ArgumentError, match=f"names host {host.id} more than once"):
            prepare.execute(run_ctx(services, given))
    assert services.hosts.agent_status(host.id) is AgentStatus.ONLINE


def test_batch_copies_record_per_host_keys_that_merge(services: Services, tmp_path: Path) -> None:
    first, second = add_host(services, tmp_path, "db1"), add_host(services, tmp_path, "db2")
    services.connector(first).start_agent(first, log=LOG)
    ids = [str(first.id), str(second.id)]
    outputs = []
    for idx in (0, 1):
        ctx = TaskContext(list_map={"host_ids": ids}, parallel=True, parallel_idx=idx)
        for handler in (PrepareRestartOcpAgentTask(), StopAllOcpAgentProcessesTask()):
            ctx = output_context(handler.execute(run_ctx(services, ctx)), ctx)
        outputs.append(ctx)
    merged = merge(outputs)  # what the Wait node after the stage receives: no 20002
    assert merged.string_map[f"ocp_agent_stopped_{first.id}"] == "true"
    assert merged.string_map[f"ocp_agent_stopped_{second.id}"] == "false"


def test_restart_template_metadata_matches_ocp() -> None:
    steps = ocp_agent.RESTART_OCP_AGENT_STEPS
    assert [(s.name, s.description, s.timeout, s.handler.__name__) for s in steps] == [
        (
            "Prepare restart OCP agent",
            "Prepare restart OCP agent",
            60,
            "PrepareRestartOcpAgentTask",
        ),
        ("Restart pos proxy", "Restart pos proxy", 60, "RestartPosProxyTask"),
        (
            "Stop all OCP agent processes",
            "Stop all OCP agent processes",
            600,
            "StopAllOcpAgentProcessesTask",
        ),
        (
            "Start all OCP agent processes",
            "Start all OCP agent processes",
            600,
            "StartAllOcpAgentProcessesTask",
        ),
        (
            "Finish OCP agent operation",
            "Finish OCP agent operation",
            60,
            "FinishOcpAgentOperationTask",
        ),
    ]
    wait = ocp_agent.WAIT_NODE
    assert (wait.name, wait.description, wait.timeout, wait.handler.__name__) == (
        "Wait node",
        "Wait node",
        30,
        "WaitNode",
    )
