"""Where the pipeline's events and labelling samples leave the frame path.

The pipeline thread analyses every camera's frames; storing an event (a case, its evidence,
the hash chain) or a labelling sample is database and disk work that may take seconds while
the database is slow, locked or away. So the pipeline only hands them here, in order, and
one writer thread passes them on (`store_event`, `store_sample`: the service's, which hold
an event the database refuses, in order, until it answers). Nothing here waits on the
database: a frame is analysed on time whatever the case store is doing.

Bounded, never lossy:

- up to `max_items` items with up to `max_frame_bytes` of frames wait in memory;
- past that, events go on into `overflow` (serving/cases/held.py `HeldEvents`: PNG-compacted,
  spooled to disk, their frames bounded as held events' are), still behind the ones in
  memory, so the writer takes them in the order they happened; the `database` fault is
  entered once for it (one log line; it ends with the next event stored);
- a labelling sample past the bound is let go and counted (`samples_dropped`): the next
  unsure frame serves as well, as when the database refuses one;
- `close()` (shutdown, after the pipeline stopped) stores everything still waiting.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

from serving.events import ViolationEvent
from serving.evidence import EvidenceFrame
from serving.health import Faults
from serving.pipeline.uncertainty import LabellingSample

log = logging.getLogger("gridwatch.pipeline")

MAX_ITEMS = 256
MAX_FRAME_BYTES = 128 * 2**20  # some 20 raw 1080p frames
CLOSE_TIMEOUT_S = 120.0


class Overflow(Protocol):
    """An ordered store of events past the bound (HeldEvents)."""

    def __len__(self) -> int: ...
    def append(self, event: ViolationEvent, frame: EvidenceFrame | None, fencing: int | None = None) -> None: ...
    def first(self) -> tuple[ViolationEvent, EvidenceFrame | None, int | None] | None: ...
    def pop_first(self) -> None: ...


def _frame_bytes(item: ViolationEvent | LabellingSample, frame: EvidenceFrame | None) -> int:
    if isinstance(item, LabellingSample):
        return int(item.image.nbytes)
    if frame is None:
        return 0
    return int(frame.image.nbytes) if frame.image is not None else len(frame.encoded or b"")


class Outlet:
    def __init__(self, store_event: Callable[[ViolationEvent, EvidenceFrame | None], None],
                 store_sample: Callable[[LabellingSample], None], overflow: Overflow, *,
                 faults: Faults | None = None, max_items: int = MAX_ITEMS,
                 max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.store_event = store_event
        self.store_sample = store_sample
        self.overflow = overflow
        self.faults = faults
        self.max_items = max_items
        self.max_frame_bytes = max_frame_bytes
        self._queue: deque[tuple[ViolationEvent | LabellingSample, EvidenceFrame | None, int]] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        # Events go to the overflow from the first one past the bound until the writer has
        # emptied it (with none still being written into it): none overtakes an earlier one.
        self._overflowing = len(overflow) > 0  # an earlier process's, found in the spool
        self._spilling = 0
        self._taken: str | None = None  # where the item the writer holds came from: "queue", "overflow"
        self._closing = False
        self._thread: threading.Thread | None = None
        self.counters = {"events": 0, "samples": 0, "events_overflowed": 0, "samples_dropped": 0}

    @property
    def backlog(self) -> int:
        """Events and samples handed in and not yet passed on."""
        # An item taken from the overflow stays in it until it is stored.
        return len(self._queue) + len(self.overflow) + self._spilling + int(self._taken == "queue")

    # -- the pipeline's side: never waits on the database ------------------------------------------
    def event(self, event: ViolationEvent, frame: EvidenceFrame | None = None) -> None:
        """The pipeline's `on_event`."""
        size = _frame_bytes(event, frame)
        with self._cond:
            self.counters["events"] += 1
            if not self._overflowing and self._fits(size):
                self._queue.append((event, frame, size))
                self._bytes += size
                self._cond.notify_all()
                return
            first = not self._overflowing
            self._overflowing = True
            self._spilling += 1
            self.counters["events_overflowed"] += 1
        try:
            if first and self.faults is not None:
                self.faults.enter("database", f"slow: {len(self._queue)} events wait to be stored; "
                                              "later ones are spooled until the case store catches up")
            self.overflow.append(event, frame)
        finally:
            with self._cond:
                self._spilling -= 1
                self._cond.notify_all()

    def sample(self, sample: LabellingSample) -> None:
        """The pipeline's `on_sample`."""
        size = _frame_bytes(sample, None)
        with self._cond:
            if self._overflowing or not self._fits(size):
                self.counters["samples_dropped"] += 1
                return
            self.counters["samples"] += 1
            self._queue.append((sample, None, size))
            self._bytes += size
            self._cond.notify_all()

    def _fits(self, size: int) -> bool:
        return len(self._queue) < self.max_items and (self._bytes + size <= self.max_frame_bytes or not self._queue)

    # -- the writer ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gridwatch-outlet", daemon=True)
            self._thread.start()

    def flush(self) -> None:
        """Wait until everything handed in so far is passed on (a pipeline whose files all
        ended: its events stored before it says so), or until the outlet closes."""
        if self._thread is None:
            return
        with self._cond:
            self._cond.wait_for(lambda: self.backlog == 0 or self._closing)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        """Store what waits, then end the writer; True when nothing is left. Call it once the
        pipeline has stopped (its last events, the ones it closed, are in by then)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is None:
            self._run()  # never started: drain on this thread
        else:
            self._thread.join(timeout)
        left = self.backlog
        if left:
            log.error("%d event(s) and sample(s) of the cameras were not passed on before stopping "
                      "(spooled events are stored at the next start)", left)
        return left == 0

    def _run(self) -> None:
        while True:
            with self._cond:
                item = self._take()
                if item is None:
                    return
            try:
                if isinstance(item, LabellingSample):
                    self.store_sample(item)
                else:
                    self.store_event(*item)
            except Exception:  # noqa: BLE001 - the stores keep what they refuse; nothing else may end the writer
                log.exception("pipeline outlet: an item could not be passed on")
            with self._cond:
                if self._taken == "overflow":
                    self.overflow.pop_first()  # only now: a kill before this finds it in the spool again
                self._taken = None
                self._cond.notify_all()  # flush() waits for the backlog to empty

    def _take(self) -> LabellingSample | tuple[ViolationEvent, EvidenceFrame | None] | None:
        """The next item in order (under the lock), waiting for one; None once closing and empty."""
        while True:
            if self._queue:
                item, frame, size = self._queue.popleft()
                self._bytes -= size
                self._taken = "queue"
                return item if isinstance(item, LabellingSample) else (item, frame)
            if self._overflowing:
                held = self.overflow.first()
                if held is not None:
                    self._taken = "overflow"
                    return held[0], held[1]
                if not self._spilling:
                    self._overflowing = False  # caught up: the memory queue takes events again
                    continue
            elif self._closing:
                return None
            self._cond.wait()
