"""The arguments of a submit, checked before anything is stored.

What :meth:`dagtask.Engine.submit` accepts for ``args`` (the stringMap) and ``lists`` (the
listMap), for host ids and for a creator: anything else is refused with an
:class:`~dagtask.errors.ArgumentError` that says what was wrong and what to pass instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import timedelta

from dagtask.errors import ArgumentError

MAX_HOST_ID = 2**63 - 1
"""The largest host id: host ids are signed 64-bit integers (BIGINT) in every table."""
MAX_CREATOR = 128
"""Characters of a creator's name (the task's creator column is VARCHAR(128))."""
_DIGITS = re.compile(r"[0-9]+")


def shown(value: object, limit: int = 40) -> str:
    """``value``'s repr for a message, cut short if it is long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def arg_map(name: str, value: object) -> Mapping[object, object]:
    """``args`` / ``lists`` itself: a mapping, or None for none."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ArgumentError(
            f"{name} must be a mapping of argument names to values, got {type(value).__name__}"
        )
    return value


def arg_key(name: str, key: object) -> str:
    if not isinstance(key, str):
        raise ArgumentError(
            f"every key of {name} must be a string (an argument's name), "
            f"got {type(key).__name__} {shown(key)}"
        )
    return str.__str__(key)


def string_arg(key: object, value: object, *, where: str | None = None) -> str:
    """One stringMap value (or listMap item): a ``str`` as is, an ``int`` as its decimal string.

    Nothing else is guessed at: ``True`` is not ``"true"`` (nor OCP's ``"True"``), ``None`` is not
    an empty string, and a float's text depends on how it was written.
    """
    place = where or f"argument {key!r}"
    if isinstance(value, str):
        return str.__str__(value)  # a str subclass (an enum) as the plain text it holds
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    hint = (
        "pass 'true' or 'false' as a string"
        if isinstance(value, bool)
        else "pass it as a string (an int is accepted and becomes its decimal digits)"
    )
    raise ArgumentError(
        f"{place} must be a string, got {type(value).__name__} {shown(value)}; {hint}"
    )


def list_arg(key: object, value: object) -> list[str]:
    """One listMap value: a list or tuple of what :func:`string_arg` accepts."""
    if isinstance(value, str | bytes | bytearray | memoryview | Mapping) or not isinstance(
        value, Sequence
    ):
        raise ArgumentError(
            f"list argument {key!r} must be a list of strings, got {type(value).__name__} "
            f'{shown(value)}; pass e.g. ["1", "2"] (a string is not split into items)'
        )
    return [
        string_arg(key, item, where=f"list argument {key!r} item {i}")
        for i, item in enumerate(value)
    ]


def host_id(key: str, raw: str) -> int:
    """A host id given as text: decimal digits only, 1 to 2**63 - 1, without leading zeros.

    ``int()`` alone would take ``" 7"``, ``"+7"``, ``"7_0"`` and other scripts' digits, and
    ``"07"`` would name host 7 a second time under another spelling.
    """
    if not _DIGITS.fullmatch(raw):
        raise ArgumentError(
            f"{key} {shown(raw)} is not a host id: give a host id as decimal digits, "
            f"e.g. {key.split('[')[0]}=1"
        )
    digits = raw.lstrip("0")
    # Compared by length first: int() refuses strings of more than 4300 digits.
    if not digits or len(digits) > len(str(MAX_HOST_ID)) or int(digits) > MAX_HOST_ID:
        raise ArgumentError(
            f"{key} {shown(raw)} is out of range: give a host id between 1 and {MAX_HOST_ID}"
        )
    if digits != raw:
        raise ArgumentError(f"{key} {shown(raw)} has leading zeros: give it as {digits}")
    return int(digits)


def creator(value: object) -> str:
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > MAX_CREATOR:
        raise ArgumentError(
            f"creator must be a name of 1 to {MAX_CREATOR} characters without NUL, "
            f"got {shown(value)}"
        )
    return str.__str__(value)


def string_args(args: object) -> dict[str, str]:
    """A submit's ``args`` checked as a stringMap (ArgumentError naming a bad key or value)."""
    return {arg_key("args", k): string_arg(k, v) for k, v in arg_map("args", args).items()}


def list_args(lists: object) -> dict[str, list[str]]:
    """A submit's ``lists`` checked as a listMap."""
    return {arg_key("lists", k): list_arg(k, v) for k, v in arg_map("lists", lists).items()}


_AGE = re.compile(r"(?P<number>\d+)\s*(?P<unit>[mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_AGE_DAYS = 100 * 365
"""A longer age is a typo (and overflows a datetime)."""


def parse_age(text: str, option: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``2w`` as a timedelta; ArgumentError naming ``option``."""
    match = _AGE.fullmatch(text.strip().lower())
    if match is None:
        raise ArgumentError(
            f"{option} {text!r}: use a number and a unit, e.g. 30d, 12h, 90m (or 2w for weeks)"
        )
    age = timedelta(**{_UNITS[match["unit"]]: int(match["number"])})
    if age > timedelta(days=MAX_AGE_DAYS):
        raise ArgumentError(f"{option} {text!r} is more than {MAX_AGE_DAYS // 365} years")
    return age
