"""Schedule rules for task definitions: Quartz-style cron as OCP writes it, one-off and manual.

Everything here is a pure function of the datetimes passed in: no clock, no I/O, no threads.

**Fields.** Six fields, as OCP and Quartz write them: ``second minute hour day-of-month month
day-of-week``, e.g. ``0 0/2 * * * ?`` (every two minutes, at second 0). Five fields are the
classic ``minute hour day-of-month month day-of-week`` and fire at second 0; ``@yearly``,
``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight`` and ``@hourly`` stand for
five-field rules. A field is ``*``, a value, a range ``a-b``, a step ``*/n``, ``a/n`` (from a to
the end of the field's range) or ``a-b/n``, or a comma list of these. Months may be written
JAN-DEC and days of week SUN-SAT, in any case. ``?`` (day fields only) means the same as ``*``;
``L`` in day of month is the month's last day. Refused, with a message saying so: Quartz's
seventh (year) field, ``W``, ``LW``, ``L-n``, ``#`` and ``L`` in day of week.

**Day-of-week numbers** follow the rule's form: a six-field (Quartz) rule numbers them 1-7 with
1=SUN ... 7=SAT; a five-field (classic) rule 0-7 with both 0 and 7 SUN. Names mean the same in
both. :attr:`CronRule.weekdays` holds 0=SUN ... 6=SAT whichever form the rule was written in.

**Day of month and day of week.** When only one of the two is restricted, it alone picks the
days. When both are, a day matches when either matches, as in Vixie cron (Quartz refuses such
rules). A field is restricted unless it is exactly ``*`` or ``?``, so ``*/2`` is restricted.

**Time zones and daylight saving.** A rule is matched against the wall clock of its zone, and
each matching wall time fires once, at the first instant at which that clock reads that time or
later. Hence a wall time that occurs twice (clocks going back) fires at its first occurrence and
the repeated hour fires nothing; wall times skipped by clocks going forward fire once, together,
at the instant of the change (03:00 after a 02:00-03:00 gap; Vixie cron, too, runs the jobs it
skipped right after the change). An every-15-minutes rule in Europe/Berlin so fires 92 times on
the 23-hour spring day and 96 on the 25-hour autumn day. Fire times are aware UTC datetimes.
:meth:`CronRule.next_after` looks nine years ahead, long enough for 29 February across 2100, so
``None`` means the rule names only days no month has (30 February).

**Windows.** A CRON :class:`Schedule` fires first at or after ``start`` and never after ``end``.

**Missed fires.** :func:`due` answers what a scheduler should fire now for the fire times in
``(since, now]``: under ``SKIP`` the latest of them if it is at most ``grace`` old, else nothing;
under ``CATCH_UP`` the latest of them whatever its age (one task for the whole gap). Either
way at most one fire time per call; overlap with a still-running task is the scheduler's affair.
"""

from __future__ import annotations

import calendar
import dataclasses
import math
from bisect import bisect_left
from dataclasses import dataclass
from datetime import MAXYEAR, UTC, datetime, timedelta
from functools import cached_property
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dagtask import errors

Kind = Literal["CRON", "ONCE", "MANUAL"]
Policy = Literal["SKIP", "CATCH_UP"]

_SECOND, _MINUTE, _HOUR, _DAY = (timedelta(seconds=n) for n in (1, 60, 3600, 86400))
_HORIZON_YEARS = 9  # the longest gap between two 29 Februaries is 8 years (2096 -> 2104)
_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FORMS = (
    "write 6 fields (second minute hour day-of-month month day-of-week, e.g. '0 0/2 * * * ?') "
    "or 5 (minute hour day-of-month month day-of-week, e.g. '*/5 * * * *')"
)


class CronError(errors.ArgumentError):
    """A cron rule, time zone, date or schedule is malformed; the message says what to write."""


@dataclass(frozen=True)
class _Field:
    name: str
    lo: int
    hi: int
    usage: str
    names: tuple[str, ...] = ()
    first_name: int = 0  # the number of names[0]


_SIX = (
    _Field("second", 0, 59, "use 0-59 or '*'"),
    _Field("minute", 0, 59, "use 0-59 or '*'"),
    _Field("hour", 0, 23, "use 0-23 or '*'"),
    _Field("day of month", 1, 31, "use 1-31, L, '*' or '?'"),
    _Field("month", 1, 12, "use 1-12, JAN-DEC or '*'", _MONTH_NAMES, 1),
    _Field("day of week", 1, 7, "use 1-7 (1=SUN), SUN-SAT, '*' or '?'", _DAY_NAMES, 1),
)
_DOW5 = _Field("day of week", 0, 7, "use 0-7 (0 and 7 are SUN), SUN-SAT, '*' or '?'", _DAY_NAMES)


def _parse_field(rule: str, pos: int, raw: str, f: _Field) -> tuple[set[int], bool]:
    """The values of one field, and whether it holds ``L`` (the last day of the month)."""

    def fail(part: str, problem: str) -> CronError:
        return CronError(f"cron rule '{rule}': field {pos} ({f.name}) '{part}' {problem}")

    def value(token: str, item: str) -> int:
        if token.isdigit() and token.isascii():
            if not f.lo <= int(token) <= f.hi:
                raise fail(token, f"is out of range: {f.usage}")
            return int(token)
        if token.upper() in f.names:
            return f.names.index(token.upper()) + f.first_name
        raise fail(token or item, f"is not a {f.name}: {f.usage}")

    day_field = f.name.startswith("day")
    if raw == "?" and day_field:
        return set(range(f.lo, f.hi + 1)), False
    values: set[int] = set()
    last = False
    for item in raw.split(","):
        upper = item.upper()
        if "?" in item:
            if not day_field:
                raise fail(raw, "uses '?', which only day of month and day of week allow: use '*'")
            raise fail(raw, "uses '?' with something else: '?' must stand alone")
        if not item:
            raise fail(raw, "has an empty list item: remove the extra comma")
        if f.name == "day of month" and upper == "L":
            last = True
            continue
        if f.name == "day of month" and ("W" in upper or upper.startswith("L")):
            raise fail(item, "uses Quartz's W or L-n, which dagtask does not support: list days")
        if f.name == "day of week" and ("#" in item or upper.endswith("L")):
            raise fail(item, "uses Quartz's '#' or 'L', which dagtask does not support: list days")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isdigit() and step_text.isascii()):
                raise fail(item, f"has step '{step_text}', not a number: write */n with n >= 1")
            step = int(step_text)
            if step == 0:
                raise fail(item, "has step 0: use a step of 1 or more")
            if step > f.hi - f.lo:
                raise fail(item, f"has step {step}, too large for {f.lo}-{f.hi}: list the values")
        if base == "*":
            start, stop = f.lo, f.hi
        elif "-" in base:
            a_text, _, b_text = base.partition("-")
            start, stop = value(a_text, item), value(b_text, item)
            if start > stop:
                raise fail(
                    item,
                    "is a reversed range: write the smaller value first; for a range that wraps "
                    f"around, list two, e.g. {a_text}-{f.hi},{f.lo}-{b_text}",
                )
        else:
            start = value(base, item)
            stop = f.hi if slash else start
        values.update(range(start, stop + 1, step))
    return values, last


@dataclass(frozen=True)
class CronRule:
    """A parsed cron rule (see the module docstring); build one with :meth:`parse`."""

    text: str
    """The rule as given, with whitespace normalised."""
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0=SUN ... 6=SAT, whichever numbering the rule was written in."""
    any_day: bool
    """Day of month was ``*`` or ``?``."""
    any_weekday: bool
    """Day of week was ``*`` or ``?``."""
    last_day: bool = False
    """Day of month holds ``L``: the month's last day matches too."""

    @classmethod
    def parse(cls, text: str) -> CronRule:
        """Parse a 6-field (Quartz/OCP) or 5-field (classic) rule; :class:`CronError` if bad."""
        normal = " ".join(text.split())
        if normal.startswith("@"):
            if normal.lower() not in _MACROS:
                raise CronError(
                    f"cron rule '{text}' is not a known macro: use one of {', '.join(_MACROS)}, "
                    f"or {_FORMS}"
                )
            return dataclasses.replace(cls.parse(_MACROS[normal.lower()]), text=normal)
        fields = normal.split(" ") if normal else []
        if len(fields) == 7:
            raise CronError(
                f"cron rule '{text}' has 7 fields, the last a Quartz year, which dagtask does "
                "not support: drop it (the rule then repeats every year)"
            )
        if len(fields) not in (5, 6):
            raise CronError(f"cron rule '{text}' has {len(fields)} fields: {_FORMS}")
        specs = _SIX if len(fields) == 6 else (*_SIX[1:5], _DOW5)
        parsed = [
            _parse_field(text, pos, raw, spec)
            for pos, (raw, spec) in enumerate(zip(fields, specs, strict=True), start=1)
        ]
        if len(fields) == 5:
            parsed.insert(0, ({0}, False))
        shift = 1 if len(fields) == 6 else 0  # Quartz's 1=SUN against classic 0=SUN
        return cls(
            text=normal,
            seconds=frozenset(parsed[0][0]),
            minutes=frozenset(parsed[1][0]),
            hours=frozenset(parsed[2][0]),
            days=frozenset(parsed[3][0]),
            months=frozenset(parsed[4][0]),
            weekdays=frozenset((v - shift) % 7 for v in parsed[5][0]),
            any_day=fields[-3] in ("*", "?"),
            any_weekday=fields[-1] in ("*", "?"),
            last_day=parsed[3][1],
        )

    def __str__(self) -> str:
        return self.text

    @cached_property
    def _sorted(self) -> tuple[tuple[int, ...], ...]:
        fields = (self.months, self.hours, self.minutes, self.seconds)
        return tuple(tuple(sorted(values)) for values in fields)

    def _days_in(self, year: int, month: int) -> tuple[int, ...]:
        """The days of this month the rule fires on."""
        first, ndays = calendar.monthrange(year, month)  # first: 0=Monday
        found = []
        for day in range(1, ndays + 1):
            by_weekday = (first + day) % 7 in self.weekdays  # 0=SUN
            by_day = day in self.days or (self.last_day and day == ndays)
            # '*'/'?' in one day field leaves the other to decide; both restricted: either
            if by_weekday if self.any_day else by_day if self.any_weekday else by_day or by_weekday:
                found.append(day)
        return tuple(found)

    def _next_wall(self, t: datetime) -> datetime | None:
        """The first matching wall time at or after ``t`` (naive, whole seconds): each step
        moves the first field that does not match to its next value, the smaller ones to their
        first, so a search skips whole months, days and hours."""
        months, hours, minutes, seconds = self._sorted
        last_year = min(t.year + _HORIZON_YEARS, MAXYEAR - 1)
        while t.year <= last_year:
            if (mo := _at_least(months, t.month)) != t.month:
                t = datetime(t.year, mo, 1) if mo else datetime(t.year + 1, months[0], 1)
            elif (d := _at_least(self._days_in(t.year, t.month), t.day)) != t.day:
                t = datetime(t.year, t.month, d) if d else _next_month(t)
            elif (h := _at_least(hours, t.hour)) != t.hour:  # None: carry into the next day
                t = t.replace(hour=h or 0, minute=0, second=0) + _DAY * (h is None)
            elif (mi := _at_least(minutes, t.minute)) != t.minute:
                t = t.replace(minute=mi or 0, second=0) + _HOUR * (mi is None)
            elif (sec := _at_least(seconds, t.second)) != t.second:
                t = t.replace(second=sec or 0) + _MINUTE * (sec is None)
            else:
                return t
        return None

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime | None:
        """The first fire time strictly after ``after`` (aware, any zone) for the wall clock of
        ``tz``, as an aware UTC datetime; None if the rule never fires."""
        _require_aware(after, "after")
        wall = self._next_wall(_search_start(after.astimezone(UTC), tz))
        return None if wall is None else _instant(wall, tz)

    def fire_times(
        self, after: datetime, until: datetime, tz: ZoneInfo, limit: int = 1000
    ) -> list[datetime]:
        """Every fire time in ``(after, until]``, the first ``limit`` of them at most."""
        found: list[datetime] = []
        t = self.next_after(after, tz)
        while t is not None and t <= until and len(found) < limit:
            found.append(t)
            t = self.next_after(t, tz)
        return found

    def describe(self) -> str:
        """A short English description for the simple rules, else the rule's text."""
        if not (self.any_day and self.any_weekday and len(self.months) == 12) or self.last_day:
            return self.text
        every_sec = _step(self.seconds, 59)
        every_min = _step(self.minutes, 59)
        every_hour = _step(self.hours, 23)
        if every_sec is not None:
            if every_min == every_hour == 1:
                return f"every {every_sec} seconds" if every_sec > 1 else "every second"
            return self.text
        if self.seconds != {0}:
            return self.text
        if every_min is not None and every_hour == 1:
            return "every minute" if every_min == 1 else f"every {every_min} minutes"
        if len(self.minutes) == 1 and every_hour is not None:
            (minute,) = self.minutes
            unit = f"{every_hour} hours" if every_hour > 1 else "hour"
            return f"every {unit} at minute {minute}"
        if len(self.minutes) == 1 and len(self.hours) == 1:
            (minute,), (hour,) = self.minutes, self.hours
            return f"every day at {hour:02d}:{minute:02d}"
        return self.text


def _at_least(values: tuple[int, ...], v: int) -> int | None:
    i = bisect_left(values, v)
    return values[i] if i < len(values) else None


def _next_month(t: datetime) -> datetime:
    return datetime(t.year + t.month // 12, t.month % 12 + 1, 1)


def _step(values: frozenset[int], hi: int) -> int | None:
    """n when ``values`` is exactly 0, n, 2n ... up to ``hi`` and n divides hi + 1, else None."""
    for n in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30):
        if (hi + 1) % n == 0 and values == frozenset(range(0, hi + 1, n)):
            return n
    return None


def _offset(value: datetime) -> timedelta:
    offset = value.utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return offset


def _change(before: datetime, at: datetime, tz: ZoneInfo) -> datetime:
    """The first whole second in ``(before, at]`` with ``at``'s UTC offset in ``tz``, in UTC:
    the instant of the one offset change between two instants of different offsets."""
    target = _offset(at.astimezone(tz))
    lo, hi = math.floor(before.timestamp()), math.ceil(at.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(datetime.fromtimestamp(mid, tz)) == target:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The first instant at which the clock in ``tz`` reads ``wall`` (naive) or later, in UTC."""
    early, late = wall.replace(tzinfo=tz, fold=0), wall.replace(tzinfo=tz, fold=1)
    if _offset(early) >= _offset(late):  # an ordinary wall time, or a repeated one: the first
        return early.astimezone(UTC)
    # skipped when the clocks went forward: fold=1 reads it with the new offset, an instant
    # before the change, and fold=0 with the old one, an instant after it
    return _change(late.astimezone(UTC), early.astimezone(UTC), tz)


def _search_start(after: datetime, tz: ZoneInfo) -> datetime:
    """The earliest whole-second wall time in ``tz`` whose fire instant comes after ``after``
    (aware UTC): the next second, or, in the second pass of a repeated hour, the hour's end."""
    local = after.astimezone(tz)
    if local.fold == 0:
        return local.replace(tzinfo=None, microsecond=0) + _SECOND
    old = _offset(local.replace(fold=0))
    change = _change(after - (old - _offset(local)), after, tz)
    return (change + old).replace(tzinfo=None)


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise CronError(f"{what} {value} has no time zone: pass an aware datetime (tzinfo=UTC)")


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; :class:`CronError` if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise CronError(
            f"time zone '{name}' is unknown; use an IANA name such as Asia/Shanghai or UTC"
        ) from exc


def parse_when(text: str, tz: ZoneInfo) -> datetime:
    """``2026-12-24 08:00`` or ISO 8601 with or without an offset, as an aware UTC datetime;
    without an offset it is wall time in ``tz`` (a skipped time means the end of the gap)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise CronError(
            f"'{text}' is not a date and time: write 2026-12-24 08:00 (wall time in {tz.key}) or "
            "ISO 8601 with an offset, e.g. 2026-12-24T08:00:00+08:00"
        ) from exc
    return _instant(value, tz) if value.tzinfo is None else value.astimezone(UTC)


def _utc(value: datetime | str | None, tz: ZoneInfo) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_when(value, tz)
    return value.astimezone(UTC) if value.tzinfo is not None else _instant(value, tz)


def _tz(tz: str | ZoneInfo) -> ZoneInfo:
    return tz if isinstance(tz, ZoneInfo) else zone(tz)


@dataclass(frozen=True)
class Schedule:
    """When a task definition fires: on a cron rule, once, or only when asked (MANUAL)."""

    kind: Kind
    rule: CronRule | None
    run_at: datetime | None
    """ONCE: the instant, aware UTC."""
    tz: ZoneInfo
    start: datetime | None = None
    """CRON: no fire before this instant (aware UTC)."""
    end: datetime | None = None
    """CRON: no fire after this instant (aware UTC)."""

    def __post_init__(self) -> None:
        if (self.kind == "CRON") != (self.rule is not None):
            raise CronError(
                "only a CRON schedule has a rule, and it needs one: use Schedule.cron(...)"
            )
        if (self.kind == "ONCE") != (self.run_at is not None):
            raise CronError(
                "only a ONCE schedule has run_at, and it needs one: use Schedule.once(...)"
            )
        if self.kind != "CRON" and (self.start or self.end):
            raise CronError(f"a {self.kind} schedule has no window: drop start and end")
        for name in ("run_at", "start", "end"):
            value = getattr(self, name)
            if value is not None:
                _require_aware(value, name)
                object.__setattr__(self, name, value.astimezone(UTC))
        if self.start and self.end and self.start > self.end:
            raise CronError(
                f"the window starts ({self.start}) after it ends ({self.end}): swap them"
            )

    @classmethod
    def cron(
        cls,
        text: str,
        tz: str | ZoneInfo = "UTC",
        start: datetime | str | None = None,
        end: datetime | str | None = None,
    ) -> Schedule:
        """Fire on the cron rule ``text`` in zone ``tz``, within the optional window (a naive
        datetime or a text without an offset is wall time in ``tz``)."""
        zi = _tz(tz)
        return cls("CRON", CronRule.parse(text), None, zi, _utc(start, zi), _utc(end, zi))

    @classmethod
    def once(cls, when: datetime | str, tz: str | ZoneInfo = "UTC") -> Schedule:
        """Fire once, at ``when`` (naive or without an offset: wall time in ``tz``)."""
        zi = _tz(tz)
        return cls("ONCE", None, _utc(when, zi), zi)

    @classmethod
    def manual(cls) -> Schedule:
        """Never fire by itself; a run is only ever asked for."""
        return cls("MANUAL", None, None, ZoneInfo("UTC"))

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (aware), as aware UTC; None if none."""
        _require_aware(after, "after")
        if self.run_at is not None:
            return self.run_at if self.run_at > after else None
        if self.rule is None:
            return None
        if self.start is not None and after < self.start:
            after = self.start - timedelta(microseconds=1)
        t = self.rule.next_after(after, self.tz)
        return None if t is None or (self.end is not None and t > self.end) else t


def _last_fire(schedule: Schedule, since: datetime, now: datetime) -> datetime | None:
    """The latest fire time in ``(since, now]``, found by bisection rather than by walking a
    long gap fire by fire."""
    lo = schedule.next_after(since)
    if lo is None or lo > now:
        return None
    hi = now  # invariant: lo is a fire time, and none is in (hi, now]
    while hi - lo >= _SECOND:  # fire times of a rule are whole seconds apart
        mid = lo + (hi - lo) / 2
        probe = schedule.next_after(mid)
        if probe is not None and probe <= hi:
            lo = probe
        else:
            hi = mid
    return lo


def due(
    schedule: Schedule,
    since: datetime,
    now: datetime,
    *,
    policy: Policy,
    grace: timedelta = timedelta(seconds=5),
) -> tuple[list[datetime], datetime | None]:
    """What to fire at ``now`` and when to look again: ``(fire times, next fire after now)``.

    ``since`` is the instant up to which the fire times are handled: the last handled fire
    time, or the definition's creation if it has never fired; the fire times in ``(since,
    now]`` are the due ones. ``SKIP`` returns the latest due one if it is at most ``grace``
    old and drops the rest; ``CATCH_UP`` returns the latest due one whatever its age, one task
    for the whole gap. After the call every fire time up to ``now`` is handled: pass ``now`` as
    the next call's ``since``.
    """
    for what, value in (("since", since), ("now", now)):
        _require_aware(value, what)
    if policy not in ("SKIP", "CATCH_UP"):
        raise CronError(f"missed-fire policy '{policy}' is unknown: use SKIP or CATCH_UP")
    if grace < timedelta(0):
        raise CronError(f"grace {grace} is negative: use timedelta(0) or more")
    now = now.astimezone(UTC)
    latest = _last_fire(schedule, since, now)
    if latest is not None and policy == "SKIP" and now - latest > grace:
        latest = None
    return ([] if latest is None else [latest]), schedule.next_after(now)
