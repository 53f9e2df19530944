"""The SQL of task definitions and their fires.

A tick fires once across any number of schedulers because its fire row is unique per
(definition, fire time): :meth:`ScheduleStore.claim` inserts it (CLAIMED) and moves the
definition's next fire time in one transaction; the task is then created by the submit's own
transaction, which also turns the claim into FIRED (:meth:`ScheduleStore.fired_in`, conditional on
the claim still being this scheduler's). A scheduler that died between the two leaves a CLAIMED
row that another takes over after :data:`CLAIM_SECONDS` (:meth:`ScheduleStore.take_over`); if the
first one was only slow, its submit finds the claim gone and rolls back, so no tick ever makes
two tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from dagtask.clock import utcnow
from dagtask.errors import ArgumentError, DagtaskError, DefinitionNotFoundError
from dagtask.states import TaskStatus
from dagtask.store.db import Database
from dagtask.store.schema import schedule_fire, task, task_definition

CLAIM_SECONDS = 10.0
"""How long a CLAIMED fire may wait for its task before another scheduler takes it over."""


class FireTaken(DagtaskError):
    """The claim of a fire passed to another scheduler before this one created its task."""


@dataclass(frozen=True)
class FireRow:
    """A fire as stored."""

    id: int
    definition_id: int
    fire_time: datetime
    outcome: str
    task_id: int | None
    executor: str
    claimed_at: datetime
    message: str | None


def _fire(row: Any) -> FireRow:
    return FireRow(
        id=int(row.id),
        definition_id=int(row.definition_id),
        fire_time=row.fire_time,
        outcome=row.outcome,
        task_id=row.task_id,
        executor=row.executor,
        claimed_at=row.claimed_at,
        message=row.message,
    )


class ScheduleStore:
    """Task definitions and fires in one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- definitions ---------------------------------------------------------------------------

    def insert(self, values: dict[str, Any]) -> int:
        now = utcnow()
        row = {**values, "create_time": now, "update_time": now}
        try:
            with self.db.begin() as conn:
                result = conn.execute(sa.insert(task_definition).values(**row))
                return int(result.inserted_primary_key[0])  # type: ignore[index]
        except sa.exc.IntegrityError:
            raise ArgumentError(
                f"a task definition named {values['name']!r} exists already; pick another name "
                f"or change that one (`dagtask schedule show {values['name']!r}`)"
            ) from None

    def get(self, key: int | str) -> Any:
        column = task_definition.c.id if isinstance(key, int) else task_definition.c.name
        with self.db.read() as conn:
            row = conn.execute(sa.select(task_definition).where(column == key)).one_or_none()
        if row is None:
            raise DefinitionNotFoundError(
                f"no task definition {key!r}; list them with `dagtask schedule list`"
            )
        return row

    def rows(self) -> list[Any]:
        with self.db.read() as conn:
            return list(conn.execute(sa.select(task_definition).order_by(task_definition.c.id)))

    def update(self, definition_id: int, **values: Any) -> None:
        with self.db.begin() as conn:
            result = conn.execute(
                sa.update(task_definition)
                .where(task_definition.c.id == definition_id)
                .values(**values, update_time=utcnow())
            )
        if result.rowcount == 0:
            raise DefinitionNotFoundError(f"no task definition {definition_id}")

    def delete(self, definition_id: int) -> None:
        with self.db.begin() as conn:
            conn.execute(
                sa.delete(schedule_fire).where(schedule_fire.c.definition_id == definition_id)
            )
            result = conn.execute(
                sa.delete(task_definition).where(task_definition.c.id == definition_id)
            )
        if result.rowcount == 0:
            raise DefinitionNotFoundError(f"no task definition {definition_id}")

    # ---- what a scheduler reads ------------------------------------------------------------------

    def due(self, now: datetime) -> list[Any]:
        """Enabled definitions whose next fire time has come (the due index)."""
        with self.db.read() as conn:
            return list(
                conn.execute(
                    sa.select(task_definition)
                    .where(
                        task_definition.c.enabled == sa.true(),
                        task_definition.c.next_fire_time <= now,
                    )
                    .order_by(task_definition.c.next_fire_time)
                    .limit(100)
                )
            )

    def next_due(self) -> datetime | None:
        """The earliest next fire time of an enabled definition (one index read)."""
        with self.db.read() as conn:
            return conn.execute(
                sa.select(sa.func.min(task_definition.c.next_fire_time)).where(
                    task_definition.c.enabled == sa.true()
                )
            ).scalar()

    def running(self, definition_id: int) -> int | None:
        """A RUNNING task this definition created, if any (for the overlap policy)."""
        with self.db.read() as conn:
            return conn.execute(
                sa.select(task.c.id)
                .where(
                    task.c.task_definition_id == definition_id,
                    task.c.status == TaskStatus.RUNNING.value,
                )
                .limit(1)
            ).scalar()

    def stale_claims(self, now: datetime) -> list[FireRow]:
        """CLAIMED fires whose scheduler has not created their task for :data:`CLAIM_SECONDS`."""
        cutoff = now - timedelta(seconds=CLAIM_SECONDS)
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(schedule_fire).where(
                    schedule_fire.c.outcome == "CLAIMED", schedule_fire.c.claimed_at < cutoff
                )
            ).all()
        return [_fire(r) for r in rows]

    def fires(self, definition_id: int, limit: int = 50) -> list[FireRow]:
        """The newest fires of a definition, newest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(schedule_fire)
                .where(schedule_fire.c.definition_id == definition_id)
                .order_by(schedule_fire.c.fire_time.desc())
                .limit(limit)
            ).all()
        return [_fire(r) for r in rows]

    # ---- what a scheduler writes -----------------------------------------------------------------

    def claim(
        self,
        definition_id: int,
        fire_time: datetime,
        executor: str,
        *,
        outcome: str,
        current_next: datetime | None,
        new_next: datetime | None,
        message: str | None = None,
    ) -> FireRow | None:
        """Take the tick ``fire_time`` (outcome CLAIMED, or SKIPPED / MISSED for a tick that
        makes no task) and move the definition on to ``new_next``, in one transaction; None when
        another scheduler took this tick first."""
        now = utcnow()
        try:
            with self.db.begin() as conn:
                result = conn.execute(
                    sa.insert(schedule_fire).values(
                        definition_id=definition_id,
                        fire_time=fire_time,
                        outcome=outcome,
                        executor=executor,
                        claimed_at=now,
                        message=message,
                    )
                )
                fire_id = int(result.inserted_primary_key[0])  # type: ignore[index]
                self._advance(conn, definition_id, current_next, new_next, fire_time)
        except sa.exc.IntegrityError:
            self.advance(definition_id, current_next, new_next, fire_time)
            return None
        return FireRow(fire_id, definition_id, fire_time, outcome, None, executor, now, message)

    def advance(
        self,
        definition_id: int,
        current_next: datetime | None,
        new_next: datetime | None,
        fire_time: datetime | None,
    ) -> None:
        """Move the definition's next fire time on (nothing if another scheduler did)."""
        with self.db.begin() as conn:
            self._advance(conn, definition_id, current_next, new_next, fire_time)

    @staticmethod
    def _advance(
        conn: sa.Connection,
        definition_id: int,
        current_next: datetime | None,
        new_next: datetime | None,
        fire_time: datetime | None,
    ) -> None:
        values: dict[str, Any] = {"next_fire_time": new_next}
        if fire_time is not None:
            values["last_fire_time"] = fire_time
        same = (
            task_definition.c.next_fire_time.is_(None)
            if current_next is None
            else task_definition.c.next_fire_time == current_next
        )
        conn.execute(
            sa.update(task_definition)
            .where(task_definition.c.id == definition_id, same)
            .values(**values)
        )

    def take_over(self, fire: FireRow, executor: str) -> FireRow | None:
        """Take a stale CLAIMED fire over; None if its scheduler (or another) moved first."""
        now = utcnow()
        with self.db.begin() as conn:
            result = conn.execute(
                sa.update(schedule_fire)
                .where(
                    schedule_fire.c.id == fire.id,
                    schedule_fire.c.outcome == "CLAIMED",
                    schedule_fire.c.executor == fire.executor,
                    schedule_fire.c.claimed_at == fire.claimed_at,
                )
                .values(executor=executor, claimed_at=now)
            )
        if result.rowcount != 1:
            return None
        return FireRow(
            fire.id, fire.definition_id, fire.fire_time, "CLAIMED", None, executor, now, None
        )

    @staticmethod
    def fired_in(conn: sa.Connection, fire: FireRow, task_id: int) -> None:
        """Inside the submit's transaction: the claim becomes FIRED with its task, or the
        submit rolls back (:class:`FireTaken`) because the claim is no longer this one's."""
        result = conn.execute(
            sa.update(schedule_fire)
            .where(
                schedule_fire.c.id == fire.id,
                schedule_fire.c.outcome == "CLAIMED",
                schedule_fire.c.executor == fire.executor,
            )
            .values(outcome="FIRED", task_id=task_id)
        )
        if result.rowcount != 1:
            raise FireTaken(f"the fire of {fire.fire_time} passed to another scheduler")

    def failed(self, fire: FireRow, message: str) -> None:
        """The fire's task could not be created (a bad argument, a busy host): say why."""
        with self.db.begin() as conn:
            conn.execute(
                sa.update(schedule_fire)
                .where(schedule_fire.c.id == fire.id, schedule_fire.c.outcome == "CLAIMED")
                .values(outcome="FAILED", message=message[:2000])
            )

    def fire_counts(self, definition_ids: Sequence[int]) -> dict[int, int]:
        """How many tasks each definition has fired."""
        if not definition_ids:
            return {}
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(schedule_fire.c.definition_id, sa.func.count())
                .where(
                    schedule_fire.c.definition_id.in_(list(definition_ids)),
                    schedule_fire.c.outcome == "FIRED",
                )
                .group_by(schedule_fire.c.definition_id)
            ).all()
        return {int(d): int(n) for d, n in rows}
