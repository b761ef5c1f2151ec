"""The stream pipeline: sample -> detect (batched across cameras) -> track -> rules -> events.

Used by `gridwatch watch` and by the case layer:

    pipeline = Pipeline(cameras, detector, taxonomy, evidence_dir, on_event=callback)
    pipeline.run_until_done()      # file and folder sources: to the end, then close what is open
    # or, for live sources (and mixed configs), in a background thread:
    pipeline.start(); ...; pipeline.stop()
    pipeline.health                # {camera_id: StreamHealth}, live objects, `.to_json()` each

`cameras` is a `CamerasConfig` or a list of `Camera`; `detector` a `detector.Detector` (or
anything with `detect(list_of_frames) -> list[Detections]`); `taxonomy` from
`detector.load_taxonomy()`. `on_event(ViolationEvent)` is called from the pipeline's thread,
in order, for every transition (opened, updated, closed); `run_until_done()` also returns
them. A callback that raises is logged and does not stop the pipeline. A Detector
is safe to share with other threads (the API): it guards its own buffers.

Per sampled frame a camera either runs the detector or, when nothing moved since its last
detection and the static re-check (`static_check_every`) is not due, carries its tracks over
unchanged (Frigate-style motion gating; static things are still re-checked on schedule).
Frames of all cameras that are ready at the same time go to the detector as one batch.

Evidence: for an opened event and for each better frame later, three new files under
`evidence_dir/CAMERA/EVENT_ID/`: the original frame unaltered (PNG, lossless), a crop of the
object, and an annotated copy. Files are created exclusively and never overwritten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detector.detections import Detections
from detector.taxonomy import Taxonomy
from serving.cameras import Camera, CamerasConfig, GridPicker
from serving.events import Location, ViolationEvent
from serving.rules import SCENE_CLASS, Candidate, RuleEngine, Transition
from serving.scene import MotionGate, SceneWatcher
from serving.streams import FileReader, FolderReader, Frame, LiveReader, StreamHealth, open_reader
from serving.tracking import IoUTracker
from serving.zones import ZoneMap

log = logging.getLogger(__name__)


class CameraRuntime:
    """Everything one camera keeps between frames."""

    def __init__(self, camera: Camera, taxonomy: Taxonomy, clock_start: datetime | None) -> None:
        self.camera = camera
        self.grids = GridPicker(camera)
        self.reader = open_reader(camera, clock_start)
        self.tracker = IoUTracker(max_age_s=camera.grace_s)
        self.rules = RuleEngine(camera, taxonomy)
        self.motion = MotionGate()
        self.scene = SceneWatcher.for_camera(camera) if any(r.scene_change for r in camera.rules) else None
        self.zones: ZoneMap | None = None
        self.last_detect: datetime | None = None
        self.frames: Iterator[Frame] | None = None  # file/folder sources

    def zone_map(self, image: np.ndarray) -> ZoneMap:
        h, w = image.shape[:2]
        if self.zones is None or self.zones.size != (w, h):
            self.zones = ZoneMap(self.camera.zones, w, h)
        return self.zones

    def needs_detection(self, frame: Frame) -> bool:
        moved = self.motion.moved(frame.image)
        if self.last_detect is None or moved or (self.scene is not None and self.scene.pending):
            return True
        return (frame.timestamp - self.last_detect).total_seconds() >= self.camera.static_check_every


class Pipeline:
    def __init__(
        self,
        cameras: CamerasConfig | Iterable[Camera],
        detector: Any,
        taxonomy: Taxonomy,
        evidence_dir: str | Path,
        on_event: Callable[[ViolationEvent], None] | None = None,
        *,
        clock_start: datetime | None = None,
        motion_gating: bool = True,
    ) -> None:
        cams = cameras.cameras if isinstance(cameras, CamerasConfig) else tuple(cameras)
        self.detector = detector
        self.taxonomy = taxonomy
        self.evidence_dir = Path(evidence_dir)
        self.on_event = on_event
        self.motion_gating = motion_gating
        self.runtimes = {c.id: CameraRuntime(c, taxonomy, clock_start) for c in cams}
        self.events: list[ViolationEvent] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"frames": 0, "detected": 0, "batches": 0}

    @property
    def health(self) -> dict[str, StreamHealth]:
        return {cid: rt.reader.health for cid, rt in self.runtimes.items()}

    # --- driving --------------------------------------------------------------------------

    def run_until_done(self) -> list[ViolationEvent]:
        """Process every file/folder camera to its end; live cameras are not allowed here."""
        live = [cid for cid, rt in self.runtimes.items() if isinstance(rt.reader, LiveReader)]
        if live:
            raise ValueError(f"run_until_done() reads files and folders; live cameras {live} need start()")
        for rt in self.runtimes.values():
            rt.frames = rt.reader.frames()
        active = list(self.runtimes.values())
        while active:
            batch = []
            for rt in list(active):
                frame = next(rt.frames, None)  # type: ignore[arg-type]
                if frame is None:
                    active.remove(rt)
                    self._finish(rt)
                else:
                    batch.append(frame)
            if batch:
                self.process(batch)
        return self.events

    def start(self) -> None:
        """Run in a background thread until stop() (or until every source is a finished file)."""
        if self._thread is not None:
            return
        for rt in self.runtimes.values():
            if isinstance(rt.reader, LiveReader):
                rt.reader.start()
            else:
                rt.frames = rt.reader.frames()
        self._thread = threading.Thread(target=self._loop, name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for rt in self.runtimes.values():
            if isinstance(rt.reader, LiveReader):
                rt.reader.stop()
            self._finish(rt)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the loop ends (all sources were files) or `timeout`; True if it ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        files = [rt for rt in self.runtimes.values() if rt.frames is not None]
        lives = [rt for rt in self.runtimes.values() if isinstance(rt.reader, LiveReader)]
        while not self._stop.is_set() and (files or lives):
            batch: list[Frame] = []
            for rt in lives:
                frame = rt.reader.take()  # type: ignore[union-attr]
                if frame is not None:
                    batch.append(frame)
            for rt in list(files):
                frame = next(rt.frames, None)  # type: ignore[arg-type]
                if frame is None:
                    files.remove(rt)
                    self._finish(rt)
                else:
                    batch.append(frame)
            if batch:
                try:
                    self.process(batch)
                except Exception:  # a bad batch must not end a city's monitoring
                    log.exception("pipeline: batch failed")
            else:
                self._stop.wait(0.05)

    # --- one batch ------------------------------------------------------------------------

    def process(self, frames: list[Frame]) -> list[ViolationEvent]:
        """Detect on the frames that need it (one batch), then track and apply rules per camera."""
        runtimes = [self.runtimes[f.camera] for f in frames]
        wanted = [
            i for i, (rt, f) in enumerate(zip(runtimes, frames))
            if not self.motion_gating or rt.needs_detection(f)
        ]
        results: dict[int, Detections] = {}
        if wanted:
            found = self.detector.detect([frames[i].image for i in wanted])
            results = dict(zip(wanted, found))
            self.stats["batches"] += 1
            self.stats["detected"] += len(wanted)
        self.stats["frames"] += len(frames)
        out: list[ViolationEvent] = []
        for i, (rt, frame) in enumerate(zip(runtimes, frames)):
            zones = rt.zone_map(frame.image)
            if i in results:
                dets = results[i]
                if rt.scene is not None:
                    dets = _merge(dets, rt.scene.update(frame, dets, zones))
                tracks = rt.tracker.update(dets, frame.timestamp)
                rt.last_detect = frame.timestamp
                if self.motion_gating:
                    rt.motion.reference(frame.image)
                transitions = rt.rules.update(tracks, zones, frame.timestamp, frame.image, detected=True)
            else:
                tracks = rt.tracker.touch(frame.timestamp)
                transitions = rt.rules.update(tracks, zones, frame.timestamp, None, detected=False)
            out.extend(self._emit(rt, t) for t in transitions)
        return out

    def _finish(self, rt: CameraRuntime) -> None:
        for t in rt.rules.close_all():
            self._emit(rt, t)

    # --- events and evidence --------------------------------------------------------------

    def _emit(self, rt: CameraRuntime, transition: Transition) -> ViolationEvent:
        cand = transition.candidate
        if transition.new_evidence and cand.best_frame is not None:
            cand.evidence = self._write_evidence(rt.camera, cand)
        event = self._event(rt, transition.type, cand)
        self.events.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("on_event callback failed for %s", event.event_id)
        return event

    def _event(self, rt: CameraRuntime, kind: str, cand: Candidate) -> ViolationEvent:
        camera, violation = rt.camera, cand.rule.violation
        loc = camera.location
        return ViolationEvent(
            type=kind,  # type: ignore[arg-type]
            event_id=cand.event_id or "",
            camera=camera.id,
            violation=violation.id,
            matter_code=violation.full_matter_code(camera.division),
            grid=self._grid(rt, cand),
            zone=cand.zone.name,
            first_seen=cand.first_seen,
            last_seen=cand.last_seen,
            dwell_s=cand.dwell_s,
            track_id=cand.track_id,
            score=cand.median_score,
            needs_review=cand.needs_review,
            evidence=cand.evidence,
            legacy_code=violation.legacy_code,
            zone_type=cand.zone.type,
            division=camera.division,
            best_score=max(cand.best_score, 0.0),
            box=tuple(round(float(v), 1) for v in cand.best_box) if cand.best_box is not None else None,
            location=Location(loc.lat, loc.lon, loc.address),
            source="scene_change" if cand.rule.scene_change else "detector",
        )

    def _grid(self, rt: CameraRuntime, cand: Candidate) -> str:
        """Picked once, when the event opens: one instance keeps one grid."""
        if cand.grid is None:
            if cand.best_box is None or rt.zones is None:
                cand.grid = rt.grids.default or ""
            else:
                w, h = rt.zones.size
                box = cand.best_box
                cand.grid = rt.grids.grid_at(float(box[0] + box[2]) / 2 / w, float(box[3]) / h)
        return cand.grid

    def _write_evidence(self, camera: Camera, cand: Candidate) -> tuple[str, ...]:
        folder = self.evidence_dir / camera.id / (cand.event_id or "pending")
        folder.mkdir(parents=True, exist_ok=True)
        frame, box = cand.best_frame, cand.best_box
        assert frame is not None and box is not None and cand.best_at is not None
        stamp = cand.best_at.strftime("%Y%m%dT%H%M%S%z")
        h, w = frame.shape[:2]
        x1, y1 = max(int(box[0]), 0), max(int(box[1]), 0)
        x2, y2 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
        crop = frame[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
        annotated = frame.copy()
        cv2.rectangle(annotated, (x1, y1), (x2, y2), (0, 0, 255), 2)
        label = f"{cand.rule.violation.id} {cand.best_score:.2f} {cand.zone.name}"
        cv2.putText(annotated, label, (x1, max(y1 - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1)
        cv2.putText(annotated, f"{camera.id} {cand.best_at.isoformat()}", (6, h - 8),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
        paths = []
        for kind, image, ext in (("original", frame, ".png"), ("crop", crop, ".jpg"), ("annotated", annotated, ".jpg")):
            ok, data = cv2.imencode(ext, image, [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == ".jpg" else [])
            if not ok:
                raise RuntimeError(f"cannot encode {kind} evidence for {cand.event_id}")
            paths.append(str(_write_new(folder, f"{stamp}-{kind}", ext, data.tobytes())))
        return tuple(paths)


def _write_new(folder: Path, stem: str, ext: str, data: bytes) -> Path:
    """Create a file that did not exist before ('x' mode): evidence is never overwritten."""
    for n in range(1000):
        path = folder / (f"{stem}{ext}" if n == 0 else f"{stem}-{n}{ext}")
        try:
            with open(path, "xb") as fh:
                fh.write(data)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot find a free evidence file name for {folder / stem}")


def _merge(dets: Detections, extra: Detections) -> Detections:
    if not len(extra):
        return dets
    names = {**dets.names, **extra.names}
    return Detections(
        xyxy=np.concatenate([dets.xyxy, extra.xyxy]).astype(np.float32),
        scores=np.concatenate([dets.scores, extra.scores]).astype(np.float32),
        class_ids=np.concatenate([dets.class_ids, extra.class_ids]).astype(np.int64),
        names=names,
    )


__all__ = ["CameraRuntime", "Pipeline", "SCENE_CLASS", "FileReader", "FolderReader", "LiveReader"]
