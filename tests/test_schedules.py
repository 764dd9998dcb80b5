"""Schedules (issue 15): Cron, Interval and RRule as sequences of UTC instants, and daylight
saving like Debian cron, checked on America/New_York's 2026 change days with the expected
UTC instants written out."""

from __future__ import annotations

import datetime as dt

import pytest

from asyncflow.schedules import Cron, Interval, RRule, Schedule

UTC = dt.timezone.utc
NY = "America/New_York"


def at(text: str) -> dt.datetime:
    """An instant written as 'MM-DD HH:MM' (UTC, 2026)."""
    return dt.datetime.strptime(f"2026-{text}", "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def slots(schedule: object, start: str, end: str) -> list[dt.datetime]:
    return list(schedule.slots(at(start), at(end)))  # type: ignore[attr-defined]


# Spring forward, 2026-03-08: 02:00 EST (07:00Z) becomes 03:00 EDT.
# Fall back, 2026-11-01: 02:00 EDT (06:00Z) becomes 01:00 EST.


def test_a_daily_time_in_the_spring_gap_runs_once_right_after_it() -> None:
    assert slots(Cron("30 2 * * *", NY), "03-07 00:00", "03-10 00:00") == [
        at("03-07 07:30"),  # 02:30 EST
        at("03-08 07:00"),  # 02:30 does not exist: 03:00 EDT, the first valid time after
        at("03-09 06:30"),  # 02:30 EDT
    ]


def test_a_daily_time_in_the_repeated_hour_runs_once_at_its_first_occurrence() -> None:
    assert slots(Cron("30 1 * * *", NY), "10-31 00:00", "11-03 00:00") == [
        at("10-31 05:30"),  # 01:30 EDT
        at("11-01 05:30"),  # 01:30 EDT, the first of the two 01:30s (not 06:30Z, EST)
        at("11-02 06:30"),  # 01:30 EST
    ]
    # a daily 02:30 is untouched by fall-back
    assert slots(Cron("30 2 * * *", NY), "10-31 12:00", "11-02 12:00") == [
        at("11-01 07:30"),
        at("11-02 07:30"),
    ]


def test_hourly_schedules_run_every_real_hour() -> None:
    # fall-back: 01:00 EDT, 01:00 EST, 02:00 EST: three runs, an hour apart
    expected = [at("11-01 05:00"), at("11-01 06:00"), at("11-01 07:00")]
    assert slots(Cron("0 * * * *", NY), "11-01 04:30", "11-01 07:00") == expected
    assert slots(Cron("@hourly", NY), "11-01 04:30", "11-01 07:00") == expected
    assert slots(Interval(3600, timezone=NY), "11-01 04:30", "11-01 07:00") == expected
    assert slots(RRule("FREQ=HOURLY", NY), "11-01 04:30", "11-01 07:00") == expected
    # spring-forward: 01:00 EST then 03:00 EDT, an hour apart; no 02:00 to run
    expected = [at("03-08 06:00"), at("03-08 07:00"), at("03-08 08:00")]
    assert slots(Cron("0 * * * *", NY), "03-08 05:30", "03-08 08:00") == expected
    assert slots(Interval(dt.timedelta(hours=1), timezone=NY), "03-08 05:30", "03-08 08:00") == (
        expected
    )


def test_daily_intervals_and_rrules_keep_their_wall_time() -> None:
    daily = Interval(dt.timedelta(days=1), anchor_date=dt.datetime(2026, 1, 1, 9, 0), timezone=NY)
    assert slots(daily, "03-06 00:00", "03-10 00:00") == [
        at("03-06 14:00"),  # 09:00 EST
        at("03-07 14:00"),
        at("03-08 13:00"),  # 09:00 EDT
        at("03-09 13:00"),
    ]
    rule = RRule("FREQ=DAILY;BYHOUR=2;BYMINUTE=30", NY)
    assert slots(rule, "03-07 00:00", "03-10 00:00") == [
        at("03-07 07:30"),
        at("03-08 07:00"),  # the gap, as for cron
        at("03-09 06:30"),
    ]


def test_cron_fields_aliases_and_day_or() -> None:
    assert Cron("@daily").next_after(at("03-07 12:00")) == at("03-08 00:00")
    assert Cron("@weekly").next_after(at("03-07 12:00")) == at("03-08 00:00")  # a Sunday
    assert Cron("*/15 * * * *").next_slots(3, at("01-01 00:05")) == [
        at("01-01 00:15"),
        at("01-01 00:30"),
        at("01-01 00:45"),
    ]
    # the 13th, or any Friday (cron's rule) / only a Friday the 13th (day_or=False)
    either = Cron("0 0 13 * 5").next_slots(2, at("01-01 00:00"))
    assert either == [at("01-02 00:00"), at("01-09 00:00")]  # Fridays come first
    both = Cron("0 0 13 * 5", day_or=False).next_after(at("01-01 00:00"))
    assert both == at("02-13 00:00")  # Friday, 13 February 2026
    assert Cron("0 12 * * *", "Europe/Paris").next_after(at("06-01 00:00")) == at("06-01 10:00")


def test_interval_anchor_and_precision() -> None:
    every = Interval(90, anchor_date=dt.datetime(2026, 1, 1, tzinfo=UTC))
    assert every.next_after(at("01-01 00:00")) == dt.datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC)
    # exactly on a slot: the next one (strictly after)
    assert every.next_after(dt.datetime(2026, 1, 1, 0, 3, tzinfo=UTC)) == dt.datetime(
        2026, 1, 1, 0, 4, 30, tzinfo=UTC
    )
    # before its anchor: slots go on backwards from it, on the same grid
    before = dt.datetime(2025, 12, 29, 0, 0, 10, tzinfo=UTC)
    assert every.next_after(before) == dt.datetime(2025, 12, 29, 0, 1, 30, tzinfo=UTC)
    far = dt.datetime(2026, 1, 1, tzinfo=UTC) + dt.timedelta(days=20_000)
    assert (every.next_after(far) - dt.datetime(2026, 1, 1, tzinfo=UTC)).total_seconds() % 90 == 0


def test_schedule_options_and_the_general_constructor() -> None:
    made = Schedule(cron="0 * * * *", parameters={"n": 1}, catchup="all", max_catchup=5)
    assert isinstance(made, Cron) and made.parameters == {"n": 1} and made.catchup == "all"
    assert isinstance(Schedule(interval=60, overlap="skip"), Interval)
    assert isinstance(Schedule(rrule="FREQ=DAILY", active=False), RRule)
    assert Cron("0 0 * * *") == Cron("0 0 * * *")
    assert Cron("0 0 * * *").catchup == "latest" and Cron("0 0 * * *").overlap == "allow"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Cron("61 * * * *"), "Invalid cron expression '61 \\* \\* \\* \\*'"),
        (lambda: Cron("* * *"), "it needs 5 fields"),
        (lambda: Cron("0 0 30 2 *"), "Invalid cron expression"),
        (lambda: Cron("0 0 * * *", "Mars/Olympus"), "Unknown time zone 'Mars/Olympus'"),
        (lambda: Interval(0), "interval must be positive"),
        (lambda: Interval(-5), "interval must be positive"),
        (lambda: Interval(float("inf")), "interval must be finite"),
        (lambda: Interval("1h"), "interval must be seconds or a timedelta"),  # type: ignore[arg-type]
        (lambda: RRule("FREQ=SOMETIMES"), "Invalid RRULE"),
        (lambda: Cron("0 0 * * *", catchup="some"), "catchup must be 'latest', 'none' or 'all'"),
        (lambda: Cron("0 0 * * *", overlap="queue"), "overlap must be 'allow', 'skip'"),
        (lambda: Cron("0 0 * * *", max_catchup=0), "max_catchup must be a positive int"),
        (lambda: Schedule(cron="0 0 * * *", interval=5), "exactly one of cron=, interval="),
        (lambda: Schedule(), "exactly one of cron=, interval= or rrule=; got none"),
    ],
)
def test_bad_schedules_are_refused_clearly(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_instants_must_be_aware() -> None:
    with pytest.raises(ValueError, match="must be timezone-aware"):
        Cron("0 0 * * *").next_after(dt.datetime(2026, 1, 1))


def test_rrules_with_a_start_a_count_and_fine_frequencies() -> None:
    import time

    from asyncflow.deployments.schedules import ScheduleExhausted

    three = RRule("DTSTART:20260101T090000\nRRULE:FREQ=DAILY;COUNT=3")
    assert slots(three, "01-01 00:00", "12-31 00:00") == [
        at("01-01 09:00"),
        at("01-02 09:00"),
        at("01-03 09:00"),
    ]  # the schedule ends: slots() stops, next_after says so
    with pytest.raises(ScheduleExhausted, match="has no time after"):
        three.next_after(at("06-01 00:00"))
    zoned = RRule("DTSTART;TZID=America/New_York:20260301T093000\nRRULE:FREQ=DAILY")
    assert slots(zoned, "03-07 00:00", "03-09 23:00") == [
        at("03-07 14:30"),  # 09:30 EST
        at("03-08 13:30"),  # 09:30 EDT
        at("03-09 13:30"),
    ]
    started = time.perf_counter()  # a rule without DTSTART is not walked from 2020
    assert len(list(RRule("FREQ=MINUTELY").slots(at("06-01 00:00"), at("06-01 01:00")))) == 60
    assert time.perf_counter() - started < 10  # (a bound against a hang, not a benchmark)


def test_a_daily_interval_before_its_anchor_keeps_its_wall_time() -> None:
    daily = Interval(dt.timedelta(days=1), anchor_date=dt.datetime(2026, 6, 1, 9, 0), timezone=NY)
    assert daily.next_after(at("01-10 13:30")) == at("01-10 14:00")  # 09:00 EST, in winter
