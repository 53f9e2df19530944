"""The SQL of webhooks and their deliveries.

The history events are the outbox: a task's ending (a TASK_STATUS event to SUCCESSFUL or FAILED)
is committed in the transaction that ends the task, so it cannot be missed or doubled.
:meth:`WebhookStore.collect` turns the endings a webhook has not looked at yet into delivery
rows (PENDING), one per (webhook, event) through the unique key, and moves the webhook's cursor
``after_event_id`` on; :meth:`WebhookStore.claim_due` hands each due delivery to one notifier
for a lease (a conditional UPDATE per row, portable across SQLite, PostgreSQL and MariaDB);
:meth:`WebhookStore.record` writes the attempt's outcome.

Event ids are taken when a transaction inserts its event, not when it commits, so on a server a
transaction may still commit an id below one already visible. The cursor therefore only moves up
to an id the caller knows to be settled (``upto``: the newest event id it saw at least a while
ago, see :mod:`dagtask.webhooks`); the endings above the cursor are looked at again on every
pass, and the ones that already have a delivery are skipped (NOT EXISTS on the unique key).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from dagtask.clock import utcnow
from dagtask.errors import WebhookNotFoundError
from dagtask.models import EventKind
from dagtask.states import TaskStatus
from dagtask.store.db import Database
from dagtask.store.schema import task, task_event, webhook, webhook_delivery

PENDING, DELIVERED, FAILED = "PENDING", "DELIVERED", "FAILED"
ENDINGS: dict[str, tuple[str, ...]] = {
    "ended": (TaskStatus.SUCCESSFUL.value, TaskStatus.FAILED.value),
    "failed": (TaskStatus.FAILED.value,),
}
"""A webhook's ``events`` and the task statuses whose endings it reports."""


class Webhook(BaseModel):
    """A stored webhook."""

    model_config = ConfigDict(frozen=True)

    id: int
    url: str
    events: str
    template: str | None
    secret_ref: str | None
    enabled: bool
    after_event_id: int
    create_time: datetime


class Delivery(BaseModel):
    """One ending of a task to tell one webhook about, and how that went so far."""

    model_config = ConfigDict(frozen=True)

    id: int
    webhook_id: int
    event_id: int
    task_id: int
    task_status: str
    state: str
    attempts: int
    next_attempt_at: datetime
    claimed_by: str | None
    claimed_until: datetime | None
    last_status_code: int | None
    last_error: str | None
    create_time: datetime
    delivered_at: datetime | None


def _webhook(row: Any) -> Webhook:
    data = dict(row._mapping)
    data["enabled"] = bool(data["enabled"])
    return Webhook.model_validate(data)


def _delivery(row: Any) -> Delivery:
    return Delivery.model_validate(dict(row._mapping))


def _not_found(webhook_id: int) -> WebhookNotFoundError:
    return WebhookNotFoundError(f"no webhook {webhook_id}; list them with `dagtask webhooks list`")


class WebhookStore:
    """Webhooks and deliveries in one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- webhooks ------------------------------------------------------------------------------

    def insert(
        self, url: str, events: str, template: str | None, secret_ref: str | None
    ) -> Webhook:
        """Store a webhook whose cursor starts at the newest event: it reports the endings
        from its creation on, not the whole past."""
        with self.db.begin() as conn:
            newest = conn.execute(sa.select(sa.func.max(task_event.c.id))).scalar() or 0
            result = conn.execute(
                sa.insert(webhook).values(
                    url=url,
                    events=events,
                    template=template,
                    secret_ref=secret_ref,
                    enabled=True,
                    after_event_id=newest,
                    create_time=utcnow(),
                )
            )
            webhook_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        return self.get(webhook_id)

    def get(self, webhook_id: int) -> Webhook:
        """The webhook (:class:`WebhookNotFoundError` if there is none)."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(webhook).where(webhook.c.id == webhook_id)).one_or_none()
        if row is None:
            raise _not_found(webhook_id)
        return _webhook(row)

    def rows(self, *, enabled_only: bool = False) -> list[Webhook]:
        """Every webhook (or every enabled one), by id."""
        query = sa.select(webhook).order_by(webhook.c.id)
        if enabled_only:
            query = query.where(webhook.c.enabled == sa.true())
        with self.db.read() as conn:
            return [_webhook(r) for r in conn.execute(query)]

    def enable(self, webhook_id: int, enabled: bool = True) -> None:
        """Enable (or disable) a webhook; a disabled one collects and delivers nothing, and
        catches up with what ended meanwhile once enabled again."""
        with self.db.begin() as conn:
            result = conn.execute(
                sa.update(webhook).where(webhook.c.id == webhook_id).values(enabled=enabled)
            )
        if result.rowcount == 0:
            raise _not_found(webhook_id)

    def remove(self, webhook_id: int) -> None:
        """Delete a webhook and its delivery log."""
        with self.db.begin() as conn:
            conn.execute(
                sa.delete(webhook_delivery).where(webhook_delivery.c.webhook_id == webhook_id)
            )
            result = conn.execute(sa.delete(webhook).where(webhook.c.id == webhook_id))
        if result.rowcount == 0:
            raise _not_found(webhook_id)

    def max_event_id(self) -> int:
        """The newest history event's id (0 when there is none)."""
        with self.db.read() as conn:
            return int(conn.execute(sa.select(sa.func.max(task_event.c.id))).scalar() or 0)

    # ---- feeding -------------------------------------------------------------------------------

    def collect(
        self,
        hook: Webhook,
        limit: int = 500,
        upto: int | None = None,
        *,
        now: datetime | None = None,
    ) -> int:
        """In one transaction, a PENDING delivery for each ending above ``hook``'s cursor that it
        reports (its ``events``, its template; never an imported task's) and has none yet, the
        oldest ``limit`` of them; then the cursor moves on to ``upto`` (not past what this call
        read, and only from the value it read: two processes collecting at once neither move
        it back nor insert twice). ``upto`` None: the cursor stays. Returns how many
        deliveries were created (0 also when another process collected the same at once).
        The new deliveries are due at ``now`` (naive UTC, default the clock)."""
        now = now or utcnow()
        # Looked at in a read first: most passes find nothing to do and take no write lock.
        with self.db.read() as conn:
            cursor, rows = self._uncollected(conn, hook, limit)
        if cursor is None or (not rows and (upto is None or upto <= cursor)):
            return 0
        try:
            with self.db.begin() as conn:
                cursor, rows = self._uncollected(conn, hook, limit)
                if cursor is None:  # removed meanwhile
                    return 0
                if rows:
                    conn.execute(
                        sa.insert(webhook_delivery),
                        [
                            {
                                "webhook_id": hook.id,
                                "event_id": r.id,
                                "task_id": r.task_id,
                                "task_status": r.new_status,
                                "state": PENDING,
                                "attempts": 0,
                                "next_attempt_at": now,
                                "create_time": now,
                            }
                            for r in rows
                        ],
                    )
                target = upto if upto is not None else cursor
                if len(rows) == limit:  # more may follow: do not step over them
                    target = min(target, rows[-1].id)
                if target > cursor:
                    conn.execute(
                        sa.update(webhook)
                        .where(webhook.c.id == hook.id, webhook.c.after_event_id == cursor)
                        .values(after_event_id=target)
                    )
        except sa.exc.IntegrityError:  # another process inserted the same deliveries first
            return 0
        return len(rows)

    @staticmethod
    def _uncollected(
        conn: sa.Connection, hook: Webhook, limit: int
    ) -> tuple[int | None, list[Any]]:
        """The webhook's cursor (None: it was removed) and the oldest ``limit`` endings above
        it that it reports and has no delivery for yet."""
        cursor = conn.execute(
            sa.select(webhook.c.after_event_id).where(webhook.c.id == hook.id)
        ).scalar()
        if cursor is None:
            return None, []
        delivered = sa.exists().where(
            webhook_delivery.c.webhook_id == hook.id,
            webhook_delivery.c.event_id == task_event.c.id,
        )
        query = (
            sa.select(task_event.c.id, task_event.c.task_id, task_event.c.new_status)
            .join(task, task.c.id == task_event.c.task_id)
            .where(
                task_event.c.id > cursor,
                task_event.c.kind == EventKind.TASK_STATUS.value,
                task_event.c.new_status.in_(ENDINGS[hook.events]),
                task.c.historical == sa.false(),
                ~delivered,
            )
            .order_by(task_event.c.id)
            .limit(limit)
        )
        if hook.template is not None:
            query = query.where(task.c.name == hook.template)
        return int(cursor), list(conn.execute(query).all())

    # ---- delivering ----------------------------------------------------------------------------

    def claim_due(
        self, executor: str, now: datetime, limit: int = 10, lease: float = 60.0
    ) -> list[Delivery]:
        """Take up to ``limit`` PENDING deliveries of enabled webhooks that are due at ``now``
        and that nobody holds, for ``lease`` seconds. Each is taken by an UPDATE conditional on
        it still being free, so of several notifiers exactly one gets it."""
        free = sa.or_(
            webhook_delivery.c.claimed_until.is_(None), webhook_delivery.c.claimed_until < now
        )
        due = (
            webhook_delivery.c.state == PENDING,
            webhook_delivery.c.next_attempt_at <= now,
            free,
        )
        with self.db.read() as conn:
            candidates = (
                conn.execute(
                    sa.select(webhook_delivery.c.id)
                    .join(webhook, webhook.c.id == webhook_delivery.c.webhook_id)
                    .where(*due, webhook.c.enabled == sa.true())
                    .order_by(webhook_delivery.c.next_attempt_at, webhook_delivery.c.id)
                    .limit(limit * 4)
                )
                .scalars()
                .all()
            )
        if not candidates:
            return []
        until = now + timedelta(seconds=lease)
        won: list[int] = []
        with self.db.begin() as conn:
            for delivery_id in candidates:
                result = conn.execute(
                    sa.update(webhook_delivery)
                    .where(webhook_delivery.c.id == delivery_id, *due)
                    .values(claimed_by=executor, claimed_until=until)
                )
                if result.rowcount == 1:
                    won.append(int(delivery_id))
                    if len(won) == limit:
                        break
        if not won:
            return []
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(webhook_delivery)
                .where(webhook_delivery.c.id.in_(won))
                .order_by(webhook_delivery.c.next_attempt_at, webhook_delivery.c.id)
            ).all()
        return [_delivery(r) for r in rows]

    def record(
        self,
        delivery: Delivery,
        *,
        ok: bool,
        status_code: int | None,
        error: str | None,
        next_attempt_at: datetime | None,
    ) -> bool:
        """One attempt's outcome: DELIVERED when ``ok``; else PENDING again at
        ``next_attempt_at``, or FAILED when that is None (the last attempt). Only while the
        claim is still ``delivery``'s; False if it is not (the lease ran out and another
        notifier took the delivery over)."""
        now = utcnow()
        values: dict[str, Any] = {
            "attempts": webhook_delivery.c.attempts + 1,
            "claimed_by": None,
            "claimed_until": None,
            "last_status_code": status_code,
            "last_error": error[:2000] if error else None,
        }
        if ok:
            values.update(state=DELIVERED, delivered_at=now)
        elif next_attempt_at is not None:
            values.update(next_attempt_at=next_attempt_at)
        else:
            values.update(state=FAILED)
        with self.db.begin() as conn:
            result = conn.execute(
                sa.update(webhook_delivery)
                .where(
                    webhook_delivery.c.id == delivery.id,
                    webhook_delivery.c.state == PENDING,
                    webhook_delivery.c.claimed_by == delivery.claimed_by,
                )
                .values(**values)
            )
        return bool(result.rowcount == 1)

    def next_due(self, now: datetime) -> datetime | None:
        """When the next PENDING delivery of an enabled webhook may be attempted (its next
        attempt, or the end of another notifier's claim on it), if there is one."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(webhook_delivery.c.next_attempt_at, webhook_delivery.c.claimed_until)
                .join(webhook, webhook.c.id == webhook_delivery.c.webhook_id)
                .where(webhook_delivery.c.state == PENDING, webhook.c.enabled == sa.true())
                .order_by(webhook_delivery.c.next_attempt_at)
                .limit(50)
            ).all()
        times = [max(at, until) if until is not None and until >= now else at for at, until in rows]
        return min(times, default=None)

    # ---- the log -------------------------------------------------------------------------------

    def get_delivery(self, delivery_id: int) -> Delivery | None:
        """One delivery, if it exists."""
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(webhook_delivery).where(webhook_delivery.c.id == delivery_id)
            ).one_or_none()
        return _delivery(row) if row is not None else None

    def deliveries(
        self, webhook_id: int | None = None, task_id: int | None = None, limit: int = 50
    ) -> list[Delivery]:
        """The newest deliveries (of one webhook, of one task), newest first."""
        query = sa.select(webhook_delivery).order_by(webhook_delivery.c.id.desc()).limit(limit)
        if webhook_id is not None:
            query = query.where(webhook_delivery.c.webhook_id == webhook_id)
        if task_id is not None:
            query = query.where(webhook_delivery.c.task_id == task_id)
        with self.db.read() as conn:
            return [_delivery(r) for r in conn.execute(query)]
