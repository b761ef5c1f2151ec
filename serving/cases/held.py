"""Events the case stage could not store yet (the database away, the evidence disk full),
held in arrival order until it can.

The service's own cameras have nobody else to keep their events, so they wait here; the
edge boxes behind `POST /v1/events` get 503 instead and send again. Events are small and
always kept; their evidence frames are large, so they are held (as lossless PNG, as they
would be stored) up to `max_frame_bytes` in all, and past that an event waits without its
frame: its case still comes, from the event, marked for review if it has no picture.

With a spool folder each held event is also written there (one .npz: the event's JSON, the
frame's bytes and detections, the fencing number) and removed once stored, so a process
killed during an outage finds its held events again at start. Replaying one that was stored
just before the kill is harmless: ingest knows each event transition (`case_events` is
unique) and answers "duplicate". A spool that refuses a write (the same full disk) leaves
the event held in memory only, said once in the log.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from detector.detections import Detections

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


def write_spooled(path: Path, event: ViolationEvent, frame: EvidenceFrame | None, fencing: int | None) -> None:
    """One held event as one file, written whole (a temporary name, then a rename)."""
    arrays: dict[str, np.ndarray] = {"event": np.frombuffer(event.model_dump_json().encode(), np.uint8)}
    meta = {"fencing": fencing, "frame": None}
    if frame is not None:
        meta["frame"] = {"box": frame.box, "label": frame.label, "suffix": frame.suffix, "best": frame.best,
                         "taken_at": frame.taken_at.isoformat() if frame.taken_at else None,
                         "names": None if frame.detections is None else
                         {str(k): v for k, v in frame.detections.names.items()}}
        arrays["encoded"] = np.frombuffer(frame.encoded or b"", np.uint8)
        if frame.detections is not None:
            arrays.update(xyxy=frame.detections.xyxy, scores=frame.detections.scores,
                          class_ids=frame.detections.class_ids)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(path)


def read_spooled(path: Path) -> tuple[ViolationEvent, EvidenceFrame | None, int | None]:
    with np.load(path) as data:
        event = ViolationEvent.model_validate_json(data["event"].tobytes())
        meta = json.loads(data["meta"].tobytes())
        frame = None
        if meta["frame"] is not None:
            f = meta["frame"]
            detections = None
            if f["names"] is not None:
                detections = Detections(xyxy=data["xyxy"], scores=data["scores"], class_ids=data["class_ids"],
                                        names={int(k): v for k, v in f["names"].items()})
            taken = f.get("taken_at")  # absent in files an older version spooled
            frame = EvidenceFrame(box=tuple(f["box"]) if f["box"] is not None else None, label=f["label"],
                                  encoded=data["encoded"].tobytes(), suffix=f["suffix"], detections=detections,
                                  best=f.get("best", True), taken_at=datetime.fromisoformat(taken) if taken else None)
    return event, frame, meta["fencing"]


class HeldEvents:
    def __init__(self, max_frame_bytes: int, spool: Path | None = None) -> None:
        """`spool`: a folder that keeps the held events across a restart (None: memory only);
        what an earlier process left there is held again, in its order."""
        self.max_frame_bytes = max_frame_bytes
        # (event, its frame, the fencing number of the camera lease it ran under: cluster
        # mode, its spool file)
        self._items: deque[tuple[ViolationEvent, EvidenceFrame | None, int | None, Path | None]] = deque()
        self._lock = threading.Lock()
        self.frame_bytes = 0
        self.frames_dropped = 0  # frames let go past the bound (their events were kept)
        self.spool = spool
        self._next = 0
        self._spool_failing = False
        if spool is not None:
            spool.mkdir(parents=True, exist_ok=True)
            self._restore()

    def _restore(self) -> None:
        files = sorted(p for p in self.spool.glob("*.npz") if p.stem.isdigit())  # type: ignore[union-attr]
        for path in files:
            try:
                event, frame, fencing = read_spooled(path)
            except Exception as exc:  # noqa: BLE001 - a torn or foreign file: kept aside, not lost silently
                aside = path.with_suffix(".bad")
                log.error("held event file %s cannot be read (%s): kept as %s", path, exc, aside.name)
                path.replace(aside)
                continue
            event, frame = self._bounded(event, frame)
            with self._lock:
                self._items.append((event, frame, fencing, path))
        for torn in self.spool.glob(".*.tmp"):  # type: ignore[union-attr]  # a write the kill cut short
            torn.unlink(missing_ok=True)
        if files:
            self._next = int(files[-1].stem) + 1
            log.warning("%d event(s) held by an earlier process will be stored when the case store answers",
                        len(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def append(self, event: ViolationEvent, frame: EvidenceFrame | None, fencing: int | None = None) -> None:
        if frame is not None:
            frame = compact(frame)
        event, frame = self._bounded(event, frame)
        path = self._write(event, frame, fencing)
        with self._lock:
            self._items.append((event, frame, fencing, path))

    def _write(self, event: ViolationEvent, frame: EvidenceFrame | None, fencing: int | None) -> Path | None:
        if self.spool is None:
            return None
        path = self.spool / f"{self._next:012d}.npz"
        self._next += 1
        try:
            write_spooled(path, event, frame, fencing)
        except OSError as exc:
            if not self._spool_failing:
                log.error("held events cannot be spooled to %s (%s): held in memory only", self.spool, exc)
            self._spool_failing = True
            return None
        if self._spool_failing:
            log.info("held events are spooled to %s again", self.spool)
            self._spool_failing = False
        return path

    def _bounded(self, event: ViolationEvent,
                 frame: EvidenceFrame | None) -> tuple[ViolationEvent, EvidenceFrame | None]:
        """The event and its frame as they can be held: past the frames' memory bound, without it."""
        if frame is not None:
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
        return event, frame

    def first(self) -> tuple[ViolationEvent, EvidenceFrame | None, int | None] | None:
        with self._lock:
            return self._items[0][:3] if self._items else None

    def pop_first(self) -> None:
        with self._lock:
            _event, frame, _fencing, path = self._items.popleft()
            if frame is not None:
                self.frame_bytes -= len(frame.encoded or b"")
        if path is not None:
            path.unlink(missing_ok=True)
