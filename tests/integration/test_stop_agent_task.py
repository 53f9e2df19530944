"""The built-in "Stop OCP agent" task, end to end through the engine, on real processes."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagtask import Engine, HostNotFoundError, SubtaskStatus, TaskStatus
from dagtask.hosts.connector import connector_for
from dagtask.hosts.local import start_agent_process
from dagtask.models import HostInfo


def alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(f"sqlite:///{tmp_path}/stop.db", workers=2, poll_interval=0.05) as eng:
        yield eng


@pytest.fixture
def host(engine: Engine, tmp_path: Path) -> Iterator[HostInfo]:
    host = engine.hosts.add(name="web-1", inner_ip="127.0.0.1", agent_home=str(tmp_path / "agent"))
    pids = connector_for(host).start_agent(host, log=logging.getLogger("test"))
    yield host
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_stop_ocp_agent_stops_the_real_processes(engine: Engine, host: HostInfo) -> None:
    pids = [p.pid for p in connector_for(host).agent_processes(host)]
    assert len(pids) == 3 and all(alive(p) for p in pids)
    task = engine.run("Stop OCP agent", args={"host_id": str(host.id)}, timeout=60)
    assert task.status is TaskStatus.SUCCESSFUL
    assert [s.status for s in task.subtasks] == [SubtaskStatus.SUCCESSFUL] * 3
    assert task.host_id == host.id
    assert not any(alive(p) for p in pids)
    assert engine.hosts.get(host.id).agent_status == "STOPPED"
    log = engine.logs(task.id, task.subtask("Stop all OCP agent processes").id)
    assert "SIGTERM" in log


def test_stopping_a_stopped_agent_succeeds(engine: Engine, host: HostInfo) -> None:
    first = engine.run("stop-ocp-agent", args={"host_id": str(host.id)}, timeout=60)
    second = engine.run("stop-ocp-agent", args={"host_id": str(host.id)}, timeout=60)
    assert (first.status, second.status) == (TaskStatus.SUCCESSFUL, TaskStatus.SUCCESSFUL)


def test_a_process_that_ignores_sigterm_is_killed(
    engine: Engine, host: HostInfo, tmp_path: Path
) -> None:
    stubborn = start_agent_process(tmp_path / "agent", "ocp_stubborn", ("--ignore-sigterm",))
    began = time.monotonic()
    task = engine.run(
        "Stop OCP agent", args={"host_id": str(host.id), "stop_grace_seconds": "1"}, timeout=60
    )
    assert task.status is TaskStatus.SUCCESSFUL
    assert time.monotonic() - began < 10
    assert not alive(stubborn)
    log = engine.logs(task.id, task.subtask("Stop all OCP agent processes").id)
    assert "SIGKILL" in log


def test_unknown_host_is_refused_before_any_task_exists(engine: Engine) -> None:
    with pytest.raises(HostNotFoundError, match="host 4242 does not exist, so no task"):
        engine.submit("Stop OCP agent", args={"host_id": "4242"})
    assert engine.list().total_elements == 0
