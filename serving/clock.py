"""Which clock a time comes from.

- Wall clock (`WallClock.now()`): times that are records or that other processes share
  through the database: case times from uploads, `updated_at`, outbox due times, review
  leases, webhook signature timestamps. It can jump (an operator, a bad NTP step).
- Steady clock (`SteadyClock.now()`): the wall clock as it read when the service started,
  moved on by the monotonic clock. Live camera frames are stamped with it, so a jump of the
  wall clock moves neither dwell, grace and cooldown timers nor the event times that case
  matching compares; files keep their own recorded clock.
- Plain timers inside one process (retry loops, backoff, rate limits) use `time.monotonic()`.

Stored due times (outbox `next_attempt_at`, leases) must be wall-clock, so a backward jump
could leave them far in the future; their users clamp any beyond its longest possible
length (`beyond_horizon`).

Tests inject a `WallClock` whose `now()` they move, rather than changing the system's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

# A gap this large between the wall and the steady clock is a jump, not NTP slewing.
JUMP_S = 5.0


class WallClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


SYSTEM_CLOCK = WallClock()


class SteadyClock:
    def __init__(self, wall: WallClock = SYSTEM_CLOCK, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.wall = wall
        self._monotonic = monotonic
        self._start_wall, self._start = wall.now(), monotonic()

    def now(self) -> datetime:
        return self._start_wall + timedelta(seconds=self._monotonic() - self._start)

    def jump(self) -> float:
        """Seconds the wall clock has moved away from the steady one (0 within JUMP_S)."""
        gap = (self.wall.now() - self.now()).total_seconds()
        return gap if abs(gap) >= JUMP_S else 0.0


def beyond_horizon(due: datetime, now: datetime, horizon_s: float) -> bool:
    """A stored due time further ahead than any that was ever set: written before the wall
    clock jumped back."""
    return due > now + timedelta(seconds=horizon_s)
