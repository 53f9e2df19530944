"""Task definitions: a template, its arguments and a schedule; and the scheduler's pass.

A definition fires on a cron rule (OCP's 6 fields with seconds, ``0 0/2 * * * ?``, or the classic
5), once at a time (ONCE) or only when asked (MANUAL, ``run-now``), in a time zone and an optional
window. Each fire creates a task of type SCHEDULED (SYS_SCHEDULED for the built-in ones, whose
creator is SYSTEM) whose ``taskDefinitionId`` is the definition's id.

Every worker process runs the scheduler (:class:`dagtask.worker.scheduler.Scheduler`): any number
of them fire each tick exactly once, through the unique fire row (:mod:`dagtask.store.schedules`),
not through an elected leader that can die.

**Missed fires** (the scheduler was down at a fire time): ``SKIP`` (the default) fires a tick only
within :data:`GRACE` of it and drops older ones (recorded once as MISSED); ``CATCH_UP`` fires one
task for the whole gap, for its latest tick. **Overlap** (the definition's previous task is still
RUNNING at a tick): ``SKIP`` (the default) records the tick as SKIPPED; ``ALLOW`` fires anyway;
``QUEUE`` holds the tick and fires it as soon as the previous task ends (one held tick at most:
later ticks fold into it).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from dagtask import arguments
from dagtask import cron as rules
from dagtask.clock import aware, utcnow
from dagtask.errors import ArgumentError, DagtaskError, DefinitionNotFoundError
from dagtask.states import TaskType
from dagtask.store.schedules import FireRow, FireTaken, ScheduleStore

if TYPE_CHECKING:
    from dagtask.engine import Engine

_log = logging.getLogger("dagtask.schedules")

GRACE = timedelta(seconds=5)
"""How late a tick may still fire under the SKIP missed-fire policy."""
MISSED_POLICIES = ("SKIP", "CATCH_UP")
OVERLAP_POLICIES = ("SKIP", "ALLOW", "QUEUE")
SYSTEM = "SYSTEM"
"""The creator of the tasks of built-in (SYS_SCHEDULED) definitions, as in OCP."""

Kind = Literal["CRON", "ONCE", "MANUAL"]


class Definition(BaseModel):
    """A stored task definition."""

    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    template: str
    args: dict[str, str]
    lists: dict[str, list[str]]
    type: TaskType
    schedule_kind: Kind
    cron: str | None
    run_at: datetime | None
    time_zone: str
    start_time: datetime | None
    end_time: datetime | None
    missed_policy: str
    overlap_policy: str
    enabled: bool
    creator: str
    description: str
    next_fire_time: datetime | None
    last_fire_time: datetime | None
    create_time: datetime
    update_time: datetime

    def schedule(self) -> rules.Schedule:
        """The definition's schedule, for computing fire times."""
        return _schedule(
            self.schedule_kind,
            self.cron,
            self.run_at,
            self.time_zone,
            self.start_time,
            self.end_time,
        )

    def describe(self) -> str:
        """The schedule in words: ``cron 0 0/2 * * * ? (Asia/Shanghai)``, ``once at ...``."""
        if self.schedule_kind == "CRON":
            return f"cron {self.cron} ({self.time_zone})"
        if self.schedule_kind == "ONCE" and self.run_at is not None:
            return f"once at {self.run_at:%Y-%m-%d %H:%M:%S} UTC"
        return "manual (run-now only)"


class Fire(BaseModel):
    """One tick of a definition: what it did."""

    model_config = ConfigDict(frozen=True)

    id: int
    definition_id: int
    fire_time: datetime
    outcome: str
    task_id: int | None
    executor: str
    claimed_at: datetime
    message: str | None


def _definition(row: Any) -> Definition:
    data = dict(row._mapping)
    data["args"] = dict(data["args"] or {})
    data["lists"] = {k: list(v) for k, v in (data["lists"] or {}).items()}
    data["enabled"] = bool(data["enabled"])
    return Definition.model_validate(data)


def _fire(row: FireRow) -> Fire:
    return Fire.model_validate(row.__dict__)


def _schedule(
    kind: str,
    rule: str | None,
    run_at: datetime | None,
    tz: str,
    start: datetime | None,
    end: datetime | None,
) -> rules.Schedule:
    if kind == "CRON":
        assert rule is not None
        return rules.Schedule.cron(
            rule,
            tz,
            start=aware(start) if start else None,
            end=aware(end) if end else None,
        )
    if kind == "ONCE":
        assert run_at is not None
        return rules.Schedule.once(aware(run_at), tz)
    return rules.Schedule.manual()


def _naive(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None


class Schedules:
    """The task definitions of one engine's database (``engine.schedules``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = ScheduleStore(engine.database)

    # ---- definitions ---------------------------------------------------------------------------

    def add(
        self,
        name: str,
        template: str,
        *,
        cron_rule: str | None = None,
        once: datetime | str | None = None,
        tz: str = "UTC",
        args: Mapping[str, str] | None = None,
        lists: Mapping[str, Sequence[str]] | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        missed: str = "SKIP",
        overlap: str = "SKIP",
        enabled: bool = True,
        creator: str | None = None,
        description: str = "",
        system: bool = False,
    ) -> Definition:
        """Store a definition (a cron rule, a single time, or neither: MANUAL). Everything is
        checked first: a bad rule, zone, window, policy, template or argument is an
        :class:`~dagtask.errors.ArgumentError` and nothing is stored."""
        name = name.strip()
        if not name or len(name) > 128:
            raise ArgumentError("a task definition needs a name of 1 to 128 characters")
        if cron_rule is not None and once is not None:
            raise ArgumentError("give a cron rule or a single run time (--once), not both")
        zone = rules.zone(tz)
        run_at = _when(once, zone, "the run time") if once is not None else None
        window = (_when(start, zone, "start"), _when(end, zone, "end"))
        if window[0] and window[1] and window[0] >= window[1]:
            raise ArgumentError("the window's start is not before its end; swap them")
        kind: Kind = "CRON" if cron_rule is not None else "ONCE" if run_at else "MANUAL"
        missed, overlap = missed.upper(), overlap.upper()
        if missed not in MISSED_POLICIES:
            raise ArgumentError(f"missed-fire policy {missed!r}: use SKIP or CATCH_UP")
        if overlap not in OVERLAP_POLICIES:
            raise ArgumentError(f"overlap policy {overlap!r}: use SKIP, ALLOW or QUEUE")
        tpl = self.engine.template(template)  # TemplateError names the ones there are
        tpl.check_handlers()
        strings = arguments.string_args(args)
        list_map = arguments.list_args(lists)
        schedule = _schedule(
            kind,
            cron_rule,
            _naive(run_at),
            tz,
            _naive(window[0]),
            _naive(window[1]),
        )
        rule_text = rules.CronRule.parse(cron_rule).text if cron_rule is not None else None
        now = datetime.now(UTC)
        first = schedule.next_after(now)
        if kind != "MANUAL" and first is None:
            raise ArgumentError(
                f"this schedule never fires after now ({now:%Y-%m-%d %H:%M:%S} UTC): "
                "check the rule, the run time and the window"
            )
        # Stored, so that every worker process finds the template by name when it fires.
        self.engine.store.save_template(tpl)
        definition_id = self.store.insert(
            {
                "name": name,
                "template": tpl.name,
                "args": strings,
                "lists": list_map,
                "type": (TaskType.SYS_SCHEDULED if system else TaskType.SCHEDULED).value,
                "schedule_kind": kind,
                "cron": rule_text,
                "run_at": _naive(run_at),
                "time_zone": tz,
                "start_time": _naive(window[0]),
                "end_time": _naive(window[1]),
                "missed_policy": missed,
                "overlap_policy": overlap,
                "enabled": enabled,
                "creator": SYSTEM if system else arguments.creator(creator or _user()),
                "description": description,
                "next_fire_time": _naive(first),
            }
        )
        return self.get(definition_id)

    def get(self, key: int | str) -> Definition:
        """A definition by id or name (:class:`DefinitionNotFoundError` if none)."""
        return _definition(self.store.get(key))

    def list(self) -> builtins.list[Definition]:
        """Every definition, by id."""
        return [_definition(r) for r in self.store.rows()]

    def enable(self, key: int | str) -> Definition:
        """Enable a definition; its next fire time is computed from now."""
        found = self.get(key)
        first = found.schedule().next_after(datetime.now(UTC))
        self.store.update(found.id, enabled=True, next_fire_time=_naive(first))
        return self.get(found.id)

    def disable(self, key: int | str) -> Definition:
        """Disable a definition: it fires no more until enabled (run-now still works)."""
        found = self.get(key)
        self.store.update(found.id, enabled=False)
        return self.get(found.id)

    def delete(self, key: int | str) -> None:
        """Delete a definition and its fire records (the tasks it created stay)."""
        self.store.delete(self.get(key).id)

    def set_args(
        self,
        key: int | str,
        args: Mapping[str, str] | None = None,
        lists: Mapping[str, Sequence[str]] | None = None,
    ) -> Definition:
        """Change (merge into) the arguments a definition's next tasks get."""
        found = self.get(key)
        strings = {**found.args, **arguments.string_args(args)}
        list_map = {**found.lists, **arguments.list_args(lists)}
        self.store.update(found.id, args=strings, lists=list_map)
        return self.get(found.id)

    def ensure_builtin(self) -> None:
        """Create the built-in SYS_SCHEDULED definitions this database lacks (the daily purge,
        :mod:`dagtask.builtin.maintenance`); a deleted one comes back, a disabled one stays so."""
        from dagtask.builtin import maintenance

        if any(d.name == maintenance.PURGE_DEFINITION for d in self.list()):
            return
        # Another process may create it at the same moment: then its name is taken.
        with contextlib.suppress(ArgumentError):
            self.add(
                maintenance.PURGE_DEFINITION,
                maintenance.PURGE_FINISHED_TASKS,
                cron_rule=maintenance.PURGE_RULE,
                args={
                    "older_than": maintenance.DEFAULT_AGE,
                    "workers_older_than": maintenance.DEFAULT_WORKER_AGE,
                },
                system=True,
                description="Purge the tasks that finished more than stringMap.older_than ago",
            )

    def fires(self, key: int | str, limit: int = 50) -> builtins.list[Fire]:
        """A definition's newest fires, newest first."""
        return [_fire(f) for f in self.store.fires(self.get(key).id, limit)]

    def run_now(self, key: int | str, *, creator: str | None = None) -> int:
        """Fire a definition now, whatever its schedule (also when disabled); the task's id."""
        found = self.get(key)
        fire_time = utcnow()
        fire = self.store.claim(
            found.id,
            fire_time,
            f"run-now by {creator or _user()}",
            outcome="CLAIMED",
            current_next=found.next_fire_time,
            new_next=found.next_fire_time,
        )
        if fire is None:  # the same microsecond as a scheduled fire: that one is the task
            raise ArgumentError("a fire of this definition is starting right now; try again")
        task_id = self._create(found, fire, creator=creator)
        if task_id is None:
            why = self.fires(found.id, 1)[0].message
            raise ArgumentError(f"run-now of {found.name!r} failed: {why}")
        return task_id

    # ---- the scheduler's pass ------------------------------------------------------------------

    def tick(self, executor: str, now: datetime | None = None) -> builtins.list[Fire]:
        """Fire what is due at ``now`` (naive UTC, default the clock): one pass of a scheduler.
        Returns the fires this pass recorded."""
        now = now or utcnow()
        done: builtins.list[Fire] = []
        for stale in self.store.stale_claims(now):
            taken = self.store.take_over(stale, executor)
            if taken is not None:
                _log.warning(
                    "scheduler %s took over the fire of %s of definition %d from %s",
                    executor,
                    stale.fire_time,
                    stale.definition_id,
                    stale.executor,
                )
                found = self._maybe(stale.definition_id)
                if found is not None:
                    self._create(found, taken)
                    done.append(_fire(taken))
        for row in self.store.due(now):
            found = _definition(row)
            try:
                done += self._fire_due(found, now, executor)
            except DagtaskError as exc:  # a definition gone bad must not stop the others
                _log.warning("definition %d (%s): %s", found.id, found.name, exc)
        return done

    def _maybe(self, definition_id: int) -> Definition | None:
        try:
            return self.get(definition_id)
        except DefinitionNotFoundError:
            return None

    def _fire_due(self, found: Definition, now: datetime, executor: str) -> builtins.list[Fire]:
        schedule = found.schedule()
        current = found.next_fire_time
        assert current is not None
        after_now = _naive(schedule.next_after(aware(now)))
        latest, missed = _latest_tick(schedule, current, now)
        if found.overlap_policy != "ALLOW" and self.store.running(found.id) is not None:
            if found.overlap_policy == "QUEUE":
                return []  # held: fired at the first pass after the previous task ends
            fire = self.store.claim(
                found.id,
                latest,
                executor,
                outcome="SKIPPED",
                current_next=current,
                new_next=after_now,
                message="the previous task of this definition is still RUNNING",
            )
            return [_fire(fire)] if fire is not None else []
        late = now - latest
        if found.overlap_policy != "QUEUE" and found.missed_policy == "SKIP" and late > GRACE:
            fire = self.store.claim(
                found.id,
                latest,
                executor,
                outcome="MISSED",
                current_next=current,
                new_next=after_now,
                message=f"{missed} missed (the last {late.total_seconds():.0f} s ago); "
                "the SKIP policy does not fire them",
            )
            return [_fire(fire)] if fire is not None else []
        fire = self.store.claim(
            found.id,
            latest,
            executor,
            outcome="CLAIMED",
            current_next=current,
            new_next=after_now,
            message=f"{missed} in one (CATCH_UP)" if missed != "1 tick" else None,
        )
        if fire is None:
            return []
        self._create(found, fire)
        return [_fire(fire)]

    def _create(self, found: Definition, fire: FireRow, creator: str | None = None) -> int | None:
        """The task of a claimed fire, created with the claim turned FIRED in one transaction;
        None if it could not be (the fire says why)."""
        store = self.store
        system = found.type is TaskType.SYS_SCHEDULED
        try:
            task_id, wake = self.engine._store_task(
                found.template,
                found.args,
                found.lists,
                creator or (SYSTEM if system else found.creator),
                definition_id=found.id,
                task_type=found.type,
                in_transaction=lambda conn, task_id: store.fired_in(conn, fire, task_id),
            )
        except FireTaken:
            return None
        except DagtaskError as exc:
            store.failed(fire, str(exc))
            _log.warning("definition %d (%s) could not fire: %s", found.id, found.name, exc)
            return None
        wake()
        _log.info("definition %d (%s) fired task %d", found.id, found.name, task_id)
        return task_id


WALK_LIMIT = 10_000
"""Ticks counted one by one after a downtime; beyond that the last one is searched for."""
SPANS = (timedelta(minutes=10), timedelta(hours=6), timedelta(days=2), timedelta(days=40))


def _latest_tick(
    schedule: rules.Schedule, current: datetime, now: datetime
) -> tuple[datetime, str]:
    """The last tick at or before ``now`` (naive UTC) from ``current`` (the stored next fire
    time, itself due) on, and how many ticks that covers, in words. A long downtime of a
    frequent rule is not walked tick by tick past :data:`WALK_LIMIT`: the last tick is then
    looked for over widening spans back from ``now``."""
    latest, count, probe = current, 1, aware(current)
    limit = aware(now)
    while count <= WALK_LIMIT:
        following = schedule.next_after(probe)
        if following is None or following > limit:
            return latest, f"{count} tick" + ("" if count == 1 else "s")
        latest, count, probe = _naive(following) or latest, count + 1, following
    for span in SPANS:
        probe = limit - span
        found = None
        while True:
            following = schedule.next_after(probe)
            if following is None or following > limit:
                break
            found, probe = following, following
        if found is not None:
            return _naive(found) or latest, f"more than {WALK_LIMIT} ticks"
    return latest, f"more than {WALK_LIMIT} ticks"


def _when(value: datetime | str | None, zone: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        return rules.parse_when(value, zone)
    if value.tzinfo is None:
        return value.replace(tzinfo=zone).astimezone(UTC)
    return value.astimezone(UTC)


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
