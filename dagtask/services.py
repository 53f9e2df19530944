"""What the engine lends to handlers through ``ctx.services``: the host inventory and connectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagtask.hosts.connector import Connector
    from dagtask.hosts.inventory import HostInventory
    from dagtask.models import HostInfo
    from dagtask.store.db import Database


@dataclass
class Services:
    """Shared, thread-safe services for the handlers of one engine."""

    db: Database
    hosts: HostInventory = field(init=False)

    def __post_init__(self) -> None:
        from dagtask.hosts.inventory import HostInventory

        self.hosts = HostInventory(self.db)

    def connector(self, host: HostInfo) -> Connector:
        """The connector that reaches ``host`` (by its ``connector`` kind, e.g. "local")."""
        from dagtask.hosts.connector import connector_for

        return connector_for(host, self)

    def pin_host_key(self, host: HostInfo, key: str) -> None:
        """Pin ``key`` for ``host`` (an accept-new host's first connect)."""
        self.hosts.set_host_key(host.id, key)
