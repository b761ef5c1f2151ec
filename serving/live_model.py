"""The model the service runs now, swapped whole while it serves.

Every call reads the current `Detector` once, so a frame already in flight finishes on the
session it started with; a new model only becomes current after it loaded and passed a
smoke check on stored evidence frames, so a broken file never takes the old one down.
A watcher notices a changed model file (a promotion into `weights/`) and reloads it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.detections import Detections
from detector.model import DetectorError, ModelInfo
from detector.runtime import Detector
from detector.tiling import TiledCheck

log = logging.getLogger("gridwatch.model")

# Frames that have been through the service before: a model that cannot run them, or
# returns nonsense on them, is not put in front of the cameras.
SmokeFrames = Callable[[], list[np.ndarray]]


class ModelSwapError(ValueError):
    """A new model was refused; the old one keeps running. The message says why."""


@dataclass(frozen=True)
class ModelFile:
    """What identifies the file on disk, to see it change."""

    path: Path
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: Path) -> ModelFile | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return cls(path, stat.st_mtime_ns, stat.st_size)


class LiveDetector:
    """A `Detector` stand-in for every stage (same `detect`, `detect_tiled`, `tiled_check`, `info`)."""

    def __init__(self, detector: Detector, load: Callable[[Path], Detector], smoke_frames: SmokeFrames,
                 on_swap: Callable[[ModelInfo], None] | None = None) -> None:
        self._current = detector
        self._load = load
        self._smoke_frames = smoke_frames
        self._on_swap = on_swap  # after each model put live, by the watcher or on request
        self._swap_lock = threading.Lock()  # one reload at a time; detection never waits on it
        self._watched = ModelFile.of(detector.info.path)
        self.swaps = 0
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def current(self) -> Detector:
        return self._current

    @property
    def info(self) -> ModelInfo:
        return self._current.info

    @property
    def second_stage(self) -> dict:
        """The current detector's crop classifiers (the pipeline runs them on their class's tracks)."""
        return self._current.second_stage

    @property
    def version(self) -> str:
        return self._current.info.version

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        return self._current.detect(frames)

    def detect_tiled(self, frame: np.ndarray, **options) -> Detections:  # noqa: ANN003
        return self._current.detect_tiled(frame, **options)

    def tiled_check(self, frame: np.ndarray, **options) -> TiledCheck:  # noqa: ANN003
        return self._current.tiled_check(frame, **options)

    def reload(self, path: Path | None = None) -> ModelInfo:
        """Load `path` (default: the current model's file again), smoke-check it, make it
        current. Raises ModelSwapError and keeps the old model on any failure."""
        with self._swap_lock:
            target = Path(path or self._current.info.path)
            seen = ModelFile.of(target)
            try:
                candidate = self._load(target)
            except (DetectorError, OSError, ValueError) as exc:
                raise ModelSwapError(f"{target}: cannot load: {exc}") from None
            smoke_check(candidate, self._smoke_frames())
            previous, self._current = self._current.info.version, candidate
            self._watched = seen
            self.swaps += 1
            log.info("model %s is live (was %s)", candidate.info.version, previous)
            if self._on_swap is not None:  # under the lock: two swaps' follow-ups never interleave
                try:
                    self._on_swap(candidate.info)
                except Exception:  # noqa: BLE001 - the new model is live; a failed follow-up must not undo that
                    log.exception("after model %s went live", candidate.info.version)
            return candidate.info

    # -- watching the file ---------------------------------------------------------------
    def watch(self, every_s: float) -> None:
        if every_s <= 0 or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, args=(every_s,), name="gridwatch-model-watch",
                                         daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)

    def _watch(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            now = ModelFile.of(self._current.info.path)
            if now is None or now == self._watched:
                continue
            try:
                self.reload(now.path)
            except ModelSwapError as exc:
                # Remember the refused file so it is not retried every tick; a new copy is.
                self._watched = now
                log.error("model file changed but was refused, %s keeps running: %s", self.version, exc)


def smoke_check(candidate: Detector, frames: list[np.ndarray]) -> None:
    """The candidate runs the frames (or one blank frame when there is no evidence yet) and
    answers with finite boxes inside each frame."""
    frames = frames or [np.full((*candidate.input_size, 3), 114, np.uint8)]
    try:
        results = candidate.detect(frames)
    except Exception as exc:  # noqa: BLE001 - whatever a broken model raises, it is refused
        raise ModelSwapError(f"{candidate.info.path}: smoke check failed: {type(exc).__name__}: {exc}") from None
    for frame, found in zip(frames, results):
        h, w = frame.shape[:2]
        boxes = found.xyxy
        if not np.isfinite(boxes).all() or not np.isfinite(found.scores).all():
            raise ModelSwapError(f"{candidate.info.path}: smoke check: non-finite boxes or scores")
        if len(boxes) and ((boxes[:, [0, 2]] > w + 1).any() or (boxes[:, [1, 3]] > h + 1).any()):
            raise ModelSwapError(f"{candidate.info.path}: smoke check: boxes outside the frame")
