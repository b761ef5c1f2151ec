"""The stream pipeline: sample -> detect (batched across cameras) -> track -> rules -> events.

Used by `gridwatch watch` and by the case layer:

    pipeline = Pipeline(cameras, detector, taxonomy, on_event=callback)
    pipeline.run_until_done()      # file and folder sources: to the end, then close what is open
    # or, for live sources (and mixed configs), in a background thread:
    pipeline.start(); ...; pipeline.stop()
    pipeline.health                # {camera_id: StreamHealth}, live objects, `.to_json()` each
    pipeline.snapshot(camera_id, timeout)  # the next frame the running pipeline takes of it
    pipeline.tiled_checks()        # {camera_id: TiledCheckState}: its due check's wait, its last check

`cameras` is a `CamerasConfig` or a list of `Camera`; `detector` a `detector.Detector` (or
anything with `detect(list_of_frames) -> list[Detections]`); `taxonomy` from
`detector.load_taxonomy()`; `alert_threshold(camera, violation)`, if given, the learned score
that replaces a rule's min_score (serving/cases/thresholds.py). `on_event(event, frame)` is
called from the pipeline's thread, in order, for every transition (opened, updated, closed),
with an `EvidenceFrame`: the best frame when the transition brought a better one, else the
latest sighting's frame (`best=False`: a moment of the event's timeline), None if neither;
`run_until_done()` also returns the events. A callback that raises is logged and does not
stop the pipeline. Callbacks run on the frame path, so none may wait on a database: the
service passes its outlet's (serving/pipeline/outlet.py: a queue one writer thread stores
from), and `alert_threshold` reads the thresholds from memory; `on_end()`, when every file
source of a started pipeline has ended, waits until the outlet has passed everything on, so
`wait()` reports the end once the events are stored. A Detector is safe to share with other
threads (the API): it guards its own buffers.

Per sampled frame a camera either runs the detector or, when nothing moved since its last
detection and the static re-check (`static_check_every`) is not due, carries its tracks over
unchanged (Frigate-style motion gating; static things are still re-checked on schedule).
Frames of all cameras that are ready at the same time go to the detector as one batch.
A camera's tiled static check (`tiled_static_checks`: its frame tiled over a pyramid at
full resolution, once per `tiled_check_every`) runs one at a time, a few images beside
each batch; that camera's frames wait for it, so its tracker sees them in order.

Evidence: for an opened event and for each better frame later, the frame and the box go to
the callback as an `EvidenceFrame`; the case stage writes them once into the case. Given an
`evidence` store (`gridwatch watch`, which has no cases), the pipeline writes them there
itself, under CAMERA/EVENT_ID, and the event lists the files.

Active learning: given a `sampler` (serving/pipeline/uncertainty.py), every detected frame
is offered to it with the tracker's class flips and the candidates the rules held back for
their score; a frame it takes goes to `on_sample(sample)` as a `LabellingSample`, beside
the events (a callback that raises is logged, like on_event).

Second stages: the crop classifiers the detector carries (`detector.second_stage`, from the
`load_classifier` setting) or `crop_stages` given here run on the tracks a rule with that
stage watches, on detected frames only (the load decision on truck boxes, nothing else);
their labels go to the rules and onto the event (`stage_label`, `stage_score`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from detector.detections import Detections
from detector.second_stage import CropClassifier, CropLabel
from detector.taxonomy import Taxonomy
from detector.tiling import TiledCheck
from serving.cameras import Camera, CamerasConfig, GridPicker
from serving.clock import SteadyClock
from serving.events import ViolationEvent
from serving.evidence import EvidenceFrame, EvidenceStore
from serving.pipeline.rules import AlertThreshold, Candidate, RuleEngine, Transition
from serving.pipeline.scene import MotionGate, SceneWatcher
from serving.pipeline.tracking import IoUTracker, Track
from serving.pipeline.uncertainty import LabellingSample, UncertaintySampler
from serving.pipeline.zones import ZoneMap
from serving.streams.readers import Frame, LiveReader, StreamHealth, open_reader

EventSink = Callable[[ViolationEvent, EvidenceFrame | None], None]
SampleSink = Callable[[LabellingSample], None]

log = logging.getLogger(__name__)


# Tiled static checks are the heaviest work on the frame path (a 1080p frame is 35
# inferences over its pyramid): one check at a time, run TILED_IMAGES_PER_BATCH images beside
# each batch of ordinary frames (about 0.1 s on 2 cores, where the whole check is 0.5 s), and
# at most TILED_SHARE of the pipeline thread's wall time over a window, so they never hold up
# the cameras' ordinary frames.
TILED_IMAGES_PER_BATCH = 8
TILED_SHARE = 0.25


class TiledBudget:
    """Seconds of tiled work allowed: `share` of each wall-clock second accrues, up to
    `burst` seconds; a check may start while any is left and its duration is spent after."""

    def __init__(self, share: float = TILED_SHARE, burst: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.share, self.burst, self.clock = share, burst, clock
        self._left, self._at = burst, clock()

    def available(self) -> bool:
        now = self.clock()
        self._left = min(self.burst, self._left + (now - self._at) * self.share)
        self._at = now
        return self._left > 0

    def spend(self, seconds: float) -> None:
        self._left -= seconds


@dataclass(frozen=True)
class TiledCheckState:
    """Where one camera's tiled static checks stand, for its health: whether a check that
    fell due waits its turn, and when its last check looked (frame times, the camera's clock)."""

    waiting_s: float | None  # since a frame that needed detection found its check due; None: none waits
    checked_at: datetime | None  # the frame of its last completed check; None: none yet

    def to_json(self) -> dict[str, Any]:
        return {"tiled_check_waiting_s": self.waiting_s,
                "tiled_checked_at": self.checked_at.isoformat() if self.checked_at is not None else None}


NO_TILED_CHECK = TiledCheckState(None, None)


@dataclass
class HeldFrame:
    """A camera's frame whose tiled check is still running. The camera's next frames wait
    (a live reader keeps only the newest) so its tracker sees its frames in order."""

    frame: Frame
    check: TiledCheck


class CameraRuntime:
    """Everything one camera keeps between frames."""

    def __init__(self, camera: Camera, taxonomy: Taxonomy, clock_start: datetime | None,
                 alert_threshold: AlertThreshold | None = None, live_clock: SteadyClock | None = None,
                 stages: Iterable[str] = ()) -> None:
        self.camera = camera
        self.grids = GridPicker(camera)
        self.reader = open_reader(camera, clock_start, live_clock)
        self.tracker = IoUTracker(max_age_s=camera.grace_s)
        self.rules = RuleEngine(camera, taxonomy, alert_threshold, stages=frozenset(stages))
        self.motion = MotionGate()
        self.scene = SceneWatcher.for_camera(camera) if any(r.scene_change for r in camera.rules) else None
        self.zones: ZoneMap | None = None
        self.last_detect: datetime | None = None
        self.tiled_checked_at: datetime | None = None  # the frame of its last completed check
        self.tiled_period: int | None = None  # the period (see tiled_check_due) last checked, or first seen
        # The frame time its due check was first found waiting its turn (another camera's check
        # in flight, or the tiled budget spent); None while none waits.
        self.tiled_waiting_since: datetime | None = None
        self.last_frame_at: datetime | None = None
        self.held: HeldFrame | None = None
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

    @property
    def tiled_phase(self) -> float:
        """Seconds into each `tiled_check_every` period at which this camera's tiled check
        falls: fixed per camera id (stable across restarts), spread evenly over cameras."""
        return zlib.crc32(self.camera.id.encode()) / 2**32 * self.camera.tiled_check_every

    def tiled_period_of(self, when: datetime) -> int:
        """Which `tiled_check_every` period (counted from the epoch, at this camera's phase) `when` is in."""
        return math.floor((when.timestamp() - self.tiled_phase) / self.camera.tiled_check_every)

    def next_tiled_check(self, after: datetime) -> datetime:
        """When this camera's next tiled check falls due after `after`."""
        every = self.camera.tiled_check_every
        return datetime.fromtimestamp((self.tiled_period_of(after) + 1) * every + self.tiled_phase, after.tzinfo)

    def tiled_check_due(self, frame: Frame) -> bool:
        """The check at full resolution, once per `tiled_check_every`: small static things
        (flyers, window ads, signs) vanish when a 1080p frame is shrunk, and stay for days.

        Each camera's check falls at its own phase of the period, never on its first frame:
        100 cameras starting together would otherwise queue 100 tiled checks (over 10 s of
        work) in front of everyone's next frames."""
        if not self.camera.tiled_static_checks:
            return False
        period = self.tiled_period_of(frame.timestamp)
        if self.tiled_period is None:
            self.tiled_period = period  # the first frame: the first check at the next phase
            return False
        return period > self.tiled_period


class Pipeline:
    def __init__(
        self,
        cameras: CamerasConfig | Iterable[Camera],
        detector: Any,
        taxonomy: Taxonomy,
        on_event: EventSink | None = None,
        *,
        evidence: EvidenceStore | None = None,
        clock_start: datetime | None = None,
        live_clock: SteadyClock | None = None,
        motion_gating: bool = True,
        sampler: UncertaintySampler | None = None,
        on_sample: SampleSink | None = None,
        alert_threshold: AlertThreshold | None = None,
        persistent: bool = False,
        crop_stages: Iterable[CropClassifier] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """`live_clock` stamps live cameras' frames (the service's steady clock). `crop_stages`:
        second-stage classifiers; None takes the detector's own (`detector.second_stage`)."""
        cams = cameras.cameras if isinstance(cameras, CamerasConfig) else tuple(cameras)
        self.detector = detector
        if crop_stages is None:
            crop_stages = (getattr(detector, "second_stage", None) or {}).values()
        # Stage name (taxonomy `second_stage`) -> its classifier.
        self.crop_stages: dict[str, CropClassifier] = {stage.stage: stage for stage in crop_stages}
        self.taxonomy = taxonomy
        self.evidence = evidence
        self.on_event = on_event
        self.motion_gating = motion_gating
        self.sampler = sampler
        self.on_sample = on_sample
        self.clock_start = clock_start
        self.alert_threshold = alert_threshold
        self.live_clock = live_clock
        # persistent: the loop outlives its cameras and takes new ones (a cluster camera
        # worker, whose cameras come and go with their leases); else it ends with its files.
        self.persistent = persistent
        self.on_end = on_end
        self.runtimes = {c.id: self._runtime(c) for c in cams}
        self._changes = threading.Lock()  # cameras added or removed between batches
        # run_until_done() returns what it emitted; a live pipeline runs for months and keeps
        # nothing (its events go to on_event).
        self._collected: list[ViolationEvent] | None = None
        self._stop = threading.Event()
        # Why the background loop ended before stop() (an error it could not pass over); "" while
        # it runs: the service reports it as not ready instead of going quietly blind.
        self.stopped_by = ""
        self._thread: threading.Thread | None = None
        # tiled_missed: periods of `tiled_check_every` in which a camera's due check waited its
        # turn throughout, so that period had none (the pipeline is past its tiled capacity).
        self.stats = {"frames": 0, "detected": 0, "batches": 0, "tiled": 0, "tiled_missed": 0, "sampled": 0}
        self.tiled_budget = TiledBudget()
        self._checking: CameraRuntime | None = None  # the camera whose tiled check is running
        # Frames whose detections (or carried-over tracks) reached their camera's rules in the
        # last process() call: a held frame arrives here when its check completes.
        self.last_analysed: list[Frame] = []
        # Frames asked for by others (a case re-check): camera -> waiters for its next frame.
        # Only asked-for frames are kept; holding every camera's last frame would cost a
        # 1080p frame (6 MB) per camera.
        self._snapshot_lock = threading.Lock()
        self._snapshots: dict[str, list[_FrameWaiter]] = {}

    @property
    def checking(self) -> bool:
        """A tiled check is in flight: process() has work even without frames."""
        return self._checking is not None

    @property
    def health(self) -> dict[str, StreamHealth]:
        return {cid: rt.reader.health for cid, rt in self.runtimes.items()}

    def tiled_checks(self) -> dict[str, TiledCheckState]:
        """Cameras with a tiled check behind them or one waiting its turn. A wait is counted
        by the camera's own frames, from the first that needed detection and found it due."""
        out = {}
        for cid, rt in list(self.runtimes.items()):
            since, last = rt.tiled_waiting_since, rt.last_frame_at
            waiting = (last - since).total_seconds() if since is not None and last is not None else None
            if waiting is not None or rt.tiled_checked_at is not None:
                out[cid] = TiledCheckState(waiting, rt.tiled_checked_at)
        return out

    def tiled_waits(self) -> dict[str, float]:
        """Cameras whose tiled check is due and waiting its turn, and for how many seconds."""
        return {cid: state.waiting_s for cid, state in self.tiled_checks().items() if state.waiting_s is not None}

    # --- driving --------------------------------------------------------------------------

    def run_until_done(self) -> list[ViolationEvent]:
        """Process every file/folder camera to its end; live cameras are not allowed here."""
        live = [cid for cid, rt in self.runtimes.items() if isinstance(rt.reader, LiveReader)]
        if live:
            raise ValueError(f"run_until_done() reads files and folders; live cameras {live} need start()")
        for rt in self.runtimes.values():
            rt.frames = rt.reader.frames()
        self._collected = []
        active = list(self.runtimes.values())
        while active:
            batch = self._next_file_frames(active)
            if batch or self.checking:
                self.process(batch)
        events, self._collected = self._collected, None
        return events

    def start(self) -> None:
        """Run in a background thread until stop() (or until every source is a finished file)."""
        if self._thread is not None:
            return
        for rt in self.runtimes.values():
            self._open(rt)
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for rt in list(self.runtimes.values()):
            if isinstance(rt.reader, LiveReader):
                rt.reader.stop()
            self._finish(rt)

    def snapshot(self, camera_id: str, timeout: float) -> Frame | None:
        """The next frame this running pipeline takes of the camera, or None when it does not
        read that camera now (not in it, or its file or stream has ended) or none came in time."""
        rt = self.runtimes.get(camera_id)
        running = self._thread is not None and self._thread.is_alive() and not self._stop.is_set()
        if rt is None or not running or rt.reader.health.state in ("finished", "failed", "stopped"):
            return None
        waiter = _FrameWaiter()
        with self._snapshot_lock:
            self._snapshots.setdefault(camera_id, []).append(waiter)
        waiter.done.wait(timeout)
        with self._snapshot_lock:
            waiting = self._snapshots.get(camera_id, [])
            if waiter in waiting:
                waiting.remove(waiter)
        return waiter.frame

    def _hand_out(self, frames: list[Frame]) -> None:
        if not self._snapshots:
            return
        with self._snapshot_lock:
            for frame in frames:
                for waiter in self._snapshots.pop(frame.camera, []):
                    waiter.frame = frame
                    waiter.done.set()

    def add_camera(self, camera: Camera) -> None:
        """Start streaming one more camera (a running pipeline; the next batch includes it)."""
        rt = self._runtime(camera)
        self._open(rt)
        with self._changes:
            old = self.runtimes.pop(camera.id, None)
            self.runtimes[camera.id] = rt
        if old is not None:
            self._close(old)

    def remove_camera(self, camera_id: str) -> None:
        """Stop one camera; what it had open closes, as at the end of a file."""
        with self._changes:
            rt = self.runtimes.pop(camera_id, None)
        if rt is not None:
            self._close(rt)

    def _open(self, rt: CameraRuntime) -> None:
        if isinstance(rt.reader, LiveReader):
            rt.reader.start()
        else:
            rt.frames = rt.reader.frames()

    def _close(self, rt: CameraRuntime) -> None:
        if isinstance(rt.reader, LiveReader):
            rt.reader.stop()
        with self._changes:  # not inside a batch
            self._finish(rt)

    def _runtime(self, camera: Camera) -> CameraRuntime:
        return CameraRuntime(camera, self.taxonomy, self.clock_start, self.alert_threshold, self.live_clock,
                             stages=self.crop_stages)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the loop ends (all sources were files, `on_end` returned) or `timeout`;
        True if it ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:
            log.exception("pipeline: the frame loop stopped")
            self.stopped_by = f"the frame loop stopped: {type(exc).__name__}: {exc}"[:500]

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._changes:
                files = [rt for rt in self.runtimes.values() if rt.frames is not None]
                lives = [rt for rt in self.runtimes.values() if isinstance(rt.reader, LiveReader)]
                if not (files or lives) and not self.persistent:
                    if self.on_end is not None:
                        # Still holding _changes: a camera added meanwhile comes in after the
                        # loop has ended, and the registry starts a new one for it.
                        self.on_end()
                    return
                batch: list[Frame] = []
                for rt in lives:
                    frame = rt.reader.take() if rt.held is None else None  # type: ignore[union-attr]
                    if frame is not None:
                        batch.append(frame)
                batch.extend(self._next_file_frames(files))
                busy = bool(batch) or self.checking
                if busy:
                    try:
                        self.process(batch)
                    except Exception:  # a bad batch must not end a city's monitoring
                        log.exception("pipeline: batch failed")
                        self._drop_check()
            if not busy:
                self._stop.wait(0.05)

    def _next_file_frames(self, files: list[CameraRuntime]) -> list[Frame]:
        """The next frame of each file/folder camera; a camera at its end leaves `files` and
        closes what it had open. A camera whose tiled check is running gives none."""
        batch = []
        for rt in list(files):
            if rt.held is not None:
                continue
            try:
                frame = next(rt.frames, None)  # type: ignore[arg-type]
            except Exception as exc:  # one camera's broken source must not stop the others
                log.exception("camera %s: its source failed", rt.camera.id)
                rt.reader.health.error(f"the source failed: {type(exc).__name__}: {exc}"[:500])
                rt.reader.health.state = "failed"
                frame = None
            if frame is None:
                files.remove(rt)
                rt.frames = None
                self._finish(rt)
            else:
                batch.append(frame)
        return batch

    # --- one batch ------------------------------------------------------------------------

    def process(self, frames: list[Frame]) -> list[ViolationEvent]:
        """Detect on the frames that need it (one batch), then track and apply rules per camera;
        run a part of the tiled check in flight, and apply its frame once it is complete."""
        self._hand_out(frames)
        self.last_analysed = []
        out: list[ViolationEvent] = []
        runtimes = [self.runtimes[f.camera] for f in frames]
        for rt in runtimes:
            if rt.held is not None:
                # A caller feeding frames itself (the loops never take a held camera's frames):
                # the check's frame is older, so it reaches the tracker first.
                out += self._run_check(rt, max_images=None)
        # The check in flight runs its next part first: if that completes it, a camera due in
        # this batch can start the next check now rather than at its next frame.
        part_ran = self._checking is not None
        if part_ran:
            out += self._run_check(self._checking, TILED_IMAGES_PER_BATCH)
        wanted = [
            i for i, (rt, f) in enumerate(zip(runtimes, frames))
            if not self.motion_gating or rt.needs_detection(f)
        ]
        # One tiled check at a time and within the tiled budget; a camera whose check must
        # wait gets its ordinary detection now and stays due for the next batch.
        due = [i for i in wanted if runtimes[i].tiled_check_due(frames[i])]  # each camera's first frame sets its phase
        starting = due[0] if due and self._checking is None and self.tiled_budget.available() else None
        for i in due:
            self._note_wait(runtimes[i], frames[i].timestamp, started=i == starting)
        batched = [i for i in wanted if i != starting]
        results: dict[int, Detections] = {}
        if batched:
            found = self.detector.detect([frames[i].image for i in batched])
            results = dict(zip(batched, found))
            self.stats["batches"] += 1
        if starting is not None:
            rt, frame = runtimes[starting], frames[starting]
            rt.held = HeldFrame(frame, self.detector.tiled_check(frame.image, tile=rt.camera.tile_size))
            rt.tiled_period = rt.tiled_period_of(frame.timestamp)
            self._checking = rt
        self.stats["detected"] += len(wanted)
        self.stats["frames"] += len(frames)
        for i, (rt, frame) in enumerate(zip(runtimes, frames)):
            rt.last_frame_at = frame.timestamp
            if i == starting:
                continue
            if i in results:
                out += self._analyse(rt, frame, results[i])
            else:
                tracks = rt.tracker.touch(frame.timestamp)
                transitions = rt.rules.update(tracks, rt.zone_map(frame.image), frame.timestamp, None, detected=False)
                out.extend(self._emit(rt, t) for t in transitions)
                self.last_analysed.append(frame)
        if self._checking is not None and not part_ran:  # at most one part a batch
            out += self._run_check(self._checking, TILED_IMAGES_PER_BATCH)
        return out

    def _note_wait(self, rt: CameraRuntime, at: datetime, started: bool) -> None:
        """A due check either starts or waits; one that started after waiting counts the
        periods it waited through (each of them had no check)."""
        if not started:
            if rt.tiled_waiting_since is None:
                rt.tiled_waiting_since = at
            return
        if rt.tiled_waiting_since is not None:
            self.stats["tiled_missed"] += rt.tiled_period_of(at) - rt.tiled_period_of(rt.tiled_waiting_since)
            rt.tiled_waiting_since = None

    def _analyse(self, rt: CameraRuntime, frame: Frame, dets: Detections) -> list[ViolationEvent]:
        """One camera's detected frame through its tracker and rules."""
        zones = rt.zone_map(frame.image)
        found = dets
        if rt.scene is not None:
            dets = _merge(dets, rt.scene.update(frame, dets, zones))
        tracks = rt.tracker.update(dets, frame.timestamp)
        rt.last_detect = frame.timestamp
        if self.motion_gating:
            rt.motion.reference(frame.image)
        transitions = rt.rules.update(tracks, zones, frame.timestamp, frame.image, detected=True,
                                      detections=dets, crop_labels=self._crop_labels(rt, frame, tracks))
        self._offer_sample(rt, frame, found)
        self.last_analysed.append(frame)
        return [self._emit(rt, t) for t in transitions]

    def _run_check(self, rt: CameraRuntime, max_images: int | None) -> list[ViolationEvent]:
        """Run up to `max_images` more of `rt`'s tiled check (None: the rest); once it is
        complete, its frame goes through the camera's tracker and rules."""
        held = rt.held
        assert held is not None
        started = time.monotonic()
        try:
            complete = held.check.run(max_images)
        finally:
            self.tiled_budget.spend(time.monotonic() - started)
        if not complete:
            return []
        rt.held = None
        if self._checking is rt:
            self._checking = None
        self.stats["tiled"] += 1
        rt.tiled_checked_at = held.frame.timestamp
        return self._analyse(rt, held.frame, held.check.result)

    def _drop_check(self) -> None:
        """Forget the check in flight (it failed, or its camera left): its frame is skipped,
        as a frame the sampler never took, and the camera's frames flow again."""
        if self._checking is not None:
            self._checking.held = None
            self._checking = None

    def _crop_labels(self, rt: CameraRuntime, frame: Frame, tracks: list[Track]) -> dict[str, dict[int, CropLabel]]:
        """Each trained stage on the crops it judges: tracks seen in this frame, of its own
        class, watched by a rule that uses it."""
        out: dict[str, dict[int, CropLabel]] = {}
        for name, classes in rt.rules.stage_classes.items():
            stage = self.crop_stages[name]
            judged = [t for t in tracks if t.class_name == stage.stage_class and t.class_name in classes
                      and t.last_seen == frame.timestamp]
            if judged:
                labels = stage.classify(frame.image, np.stack([t.box for t in judged]))
                out[name] = {t.id: label for t, label in zip(judged, labels)}
        return out

    def _offer_sample(self, rt: CameraRuntime, frame: Frame, dets: Detections) -> None:
        """The detector's own detections (not scene-change blobs) go with the frame."""
        if self.sampler is None or self.on_sample is None:
            return
        sample = self.sampler.consider(rt.camera.id, frame.timestamp, frame.image, dets, rt.rules.score_thresholds,
                                       self.detector.info.version, flips=rt.tracker.flips,
                                       dropped_for_score=len(rt.rules.dropped_for_score),
                                       scene_zone_types=rt.rules.scene_zone_types,
                                       vehicle_parts=rt.rules.vehicle_parts)
        if sample is None:
            return
        self.stats["sampled"] += 1
        try:
            self.on_sample(sample)
        except Exception:
            log.exception("on_sample callback failed for %s at %s", sample.camera, sample.taken_at)

    def _finish(self, rt: CameraRuntime) -> None:
        if self._checking is rt:
            self._drop_check()
        for t in rt.rules.close_all():
            self._emit(rt, t)

    # --- events and evidence --------------------------------------------------------------

    def _emit(self, rt: CameraRuntime, transition: Transition) -> ViolationEvent:
        cand = transition.candidate
        frame = None
        if transition.new_evidence and cand.best_frame is not None and cand.best_box is not None:
            frame = EvidenceFrame(box=tuple(float(v) for v in cand.best_box), image=cand.best_frame,
                                  label=f"{cand.rule.violation.id} {cand.best_score:.2f} {cand.zone.name}",
                                  detections=cand.best_detections, taken_at=cand.best_at)
        elif cand.last_frame is not None and cand.last_box is not None:
            # No better frame: the latest sighting's, for the case's timeline (never its photo).
            frame = EvidenceFrame(box=tuple(float(v) for v in cand.last_box), image=cand.last_frame,
                                  label=f"{cand.rule.violation.id} {cand.zone.name}",
                                  detections=cand.last_detections, best=False, taken_at=cand.last_at)
        if frame is not None and frame.best and self.evidence is not None:
            stored = self.evidence.write(f"{rt.camera.id}/{cand.event_id}", frame)
            cand.evidence = tuple(str(self.evidence.root / item.path) for item in stored)
        event = self._event(rt, transition.type, cand)
        if self._collected is not None:
            self._collected.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event, frame)
            except Exception:
                log.exception("on_event callback failed for %s", event.event_id)
        return event

    def _event(self, rt: CameraRuntime, kind: str, cand: Candidate) -> ViolationEvent:
        camera, violation = rt.camera, cand.rule.violation
        return ViolationEvent(
            type=kind,
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
            location=camera.location,
            source="scene_change" if cand.rule.scene_change else "detector",
            model_version=self.detector.info.version,
            **_stage_fields(cand),
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


def _stage_fields(cand: Candidate) -> Mapping[str, object]:
    label = cand.stage_label if cand.rule.stage_trained else None
    return {} if label is None else {"stage_label": label.label, "stage_score": min(max(label.score, 0.0), 1.0)}


class _FrameWaiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.frame: Frame | None = None


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
