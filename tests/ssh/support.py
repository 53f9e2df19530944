"""Helpers of the SSH tests: inventory hosts for the lab's servers, remote processes, logs."""

from __future__ import annotations

import logging
from pathlib import Path

from dagtask import Engine
from dagtask.hosts.access import make_access
from dagtask.hosts.remote import SshConnector, install_agent_stub
from dagtask.models import HostInfo
from tests.processes import is_running, pids_whose_args
from tests.ssh.sshd import SshLab, SshServer

LOG = logging.getLogger("test.ssh")
WAIT_SECONDS = 120.0


def add_ssh_host(
    engine: Engine,
    lab: SshLab,
    server: SshServer,
    home: Path,
    *,
    name: str | None = None,
    address: str | None = None,
    port: int | None = None,
    known_hosts: Path | None = None,
    agent_kind: str = "ocp",
    connect_timeout: float = 5.0,
    **access: object,
) -> HostInfo:
    """An ssh host for ``server`` (key auth with the lab's user key unless ``access`` says
    otherwise), agent home ``home`` on the "remote" side."""
    kwargs: dict[str, object] = {
        "user": lab.user,
        "port": port or server.port,
        "known_hosts": str(known_hosts or lab.known_hosts),
        "connect_timeout": connect_timeout,
    }
    if not {"use_agent", "password_ref", "key_file"} & access.keys():
        kwargs["key_file"] = str(lab.user_key)
    kwargs.update(access)
    ssh = make_access(name or server.name, **kwargs)  # type: ignore[arg-type]
    return engine.hosts.add(
        name or server.name,
        address or server.address,
        str(home),
        connector="ssh",
        ssh=ssh,
        agent_kind=agent_kind,
        agent_status="UNKNOWN",
    )


def connector(engine: Engine, host: HostInfo) -> SshConnector:
    """The engine's ssh connector for ``host``."""
    found = engine.services.connector(host)
    assert isinstance(found, SshConnector)
    return found


def start_remote_agent(engine: Engine, host: HostInfo) -> list[int]:
    """Install the stand-in agent on the host over SSH and start it there; the pids."""
    conn = connector(engine, host)
    install_agent_stub(conn, host)
    return conn.start_agent(host, log=LOG)


def processes_with(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains ``marker``."""
    needle = marker.encode()
    return [
        pid for pid in pids_whose_args(lambda args: needle in b"\0".join(args)) if is_running(pid)
    ]


def all_logs(engine: Engine, task_id: int) -> str:
    """Every subtask log of the task, concatenated."""
    task = engine.get(task_id)
    return "\n".join(engine.logs(task_id, sub.id) for sub in task.subtasks)
