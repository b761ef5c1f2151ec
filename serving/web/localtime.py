"""Times on the review pages in each camera's own local time, with its zone written out.

The database keeps UTC; a reviewer in a 城管 bureau reads the wall clock of the street the
camera looks at. A camera's zone is the `tz` of its schedule (the one place a camera file
names a zone); a camera without one, or one the service does not know (events posted
through the API), uses the service's local zone (`labelling.timezone`, Asia/Shanghai)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

FORMAT = "%Y-%m-%d %H:%M:%S"
# The days a filter may name: beyond them a day's local midnight in UTC, or the midnight after
# it, is no longer a datetime (0001-01-01 at UTC+08:00), and no case lies there anyway.
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9998, 12, 31)
# What a filter's time field takes, whatever the browser's language: a local day, or a local
# day and time (a "T" as browsers' datetime-local wrote it, and an offset, are accepted too).
TIME_INPUT = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?$")


def parse_local_time(text: str | None, zone: tzinfo, *, end: bool = False) -> datetime | None:
    """A filter bound typed as yyyy-mm-dd or yyyy-mm-dd HH:MM, in `zone` unless it names an
    offset; a day alone as `end` is the midnight after it (the whole day included). ValueError
    for anything else (11/23/2026, 2026-13-01, 24:61)."""
    text = (text or "").strip()
    if not text:
        return None
    if not TIME_INPUT.fullmatch(text):
        raise ValueError(text)
    when = datetime.fromisoformat(text)  # also refuses a month 13 or an hour 25
    if not FIRST_DAY <= when.date() <= LAST_DAY:
        raise ValueError(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone)
    if end and len(text) == 10:
        when += timedelta(days=1)
    return when


def zone_label(when: datetime) -> str:
    """"UTC+08:00": an offset reads the same in both languages, unlike CST."""
    offset = when.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


class CameraZones:
    """Which zone each camera's times are shown in."""

    def __init__(self, cameras: Mapping[str, Any], default: str) -> None:
        self.default = ZoneInfo(default)
        self._zones: dict[str, ZoneInfo] = {}
        for camera_id, camera in cameras.items():
            # The schedule's default tz is UTC: only a zone someone wrote down says where the camera is.
            named = [w.tz for w in getattr(camera, "schedule", ()) if w.tz and w.tz != "UTC"]
            if named:
                self._zones[camera_id] = ZoneInfo(named[0])

    def zone(self, camera: str | None) -> ZoneInfo:
        return self._zones.get(camera or "", self.default)

    def local(self, when: datetime, camera: str | None) -> datetime:
        return when.astimezone(self.zone(camera))

    def show(self, when: datetime | str | None, camera: str | None) -> str:
        """"2026-12-05 16:30:12 UTC+08:00"; "-" for no time."""
        if when is None or when == "":
            return "-"
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        local = self.local(when, camera)
        return f"{local.strftime(FORMAT)} {zone_label(local)}"

    def day_start(self, when: datetime, camera: str | None = None) -> datetime:
        """Midnight of `when`'s local day, as an aware time (counts "today" where the reviewer works)."""
        local = self.local(when, camera)
        return local.replace(hour=0, minute=0, second=0, microsecond=0)
