"""What the console's forms and query strings accept; a bad value is one line saying what to send.

The task list's filters live in the URL (a filtered list can be bookmarked and shared): ``status``
and ``type`` (one value or a comma list), ``name`` (part of the name), ``host`` (a host id),
``creator`` (exact), ``since`` / ``until`` (UTC, ``YYYY-MM-DDTHH:MM`` as a browser's
``datetime-local`` field sends it, or a date), ``page`` and ``size``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from dagtask.states import TaskStatus, TaskType

PAGE_SIZES = (10, 20, 50, 100)
DEFAULT_SIZE = 20


class FormError(ValueError):
    """A value the user typed or a link carried that the console cannot use (a 400 page)."""


@dataclass(frozen=True)
class ListFilters:
    """The task list's filters, as parsed from the URL."""

    statuses: list[TaskStatus] = field(default_factory=list)
    types: list[TaskType] = field(default_factory=list)
    name: str | None = None
    host_id: int | None = None
    creator: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    page: int = 1
    size: int = DEFAULT_SIZE

    def query(self) -> dict[str, str]:
        """The filters as query parameters (empty strings for those not set)."""
        return {
            "status": ",".join(s.value for s in self.statuses),
            "type": ",".join(t.value for t in self.types),
            "name": self.name or "",
            "host": str(self.host_id) if self.host_id is not None else "",
            "creator": self.creator or "",
            "since": self.since.strftime("%Y-%m-%dT%H:%M") if self.since else "",
            "until": self.until.strftime("%Y-%m-%dT%H:%M") if self.until else "",
            "size": str(self.size) if self.size != DEFAULT_SIZE else "",
        }

    @property
    def active(self) -> bool:
        """Whether any filter (beyond paging) is set."""
        return any(v for k, v in self.query().items() if k != "size")


E = TypeVar("E", TaskStatus, TaskType)


def _enum_list(raw: str, kind: type[E], what: str) -> list[E]:
    values: list[E] = []
    for part in (p.strip().upper() for p in raw.split(",")):
        if not part:
            continue
        try:
            values.append(kind(part))
        except ValueError:
            allowed = ", ".join(k.value for k in kind)
            raise FormError(f"{what} {part!r} is not one of {allowed}") from None
    return values


def _time(raw: str, what: str) -> datetime | None:
    if not raw.strip():
        return None
    try:
        return datetime.fromisoformat(raw.strip())
    except ValueError:
        raise FormError(
            f"{what} {raw!r} is not a time; use YYYY-MM-DDTHH:MM (UTC) or YYYY-MM-DD"
        ) from None


def _positive(raw: str, what: str, default: int) -> int:
    if not raw.strip():
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise FormError(f"{what} must be a whole number from 1 up, got {raw!r}")
    return int(raw)


def parse_filters(query: Mapping[str, str]) -> ListFilters:
    """The task list's filters from its query string (FormError naming a bad one)."""
    size = _positive(query.get("size", ""), "size", DEFAULT_SIZE)
    if size not in PAGE_SIZES:
        raise FormError(f"size must be one of {', '.join(map(str, PAGE_SIZES))}, got {size}")
    host = query.get("host", "").strip()
    since = _time(query.get("since", ""), "since")
    until = _time(query.get("until", ""), "until")
    if since and until and since > until:
        raise FormError("since is after until; swap them or clear one")
    return ListFilters(
        statuses=_enum_list(query.get("status", ""), TaskStatus, "status"),
        types=_enum_list(query.get("type", ""), TaskType, "type"),
        name=query.get("name", "").strip() or None,
        host_id=_positive(host, "host", 0) if host else None,
        creator=query.get("creator", "").strip() or None,
        since=since,
        until=until,
        page=_positive(query.get("page", ""), "page", 1),
        size=size,
    )


def parse_lines(text: str, what: str) -> dict[str, str]:
    """``key=value`` lines (blank lines and ``#`` comments skipped) as a stringMap."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise FormError(f"{what}, line {number}: {line!r} is not key=value")
        values[key.strip()] = value.strip()
    return values


def parse_list_lines(text: str) -> dict[str, list[str]]:
    """``key=a,b,c`` lines as a listMap."""
    return {
        key: [v.strip() for v in value.split(",") if v.strip()]
        for key, value in parse_lines(text, "list arguments").items()
    }
