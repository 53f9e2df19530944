"""LocalConnector against real OS processes: start, stop, SIGKILL escalation, stale pid files."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagtask.errors import ArgumentError, HostError
from dagtask.handlers import CancellationToken, CancelledError
from dagtask.hosts import local
from dagtask.hosts.connector import AGENT_PROCESSES, StopReport
from dagtask.hosts.inventory import HostInventory
from dagtask.hosts.local import LocalConnector
from dagtask.models import HostInfo
from dagtask.store.db import open_database
from tests.processes import is_running, kill_processes_under, proc_state, wait_until

LOG = logging.getLogger("test.local_connector")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[HostInfo]:
    """A local host whose agent home is under tmp_path; its processes die with the test."""
    db = open_database("sqlite:///" + str(tmp_path / "t.db"))
    home = tmp_path / "agent"
    try:
        yield HostInventory(db).add("db1", "127.0.0.1", str(home))
    finally:
        kill_processes_under(home)
        db.dispose()


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts itself; killed and reaped at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def connector() -> LocalConnector:
    return LocalConnector()


def home_of(host: HostInfo) -> Path:
    return Path(host.agent_home)


def pid_files(host: HostInfo) -> list[str]:
    return sorted(p.name for p in (home_of(host) / "run").glob("*.pid"))


def stop(connector: LocalConnector, host: HostInfo, grace: float = 5.0) -> StopReport:
    return connector.stop_agent(host, grace=grace, token=None, log=LOG)


def test_start_runs_real_agent_processes(connector: LocalConnector, host: HostInfo) -> None:
    pids = connector.start_agent(host, log=LOG)
    assert len(pids) == len(AGENT_PROCESSES) == len(set(pids))
    for pid in pids:
        assert is_running(pid)
        assert host.agent_home in Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    assert pid_files(host) == sorted(f"{name}.pid" for name in AGENT_PROCESSES)
    processes = connector.agent_processes(host)
    assert [(p.name, p.pid, p.alive) for p in processes] == [
        (name, pid, True) for name, pid in zip(AGENT_PROCESSES, pids, strict=True)
    ]
    assert connector.start_agent(host, log=LOG) == pids, "starting a running agent is a no-op"


def test_stop_terminates_every_process_and_removes_pid_files(
    connector: LocalConnector, host: HostInfo
) -> None:
    pids = connector.start_agent(host, log=LOG)
    report = stop(connector, host)
    assert report.terminated == AGENT_PROCESSES
    assert report.killed == () and not report.already_stopped
    assert not any(is_running(pid) for pid in pids)
    assert pid_files(host) == []
    assert connector.agent_processes(host) == []


def test_stop_is_idempotent(connector: LocalConnector, host: HostInfo) -> None:
    never_started = stop(connector, host)
    assert never_started.already_stopped and never_started.stale == ()
    connector.start_agent(host, log=LOG)
    stop(connector, host)
    again = stop(connector, host)
    assert again == StopReport(host.id)
    assert again.summary() == f"OCP agent on host {host.id} was already stopped"


def test_process_ignoring_sigterm_is_killed_after_the_grace_period(
    connector: LocalConnector, host: HostInfo
) -> None:
    stubborn = local.start_agent_process(home_of(host), "ocp_agentd", ("--ignore-sigterm",))
    others = connector.start_agent(host, log=LOG)[1:]
    grace = 0.5
    started = time.monotonic()
    report = stop(connector, host, grace=grace)
    elapsed = time.monotonic() - started
    assert report.killed == ("ocp_agentd",)
    assert report.terminated == ("ocp_mgragent", "ocp_monagent")
    assert "killed after the grace period: ocp_agentd" in report.summary()
    assert elapsed >= grace, "SIGKILL must wait for the grace period"
    assert not is_running(stubborn) and not any(is_running(pid) for pid in others)
    assert pid_files(host) == []


def test_grace_ends_early_when_every_process_exited(
    connector: LocalConnector, host: HostInfo
) -> None:
    connector.start_agent(host, log=LOG)
    started = time.monotonic()
    stop(connector, host, grace=30)
    assert time.monotonic() - started < 10


def test_stale_pid_file_of_an_unrelated_process_is_removed_not_killed(
    connector: LocalConnector, host: HostInfo, spawned: list[subprocess.Popen[bytes]]
) -> None:
    unrelated = subprocess.Popen(["sleep", "30"])
    spawned.append(unrelated)
    run = home_of(host) / "run"
    run.mkdir(parents=True)
    (run / "ocp_agentd.pid").write_text(f"{unrelated.pid}\n")
    (run / "ocp_monagent.pid").write_text("garbage\n")
    assert [p.alive for p in connector.agent_processes(host)] == [False, False]
    report = stop(connector, host, grace=0.2)
    assert report.already_stopped
    assert report.stale == ("ocp_agentd", "ocp_monagent")
    assert unrelated.poll() is None, "a process that is not the agent must not be signalled"
    assert is_running(unrelated.pid)
    assert pid_files(host) == []


def test_zombie_counts_as_dead_and_is_reaped(
    connector: LocalConnector, host: HostInfo, spawned: list[subprocess.Popen[bytes]]
) -> None:
    # Started as this test process's own child (not through the connector), then SIGKILLed
    # and not waited for: it stays a zombie with its pid file in place.
    home = home_of(host)
    command = [sys.executable, local.AGENT_STUB, "--home", str(home), "--name", "ocp_agentd"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spawned.append(child)
    pid_file = home / "run" / "ocp_agentd.pid"
    wait_until(lambda: pid_file.exists(), "the agent to write its pid file")
    os.kill(child.pid, signal.SIGKILL)
    wait_until(lambda: proc_state(child.pid) == "Z", "the killed child to become a zombie")
    assert connector.agent_processes(host)[0].alive is False
    report = stop(connector, host)
    assert report.already_stopped and report.stale == ("ocp_agentd",)
    assert proc_state(child.pid) is None, "the connector reaps its own zombie children"
    assert pid_files(host) == []


def test_cancelling_the_token_interrupts_the_grace_period(
    connector: LocalConnector, host: HostInfo
) -> None:
    stubborn = local.start_agent_process(home_of(host), "ocp_agentd", ("--ignore-sigterm",))
    token = CancellationToken()
    timer = threading.Timer(0.3, token.cancel, args=("subtask timed out",))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(CancelledError, match="subtask timed out"):
            connector.stop_agent(host, grace=60, token=token, log=LOG)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10
    assert is_running(stubborn), "a cancelled stop does not escalate to SIGKILL"
    assert pid_files(host) == ["ocp_agentd.pid"], "the live process keeps its record"


def test_already_cancelled_token_signals_nothing(connector: LocalConnector, host: HostInfo) -> None:
    pids = connector.start_agent(host, log=LOG)
    token = CancellationToken()
    token.cancel("cancelled by the operator")
    with pytest.raises(CancelledError):
        connector.stop_agent(host, grace=1, token=token, log=LOG)
    assert all(is_running(pid) for pid in pids)


def test_negative_grace_is_refused(connector: LocalConnector, host: HostInfo) -> None:
    with pytest.raises(ArgumentError, match="grace period must be >= 0"):
        stop(connector, host, grace=-1)


def test_agent_home_that_cannot_be_created_is_a_host_error(
    connector: LocalConnector, host: HostInfo, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    bad = host.model_copy(update={"agent_home": str(blocker / "agent")})
    with pytest.raises(HostError, match=r"cannot prepare the agent home .*file/agent"):
        connector.start_agent(bad, log=LOG)


def test_agent_that_dies_while_starting_is_reported_with_its_log(
    connector: LocalConnector, host: HostInfo
) -> None:
    # A folder where the pid file should go: the agent cannot write its pid file and exits 1.
    (home_of(host) / "run" / "ocp_agentd.pid" / "blocker").mkdir(parents=True)
    with pytest.raises(HostError, match=r"ocp_agentd exited with code 1 while starting; see .*"):
        connector.start_agent(host, log=LOG)
    log_text = (home_of(host) / "log" / "ocp_agentd.log").read_text()
    assert "cannot write its pid file" in log_text


def children_of_this_process() -> list[int]:
    """Pids of this test process's children that still exist (zombies included)."""
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and stat.rpartition(b")")[2].split()[1].decode() == me:
            found.append(int(entry.name))
    return found


def test_fail_start_marker_makes_every_start_fail_with_its_log_line(
    connector: LocalConnector, host: HostInfo
) -> None:
    home = home_of(host)
    home.mkdir()
    (home / "FAIL_START").touch()
    before = set(children_of_this_process())
    with pytest.raises(HostError, match=r"exited with code 1 while starting; see .*refusing to"):
        connector.start_agent(host, log=LOG)
    assert "refusing to start because" in connector.last_log_line(host, "ocp_agentd")
    assert [p for p in connector.agent_processes(host) if p.alive] == []

    def reaped() -> bool:
        connector.agent_processes(host)  # every connector call reaps the children that exited
        return set(children_of_this_process()) <= before

    # The processes that failed after the first one are reaped too: no zombie is left behind.
    wait_until(reaped, "the failed agent processes to be reaped")
    (home / "FAIL_START").unlink()
    assert len(connector.start_agent(host, log=LOG)) == 3


def test_last_log_line_is_empty_without_a_log(connector: LocalConnector, host: HostInfo) -> None:
    assert connector.last_log_line(host, "ocp_agentd") == ""
    log_dir = home_of(host) / "log"
    log_dir.mkdir(parents=True)
    (log_dir / "ocp_agentd.log").write_text("x" * 10_000 + "\nfirst\n\nlast words  \n\n")
    assert connector.last_log_line(host, "ocp_agentd") == "last words"


def test_restart_pos_proxy_checks_the_agent_home_without_touching_the_agent(
    connector: LocalConnector, host: HostInfo
) -> None:
    pids = connector.start_agent(host, log=LOG)
    connector.restart_pos_proxy(host, log=LOG)
    connector.restart_pos_proxy(host, log=LOG)
    assert all(is_running(pid) for pid in pids)
    assert pid_files(host) == sorted(f"{name}.pid" for name in AGENT_PROCESSES)
    stop(connector, host)
    log_dir = home_of(host) / "log"
    shutil.rmtree(log_dir)
    log_dir.write_text("a file where the log folder should be")
    with pytest.raises(HostError, match=r"could not be started again: cannot write to .*/log"):
        connector.restart_pos_proxy(host, log=LOG)
