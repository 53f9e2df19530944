"""``dagtask hosts check``: reach each host, verify it, read its OS and its agent's real status.

A check changes the inventory only by recording what it found: the OS line, the time, and the
agent status the processes show (ONLINE, OFFLINE for some, STOPPED for none). An agent status
that belongs to a running operation (STOPPING, STARTING, RESTARTING) is left to that operation.
"""

from __future__ import annotations

import logging
import platform
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dagtask.errors import DagtaskError
from dagtask.hosts import ssh
from dagtask.hosts.connector import AGENT_PROCESSES, connector_for
from dagtask.hosts.inventory import SSH_CONNECTOR, AgentStatus
from dagtask.hosts.kinds import agent_kind
from dagtask.hosts.remote import SshConnector
from dagtask.models import HostInfo
from dagtask.services import Services

_log = logging.getLogger("dagtask.hosts.check")
OS_SCRIPT = 'uname -srm; (. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")'
TRANSITIONAL = frozenset({AgentStatus.STOPPING, AgentStatus.STARTING, AgentStatus.RESTARTING})


@dataclass(frozen=True)
class CheckReport:
    """What checking one host found."""

    host: HostInfo
    reached: str
    """"yes", or "no" when it could not be reached or verified."""
    os_info: str = ""
    agent_status: str = ""
    processes: tuple[str, ...] = ()
    """The agent processes that run."""
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        """The report as `hosts check --json` prints it."""
        return {
            "hostId": self.host.id,
            "name": self.host.name,
            "reached": self.reached == "yes",
            "os": self.os_info,
            "agentStatus": self.agent_status,
            "runningProcesses": list(self.processes),
            "error": self.error or None,
        }


def _agent_status(alive: set[str], expected: tuple[str, ...]) -> AgentStatus:
    if alive >= set(expected):
        return AgentStatus.ONLINE
    return AgentStatus.OFFLINE if alive else AgentStatus.STOPPED


def check_host(services: Services, host: HostInfo) -> CheckReport:
    """Check one host (never raises for a host's own problem: the report says it)."""
    try:
        connector = connector_for(host, services)
        if host.connector == SSH_CONNECTOR:
            assert isinstance(connector, SshConnector)
            result = connector.sh(host, OS_SCRIPT, what="reading the OS release", timeout=30)
            os_info = " / ".join(line.strip() for line in result.stdout.splitlines() if line)
            expected = agent_kind(host.agent_kind).processes
        else:
            uname = platform.uname()
            os_info = f"{uname.system} {uname.release} {uname.machine} (this machine)"
            expected = AGENT_PROCESSES
        alive = {p.name for p in connector.agent_processes(host) if p.alive}
        status = _agent_status(alive, expected)
        current = AgentStatus(host.agent_status)
        keep = current in TRANSITIONAL
        services.hosts.record_check(host.id, os_info, None if keep else status)
        shown = f"{current} (an operation runs; processes say {status})" if keep else status
        return CheckReport(
            host,
            "yes",
            os_info=os_info,
            agent_status=str(shown),
            processes=tuple(sorted(alive)),
        )
    except DagtaskError as exc:
        _log.info("check of host %d failed: %s", host.id, exc)
        return CheckReport(host, "no", agent_status=host.agent_status, error=str(exc))


def check_hosts(
    services: Services, hosts: list[HostInfo], *, parallel: int = 16
) -> list[CheckReport]:
    """Check ``hosts``, ``parallel`` at a time; reports in the order of ``hosts``."""
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(parallel, len(hosts))) as pool:
        return list(pool.map(lambda h: check_host(services, h), hosts))


def presented_key(services: Services, host: HostInfo) -> str:
    """The host key ``host`` presents now (a key line), through its jump host if it has one."""
    connector = connector_for(host, services)
    assert isinstance(connector, SshConnector)
    via = None
    if host.ssh is not None and host.ssh.jump_host:
        via = connector.connection(services.hosts.get_by_name(host.ssh.jump_host))
    return ssh.fetch_host_key(host, via)
