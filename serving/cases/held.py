"""Events the case stage could not store yet (the database away, the evidence disk full),
held in memory in arrival order until it can.

The service's own cameras have nobody else to keep their events, so they wait here; the
edge boxes behind `POST /v1/events` get 503 instead and send again. Events are small and
always kept; their evidence frames are large, so they are held (as lossless PNG, as they
would be stored) up to `max_frame_bytes` in all, and past that an event waits without its
frame: its case still comes, from the event, marked for review if it has no picture.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import replace

import cv2

from serving.events import ViolationEvent
from serving.evidence import EvidenceFrame

log = logging.getLogger("gridwatch.cases")


def compact(frame: EvidenceFrame) -> EvidenceFrame:
    """The frame as encoded bytes only: a PNG of a decoded frame is what the store would
    write as its original anyway, at a third of the memory."""
    if frame.encoded is not None:
        return replace(frame, image=None)
    ok, png = cv2.imencode(".png", frame.decoded())
    return replace(frame, image=None, encoded=png.tobytes(), suffix=".png") if ok else frame


class HeldEvents:
    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        # (event, its frame, the fencing number of the camera lease it ran under: cluster mode)
        self._items: deque[tuple[ViolationEvent, EvidenceFrame | None, int | None]] = deque()
        self._lock = threading.Lock()
        self.frame_bytes = 0
        self.frames_dropped = 0  # frames let go past the bound (their events were kept)

    def __len__(self) -> int:
        return len(self._items)

    def append(self, event: ViolationEvent, frame: EvidenceFrame | None, fencing: int | None = None) -> None:
        if frame is not None:
            frame = compact(frame)
            size = len(frame.encoded or b"")
            if self.frame_bytes + size > self.max_frame_bytes:
                if self.frames_dropped == 0:
                    log.warning("held events' frames passed %d bytes: events from now on wait without "
                                "their evidence frame", self.max_frame_bytes)
                self.frames_dropped += 1
                frame = None
                event = event.model_copy(update={"needs_review": True})  # a person looks, without a picture
            else:
                self.frame_bytes += size
        with self._lock:
            self._items.append((event, frame, fencing))

    def first(self) -> tuple[ViolationEvent, EvidenceFrame | None, int | None] | None:
        with self._lock:
            return self._items[0] if self._items else None

    def pop_first(self) -> None:
        with self._lock:
            _event, frame, _fencing = self._items.popleft()
            if frame is not None:
                self.frame_bytes -= len(frame.encoded or b"")
