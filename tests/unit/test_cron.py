"""Cron rules, schedules and ``due``: parsing, fire times across daylight saving, windows, policies.

Time is whatever datetime a test passes in: no clock is read and nothing sleeps.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagtask import cron, errors
from dagtask.cron import CronError, CronRule, Schedule

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
ZULU = ZoneInfo("UTC")
MICRO = timedelta(microseconds=1)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
QUARTER = timedelta(minutes=15)
HOUR = timedelta(hours=1)


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
    micro: int = 0, *, tz: ZoneInfo | None = None,
) -> datetime:  # fmt: skip
    """An aware datetime: UTC unless ``tz`` is given (then the wall time's first occurrence)."""
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz or UTC)


def fires(text: str, after: datetime, until: datetime, tz: ZoneInfo = ZULU) -> list[datetime]:
    return CronRule.parse(text).fire_times(after, until, tz)


def day_fires(text: str, day: datetime, tz: ZoneInfo) -> list[datetime]:
    """The fire times within the local day that begins at ``day`` (local midnight)."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    end = start.replace(tzinfo=None) + timedelta(days=1)
    return fires(text, start - MICRO, end.replace(tzinfo=tz) - MICRO, tz)


def quarter_hours(start: datetime, end: datetime) -> list[datetime]:
    """Every quarter hour of real time in ``[start, end)``."""
    return [start + QUARTER * k for k in range((end - start) // QUARTER)]


# ---- parsing -------------------------------------------------------------------------------------


def test_ocp_rule_fires_every_two_minutes_at_second_zero() -> None:
    rule = CronRule.parse("0 0/2 * * * ?")
    assert rule.seconds == {0}
    assert rule.minutes == set(range(0, 60, 2))
    assert rule.hours == set(range(24)) and rule.any_day and rule.any_weekday
    assert rule.describe() == "every 2 minutes"
    assert fires("0 0/2 * * * ?", at(2026, 1, 1, 10, 0, 0), at(2026, 1, 1, 10, 6)) == [
        at(2026, 1, 1, 10, 2),
        at(2026, 1, 1, 10, 4),
        at(2026, 1, 1, 10, 6),
    ]


def test_five_fields_are_minute_to_weekday_and_fire_at_second_zero() -> None:
    rule = CronRule.parse("*/5 * * * *")
    assert rule.seconds == {0} and rule.minutes == set(range(0, 60, 5))
    assert rule.next_after(at(2026, 1, 1, 10, 7, 30), ZULU) == at(2026, 1, 1, 10, 10)
    assert rule.describe() == "every 5 minutes"


def test_text_keeps_the_rule_with_whitespace_normalised() -> None:
    assert CronRule.parse("  0  0/2 *\t* *   ? ").text == "0 0/2 * * * ?"


def test_names_in_any_case_lists_and_ranges_with_steps() -> None:
    rule = CronRule.parse("0 5,10-20/5,50-59/3,7/20 12 ? jan,Jul,DEC MON-fri")
    assert rule.minutes == {5, 7, 10, 15, 20, 27, 47, 50, 53, 56, 59}
    assert rule.months == {1, 7, 12}
    assert rule.weekdays == {1, 2, 3, 4, 5}
    assert CronRule.parse("0 0 0 ? FEB-APR/2 *").months == {2, 4}


def test_question_mark_means_the_same_as_star() -> None:
    a, b = CronRule.parse("0 0 0 ? * *"), CronRule.parse("0 0 0 * * ?")
    assert (a.days, a.weekdays, a.any_day, a.any_weekday) == (
        b.days,
        b.weekdays,
        b.any_day,
        b.any_weekday,
    )


@pytest.mark.parametrize(
    ("text", "weekdays"),
    [
        ("0 0 9 ? * 1", {0}),  # Quartz: 1 = SUN
        ("0 0 9 ? * 2", {1}),  # Quartz: 2 = MON
        ("0 0 9 ? * 7", {6}),  # Quartz: 7 = SAT
        ("0 0 9 ? * 2-6", {1, 2, 3, 4, 5}),
        ("0 9 * * 0", {0}),  # classic: 0 = SUN
        ("0 9 * * 7", {0}),  # classic: 7 = SUN too
        ("0 9 * * 1", {1}),  # classic: 1 = MON
        ("0 9 * * 1-5", {1, 2, 3, 4, 5}),
        ("0 0 9 ? * SUN", {0}),
        ("0 9 * * SUN", {0}),
        ("0 9 * * sat", {6}),
    ],
)
def test_six_fields_number_weekdays_as_quartz_five_as_classic_cron(
    text: str, weekdays: set[int]
) -> None:
    assert CronRule.parse(text).weekdays == weekdays


def test_quartz_two_is_monday() -> None:
    # 2026-01-01 is a Thursday, so the first Monday after it is the 5th
    assert CronRule.parse("0 0 9 ? * 2").next_after(at(2026, 1, 1), ZULU) == at(2026, 1, 5, 9)
    assert CronRule.parse("0 9 * * 2").next_after(at(2026, 1, 1), ZULU) == at(2026, 1, 6, 9)


def test_day_of_month_and_day_of_week_both_restricted_match_either() -> None:
    # April 2026: the 1st is a Wednesday, so the Fridays are 3, 10, 17, 24; the 13th a Monday
    got = fires("0 0 0 13 * FRI", at(2026, 4, 1), at(2026, 4, 30))
    assert [t.day for t in got] == [3, 10, 13, 17, 24]
    # one restricted: it alone picks the days
    assert [t.day for t in fires("0 0 0 13 * ?", at(2026, 4, 1), at(2026, 4, 30))] == [13]
    assert [t.day for t in fires("0 0 0 ? * FRI", at(2026, 4, 1), at(2026, 4, 30))] == [
        3,
        10,
        17,
        24,
    ]


def test_l_is_the_last_day_of_the_month() -> None:
    got = fires("0 0 0 L * ?", at(2027, 12, 31), at(2028, 5, 1))
    assert got == [at(2028, 1, 31), at(2028, 2, 29), at(2028, 3, 31), at(2028, 4, 30)]
    assert [t.day for t in fires("0 0 0 1,L 2 ?", at(2026, 1, 1), at(2026, 3, 1))] == [1, 28]


def test_macros_stand_for_five_field_rules() -> None:
    daily, plain = CronRule.parse("@daily"), CronRule.parse("0 0 * * *")
    assert daily.text == "@daily"
    assert (daily.seconds, daily.minutes, daily.hours, daily.weekdays) == (
        plain.seconds,
        plain.minutes,
        plain.hours,
        plain.weekdays,
    )
    assert CronRule.parse("@hourly").describe() == "every hour at minute 0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "0 0/2 * * *  x",
            "cron rule '0 0/2 * * *  x': field 6 (day of week) 'x' is not a day of week: "
            "use 1-7 (1=SUN), SUN-SAT, '*' or '?'",
        ),
        (
            "0 0 9 ? * 0",
            "cron rule '0 0 9 ? * 0': field 6 (day of week) '0' is out of range: "
            "use 1-7 (1=SUN), SUN-SAT, '*' or '?'",
        ),
        (
            "0 9 * * 8",
            "cron rule '0 9 * * 8': field 5 (day of week) '8' is out of range: "
            "use 0-7 (0 and 7 are SUN), SUN-SAT, '*' or '?'",
        ),
        (
            "* * *",
            "cron rule '* * *' has 3 fields: write 6 fields (second minute hour day-of-month "
            "month day-of-week, e.g. '0 0/2 * * * ?') or 5 (minute hour day-of-month month "
            "day-of-week, e.g. '*/5 * * * *')",
        ),
        ("", "cron rule '' has 0 fields: write 6 fields"),
        (
            "0 0 12 * * ? 2026",
            "cron rule '0 0 12 * * ? 2026' has 7 fields, the last a Quartz year, which dagtask "
            "does not support: drop it (the rule then repeats every year)",
        ),
        ("0 75 * * * ?", "field 2 (minute) '75' is out of range: use 0-59 or '*'"),
        ("0 0 24 * * ?", "field 3 (hour) '24' is out of range: use 0-23 or '*'"),
        ("0 0 0 0 * ?", "field 4 (day of month) '0' is out of range: use 1-31, L, '*' or '?'"),
        ("0 0 0 1 13 ?", "field 5 (month) '13' is out of range: use 1-12, JAN-DEC or '*'"),
        ("0 0 0 1 JANUARY ?", "field 5 (month) 'JANUARY' is not a month"),
        ("*/0 * * * * ?", "field 1 (second) '*/0' has step 0: use a step of 1 or more"),
        ("0 */x * * * ?", "field 2 (minute) '*/x' has step 'x', not a number"),
        ("0 */60 * * * ?", "'*/60' has step 60, too large for 0-59: list the values"),
        (
            "0 0 22-2 * * ?",
            "field 3 (hour) '22-2' is a reversed range: write the smaller value first; for a "
            "range that wraps around, list two, e.g. 22-23,0-2",
        ),
        ("0 1,,2 * * * ?", "field 2 (minute) '1,,2' has an empty list item"),
        ("0 1, * * * ?", "has an empty list item: remove the extra comma"),
        ("? * * * * ?", "field 1 (second) '?' uses '?', which only day of month and day of week"),
        ("0 0 0 ?,1 * ?", "'?' must stand alone"),
        ("0 0 0 15W * ?", "field 4 (day of month) '15W' uses Quartz's W or L-n"),
        ("0 0 0 L-3 * ?", "field 4 (day of month) 'L-3' uses Quartz's W or L-n"),
        ("0 0 0 ? * 6#3", "field 6 (day of week) '6#3' uses Quartz's '#' or 'L'"),
        ("0 0 0 ? * 6L", "field 6 (day of week) '6L' uses Quartz's '#' or 'L'"),
        ("0 0 0 ? * MON-", "field 6 (day of week) 'MON-' is not a day of week"),
        ("@often", "cron rule '@often' is not a known macro: use one of @yearly"),
    ],
)
def test_a_bad_rule_is_refused_with_one_line_saying_what_to_write(text: str, message: str) -> None:
    with pytest.raises(CronError) as caught:
        CronRule.parse(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, errors.ArgumentError)
    assert caught.value.code == 400


# ---- next_after ----------------------------------------------------------------------------------


def test_seconds_field_and_strictly_after() -> None:
    rule = CronRule.parse("15,45 * * * * ?")
    assert rule.next_after(at(2026, 1, 1, 10, 0, 14, 999999), ZULU) == at(2026, 1, 1, 10, 0, 15)
    assert rule.next_after(at(2026, 1, 1, 10, 0, 15), ZULU) == at(2026, 1, 1, 10, 0, 45)
    assert rule.next_after(at(2026, 1, 1, 10, 0, 45), ZULU) == at(2026, 1, 1, 10, 1, 15)
    assert rule.next_after(at(2026, 12, 31, 23, 59, 45), ZULU) == at(2027, 1, 1, 0, 0, 15)


def test_after_may_be_in_any_zone_and_the_answer_is_utc() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    got = CronRule.parse("0 0 9 * * ?").next_after(at(2026, 6, 1, 8, 0, tz=shanghai), shanghai)
    assert got == at(2026, 6, 1, 1) and got is not None and got.tzinfo is UTC


def test_a_day_some_months_lack_skips_those_months() -> None:
    got = fires("0 0 0 31 * ?", at(2026, 1, 31), at(2026, 9, 1))
    assert [t.month for t in got] == [3, 5, 7, 8]


def test_29_february_finds_the_next_leap_year() -> None:
    rule = CronRule.parse("0 0 0 29 2 ?")
    assert rule.next_after(at(2026, 1, 1), ZULU) == at(2028, 2, 29)
    assert rule.next_after(at(2028, 2, 29), ZULU) == at(2032, 2, 29)
    # 2100 is not a leap year (divisible by 100, not by 400): eight years from 2096 to 2104
    assert rule.next_after(at(2096, 3, 1), ZULU) == at(2104, 2, 29)


@pytest.fixture
def months_looked_at(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (year, month) of every month the search examines."""
    looked: list[tuple[int, int]] = []
    real = calendar.monthrange

    def counting(year: int, month: int) -> tuple[int, int]:
        looked.append((year, month))
        return real(year, month)

    monkeypatch.setattr(calendar, "monthrange", counting)
    return looked


@pytest.mark.parametrize("text", ["0 0 0 30 2 ?", "0 0 0 31 4,6,9,11 ?", "* * * 30,31 FEB ?"])
def test_a_rule_that_never_fires_gives_none_after_a_few_months_per_year(
    text: str, months_looked_at: list[tuple[int, int]]
) -> None:
    assert CronRule.parse(text).next_after(at(2026, 1, 1), BERLIN) is None
    # the search skips month by month, never second by second, over its ten years
    assert len(months_looked_at) <= 4 * 10


def test_next_29_february_costs_a_handful_of_months(
    months_looked_at: list[tuple[int, int]],
) -> None:
    assert CronRule.parse("0 0 0 29 2 ?").next_after(at(2097, 1, 1), ZULU) == at(2104, 2, 29)
    assert len(months_looked_at) <= 10


# ---- daylight saving -----------------------------------------------------------------------------
# The 2026 changes: the EU on the last Sundays of March and October at 01:00 UTC (Berlin
# 02:00 CET -> 03:00 CEST, 03:00 CEST -> 02:00 CET); the US on the second Sunday of March and
# the first of November at 02:00 local (New York 02:00 EST -> 03:00 EDT, 02:00 EDT -> 01:00 EST).


def test_a_wall_time_skipped_in_spring_fires_once_at_the_change() -> None:
    got = fires("0 30 2 * * ?", at(2026, 3, 28), at(2026, 3, 31), BERLIN)
    assert got == [
        at(2026, 3, 28, 1, 30),  # 02:30 CET
        at(2026, 3, 29, 1, 0),  # 02:30 does not exist: at the change, 03:00 CEST
        at(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    got = fires("0 30 2 * * ?", at(2026, 3, 7), at(2026, 3, 10), NEW_YORK)
    assert got == [at(2026, 3, 7, 7, 30), at(2026, 3, 8, 7, 0), at(2026, 3, 9, 6, 30)]


def test_a_wall_time_repeated_in_autumn_fires_once_at_its_first_occurrence() -> None:
    got = fires("0 30 2 * * ?", at(2026, 10, 24), at(2026, 10, 27), BERLIN)
    # 02:30 CEST (00:30Z), not again at 02:30 CET (01:30Z)
    assert got == [at(2026, 10, 24, 0, 30), at(2026, 10, 25, 0, 30), at(2026, 10, 26, 1, 30)]
    got = fires("0 30 1 * * ?", at(2026, 10, 31), at(2026, 11, 3), NEW_YORK)
    # 01:30 EDT (05:30Z), not again at 01:30 EST (06:30Z)
    assert got == [at(2026, 10, 31, 5, 30), at(2026, 11, 1, 5, 30), at(2026, 11, 2, 6, 30)]


def test_every_second_rule_does_not_repeat_the_repeated_hour() -> None:
    rule = CronRule.parse("* * * * * ?")
    # 02:59:59 CEST, then the clock reads 02:00:00 CET: its next new wall time is 03:00:00 CET
    assert rule.next_after(at(2026, 10, 25, 0, 59, 59), BERLIN) == at(2026, 10, 25, 2)
    assert rule.next_after(at(2026, 10, 25, 1, 30, 0, 500), BERLIN) == at(2026, 10, 25, 2)
    assert rule.next_after(at(2026, 10, 25, 2), BERLIN) == at(2026, 10, 25, 2, 0, 1)


def test_every_minute_rule_fires_once_at_the_spring_change() -> None:
    # 01:59 CET (00:59Z); the clock then jumps to 03:00 CEST (01:00Z): the 60 skipped wall
    # minutes and 03:00 itself fire once, at 01:00Z; every real minute has exactly one fire
    got = fires("0 * * * * ?", at(2026, 3, 29, 0, 0), at(2026, 3, 29, 2, 0), BERLIN)
    assert got == [at(2026, 3, 29, 0, 1) + MINUTE * k for k in range(120)]


@pytest.mark.parametrize(
    ("tz", "day", "start", "end", "silent"),
    [
        # the spring days: 23 hours long. Wall times 00:00-01:45 fire as usual; 02:00-02:45 do
        # not exist and fire, together with 03:00, at the change; 03:00-23:45 as usual: 8 + 84
        # = 92 fires, one on every quarter hour of real time (both zones' offsets are whole
        # hours, so quarter hours of wall time fall on quarter hours of UTC)
        (BERLIN, at(2026, 3, 29), at(2026, 3, 28, 23), at(2026, 3, 29, 22), None),
        (NEW_YORK, at(2026, 3, 8), at(2026, 3, 8, 5), at(2026, 3, 9, 4), None),
        # the autumn days: 25 hours long. All 96 wall times fire once; during the repeated
        # hour's second pass (Berlin 02:00-02:59 CET = 01:00Z-01:59Z, New York 01:00-01:59 EST
        # = 06:00Z-06:59Z) nothing fires: 100 real quarter hours less 4
        (BERLIN, at(2026, 10, 25), at(2026, 10, 24, 22), at(2026, 10, 25, 23), at(2026, 10, 25, 1)),
        (NEW_YORK, at(2026, 11, 1), at(2026, 11, 1, 4), at(2026, 11, 2, 5), at(2026, 11, 1, 6)),
    ],
)
def test_every_15_minutes_across_a_change_day(
    tz: ZoneInfo, day: datetime, start: datetime, end: datetime, silent: datetime | None
) -> None:
    expected = [
        t for t in quarter_hours(start, end) if silent is None or not silent <= t < silent + HOUR
    ]
    got = day_fires("0 */15 * * * ?", day, tz)
    assert got == expected
    assert len(got) == (92 if silent is None else 96)


# ---- zones and dates -----------------------------------------------------------------------------


def test_zone_names_an_iana_zone_or_says_what_to_write() -> None:
    assert cron.zone("Asia/Shanghai") == ZoneInfo("Asia/Shanghai")
    for bad in ("Mars/Base", "", "/etc/passwd", "Europe"):
        with pytest.raises(CronError) as caught:
            cron.zone(bad)
        assert str(caught.value) == (
            f"time zone '{bad}' is unknown; use an IANA name such as Asia/Shanghai or UTC"
        )


def test_parse_when_reads_local_or_offset_times() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    assert cron.parse_when("2026-12-24 08:00", shanghai) == at(2026, 12, 24, 0)
    assert cron.parse_when("2026-12-24T08:00:00+01:00", shanghai) == at(2026, 12, 24, 7)
    assert cron.parse_when("2026-12-24T08:00Z", shanghai) == at(2026, 12, 24, 8)
    assert cron.parse_when("2026-03-29 02:30", BERLIN) == at(2026, 3, 29, 1)  # skipped: the change
    assert cron.parse_when("2026-10-25 02:30", BERLIN) == at(2026, 10, 25, 0, 30)  # the first
    with pytest.raises(CronError, match="'tomorrow' is not a date and time: write 2026-12-24"):
        cron.parse_when("tomorrow", BERLIN)


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(CronError, match="has no time zone: pass an aware datetime"):
        CronRule.parse("* * * * * ?").next_after(datetime(2026, 1, 1), ZULU)


# ---- schedules -----------------------------------------------------------------------------------


def test_window_fires_first_at_or_after_start_and_never_after_end() -> None:
    s = Schedule.cron("0 0 * * * ?", start=at(2026, 1, 1, 10), end=at(2026, 1, 1, 12))
    assert s.next_after(at(2025, 6, 1)) == at(2026, 1, 1, 10)  # start itself fires
    assert s.next_after(at(2026, 1, 1, 10)) == at(2026, 1, 1, 11)
    assert s.next_after(at(2026, 1, 1, 11)) == at(2026, 1, 1, 12)  # end itself fires
    assert s.next_after(at(2026, 1, 1, 12)) is None
    s = Schedule.cron("0 0 * * * ?", start=at(2026, 1, 1, 10, 30))
    assert s.next_after(at(2026, 1, 1)) == at(2026, 1, 1, 11)


def test_window_as_text_is_wall_time_in_the_zone() -> None:
    s = Schedule.cron("0 0 8 * * ?", tz="Asia/Shanghai", start="2026-12-24 08:00")
    assert s.start == at(2026, 12, 24, 0)
    assert s.next_after(at(2026, 12, 1)) == at(2026, 12, 24, 0)


def test_window_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(CronError, match=r"after it ends \(.*\): swap them"):
        Schedule.cron("0 0 * * * ?", start=at(2026, 2, 1), end=at(2026, 1, 1))


def test_once_fires_at_its_time_and_never_again() -> None:
    s = Schedule.once("2026-12-24 08:00", tz="Asia/Shanghai")
    assert s.kind == "ONCE" and s.run_at == at(2026, 12, 24, 0)
    assert s.next_after(at(2026, 12, 23, 23, 59, 59)) == at(2026, 12, 24, 0)
    assert s.next_after(at(2026, 12, 24, 0)) is None


def test_manual_never_fires_by_itself() -> None:
    s = Schedule.manual()
    assert s.kind == "MANUAL" and s.next_after(at(2026, 1, 1)) is None


def test_a_schedule_that_contradicts_its_kind_is_refused() -> None:
    with pytest.raises(CronError, match=r"use Schedule\.cron"):
        Schedule("CRON", None, None, ZULU)
    with pytest.raises(CronError, match="has no window"):
        Schedule("ONCE", None, at(2026, 1, 1), ZULU, start=at(2025, 1, 1))


# ---- due -----------------------------------------------------------------------------------------

EVERY_MINUTE = Schedule.cron("0 * * * * ?")


def test_skip_after_an_hour_down_fires_only_a_tick_within_grace() -> None:
    # handled up to 10:00; down until 11:00:03: the ticks 10:01 ... 11:00 are due, and only
    # 11:00 is within 5 s of now
    assert cron.due(EVERY_MINUTE, at(2026, 1, 1, 10), at(2026, 1, 1, 11, 0, 3), policy="SKIP") == (
        [at(2026, 1, 1, 11)],
        at(2026, 1, 1, 11, 1),
    )
    # 30 s late: nothing
    assert cron.due(EVERY_MINUTE, at(2026, 1, 1, 10), at(2026, 1, 1, 11, 0, 30), policy="SKIP") == (
        [],
        at(2026, 1, 1, 11, 1),
    )
    # a wider grace takes it
    assert cron.due(
        EVERY_MINUTE,
        at(2026, 1, 1, 10),
        at(2026, 1, 1, 11, 0, 30),
        policy="SKIP",
        grace=timedelta(minutes=1),
    ) == ([at(2026, 1, 1, 11)], at(2026, 1, 1, 11, 1))


def test_catch_up_after_an_hour_down_fires_once_for_the_latest_tick() -> None:
    got = cron.due(EVERY_MINUTE, at(2026, 1, 1, 10), at(2026, 1, 1, 11, 0, 30), policy="CATCH_UP")
    assert got == ([at(2026, 1, 1, 11)], at(2026, 1, 1, 11, 1))


def test_due_with_nothing_new_fires_nothing() -> None:
    policies: tuple[cron.Policy, ...] = ("SKIP", "CATCH_UP")
    for policy in policies:
        now = at(2026, 1, 1, 10, 0, 30)
        assert cron.due(EVERY_MINUTE, at(2026, 1, 1, 10), now, policy=policy) == (
            [],
            at(2026, 1, 1, 10, 1),
        )


def test_catch_up_over_a_year_of_every_second_does_not_walk_the_gap() -> None:
    s = Schedule.cron("* * * * * ?")
    got = cron.due(s, at(2025, 1, 1), at(2026, 1, 1, 0, 0, 0, 700000), policy="CATCH_UP")
    assert got == ([at(2026, 1, 1)], at(2026, 1, 1, 0, 0, 1))


def test_due_respects_the_window_once_and_manual() -> None:
    ended = Schedule.cron("0 0 * * * ?", end=at(2026, 1, 1, 12, 30))
    assert cron.due(ended, at(2026, 1, 1), at(2026, 1, 2), policy="CATCH_UP") == (
        [at(2026, 1, 1, 12)],
        None,
    )
    once = Schedule.once(at(2026, 1, 1, 9, 30, 0, 250))
    assert cron.due(once, at(2026, 1, 1), at(2026, 1, 1, 10), policy="CATCH_UP") == (
        [at(2026, 1, 1, 9, 30, 0, 250)],
        None,
    )
    assert cron.due(once, at(2026, 1, 1), at(2026, 1, 1, 10), policy="SKIP") == ([], None)
    assert cron.due(Schedule.manual(), at(2026, 1, 1), at(2026, 1, 2), policy="SKIP") == ([], None)


def test_due_refuses_an_unknown_policy_or_negative_grace() -> None:
    with pytest.raises(CronError, match="policy 'LATER' is unknown: use SKIP or CATCH_UP"):
        cron.due(EVERY_MINUTE, at(2026, 1, 1), at(2026, 1, 2), policy="LATER")  # type: ignore[arg-type]
    with pytest.raises(CronError, match="is negative"):
        cron.due(EVERY_MINUTE, at(2026, 1, 1), at(2026, 1, 2), policy="SKIP", grace=-SECOND)


# ---- properties ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A rule's text with the values it stands for, worked out as the text was written."""

    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0=SUN
    any_day: bool
    any_weekday: bool
    last_day: bool

    def day_matches(self, wall: datetime) -> bool:
        by_day = wall.day in self.days or (
            self.last_day and wall.day == calendar.monthrange(wall.year, wall.month)[1]
        )
        by_weekday = wall.isoweekday() % 7 in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day or self.any_weekday:
            return by_weekday if self.any_day else by_day
        return by_day or by_weekday

    def minute_matches(self, wall: datetime) -> bool:
        return (
            wall.month in self.months
            and wall.hour in self.hours
            and wall.minute in self.minutes
            and self.day_matches(wall)
        )

    def matches(self, wall: datetime) -> bool:
        return wall.second in self.seconds and self.minute_matches(wall)


MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
Field = tuple[str, frozenset[int], bool]


@st.composite
def fields(
    draw: st.DrawFn,
    lo: int,
    hi: int,
    names: tuple[str, ...] = (),
    first_name: int = 0,
    day: bool = False,
    value_of: Callable[[int], int] = lambda v: v,
    favourites: tuple[int, ...] = (),
) -> Field:
    """One field's text, the values it stands for, and whether it is '*' or '?'. Values are
    often drawn from ``favourites``: the hours of clock changes, the days of month ends."""
    if draw(st.integers(0, 9)) < 4:
        text = draw(st.sampled_from(["*", "?"] if day else ["*"]))
        return text, frozenset(value_of(v) for v in range(lo, hi + 1)), True

    def show(v: int) -> str:
        if 0 <= v - first_name < len(names) and draw(st.booleans()):
            return draw(st.sampled_from([str.upper, str.lower, str.title]))(names[v - first_name])
        return str(v)

    items: list[str] = []
    values: set[int] = set()
    for _ in range(draw(st.integers(1, 3))):
        aimed = bool(favourites) and draw(st.booleans())
        a = draw(st.sampled_from(favourites) if aimed else st.integers(lo, hi))
        b = draw(st.integers(a, hi))
        n = draw(st.integers(1, hi - lo))
        kind = draw(st.sampled_from(["value", "range", "*/n", "a/n", "a-b/n"]))
        text, span = {
            "value": (show(a), range(a, a + 1)),
            "range": (f"{show(a)}-{show(b)}", range(a, b + 1)),
            "*/n": (f"*/{n}", range(lo, hi + 1, n)),
            "a/n": (f"{show(a)}/{n}", range(a, hi + 1, n)),
            "a-b/n": (f"{show(a)}-{show(b)}/{n}", range(a, b + 1, n)),
        }[kind]
        items.append(text)
        values.update(value_of(v) for v in span)
    return ",".join(items), frozenset(values), False


@st.composite
def rules(draw: st.DrawFn) -> Spec:
    """A random valid rule in either form, with the values worked out independently."""
    six = draw(st.booleans())
    second = draw(fields(0, 59)) if six else ("", frozenset({0}), False)
    minute = draw(fields(0, 59, favourites=(0, 1, 15, 30, 45, 59)))
    hour = draw(fields(0, 23, favourites=(0, 1, 2, 3, 23)))
    dom = draw(fields(1, 31, day=True, favourites=(1, 28, 29, 30, 31)))
    last = not dom[2] and draw(st.integers(0, 2)) == 0
    if last:
        dom = (f"{dom[0]},L", dom[1], False)
    month = draw(fields(1, 12, MONTHS, 1)) if draw(st.integers(0, 3)) == 0 else ("*", None, True)
    if six:
        dow = draw(fields(1, 7, DAYS, 1, day=True, value_of=lambda v: v - 1))
    else:
        dow = draw(fields(0, 7, DAYS, 0, day=True, value_of=lambda v: v % 7))
    parts = [second[0]] if six else []
    parts += [minute[0], hour[0], dom[0], month[0], dow[0]]
    return Spec(
        text=" ".join(parts),
        seconds=second[1],
        minutes=minute[1],
        hours=hour[1],
        days=dom[1],
        months=month[1] if month[1] is not None else frozenset(range(1, 13)),
        weekdays=dow[1],
        any_day=dom[2],
        any_weekday=dow[2],
        last_day=last,
    )


# Zones whose offsets are whole minutes, so that each UTC minute is one minute of wall time;
# Lord Howe moves its clocks by 30 minutes, Kathmandu is +05:45.
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu")
CHANGES = {
    "Europe/Berlin": (at(2026, 3, 29, 1), at(2026, 10, 25, 1)),
    "America/New_York": (at(2026, 3, 8, 7), at(2026, 11, 1, 6)),
    # first Sundays of April (02:00 -> 01:30) and October (02:00 -> 02:30), local time
    "Australia/Lord_Howe": (at(2026, 4, 4, 15), at(2026, 10, 3, 15, 30)),
}
SPAN = timedelta(days=2)


@st.composite
def zoned_instants(draw: st.DrawFn) -> tuple[ZoneInfo, datetime]:
    """A zone and an instant, often within hours of one of its clock changes."""
    name = draw(st.sampled_from(ZONES))
    micro = draw(st.sampled_from([0, 0, 0, 1, 500_000, 999_999]))
    if name in CHANGES and draw(st.booleans()):
        change = draw(st.sampled_from(CHANGES[name]))
        offset = draw(st.integers(-6 * 3600, 6 * 3600))
        return ZoneInfo(name), change + timedelta(seconds=offset, microseconds=micro)
    moment = draw(st.datetimes(datetime(2020, 1, 1), datetime(2035, 12, 31)))
    if draw(st.booleans()):  # in the last days of a month
        last = calendar.monthrange(moment.year, moment.month)[1]
        moment = moment.replace(day=draw(st.integers(last - 2, last)))
    return ZoneInfo(name), moment.replace(microsecond=micro, tzinfo=UTC)


def reference_next(spec: Spec, after: datetime, tz: ZoneInfo) -> datetime | None:
    """The first instant in ``(after, after + SPAN]`` at which the clock in ``tz`` first shows
    a wall time the rule matches, found by watching the clock go by: ``shown`` is the latest
    wall time it has shown (a repeated hour shows nothing new; a jump forward shows all the
    skipped times at once). Minutes whose wall minute cannot match are passed at a glance."""
    u = (after - timedelta(hours=3)).replace(second=0, microsecond=0)
    shown = u.astimezone(tz).replace(tzinfo=None) - SECOND
    while u <= after + SPAN:
        wall = u.astimezone(tz).replace(tzinfo=None, fold=0)
        if wall == shown + SECOND and not spec.minute_matches(wall):
            shown = wall + 59 * SECOND
        else:
            for s in range(60):
                new: list[datetime] = []
                while shown < wall + s * SECOND:
                    shown += SECOND
                    new.append(shown)
                instant = u + s * SECOND
                if after < instant <= after + SPAN and any(spec.matches(w) for w in new):
                    return instant
        u += MINUTE
    return None


@given(rules())
def test_parsing_gives_the_values_the_text_stands_for(spec: Spec) -> None:
    rule = CronRule.parse(spec.text)
    assert rule.text == spec.text
    assert (rule.seconds, rule.minutes, rule.hours) == (spec.seconds, spec.minutes, spec.hours)
    assert (rule.days if not spec.any_day else spec.days) == spec.days
    assert (rule.months, rule.weekdays) == (spec.months, spec.weekdays)
    assert (rule.any_day, rule.any_weekday, rule.last_day) == (
        spec.any_day,
        spec.any_weekday,
        spec.last_day,
    )


@given(rules(), zoned_instants())
def test_next_after_is_the_first_time_the_clock_shows_a_matching_wall_time(
    spec: Spec, zoned: tuple[ZoneInfo, datetime]
) -> None:
    tz, after = zoned
    got = CronRule.parse(spec.text).next_after(after, tz)
    want = reference_next(spec, after, tz)
    if want is None:
        assert got is None or got > after + SPAN
        return
    assert got == want
    assert got.tzinfo is UTC and got.microsecond == 0 and got > after
    wall = got.astimezone(tz).replace(tzinfo=None)
    jumped = (got - SECOND).astimezone(tz).replace(tzinfo=None) + SECOND != wall
    assert spec.matches(wall) or jumped  # only a clock jumping forward fires off the rule


# (zone, instant of the change, the local hour that is skipped or repeated)
CHANGE_HOURS = (
    ("Europe/Berlin", at(2026, 3, 29, 1), 2),  # 02:00-02:59 skipped
    ("Europe/Berlin", at(2026, 10, 25, 1), 2),  # 02:00-02:59 repeated
    ("America/New_York", at(2026, 3, 8, 7), 2),  # 02:00-02:59 skipped
    ("America/New_York", at(2026, 11, 1, 6), 1),  # 01:00-01:59 repeated
    ("Australia/Lord_Howe", at(2026, 10, 3, 15, 30), 2),  # 02:00-02:29 skipped
    ("Australia/Lord_Howe", at(2026, 4, 4, 15), 1),  # 01:30-01:59 repeated
)


@given(
    st.sampled_from(CHANGE_HOURS),
    fields(0, 59),
    fields(0, 59, favourites=(0, 29, 30, 31, 59)),
    st.integers(-2 * 3600, 2 * 3600),
)
def test_rules_in_the_hour_of_a_clock_change_fire_as_the_clock_shows_them(
    change: tuple[str, datetime, int], second: Field, minute: Field, offset: int
) -> None:
    name, instant, hour = change
    spec = Spec(
        text=f"{second[0]} {minute[0]} {hour} * * ?",
        seconds=second[1],
        minutes=minute[1],
        hours=frozenset({hour}),
        days=frozenset(range(1, 32)),
        months=frozenset(range(1, 13)),
        weekdays=frozenset(range(7)),
        any_day=True,
        any_weekday=True,
        last_day=False,
    )
    tz, after = ZoneInfo(name), instant + timedelta(seconds=offset)
    assert CronRule.parse(spec.text).next_after(after, tz) == reference_next(spec, after, tz)


@given(rules(), zoned_instants(), st.integers(0, 600), st.integers(0, 10))
def test_due_catch_up_is_the_last_fire_in_the_gap_and_skip_honours_grace(
    spec: Spec, zoned: tuple[ZoneInfo, datetime], gap: int, grace: int
) -> None:
    tz, since = zoned
    now = since + timedelta(seconds=gap)
    schedule = Schedule.cron(spec.text, tz)
    missed = schedule.rule.fire_times(since, now, tz) if schedule.rule else []
    latest = missed[-1:]
    nxt = schedule.next_after(now)
    assert cron.due(schedule, since, now, policy="CATCH_UP") == (latest, nxt)
    on_time = [t for t in latest if now - t <= timedelta(seconds=grace)]
    assert cron.due(schedule, since, now, policy="SKIP", grace=timedelta(seconds=grace)) == (
        on_time,
        nxt,
    )
