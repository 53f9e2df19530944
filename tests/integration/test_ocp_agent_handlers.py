"""The three "Stop OCP agent" handlers, run directly against real agent processes and SQLite."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dagtask.builtin import ocp_agent
from dagtask.builtin.ocp_agent import (
    FinishOcpAgentOperationTask,
    PrepareStopOcpAgentTask,
    StopAllOcpAgentProcessesTask,
)
from dagtask.context import TaskContext
from dagtask.errors import ArgumentError, ContextError, HostError, HostNotFoundError
from dagtask.handlers import CancellationToken, CancelledError, RunContext, output_context
from dagtask.hosts import local
from dagtask.hosts.inventory import AgentStatus, HostStatus
from dagtask.models import HostInfo
from dagtask.services import Services
from dagtask.states import Operation
from dagtask.store.db import open_database

LOG = logging.getLogger("test.ocp_agent")


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def kill_processes_under(root: Path) -> None:
    """SIGKILL every process with an argument at or under ``root``; wait until all are gone."""
    exact = str(root).encode()
    prefix = exact + b"/"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg == exact or arg.startswith(prefix) for arg in args):
            pids.append(int(entry.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        wait_until(functools.partial(_reaped_or_gone, pid), f"pid {pid} to die")


def _reaped_or_gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return not is_running(pid)


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
    assert stopped is None
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


def test_finish_is_idempotent_and_its_rollback_changes_nothing(
    services: Services, host: HostInfo
) -> None:
    given = single(host.id)
    prepared = output_context(PrepareStopOcpAgentTask().execute(run_ctx(services, given)), given)
    finish = FinishOcpAgentOperationTask()
    finish.execute(run_ctx(services, prepared))
    finish.execute(run_ctx(services, prepared))
    assert services.hosts.agent_status(host.id) is AgentStatus.STOPPED
    assert finish.rollback(run_ctx(services, prepared, Operation.ROLLBACK)) is None
    assert services.hosts.agent_status(host.id) is AgentStatus.STOPPED


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
