"""Schedules: when a deployment's runs are due (Prefect 3's `Cron`, `Interval`, `RRule`).

Each schedule turns into a sequence of instants (aware datetimes in UTC): `next_after(t)`,
`slots(start, end)` and `next_slots(n)`. Wall-clock schedules follow Debian cron across
daylight-saving changes:

- a fixed wall time that the spring-forward gap skips runs once, at the first valid wall
  time after the gap (`30 2 * * *` in America/New_York on 2026-03-08: 03:00 EDT);
- a fixed wall time that fall-back repeats runs once, at its first occurrence (EDT);
- a schedule that runs every hour or more often (a cron whose hour field is a wildcard,
  an interval under 24 hours, an hourly or finer RRULE) follows real time: every real hour
  runs, the repeated one included, and a wall time the gap skips simply does not exist.

Intervals of 24 hours or more keep their wall time (a daily interval anchored at 09:00 runs
at 09:00 local time on both sides of a change).
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

UTC = datetime.timezone.utc


class ScheduleExhausted(ValueError):
    """A schedule has no instant after the one asked about (an RRULE's COUNT or UNTIL, a
    date that never comes, the end of the calendar)."""


Catchup = Literal["latest", "none", "all"]
Overlap = Literal["allow", "skip", "buffer_one"]

#: Cron's named schedules.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAY = datetime.timedelta(days=1)
_LOOK_BACK = datetime.timedelta(hours=3)  # a wall time that maps later than itself (a gap)


@dataclass(frozen=True)
class _Schedule:
    """What every kind of schedule has: the parameters its runs get (over the deployment's
    defaults), whether it is active, and its catch-up and overlap policies."""

    parameters: dict[str, Any] = field(default_factory=dict, kw_only=True)
    active: bool = field(default=True, kw_only=True)
    #: after a stop: run only the latest missed slot, none, or all (at most max_catchup)
    catchup: Catchup = field(default="latest", kw_only=True)
    max_catchup: int = field(default=100, kw_only=True)
    #: when the previous run of this schedule is still going at the next slot
    overlap: Overlap = field(default="allow", kw_only=True)
    slug: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.catchup not in ("latest", "none", "all"):
            raise ValueError(f"catchup must be 'latest', 'none' or 'all', got {self.catchup!r}.")
        if self.overlap not in ("allow", "skip", "buffer_one"):
            raise ValueError(
                f"overlap must be 'allow', 'skip' or 'buffer_one', got {self.overlap!r}."
            )
        if not isinstance(self.max_catchup, int) or self.max_catchup < 1:
            raise ValueError(f"max_catchup must be a positive int, got {self.max_catchup!r}.")
        if not isinstance(self.parameters, dict):
            raise ValueError(f"parameters must be a dict, got {self.parameters!r}.")

    def next_after(self, after: datetime.datetime) -> datetime.datetime:
        """The first instant of the schedule strictly after `after` (aware), in UTC."""
        raise NotImplementedError

    def slots(
        self, start: datetime.datetime, end: datetime.datetime
    ) -> Iterator[datetime.datetime]:
        """The instants in (start, end], in order (fewer when the schedule ends)."""
        at = start
        while True:
            try:
                at = self.next_after(at)
            except ScheduleExhausted:
                return
            if at > end:
                return
            yield at

    def next_slots(
        self, n: int = 3, after: datetime.datetime | None = None
    ) -> list[datetime.datetime]:
        """The next `n` instants after `after` (default: now)."""
        at = after or datetime.datetime.now(UTC)
        found = []
        for _ in range(n):
            at = self.next_after(at)
            found.append(at)
        return found


def _zone(name: str | None) -> datetime.tzinfo:
    if name is None or name.upper() == "UTC":
        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"Unknown time zone {name!r} (use an IANA name like 'Europe/Paris')."
        ) from None


def _aware(when: datetime.datetime, what: str) -> datetime.datetime:
    if not isinstance(when, datetime.datetime):
        raise TypeError(f"{what} must be a datetime, got {when!r}.")
    if when.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware, got {when!r}.")
    return when


def _instants(wall: datetime.datetime, tz: datetime.tzinfo, real: bool) -> list[datetime.datetime]:
    """The instants a naive local wall time stands for, by the module docstring's rules."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first.astimezone(tz).replace(tzinfo=None) == wall:  # repeated by fall-back
        return [first, second] if real else [first]
    return [] if real else [_gap_end(second, first, tz)]  # skipped by spring-forward


def _gap_end(
    lo: datetime.datetime, hi: datetime.datetime, tz: datetime.tzinfo
) -> datetime.datetime:
    """The instant the clock jumped (the first valid wall time after a gap), between `lo`
    (before the jump) and `hi` (after), to the second."""
    before = lo.astimezone(tz).utcoffset()
    while hi - lo > datetime.timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0) if hi.microsecond else hi


@dataclass(frozen=True)
class Cron(_Schedule):
    """A cron expression (5 fields, or an alias like `@daily`) in a time zone (default
    UTC). `day_or=False` makes day-of-month AND day-of-week both required (standard cron:
    either)."""

    cron: str
    timezone: str | None = None
    day_or: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        from cronsim import CronSim, CronSimError

        expression = ALIASES.get(self.cron.strip().lower(), self.cron.strip())
        if len(expression.split()) != 5:
            raise ValueError(
                f"Invalid cron expression {self.cron!r}: it needs 5 fields "
                "(minute hour day-of-month month day-of-week) or an alias like '@daily'."
            )
        try:
            CronSim(expression, datetime.datetime(2000, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"Invalid cron expression {self.cron!r}: {exc}") from None
        object.__setattr__(self, "_expression", expression)
        object.__setattr__(self, "_tz", _zone(self.timezone))
        # every hour or more often: real time (see the module docstring)
        object.__setattr__(self, "_real", expression.split()[1].startswith("*"))

    def next_after(self, after: datetime.datetime) -> datetime.datetime:
        from cronsim import CronSim

        after = _aware(after, "after").astimezone(UTC)
        tz: datetime.tzinfo = self._tz  # type: ignore[attr-defined]
        start = after.astimezone(tz).replace(tzinfo=None) - _LOOK_BACK
        walls = CronSim(self._expression, start)  # type: ignore[attr-defined]
        if not self.day_or:
            walls.day_and = True
        try:
            for wall in walls:
                for instant in _instants(wall, tz, self._real):  # type: ignore[attr-defined]
                    if instant > after:
                        return instant
        except (OverflowError, ValueError):  # past the year 9999
            pass
        raise ScheduleExhausted(f"Cron expression {self.cron!r} has no time after {after}.")


@dataclass(frozen=True)
class Interval(_Schedule):
    """Every `interval` (seconds or a timedelta) from `anchor_date` (default 2020-01-01
    00:00 in `timezone`, default UTC)."""

    interval: float | datetime.timedelta
    anchor_date: datetime.datetime | None = None
    timezone: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        step = self.interval
        if isinstance(step, (int, float)) and not isinstance(step, bool):
            if not math.isfinite(step):
                raise ValueError(f"interval must be finite, got {step!r}.")
            step = datetime.timedelta(seconds=step)
        if not isinstance(step, datetime.timedelta):
            raise ValueError(f"interval must be seconds or a timedelta, got {self.interval!r}.")
        if step <= datetime.timedelta(0):
            raise ValueError(f"interval must be positive, got {self.interval!r}.")
        tz = _zone(self.timezone)
        anchor = self.anchor_date or datetime.datetime(2020, 1, 1)
        if anchor.tzinfo is None:
            anchor = anchor.replace(tzinfo=tz)
        object.__setattr__(self, "_step", step)
        object.__setattr__(self, "_tz", tz)
        object.__setattr__(self, "_anchor", anchor.astimezone(UTC))
        object.__setattr__(self, "_wall", anchor.astimezone(tz).replace(tzinfo=None))

    def next_after(self, after: datetime.datetime) -> datetime.datetime:
        after = _aware(after, "after").astimezone(UTC)
        step: datetime.timedelta = self._step  # type: ignore[attr-defined]
        anchor: datetime.datetime = self._anchor  # type: ignore[attr-defined]
        k = (after - anchor) // step + 1  # (timedelta // timedelta: exact integers)
        try:
            if step < _DAY:  # real time
                return anchor + k * step
            tz: datetime.tzinfo = self._tz  # type: ignore[attr-defined]
            wall: datetime.datetime = self._wall  # type: ignore[attr-defined]
            k -= 2  # wall-clock steps: from a little before the real-time guess
            while True:
                for instant in _instants(wall + k * step, tz, real=False):
                    if instant > after:
                        return instant
                k += 1
        except OverflowError:
            raise ScheduleExhausted(f"{self!r} has no time after {after}.") from None


_FREQ = re.compile(r"FREQ=(\w+)", re.IGNORECASE)
_DAY_INVARIANT = ("DAILY", "HOURLY", "MINUTELY", "SECONDLY")


@dataclass(frozen=True)
class RRule(_Schedule):
    """An iCalendar RRULE string (python-dateutil's `rrulestr`; it may carry DTSTART, with
    a TZID or in UTC) in a time zone (default UTC)."""

    rrule: str
    timezone: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        tz = _zone(self.timezone)
        text = self.rrule.upper()
        freq = _FREQ.search(text)
        name = freq.group(1) if freq else ""
        # A rule without DTSTART, COUNT or INTERVAL > 1, daily or finer, is the same rule
        # from any midnight: it is evaluated from the day before each query, not from 2020
        # (dateutil walks every occurrence from its start).
        movable = (
            name in _DAY_INVARIANT
            and "DTSTART" not in text
            and "COUNT=" not in text
            and re.search(r"INTERVAL=(?!1\b)\d+", text) is None
        )
        object.__setattr__(self, "_tz", tz)
        object.__setattr__(self, "_real", name in ("HOURLY", "MINUTELY", "SECONDLY"))
        object.__setattr__(self, "_movable", movable)
        object.__setattr__(self, "_freq", name)
        start = datetime.datetime(2020, 1, 1)
        rule = self._parse(start)
        try:  # a rule whose DTSTART has a zone compares with aware datetimes only
            rule.after(start)
            aware = False
        except TypeError:
            aware = True
        object.__setattr__(self, "_aware", aware)
        object.__setattr__(self, "_rule", rule)

    def _parse(self, dtstart: datetime.datetime) -> Any:
        from dateutil.rrule import rrulestr  # type: ignore[import-untyped]

        try:
            return rrulestr(self.rrule, forceset=True, dtstart=dtstart, cache=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"Invalid RRULE {self.rrule!r}: {exc}") from None

    def next_after(self, after: datetime.datetime) -> datetime.datetime:
        after = _aware(after, "after").astimezone(UTC)
        tz: datetime.tzinfo = self._tz  # type: ignore[attr-defined]
        rule: Any = self._rule  # type: ignore[attr-defined]
        if self._aware:  # type: ignore[attr-defined]
            # dateutil keeps the wall time of its DTSTART's zone itself
            found = rule.after(after)
            if found is None:
                raise ScheduleExhausted(f"RRULE {self.rrule!r} has no time after {after}.")
            return found.astimezone(UTC)  # type: ignore[no-any-return]
        wall = after.astimezone(tz).replace(tzinfo=None) - _LOOK_BACK
        if self._movable:  # type: ignore[attr-defined]
            rule = self._parse(_period_start(wall, self._freq))  # type: ignore[attr-defined]
        while True:
            try:
                wall = rule.after(wall)
            except TypeError as exc:  # (an UNTIL in UTC with a plain DTSTART, say)
                raise ValueError(f"Invalid RRULE {self.rrule!r}: {exc}") from None
            if wall is None:
                raise ScheduleExhausted(f"RRULE {self.rrule!r} has no time after {after}.")
            for instant in _instants(wall, tz, self._real):  # type: ignore[attr-defined]
                if instant > after:
                    return instant


def _period_start(wall: datetime.datetime, freq: str) -> datetime.datetime:
    """A start for a movable rule before `wall`: a unit of its frequency back, on the
    boundary that keeps the default fields (the minute and second of a midnight start)."""
    if freq == "DAILY":
        return wall.replace(hour=0, minute=0, second=0, microsecond=0) - _DAY
    if freq == "SECONDLY":
        return wall.replace(second=0, microsecond=0) - datetime.timedelta(minutes=1)
    return wall.replace(minute=0, second=0, microsecond=0) - datetime.timedelta(hours=1)


def Schedule(
    *,
    cron: str | None = None,
    interval: float | datetime.timedelta | None = None,
    rrule: str | None = None,
    timezone: str | None = None,
    anchor_date: datetime.datetime | None = None,
    day_or: bool = True,
    **options: Any,
) -> Cron | Interval | RRule:
    """One schedule from exactly one of `cron`, `interval` or `rrule` (with `parameters`,
    `active`, `catchup`, `max_catchup`, `overlap`, `slug`)."""
    given = [n for n, v in (("cron", cron), ("interval", interval), ("rrule", rrule)) if v]
    if len(given) != 1:
        raise ValueError(
            "A Schedule takes exactly one of cron=, interval= or rrule=; got "
            f"{', '.join(given) or 'none'}."
        )
    if cron is not None:
        return Cron(cron, timezone, day_or, **options)
    if interval is not None:
        return Interval(interval, anchor_date, timezone, **options)
    assert rrule is not None
    return RRule(rrule, timezone, **options)


__all__ = ["ALIASES", "Cron", "Interval", "RRule", "Schedule", "ScheduleExhausted"]
