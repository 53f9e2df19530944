"""The host inventory: which hosts exist, how to reach them, and the state of their OCP agent.

A thin typed facade over :mod:`dagtask.store.hosts`: it validates status values against the enums
below before they are written and hands back :class:`~dagtask.models.HostInfo` models.
"""

from __future__ import annotations

import builtins
import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from dagtask.errors import ArgumentError, HostError, HostNotFoundError
from dagtask.hosts.access import describe
from dagtask.hosts.kinds import agent_kind as find_kind
from dagtask.models import HostInfo, SshAccess
from dagtask.store import hosts as sql
from dagtask.store.db import Database


class AgentStatus(StrEnum):
    """State of a host's OCP agent (OCP's values; the transitional ones end in -ING)."""

    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"
    STARTING = "STARTING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    RESTARTING = "RESTARTING"
    UNKNOWN = "UNKNOWN"


class HostStatus(StrEnum):
    """Whether a host itself is usable."""

    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"


_E = TypeVar("_E", AgentStatus, HostStatus)


def _parse(kind: type[_E], value: str, what: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ArgumentError(f"{value!r} is not a valid {what}; use one of {allowed}") from None


def parse_agent_status(value: str) -> AgentStatus:
    """``value`` as an :class:`AgentStatus`, or an :class:`ArgumentError` listing the values."""
    return _parse(AgentStatus, value, "agent status")


def parse_host_status(value: str) -> HostStatus:
    """``value`` as a :class:`HostStatus`, or an :class:`ArgumentError` listing the values."""
    return _parse(HostStatus, value, "host status")


def parse_inner_ip(text: str, host: str = "") -> str:
    """``text`` as an IPv4 or IPv6 address in its canonical form, or an ArgumentError.

    Only addresses, no host names: OCP's ``innerIpAddress`` is an address, and a name would
    resolve differently on each worker (or not at all).
    """
    owner = f"host {host!r}" if host else "a host"
    value = text.strip()
    if not value:
        raise ArgumentError(f"{owner} needs an inner IP address, e.g. 127.0.0.1")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ArgumentError(
            f"{value!r} is not an IP address; {owner} needs its inner IPv4 or IPv6 address, "
            "e.g. 10.0.0.7 or fd00::7 (not a host name)"
        ) from None


LOCAL_CONNECTOR = "local"
"""The built-in connector: the agent is a set of processes on THIS machine (the one running the
worker), whatever ``inner_ip`` says."""
SSH_CONNECTOR = "ssh"
"""The agent is on the machine at ``inner_ip``, reached over SSH as ``HostInfo.ssh`` says."""


def connector_description(host: HostInfo) -> str:
    """What ``host``'s connector acts on, in words, for the command line."""
    if host.connector == LOCAL_CONNECTOR:
        return f"connector local: agent processes on this machine under {host.agent_home}"
    if host.connector == SSH_CONNECTOR and host.ssh is not None:
        return (
            f"connector ssh: {describe(host)}, agent kind {host.agent_kind} under {host.agent_home}"
        )
    return f"connector {host.connector}: agent home {host.agent_home}"


def local_ip_mismatch(host: HostInfo) -> str | None:
    """A warning when a local-connector host has an address that is not a loopback one.

    The local connector never uses ``inner_ip``: it starts and stops processes on the machine the
    worker runs on. A host registered as ``10.0.0.5`` with it looks remote but is not, so say so.
    """
    if host.connector != LOCAL_CONNECTOR or ipaddress.ip_address(host.inner_ip).is_loopback:
        return None
    return (
        f"host {host.name!r} has IP {host.inner_ip} but the local connector acts on this machine "
        f"(processes under {host.agent_home}), not on {host.inner_ip}; use a loopback IP such as "
        "127.0.0.1 for a local host"
    )


class HostInventory:
    """Typed access to the hosts of one database (thread-safe: every call is one transaction)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        name: str,
        inner_ip: str,
        agent_home: str,
        *,
        connector: str = LOCAL_CONNECTOR,
        status: HostStatus | str = HostStatus.ONLINE,
        agent_status: AgentStatus | str = AgentStatus.UNKNOWN,
        ssh: SshAccess | None = None,
        agent_kind: str = "ocp",
    ) -> HostInfo:
        """Register a host; its name must be unique (else :class:`HostError`), ``inner_ip`` an
        IPv4 or IPv6 address (stored in canonical form; else :class:`ArgumentError`).

        Registering checks nothing: the agent is UNKNOWN until something looks at it
        (``dagtask hosts check``, a host operation); a caller that knows better states it with
        ``agent_status``.

        A local host's ``agent_home`` is made absolute, because the workers that stop its agent
        may run in another directory than the caller.
        """
        if not name.strip():
            raise ArgumentError("a host needs a non-empty name")
        inner_ip = parse_inner_ip(inner_ip, name)
        if not agent_home.strip():
            raise ArgumentError(f"host {name!r} needs an agent home directory")
        if connector == LOCAL_CONNECTOR:
            agent_home = str(Path(agent_home).expanduser().absolute())
        if connector == SSH_CONNECTOR:
            if ssh is None:
                raise ArgumentError(
                    f"host {name!r} uses the ssh connector but says nothing of how to log in; "
                    "give --ssh-user and one of --key-file, --ssh-agent, --password-ref"
                )
            if not agent_home.startswith("/"):
                raise ArgumentError(
                    f"host {name!r}: the agent home {agent_home!r} must be an absolute path on "
                    "the remote host, e.g. /home/admin/ocp_agent"
                )
            if ssh.jump_host is not None:
                if ssh.jump_host == name:
                    raise ArgumentError(f"host {name!r} cannot be its own jump host")
                try:
                    jump = sql.get_host_by_name(self.db, ssh.jump_host)
                except HostNotFoundError:
                    raise ArgumentError(
                        f"host {name!r}: the jump host {ssh.jump_host!r} is not in the "
                        "inventory; add it first (dagtask hosts add --connector ssh ...)"
                    ) from None
                if jump.connector != SSH_CONNECTOR:
                    raise ArgumentError(
                        f"host {name!r}: the jump host {jump.name!r} must be an ssh host"
                    )
        elif ssh is not None:
            raise ArgumentError(
                f"host {name!r}: SSH settings need --connector ssh (the {connector} connector "
                "does not use them)"
            )
        find_kind(agent_kind)  # an unknown kind is an ArgumentError naming the known ones
        return sql.add_host(
            self.db,
            name,
            inner_ip,
            agent_home,
            connector=connector,
            status=parse_host_status(status),
            agent_status=parse_agent_status(agent_status),
            ssh=ssh,
            agent_kind=agent_kind,
        )

    def get(self, host_id: int) -> HostInfo:
        """The host with this id; :class:`HostNotFoundError` if there is none."""
        return sql.get_host(self.db, host_id)

    def get_by_name(self, name: str) -> HostInfo:
        """The host with this name; :class:`HostNotFoundError` if there is none."""
        return sql.get_host_by_name(self.db, name)

    def list(self) -> builtins.list[HostInfo]:
        """Every host, ordered by id."""
        return sql.list_hosts(self.db)

    def set_host_key(self, host_id: int, key: str | None) -> None:
        """Pin an SSH host key (an OpenSSH public key line) for the host; None unpins."""
        sql.set_host_key(self.db, host_id, key)

    def record_check(
        self, host_id: int, os_info: str, agent_status: AgentStatus | str | None
    ) -> None:
        """Store what ``dagtask hosts check`` found (and the agent status, if it was read)."""
        status = parse_agent_status(agent_status) if agent_status is not None else None
        sql.record_check(self.db, host_id, os_info, status)

    def agent_status(self, host_id: int) -> AgentStatus:
        """The current agent status of the host."""
        return _stored(AgentStatus, self.get(host_id).agent_status, host_id)

    def set_agent_status(
        self,
        host_id: int,
        new: AgentStatus | str,
        expected: AgentStatus | str | None = None,
    ) -> AgentStatus:
        """Set the agent status and return the previous one.

        With ``expected`` the change is conditional: if the status is not ``expected`` (another
        operation changed it) nothing is written and a :class:`HostError` says so.
        """
        wanted = parse_agent_status(new)
        guard = parse_agent_status(expected) if expected is not None else None
        previous = sql.set_agent_status(self.db, host_id, wanted, guard)
        return _stored(AgentStatus, previous, host_id)

    def set_status(
        self, host_id: int, new: HostStatus | str, expected: HostStatus | str | None = None
    ) -> HostStatus:
        """Set the host status (conditional like :meth:`set_agent_status`); return the old one."""
        wanted = parse_host_status(new)
        guard = parse_host_status(expected) if expected is not None else None
        previous = sql.set_status(self.db, host_id, wanted, guard)
        return _stored(HostStatus, previous, host_id)


def _stored(kind: type[_E], value: str, host_id: int) -> _E:
    """A status read back from the database; only a hand-edited row can hold another value."""
    try:
        return kind(value)
    except ValueError:
        raise HostError(
            f"host {host_id} has the unknown status {value!r} in the database (edited by hand?); "
            f"set a valid one with HostInventory.set_agent_status / set_status",
            target=str(host_id),
        ) from None
