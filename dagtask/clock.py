"""Time in one place: the store keeps naive UTC; views render local ISO-8601 with milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, as the naive UTC datetime the store keeps."""
    return datetime.now(UTC).replace(tzinfo=None)


def aware(value: datetime) -> datetime:
    """A stored naive-UTC datetime as an aware one in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
