"""The built-in OCP agent templates on remote hosts: real sshd servers, agent processes started
on them through SSH, stopped and restarted by tasks as an operator would run them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dagtask import Engine
from dagtask.hosts.inventory import AgentStatus
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from tests.processes import is_running, wait_until
from tests.ssh.sshd import SshLab, SshServer
from tests.ssh.support import (
    WAIT_SECONDS,
    add_ssh_host,
    all_logs,
    connector,
    processes_with,
    start_remote_agent,
)


def test_stop_ocp_agent_over_ssh_stops_the_remote_processes(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    host = add_ssh_host(engine, ssh_lab, ssh_server, tmp_path / "agent")
    pids = start_remote_agent(engine, host)
    assert len(pids) == 3 and all(is_running(pid) for pid in pids)
    # Started through sshd: the processes carry the SSH session's environment.
    environ = Path(f"/proc/{pids[0]}/environ").read_bytes()
    assert f"{ssh_server.port}".encode() in environ and b"SSH_CONNECTION=" in environ

    task = engine.submit("Stop OCP agent", args={"host_id": str(host.id)})
    done = engine.wait(task.id, timeout=WAIT_SECONDS)

    assert done.status is TaskStatus.SUCCESSFUL, all_logs(engine, task.id)
    assert not any(is_running(pid) for pid in pids)
    assert engine.hosts.agent_status(host.id) is AgentStatus.STOPPED
    assert not list((tmp_path / "agent" / "run").glob("*.pid"))  # records removed remotely
    log = all_logs(engine, task.id)
    assert f"root@{ssh_server.address}:{ssh_server.port}" in log
    assert "terminated ocp_agentd, ocp_mgragent, ocp_monagent" in log


def test_the_steps_of_a_task_share_one_connection(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    host = add_ssh_host(engine, ssh_lab, ssh_server, tmp_path / "agent", name="shared")
    start_remote_agent(engine, host)
    pool = connector(engine, host).pool
    before = pool.connects
    task = engine.submit("Restart OCP agent", args={"host_id": str(host.id)})
    done = engine.wait(task.id, timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.SUCCESSFUL, all_logs(engine, task.id)
    # Five steps, dozens of remote commands, and not one new connection: the pool had one.
    assert pool.connects == before
    assert engine.hosts.agent_status(host.id) is AgentStatus.ONLINE
    assert len([p for p in connector(engine, host).agent_processes(host) if p.alive]) == 3


def test_an_agent_that_ignores_sigterm_is_killed_after_the_grace_period(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    home = tmp_path / "stubborn"
    home.mkdir()
    (home / "IGNORE_SIGTERM").touch()
    host = add_ssh_host(engine, ssh_lab, ssh_server, home, name="stubborn")
    pids = start_remote_agent(engine, host)
    task = engine.submit(
        "Stop OCP agent", args={"host_id": str(host.id), "stop_grace_seconds": "0.5"}
    )
    done = engine.wait(task.id, timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.SUCCESSFUL, all_logs(engine, task.id)
    assert not any(is_running(pid) for pid in pids)
    assert "still runs 0.5 s after SIGTERM, signal=SIGKILL" in all_logs(engine, task.id)


def test_batch_stop_over_all_hosts_with_one_down_fails_only_that_copy(
    engine: Engine, ssh_lab: SshLab, tmp_path: Path
) -> None:
    hosts = []
    pids: dict[int, list[int]] = {}
    for i, server in enumerate(ssh_lab.servers):
        host = add_ssh_host(engine, ssh_lab, server, tmp_path / f"agent-{i}", name=f"b{i}")
        pids[host.id] = start_remote_agent(engine, host)
        hosts.append(host)
    down = hosts[2]
    ssh_lab.servers[2].kill()  # the host crashed: its sshd and everything it started are gone
    task = engine.submit("Batch stop OCP agent", lists={"host_ids": [str(h.id) for h in hosts]})
    done = engine.wait(task.id, timeout=WAIT_SECONDS)

    assert done.status is TaskStatus.FAILED
    stops = [s for s in done.subtasks if s.name == "Stop all OCP agent processes"]
    failed = [s for s in stops if s.status is SubtaskStatus.FAILED]
    assert len(stops) == 5 and len(failed) == 1
    assert f"host {down.id}" in (failed[0].message or "")
    assert "cannot reach" in (failed[0].message or "") or "refused" in (failed[0].message or "")
    for host in hosts:
        if host.id != down.id:
            assert not any(is_running(pid) for pid in pids[host.id])


def test_a_connection_lost_mid_step_fails_it_and_rollback_works_after_reconnect(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    home = tmp_path / "lost"
    home.mkdir()
    (home / "IGNORE_SIGTERM").touch()  # the stop waits its whole grace period
    host = add_ssh_host(engine, ssh_lab, ssh_server, home, name="lost")
    start_remote_agent(engine, host)
    task = engine.submit(
        "Stop OCP agent", args={"host_id": str(host.id), "stop_grace_seconds": "30"}
    )
    wait_until(lambda: "signal=SIGTERM" in all_logs(engine, task.id), "the SIGTERMs", 60)
    ssh_server.kill()  # mid-step: the worker is polling the processes over this connection
    done = engine.wait(task.id, timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.FAILED
    stop = next(s for s in done.subtasks if s.name.startswith("Stop all"))
    assert stop.status is SubtaskStatus.FAILED
    message = stop.message or ""
    # Lost in the middle of a command, or found dead when the next command starts.
    lost = f"host {host.id} (lost, root@{ssh_server.address}:{ssh_server.port}) was lost while"
    refused = f"cannot reach host {host.id} (lost, {ssh_server.address}:{ssh_server.port})"
    assert lost in message or refused in message, message

    ssh_server.restart()
    rolled = engine.rollback(task.id)
    done = engine.wait(rolled.id, timeout=WAIT_SECONDS)
    assert (done.status, done.operation) == (TaskStatus.SUCCESSFUL, Operation.ROLLBACK)
    # Prepare's rollback put back the status recorded before the stop.
    assert engine.hosts.agent_status(host.id) is AgentStatus.UNKNOWN


def test_an_unknown_agent_kind_and_a_custom_kind(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    from dagtask.errors import ArgumentError
    from dagtask.hosts.kinds import AgentKind, register_agent_kind

    with pytest.raises(ArgumentError, match="agent kind 'nope' is not known"):
        add_ssh_host(engine, ssh_lab, ssh_server, tmp_path / "x", name="x", agent_kind="nope")
    assert [h.name for h in engine.hosts.list()] == []  # nothing stored

    # A status-command kind (like systemd's): one process, its pid file read by a command.
    register_agent_kind(
        AgentKind(
            name="one-proc",
            processes=("ocp_agentd",),
            pid_file=None,
            status="cat {home}/run/{process}.pid 2>/dev/null || echo 0",
            start="cd {home} && setsid nohup {home}/bin/{process} >/dev/null 2>&1 </dev/null &",
            stop="kill $(cat {home}/run/{process}.pid)",
        )
    )
    host = add_ssh_host(
        engine, ssh_lab, ssh_server, tmp_path / "one", name="one", agent_kind="one-proc"
    )
    pids = start_remote_agent(engine, host)
    assert len(pids) == 1 and is_running(pids[0])
    task = engine.submit("Stop OCP agent", args={"host_id": str(host.id)})
    done = engine.wait(task.id, timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.SUCCESSFUL, all_logs(engine, task.id)
    assert not is_running(pids[0])
    assert processes_with(str(tmp_path / "one")) == []


def test_a_remote_agent_that_cannot_start_fails_the_restart_at_once_with_its_log(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    home = tmp_path / "broken"
    host = add_ssh_host(engine, ssh_lab, ssh_server, home, name="broken")
    start_remote_agent(engine, host)
    (home / "FAIL_START").touch()
    started = time.monotonic()
    task = engine.submit("Restart OCP agent", args={"host_id": str(host.id)})
    done = engine.wait(task.id, timeout=WAIT_SECONDS)
    took = time.monotonic() - started
    assert done.status is TaskStatus.FAILED
    start = next(s for s in done.subtasks if s.name == "Start all OCP agent processes")
    message = start.message or ""
    assert "exited while starting" in message and "refusing to start because" in message, message
    assert took < 20  # not the 30 s start timeout: the launched process was seen to die

    (home / "FAIL_START").unlink()
    engine.retry(task.id)
    again = engine.wait(task.id, timeout=WAIT_SECONDS)
    assert again.status is TaskStatus.SUCCESSFUL, all_logs(engine, task.id)
    assert len([p for p in connector(engine, host).agent_processes(host) if p.alive]) == 3
