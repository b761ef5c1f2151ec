"""When a camera's rules apply: weekly windows in the camera's own time zone."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")



def known_time_zone(value: str) -> str:
    """An IANA time zone name this machine knows, or ValueError naming it."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name like Asia/Shanghai)") from None
    return value

class ScheduleWindow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    days: str | tuple[str, ...] = "mon-sun"
    start: time = Field(alias="from")
    end: time = Field(alias="to")
    tz: str = "UTC"

    @field_validator("start", "end", mode="before")
    @classmethod
    def _hh_mm(cls, value: Any) -> Any:
        if isinstance(value, int):  # YAML 1.1 reads unquoted 07:00 as sexagesimal minutes
            return time(value // 60 % 24, value % 60)
        if isinstance(value, str) and value.strip() in ("24:00", "24:00:00"):
            return time(23, 59, 59, 999999)
        return value

    _known_tz = field_validator("tz")(known_time_zone)

    @field_validator("days")
    @classmethod
    def _valid_days(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        parse_days(value)
        return value

    @cached_property
    def weekdays(self) -> frozenset[int]:
        return parse_days(self.days)

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)


def parse_days(value: str | tuple[str, ...] | list[str]) -> frozenset[int]:
    """'mon-fri', 'sat,sun', ['mon', 'wed'], 'fri-mon' (wraps) -> weekday numbers (mon=0)."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    days: set[int] = set()
    for part in parts:
        part = str(part).strip().lower()[:7]
        if "-" in part:
            a, b = (p.strip()[:3] for p in part.split("-", 1))
            if a not in DAY_NAMES or b not in DAY_NAMES:
                raise ValueError(f"unknown day range {part!r}; use e.g. mon-fri")
            i, j = DAY_NAMES.index(a), DAY_NAMES.index(b)
            days.update((i + k) % 7 for k in range((j - i) % 7 + 1))
        elif part[:3] in DAY_NAMES:
            days.add(DAY_NAMES.index(part[:3]))
        else:
            raise ValueError(f"unknown day {part!r}; use mon..sun")
    return frozenset(days)


def in_schedule(windows: tuple[ScheduleWindow, ...], when: datetime) -> bool:
    """True when `when` (timezone-aware) falls in one of the windows; no windows: always."""
    if not windows:
        return True
    for window in windows:
        local = when.astimezone(window.zone)
        t = local.time()
        if window.start <= window.end:
            if local.weekday() in window.weekdays and window.start <= t < window.end:
                return True
        else:  # overnight window, e.g. 22:00-06:00: the day is the day it started
            if local.weekday() in window.weekdays and t >= window.start:
                return True
            if (local.weekday() - 1) % 7 in window.weekdays and t < window.end:
                return True
    return False


def next_in_schedule(windows: tuple[ScheduleWindow, ...], when: datetime) -> datetime:
    """`when` if it is inside the schedule, else the start of the next window after it."""
    if in_schedule(windows, when):
        return when
    starts = []
    for window in windows:
        local = when.astimezone(window.zone)
        for ahead in range(8):
            day = local.date() + timedelta(days=ahead)
            start = datetime.combine(day, window.start, tzinfo=window.zone)
            if day.weekday() in window.weekdays and start > when:
                starts.append(start)
                break
    return min(starts).astimezone(when.tzinfo) if starts else when
