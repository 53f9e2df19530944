"""How dagtask reaches a host's OCP agent: the :class:`Connector` interface and its registry.

A host's ``connector`` column names its kind ("local" = processes on this machine). Handlers never
pick a connector themselves; they ask ``ctx.services.connector(host)``, which calls
:func:`connector_for`.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dagtask.errors import HostError
from dagtask.handlers import CancellationToken
from dagtask.models import HostInfo

if TYPE_CHECKING:
    from dagtask.services import Services

AGENT_PROCESSES = ("ocp_agentd", "ocp_mgragent", "ocp_monagent")
"""The processes an OCP agent is made of, in start order (OCP's names)."""


@dataclass(frozen=True)
class AgentProcess:
    """One process of a host's agent as its connector sees it."""

    pid: int
    """The recorded pid (0 if the record is unreadable)."""
    name: str
    alive: bool
    """Whether the pid is a live process of this agent (not a zombie, not a reused pid)."""


@dataclass(frozen=True)
class StopReport:
    """What :meth:`Connector.stop_agent` did; names are agent process names."""

    host_id: int
    terminated: tuple[str, ...] = ()
    """Exited after SIGTERM within the grace period."""
    killed: tuple[str, ...] = ()
    """Still running after the grace period, stopped with SIGKILL."""
    stale: tuple[str, ...] = ()
    """Recorded as running but already gone (or the pid was reused); only the record was removed."""

    @property
    def already_stopped(self) -> bool:
        """Whether no process had to be signalled (the agent was stopped before)."""
        return not self.terminated and not self.killed

    def summary(self) -> str:
        """One line for the subtask log."""
        if self.already_stopped:
            return f"OCP agent on host {self.host_id} was already stopped"
        parts = [f"terminated {', '.join(self.terminated) or 'none'}"]
        if self.killed:
            parts.append(f"killed after the grace period: {', '.join(self.killed)}")
        return f"OCP agent on host {self.host_id} stopped: " + "; ".join(parts)


class Connector(ABC):
    """Inspects, stops and starts the OCP agent of a host.

    Implementations must be thread-safe: workers run the subtasks of many hosts at once.
    """

    kind: str = ""

    @abstractmethod
    def agent_processes(self, host: HostInfo) -> list[AgentProcess]:
        """The agent processes recorded for ``host``, with whether each is really alive."""

    @abstractmethod
    def stop_agent(
        self,
        host: HostInfo,
        *,
        grace: float,
        token: CancellationToken | None,
        log: logging.Logger,
    ) -> StopReport:
        """Stop every agent process of ``host``; idempotent (nothing running = success).

        SIGTERM each process, wait up to ``grace`` seconds, SIGKILL the survivors and verify that
        none is left; then remove the records. Raises :class:`HostError` naming the processes that
        survived, and :class:`~dagtask.handlers.CancelledError` if ``token`` is set meanwhile.
        """

    @abstractmethod
    def start_agent(self, host: HostInfo, *, log: logging.Logger) -> list[int]:
        """Start the agent processes of ``host`` that are not running; return all their pids."""

    def restart_pos_proxy(self, host: HostInfo, *, log: logging.Logger) -> None:
        """OCP's "Restart pos proxy" step, run before a restart stops the agent; idempotent.

        Raise :class:`HostError` if the agent could not be started again, so that a restart
        fails before it stops anything. The default has nothing to do and says so.
        """
        log.info("Connector %r has no pos proxy on host %d: nothing to restart", self.kind, host.id)

    def last_log_line(self, host: HostInfo, process: str) -> str:
        """The last line the agent process ``process`` logged, or "" if unknown."""
        return ""


_factories: dict[str, Callable[[], Connector]] = {}
_lock = threading.Lock()


def register_connector(kind: str, factory: Callable[[], Connector]) -> None:
    """Make ``connector_for`` use ``factory`` for hosts whose connector is ``kind``."""
    with _lock:
        _factories[kind] = factory


def _builtin_factories(services: Services | None) -> dict[str, Callable[[], Connector]]:
    # Imported here: local.py and remote.py subclass Connector, so they import this module.
    from dagtask.hosts.local import LocalConnector
    from dagtask.hosts.remote import SshConnector

    def ssh() -> Connector:
        if services is None:
            return SshConnector()
        # Jump hosts are looked up by name; an accept-new host's first key is pinned.
        return SshConnector(find=services.hosts.get_by_name, pin=services.pin_host_key)

    return {"local": LocalConnector, "ssh": ssh}


def connector_for(host: HostInfo, services: Services | None = None) -> Connector:
    """The connector for ``host``'s kind; an unknown kind is a :class:`HostError`.

    ``services`` (the engine's) lets the ssh connector resolve jump hosts and pin keys.
    """
    with _lock:
        factories = {**_builtin_factories(services), **_factories}
    factory = factories.get(host.connector)
    if factory is None:
        known = ", ".join(sorted(factories))
        raise HostError(
            f"host {host.id} ({host.name}) uses connector {host.connector!r}, which dagtask does "
            f"not know (known: {known}); register it with "
            "dagtask.hosts.connector.register_connector or re-add the host with a known connector",
            target=str(host.id),
        )
    return factory()
