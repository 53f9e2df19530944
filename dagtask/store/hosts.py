"""All SQL for the host inventory (the ``dagtask_host`` table), and the row -> HostInfo mapping.

Statuses are plain strings here; :mod:`dagtask.hosts.inventory` owns their enums and validates
them before they reach this module. Times are naive UTC, like every other table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from dagtask.errors import HostError, HostNotFoundError
from dagtask.models import HostInfo, SshAccess
from dagtask.store.db import Database
from dagtask.store.schema import host as host_table

LIST_HINT = "list hosts with `dagtask hosts list`"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _to_info(row: sa.Row[Any]) -> HostInfo:
    return HostInfo(
        id=row.id,
        name=row.name,
        inner_ip=row.inner_ip,
        status=row.status,
        agent_status=row.agent_status,
        agent_home=row.agent_home,
        connector=row.connector,
        create_time=row.create_time,
        update_time=row.update_time,
        ssh=SshAccess.model_validate_json(row.access) if row.access else None,
        host_key=row.host_key,
        agent_kind=row.agent_kind,
        os_info=row.os_info,
        checked_at=row.checked_at,
    )


def _not_found(host_id: int) -> HostNotFoundError:
    return HostNotFoundError(f"host {host_id} does not exist; {LIST_HINT}", target=str(host_id))


def add_host(
    db: Database,
    name: str,
    inner_ip: str,
    agent_home: str,
    *,
    connector: str = "local",
    status: str = "ONLINE",
    agent_status: str = "UNKNOWN",
    ssh: SshAccess | None = None,
    agent_kind: str = "ocp",
) -> HostInfo:
    """Insert a host and return it; a name already in use is a :class:`HostError`."""
    now = _now()
    values = {
        "access": ssh.model_dump_json(exclude_defaults=True) if ssh is not None else None,
        "agent_kind": agent_kind,
        "name": name,
        "inner_ip": inner_ip,
        "status": status,
        "agent_status": agent_status,
        "agent_home": agent_home,
        "connector": connector,
        "create_time": now,
        "update_time": now,
    }
    try:
        with db.begin() as conn:
            result = conn.execute(sa.insert(host_table).values(**values))
            key = result.inserted_primary_key
            if key is None:  # every supported backend reports it for a single-row insert
                raise HostError(f"the database did not return the id of the new host {name!r}")
            host_id = int(key[0])
    except sa.exc.IntegrityError as exc:
        # The unique index on name is the only constraint an insert can break; checking it first
        # would still race with a concurrent insert, so translate the database's answer instead.
        existing = _find_by_name(db, name)
        where = f" (id {existing.id})" if existing else ""
        raise HostError(
            f"a host named {name!r} already exists{where}; choose another name or {LIST_HINT}",
            target=name,
        ) from exc
    return HostInfo(
        id=host_id,
        name=name,
        inner_ip=inner_ip,
        status=status,
        agent_status=agent_status,
        agent_home=agent_home,
        connector=connector,
        create_time=now,
        update_time=now,
        ssh=ssh,
        agent_kind=agent_kind,
    )


def _find_by_name(db: Database, name: str) -> HostInfo | None:
    with db.read() as conn:
        row = conn.execute(sa.select(host_table).where(host_table.c.name == name)).first()
    return _to_info(row) if row else None


def get_host(db: Database, host_id: int) -> HostInfo:
    """The host with this id; :class:`HostNotFoundError` if there is none."""
    with db.read() as conn:
        row = conn.execute(sa.select(host_table).where(host_table.c.id == host_id)).first()
    if row is None:
        raise _not_found(host_id)
    return _to_info(row)


def get_host_by_name(db: Database, name: str) -> HostInfo:
    """The host with this name; :class:`HostNotFoundError` if there is none."""
    found = _find_by_name(db, name)
    if found is None:
        raise HostNotFoundError(f"no host is named {name!r}; {LIST_HINT}", target=name)
    return found


def list_hosts(db: Database) -> list[HostInfo]:
    """Every host, ordered by id."""
    with db.read() as conn:
        rows = conn.execute(sa.select(host_table).order_by(host_table.c.id)).all()
    return [_to_info(row) for row in rows]


def _set_column(
    db: Database, host_id: int, column: sa.Column[Any], new: str, expected: str | None
) -> str:
    """Set ``column`` to ``new`` (only if it is ``expected``, when given); return the old value."""
    with db.begin() as conn:
        # FOR UPDATE keeps the read-then-write atomic on PostgreSQL/MySQL; SQLite renders no
        # FOR UPDATE and needs none, its write transactions start with BEGIN IMMEDIATE.
        current = conn.execute(
            sa.select(column).where(host_table.c.id == host_id).with_for_update()
        ).scalar_one_or_none()
        if current is None:
            raise _not_found(host_id)
        if expected is not None and current != expected:
            label = column.name.replace("_", " ")
            raise HostError(
                f"host {host_id}: {label} is {current}, not {expected} as expected, so it was not "
                f"set to {new}; another operation changed it, check the host and its tasks",
                target=str(host_id),
            )
        conn.execute(
            sa.update(host_table)
            .where(host_table.c.id == host_id)
            .values({column.name: new, "update_time": _now()})
        )
    return str(current)


def set_agent_status(db: Database, host_id: int, new: str, expected: str | None = None) -> str:
    """Set the host's agent status and return the previous one.

    With ``expected``, the change happens only if the current status is ``expected``; otherwise a
    :class:`HostError` says what the status really is and nothing changes.
    """
    return _set_column(db, host_id, host_table.c.agent_status, new, expected)


def set_status(db: Database, host_id: int, new: str, expected: str | None = None) -> str:
    """Set the host's status (conditionally, like :func:`set_agent_status`); return the old one."""
    return _set_column(db, host_id, host_table.c.status, new, expected)


def set_host_key(db: Database, host_id: int, key: str | None) -> None:
    """Pin ``key`` (an OpenSSH public key line) as the host's SSH host key; None unpins."""
    with db.begin() as conn:
        changed = conn.execute(
            sa.update(host_table)
            .where(host_table.c.id == host_id)
            .values(host_key=key, update_time=_now())
        ).rowcount
    if not changed:
        raise _not_found(host_id)


def record_check(db: Database, host_id: int, os_info: str, agent_status: str | None) -> None:
    """Store what a check found: the OS, the time, and the agent status if it was read."""
    values: dict[str, Any] = {"os_info": os_info[:512], "checked_at": _now()}
    if agent_status is not None:
        values["agent_status"] = agent_status
    values["update_time"] = values["checked_at"]
    with db.begin() as conn:
        changed = conn.execute(
            sa.update(host_table).where(host_table.c.id == host_id).values(values)
        ).rowcount
    if not changed:
        raise _not_found(host_id)
