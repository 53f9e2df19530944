"""Host operations that run commands on remote hosts: ``ctx.host()``, the "Run command on hosts"
and "Check hosts" templates; output streaming into the log; cancels and timeouts that reach the
remote process group and leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagtask import Engine, TemplateBuilder
from dagtask.hosts.inventory import AgentStatus
from dagtask.states import SubtaskStatus, TaskStatus
from tests.processes import wait_until
from tests.ssh import handlers
from tests.ssh.sshd import SshLab, SshServer
from tests.ssh.support import (
    WAIT_SECONDS,
    add_ssh_host,
    all_logs,
    processes_with,
    start_remote_agent,
)


@pytest.fixture(autouse=True)
def _no_leftover_sleepers() -> Iterator[None]:
    """A failed test must not leave its remote sleeps behind for the next one to count."""
    yield
    for pid in sleepers():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def sleepers() -> list[int]:
    """The remote sleep processes (argv ``sleep 987.801``), not the shells that started them."""
    return processes_with("sleep\0" + handlers.SLEEP_MARK)


def no_sleepers() -> bool:
    return sleepers() == []


def test_run_command_on_hosts_fans_out_and_one_down_host_fails_alone(
    engine: Engine, ssh_lab: SshLab, tmp_path: Path
) -> None:
    hosts = [
        add_ssh_host(engine, ssh_lab, server, tmp_path, name=f"h{i}")
        for i, server in enumerate(ssh_lab.servers)
    ]
    ssh_lab.servers[1].kill()
    task = engine.submit(
        "Run command on hosts",
        args={"command": "echo I am $(hostname) on $SSH_CONNECTION; exit 0"},
        lists={"host_ids": [str(h.id) for h in hosts]},
    )
    done = engine.wait(task.id, timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.FAILED
    # Copy i works on host_ids[i].
    by_host = {hosts[s.parallel_idx].id: s for s in done.subtasks}
    for i, host in enumerate(hosts):
        sub = by_host[host.id]
        log = engine.logs(task.id, sub.id)
        if i == 1:
            assert sub.status is SubtaskStatus.FAILED
            assert f"host {host.id} (h1" in (sub.message or "")
            continue
        assert sub.status is SubtaskStatus.SUCCESSFUL, log
        server = ssh_lab.servers[i]
        # Each copy's log holds its own host's output, and only its own.
        assert f"[h{i}] I am " in log and f"{server.address} {server.port}" in log
        assert "exit status 0" in log
        others = [f"[h{j}]" for j in range(5) if j != i]
        assert not any(tag in log for tag in others)


def test_output_streams_into_the_log_and_cancel_kills_the_remote_group(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    host = add_ssh_host(engine, ssh_lab, ssh_server, tmp_path, name="long")
    mark = handlers.SLEEP_MARK
    task = engine.submit(
        "Run command on hosts",
        args={"command": f"echo started; (trap '' TERM; sleep {mark}) & sleep {mark}; echo never"},
        lists={"host_ids": [str(host.id)]},
    )
    # The first line is in the log while the command still runs: streamed, not at the end.
    wait_until(lambda: "[long] started" in all_logs(engine, task.id), "the streamed line", 60)
    wait_until(lambda: len(sleepers()) == 2, "both remote sleeps", 30)
    assert engine.get(task.id).status is TaskStatus.RUNNING
    engine.cancel(task.id)
    done = engine.wait(task.id, timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.FAILED
    # The child that ignores SIGTERM got the group's SIGKILL: nothing is left on the host.
    wait_until(no_sleepers, "no remote process left", 15)
    assert "[long] never" not in all_logs(engine, task.id)


def test_a_command_timeout_stops_a_command_that_ignores_sigterm(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    host = add_ssh_host(engine, ssh_lab, ssh_server, tmp_path, name="slow")
    task = engine.submit(
        "Run command on hosts",
        args={
            "command": f"trap '' TERM; sleep {handlers.SLEEP_MARK}",
            "command_timeout_seconds": "1",
        },
        lists={"host_ids": [str(host.id)]},
    )
    done = engine.wait(task.id, timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.FAILED
    message = done.subtasks[0].message or ""
    assert "took longer than 1 s and was stopped" in message and f"host {host.id}" in message
    assert no_sleepers()


def test_a_subtask_timeout_reaches_the_remote_command(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    host = add_ssh_host(engine, ssh_lab, ssh_server, tmp_path, name="watched")
    engine.register_template(handlers.remote_sleep_template("Remote sleep", timeout=2))
    task = engine.submit("Remote sleep", args={"host_id": str(host.id)})
    wait_until(lambda: len(sleepers()) == 2, "the remote sleeps", 30)
    done = engine.wait(task.id, timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.FAILED
    assert "timed out" in (done.subtasks[0].message or "").lower()
    wait_until(no_sleepers, "no remote process left after the timeout", 15)


@pytest.mark.parametrize("where", ["ssh", "local"])
def test_a_handler_uses_the_host_the_same_way_remote_or_local(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path, where: str
) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    if where == "ssh":
        host = add_ssh_host(engine, ssh_lab, ssh_server, tmp_path, name="files")
    else:
        host = engine.hosts.add("files", "127.0.0.1", str(tmp_path / "agent"))
    t = TemplateBuilder("Remote files", host_arg="host_id")
    t.add("Files", handlers.remote_files, timeout=60)
    engine.register_template(t.build())
    task = engine.submit("Remote files", args={"host_id": str(host.id), "folder": str(folder)})
    done = engine.wait(task.id, timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.SUCCESSFUL, all_logs(engine, task.id)
    out = done.subtasks[0].context
    assert out is not None
    assert out.string_map["stdout"] == "hi there"
    assert out.string_map["stderr"] == "oops"
    assert out.string_map["downloaded"] == "hello from the worker\nand from stdin\n"
    assert (out.string_map["init_alive"], out.string_map["missing_alive"]) == ("True", "False")
    assert (folder / "in.txt").stat().st_mode & 0o777 == 0o600
    log = all_logs(engine, task.id)
    assert "[files] hi there" in log and "[files stderr] oops" in log


def test_check_hosts_records_os_and_the_real_agent_status(
    engine: Engine, ssh_lab: SshLab, tmp_path: Path
) -> None:
    running = add_ssh_host(engine, ssh_lab, ssh_lab.servers[0], tmp_path / "a", name="running")
    start_remote_agent(engine, running)
    idle = add_ssh_host(engine, ssh_lab, ssh_lab.servers[1], tmp_path / "b", name="idle")
    addr, port = ssh_lab.down_address()
    gone = add_ssh_host(
        engine, ssh_lab, ssh_lab.servers[2], tmp_path, name="gone", address=addr, port=port
    )
    assert engine.hosts.agent_status(running.id) is AgentStatus.UNKNOWN  # never checked
    task = engine.submit(
        "Check hosts", lists={"host_ids": [str(h.id) for h in (running, idle, gone)]}
    )
    done = engine.wait(task.id, timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.FAILED  # the host that is down fails its own copy
    assert engine.hosts.agent_status(running.id) is AgentStatus.ONLINE
    assert engine.hosts.agent_status(idle.id) is AgentStatus.STOPPED
    assert engine.hosts.agent_status(gone.id) is AgentStatus.UNKNOWN
    checked = engine.hosts.get(running.id)
    assert checked.checked_at is not None and (checked.os_info or "").startswith("Linux ")
    assert engine.hosts.get(gone.id).checked_at is None
