"""All SQL for REST API users (the ``dagtask_user`` table), and the row -> UserInfo mapping.

Passwords arrive here already hashed (:func:`dagtask.users.hash_password`); this module never sees
one in clear. Roles are stored as a comma-separated list of role names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from dagtask.errors import ArgumentError, UserError, UserNotFoundError
from dagtask.store.db import Database
from dagtask.store.schema import user as user_table
from dagtask.users import Role, UserInfo

LIST_HINT = "list users with `dagtask users list`"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _roles_text(roles: frozenset[Role]) -> str:
    return ",".join(sorted(role.value for role in roles))


def _to_info(row: sa.Row[Any]) -> UserInfo:
    # A role name this version does not know (written by a newer dagtask) grants nothing.
    known = {role.value for role in Role}
    roles = frozenset(Role(r) for r in row.roles.split(",") if r in known)
    return UserInfo(
        id=row.id,
        name=row.name,
        roles=roles,
        enabled=bool(row.enabled),
        create_time=row.create_time,
        update_time=row.update_time,
    )


class UserStore:
    """The users of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, name: str, password_hash: str, roles: frozenset[Role]) -> UserInfo:
        """Insert a user; a name already in use is a :class:`UserError`."""
        if not roles:
            raise ArgumentError("a user needs at least one role")
        now = _now()
        values = {
            "name": name,
            "password_hash": password_hash,
            "roles": _roles_text(roles),
            "enabled": True,
            "create_time": now,
            "update_time": now,
        }
        try:
            with self.db.begin() as conn:
                conn.execute(sa.insert(user_table).values(**values))
        except sa.exc.IntegrityError as exc:
            # The unique index on name is the only constraint an insert can break.
            raise UserError(
                f"a user named {name!r} already exists; change its password with "
                f"`dagtask users passwd {name}` or {LIST_HINT}",
                target=name,
            ) from exc
        return self.get(name)

    def get(self, name: str) -> UserInfo:
        """The user called ``name`` (UserNotFoundError if there is none)."""
        found = self.credentials(name)
        if found is None:
            raise UserNotFoundError(f"there is no user named {name!r}; {LIST_HINT}", target=name)
        return found[0]

    def credentials(self, name: str) -> tuple[UserInfo, str] | None:
        """The user called ``name`` and its stored password hash, or None."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(user_table).where(user_table.c.name == name)).first()
        return None if row is None else (_to_info(row), str(row.password_hash))

    def list(self) -> list[UserInfo]:
        """Every user, by name."""
        with self.db.read() as conn:
            rows = conn.execute(sa.select(user_table).order_by(user_table.c.name)).all()
        return [_to_info(row) for row in rows]

    def count(self) -> int:
        """How many users exist."""
        with self.db.read() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(user_table)).scalar_one()
            )

    def set_password(self, name: str, password_hash: str) -> UserInfo:
        """Replace the user's password hash."""
        return self._update(name, password_hash=password_hash)

    def set_roles(self, name: str, roles: frozenset[Role]) -> UserInfo:
        """Replace the user's roles."""
        if not roles:
            raise ArgumentError("a user needs at least one role")
        return self._update(name, roles=_roles_text(roles))

    def set_enabled(self, name: str, enabled: bool) -> UserInfo:
        """Enable or disable the user (a disabled user cannot authenticate)."""
        return self._update(name, enabled=enabled)

    def _update(self, name: str, **values: Any) -> UserInfo:
        with self.db.begin() as conn:
            result = conn.execute(
                sa.update(user_table)
                .where(user_table.c.name == name)
                .values(**values, update_time=_now())
            )
        if result.rowcount == 0:
            raise UserNotFoundError(f"there is no user named {name!r}; {LIST_HINT}", target=name)
        return self.get(name)
