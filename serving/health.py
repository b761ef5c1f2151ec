"""What is wrong with the service right now, for `/readyz` and the log.

A fault has a name (`database`, `evidence`, `camera:<id>`) and a short reason. It is logged
once when it starts and once when it ends (with how long it lasted), however often the
failing work is retried in between, so an outage is two log lines, not a flood. Durations
run on the monotonic clock; the "since" shown is wall-clock time, for people.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from serving.cameras.credentials import redact
from serving.clock import SteadyClock
from serving.evidence import EvidenceStorageError, EvidenceStore
from serving.store.db import Database

log = logging.getLogger("gridwatch.health")


@dataclass(frozen=True)
class Fault:
    reason: str
    since: datetime  # wall clock, shown to people
    started: float  # monotonic, for the duration

    def describe(self) -> str:
        return f"{self.reason} (since {self.since.isoformat(timespec='seconds')})"


class Faults:
    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()

    def enter(self, name: str, reason: str) -> None:
        """`name` is failing; logged only if it was not already. The reason is shown on the
        unauthenticated /readyz: stream passwords in it are masked."""
        reason = redact(reason)
        with self._lock:
            if name in self._faults:
                return
            self._faults[name] = Fault(reason, datetime.now(timezone.utc), time.monotonic())
        log.warning("fault %s: %s", name, reason)

    def leave(self, name: str) -> None:
        """`name` works again; logged only if it was failing."""
        with self._lock:
            fault = self._faults.pop(name, None)
        if fault is not None:
            log.info("fault %s over after %.0f s: %s", name, time.monotonic() - fault.started, fault.reason)

    def current(self) -> dict[str, str]:
        with self._lock:
            return {name: fault.describe() for name, fault in sorted(self._faults.items())}

    def __contains__(self, name: str) -> bool:
        return name in self._faults


def held_fault(exc: BaseException) -> tuple[str, str] | None:
    """(fault name, reason) when `exc` means an event must wait for a part to come back
    (the database away, the evidence disk full); None when it is the event's own problem."""
    if isinstance(exc, EvidenceStorageError):
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return "evidence", f"{'disk full' if full else 'not writable'}: {exc.strerror}"
    if isinstance(exc, DBAPIError):
        return "database", f"unreachable: {type(exc.orig or exc).__name__}: {_first_line(exc.orig or exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


# Checks that inform but do not make the service unready: the model's version, a camera
# entry the pipeline could not start (the other cameras run; the admin page shows it), and a
# jump of the wall clock (timers and live event times run on the steady clock meanwhile).
INFORMATIVE = frozenset({"model", "pipeline", "clock"})


def ready(checks: dict[str, str]) -> bool:
    return all(value == "ok" for name, value in checks.items() if name not in INFORMATIVE)


def camera_faults(health: dict[str, dict]) -> dict[str, str]:
    """`camera:<id>` for each live camera that lost its stream and is reconnecting."""
    return {f"camera:{cid}": f"reconnecting since {h['reconnecting_since']} ({h['reconnects']} tries): "
                             f"{redact(str(h['last_error']))}"
            for cid, h in sorted(health.items()) if h.get("reconnecting_since") and h.get("state") != "stopped"}


class Probes:
    """Looks at a part directly, for `/readyz` and for the retry loop when no work is there
    to show that a part is back: the database (SELECT 1), the evidence folder (a small
    write), the wall clock (against the steady one)."""

    def __init__(self, faults: Faults, db: Database, evidence: EvidenceStore, steady_clock: SteadyClock) -> None:
        self.faults, self.db, self.store, self.steady_clock = faults, db, evidence, steady_clock

    def database(self, *, held: int) -> str:
        """"ok" or why not. With events `held`, the fault ends when they are stored, not
        here: a database that answers SELECT 1 may still refuse writes (SQLite locked)."""
        try:
            with self.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001
            fault = held_fault(exc) or ("database", f"unreachable: {type(exc).__name__}")
            self.faults.enter(*fault)
            return fault[1]
        if not held:
            self.faults.leave("database")
        return "ok"

    def evidence(self) -> None:
        try:
            self.store.probe()
        except EvidenceStorageError as exc:
            self.faults.enter(*held_fault(exc))
            return
        self.faults.leave("evidence")

    def clock(self) -> None:
        jump = self.steady_clock.jump()
        if jump:
            self.faults.enter("clock", f"wall clock {abs(jump):.0f} s {'ahead of' if jump > 0 else 'behind'} "
                                       "the steady clock; live cameras' event times keep the steady clock")
        else:
            self.faults.leave("clock")
