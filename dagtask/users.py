"""Users of the REST API: roles, the user model, and password hashing.

Passwords are hashed with scrypt (:func:`hashlib.scrypt`, a memory-hard password KDF) and a random
16-byte salt. The stored text names the algorithm and its parameters, so hashes made with other
costs keep verifying when the default changes::

    scrypt$ln=15,r=8,p=1$<salt, base64>$<key, base64>

``ln`` is log2 of scrypt's cost ``N``. The default (``ln=15``: 32 MiB and roughly 0.1 s per hash)
is deliberately slow; tests pass a cheaper :class:`ScryptCost` (e.g. ``ScryptCost(ln=10)``) so the
suite stays fast. Verification compares in constant time. A password is never stored, printed or
logged in clear.

The SQL for users lives in :mod:`dagtask.store.users`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from dagtask.errors import ArgumentError

__all__ = [
    "DEFAULT_COST",
    "MIN_PASSWORD_LENGTH",
    "Role",
    "ScryptCost",
    "UserInfo",
    "check_password",
    "check_user_name",
    "hash_password",
    "parse_roles",
    "verify_password",
]

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class Role(StrEnum):
    """What a user may do over HTTP (docs/api.md). Roles do not imply one another, except ADMIN."""

    TASK_VIEWER = "TASK_VIEWER"
    """Read tasks, subtasks and logs."""
    TASK_MANAGER = "TASK_MANAGER"
    """Retry and roll back tasks; retry, skip and cancel subtasks."""
    HOST_MANAGER = "HOST_MANAGER"
    """Stop and restart OCP agents (one host or a batch)."""
    ADMIN = "ADMIN"
    """Everything."""


class UserInfo(BaseModel):
    """A user as stored, without the password hash."""

    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    roles: frozenset[Role]
    enabled: bool
    create_time: datetime
    update_time: datetime

    def has_role(self, role: Role) -> bool:
        """Whether the user holds ``role`` (an ADMIN holds every role)."""
        return role in self.roles or Role.ADMIN in self.roles


def parse_roles(values: Iterable[str]) -> frozenset[Role]:
    """Role names (each may be a comma list, any case) as roles; ArgumentError if one is unknown
    or none is given."""
    roles: set[Role] = set()
    for value in values:
        for part in value.split(","):
            name = part.strip().upper()
            if not name:
                continue
            try:
                roles.add(Role(name))
            except ValueError:
                known = ", ".join(r.value for r in Role)
                raise ArgumentError(f"{part.strip()!r} is not a role; use one of {known}") from None
    if not roles:
        raise ArgumentError(f"a user needs a role: one of {', '.join(r.value for r in Role)}")
    return frozenset(roles)


def check_user_name(name: str) -> str:
    """``name`` if it is a valid user name, else ArgumentError (it must not contain ':', which
    HTTP Basic uses as the separator)."""
    if not USER_NAME.match(name):
        raise ArgumentError(
            f"{name!r} is not a valid user name: use 1 to 64 letters, digits, '.', '_', '@' or "
            "'-', starting with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    """``password`` if it is acceptable for a new user, else ArgumentError."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ArgumentError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ArgumentError(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")
    return password


@dataclass(frozen=True)
class ScryptCost:
    """scrypt's parameters: ``N = 2**ln``, block size ``r``, parallelism ``p``."""

    ln: int = 15
    r: int = 8
    p: int = 1

    @property
    def memory(self) -> int:
        """Bytes scrypt needs for these parameters (128 * r * N, plus a margin)."""
        return int(128 * self.r * (2**self.ln) + 1024 * 1024)

    def check(self) -> None:
        """Refuse parameters outside what this module will compute (a stored hash is input too)."""
        if not (1 <= self.ln <= 20 and 1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise ArgumentError(f"unsupported scrypt parameters ln={self.ln} r={self.r} p={self.p}")


DEFAULT_COST = ScryptCost()
"""The cost new hashes get: ``ln=15, r=8, p=1`` (32 MiB, about 0.1 s)."""

_SCHEME = "scrypt"
_KEY_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, cost: ScryptCost) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=2**cost.ln,
        r=cost.r,
        p=cost.p,
        maxmem=cost.memory,
        dklen=_KEY_BYTES,
    )


def hash_password(password: str, cost: ScryptCost | None = None) -> str:
    """The self-describing scrypt hash of ``password`` with a fresh random salt.

    ``cost`` defaults to the module's :data:`DEFAULT_COST`, read at call time, so a test suite
    can lower it for every hash it makes (``monkeypatch.setattr(users, "DEFAULT_COST", ...)``).
    """
    cost = cost or DEFAULT_COST
    cost.check()
    salt = secrets.token_bytes(16)
    key = _derive(password, salt, cost)
    return f"{_SCHEME}$ln={cost.ln},r={cost.r},p={cost.p}${_b64(salt)}${_b64(key)}"


def _parse(encoded: str) -> tuple[ScryptCost, bytes, bytes] | None:
    try:
        scheme, params, salt, key = encoded.split("$")
        if scheme != _SCHEME:
            return None
        values = dict(item.split("=", 1) for item in params.split(","))
        cost = ScryptCost(ln=int(values["ln"]), r=int(values["r"]), p=int(values["p"]))
        cost.check()
        return cost, base64.b64decode(salt, validate=True), base64.b64decode(key, validate=True)
    except (ValueError, KeyError, binascii.Error, ArgumentError):
        return None


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches the stored hash ``encoded`` (constant-time comparison).

    A malformed or unsupported hash never matches.
    """
    parsed = _parse(encoded)
    if parsed is None:
        return False
    cost, salt, key = parsed
    return hmac.compare_digest(_derive(password, salt, cost), key)


def verify_unknown(password: str, cost: ScryptCost | None = None) -> bool:
    """Spend a password check's time (at ``cost``, default :data:`DEFAULT_COST`) for a user that
    does not exist, so a wrong name takes as long as a wrong password; always False."""
    _derive(password, b"\0" * 16, cost or DEFAULT_COST)
    return False
