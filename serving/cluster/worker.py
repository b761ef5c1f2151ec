"""A camera worker: one Ray actor running the existing Pipeline for the cameras it holds.

Each worker has its stream readers, one ONNX Runtime session, the tracker and rules, and
batches detection across its cameras (all of that is `serving.pipeline.Pipeline`, run
persistent so cameras come and go with their leases). Events leave through a bounded queue
that the serving process drains with `take_events`: when the case store is slow the queue
fills, the pipeline blocks on it, and the readers keep only their newest frame; nothing is
dropped. Every event goes out stamped with the fencing number its camera was granted under.

The class is plain Python; the coordinator wraps it with `ray.remote` when it starts one, so
importing this module never needs Ray.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from serving.cameras import Camera
from serving.events import ViolationEvent
from serving.evidence import EvidenceFrame
from serving.pipeline import Pipeline, TiledCheckState
from serving.pipeline.uncertainty import DailyBudget, LabellingSample, UncertaintySampler
from serving.settings import Settings, load_detector

log = logging.getLogger("gridwatch.cluster.worker")

# Labelling samples carried back per heartbeat: each holds a full frame.
SAMPLES_PER_REPORT = 4


@dataclass(frozen=True)
class FencedEvent:
    """One event as a worker hands it back: the event, its evidence frame (numpy, through
    Ray's object store), and the lease it was seen under."""

    event: ViolationEvent
    fencing: int
    frame: EvidenceFrame | None = None


@dataclass
class WorkerReport:
    """A worker's answer to a heartbeat: what it runs and how it is doing."""

    worker: str
    node: str
    pid: int
    cameras: dict[str, int]  # camera -> fencing number held
    health: dict[str, dict[str, Any]]  # camera -> StreamHealth.to_json()
    stats: dict[str, int]  # the pipeline's counters since start (frames, detected, tiled, ...)
    queue_depth: int  # events waiting for the serving process to take them
    detect_ms: float  # mean per detector call, last window
    # Seconds of this worker's time each camera took (decode of file sources + detect +
    # track) per second of wall time: the measured cost assignment balances on.
    camera_cost: dict[str, float] = field(default_factory=dict)
    # Unsure frames for the labelling queue since the last report (the serving process holds
    # the cities' daily budget and stores them), and those a full hand-over queue turned away.
    samples: list[LabellingSample] = field(default_factory=list)
    samples_dropped: int = 0
    # Its cameras' tiled checks: a due one waiting its turn, the last one done (Pipeline.tiled_checks).
    tiled_checks: dict[str, TiledCheckState] = field(default_factory=dict)


class TimedDetector:
    """The detector with its call time counted (detect ms in the worker's metrics)."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.calls, self.seconds = 0, 0.0

    @property
    def info(self) -> Any:
        return self.detector.info

    @property
    def second_stage(self) -> Any:
        return getattr(self.detector, "second_stage", {})

    def detect(self, images: list) -> list:
        return self._timed(self.detector.detect, images)

    def detect_tiled(self, image: Any, **options: Any) -> Any:
        return self._timed(self.detector.detect_tiled, image, **options)

    def tiled_check(self, image: Any, **options: Any) -> Any:
        check = self.detector.tiled_check(image, **options)
        untimed = check.detect
        check.detect = lambda images: self._timed(untimed, images)  # each part is a detector call
        return check

    def _timed(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - start


class WorkerPipeline(Pipeline):
    """The pipeline, metered per camera, and (optionally) replaying file sources at a set
    multiple of real time rather than as fast as the CPU goes (archived footage standing in
    for live cameras: the cluster test and `gridwatch bench --cluster`)."""

    def __init__(self, *args: Any, replay_speed: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, persistent=True, **kwargs)
        self.replay_speed = replay_speed
        self.busy: dict[str, float] = defaultdict(float)  # camera -> seconds of work
        self._checked = 0.0  # seconds spent in tiled checks' parts since start
        self._replay_origin: dict[str, tuple[float, datetime]] = {}

    def add_camera(self, camera: Camera) -> None:
        self._replay_origin.pop(camera.id, None)
        self.busy.pop(camera.id, None)
        super().add_camera(camera)

    def remove_camera(self, camera_id: str) -> None:
        super().remove_camera(camera_id)
        self.busy.pop(camera_id, None)

    def _next_file_frames(self, files: list) -> list:
        start = time.perf_counter()
        batch = super()._next_file_frames(files)
        if batch:
            share = (time.perf_counter() - start) / len(batch)
            for frame in batch:
                self.busy[frame.camera] += share
        if self.replay_speed:
            self._pace(batch)
        return batch

    def _pace(self, batch: list) -> None:
        due = 0.0
        for frame in batch:
            origin = self._replay_origin.setdefault(frame.camera, (time.monotonic(), frame.timestamp))
            at = origin[0] + (frame.timestamp - origin[1]).total_seconds() / self.replay_speed
            due = max(due, at)
        self._stop.wait(max(0.0, due - time.monotonic()))

    def process(self, frames: list) -> list:
        start, checked = time.perf_counter(), self._checked
        try:
            return super().process(frames)
        finally:
            # A tiled check's parts were charged to its own camera (_run_check); the rest of the
            # batch's time is shared by the frames in it.
            spent = time.perf_counter() - start - (self._checked - checked)
            share = max(0.0, spent) / max(1, len(frames))
            for frame in frames:
                self.busy[frame.camera] += share

    def _run_check(self, rt: Any, max_images: int | None) -> list:
        start = time.perf_counter()
        try:
            return super()._run_check(rt, max_images)
        finally:
            spent = time.perf_counter() - start
            self._checked += spent
            self.busy[rt.camera.id] += spent


class CameraWorker:
    """The actor (see the module docstring). Methods are called from the serving process's
    coordinator; the actor runs them on a few threads so a heartbeat is answered while
    `assign` or `release` wait for a full queue."""

    def __init__(self, worker_id: str, settings: Settings, queue_limit: int = 64,
                 replay_speed: float | None = None) -> None:
        from detector.taxonomy import load_taxonomy

        self.worker_id = worker_id
        self.node = socket.gethostname()
        try:
            import ray

            self.node = ray.get_runtime_context().get_node_id()[:12]
        except Exception:  # noqa: BLE001 - outside Ray (unit use): the host name will do
            pass
        self.detector = TimedDetector(load_detector(settings))
        self.fencing: dict[str, int] = {}
        self.out: queue.Queue[FencedEvent] = queue.Queue(maxsize=max(1, queue_limit))
        # Learned alert thresholds of this worker's cameras, as the coordinator last sent them.
        self.learned: dict[str, dict[str, float]] = {}
        # Active learning as in one process, but the budget here only spaces samples out: the
        # per-camera daily budget is the serving process's (it knows what was spent before the
        # camera came to this worker).
        labelling = settings.labelling
        sampler = UncertaintySampler(labelling.band, DailyBudget(
            labelling.daily_budget_per_camera, ZoneInfo(labelling.timezone), labelling.min_gap_s))
        self.samples: queue.Queue[LabellingSample] = queue.Queue(maxsize=max(1, queue_limit))
        self.samples_dropped = 0
        self.pipeline = WorkerPipeline([], self.detector, load_taxonomy(settings.taxonomy_file),
                                       on_event=self._hand_over, replay_speed=replay_speed,
                                       alert_threshold=self._learned_alert,
                                       sampler=sampler, on_sample=self._hand_over_sample)
        self.pipeline.start()
        self._lock = threading.Lock()
        self._last = (time.monotonic(), {})  # for per-second costs between reports
        self._detect_mark = (0, 0.0)

    def _learned_alert(self, camera: str, violation: str) -> float | None:
        return self.learned.get(camera, {}).get(violation)

    def _hand_over_sample(self, sample: LabellingSample) -> None:
        # Never blocks the cameras: a sample is optional (the next unsure frame serves as well).
        try:
            self.samples.put_nowait(sample)
        except queue.Full:
            self.samples_dropped += 1

    def _hand_over(self, event: ViolationEvent, frame: EvidenceFrame | None) -> None:
        # Blocks while the queue is full: that is the back-pressure on the readers.
        self.out.put(FencedEvent(event, self.fencing.get(event.camera, -1), frame))

    # -- called by the coordinator --------------------------------------------------------------
    def assign(self, cameras: list[tuple[Camera, int]]) -> None:
        with self._lock:
            for camera, fencing in cameras:
                self.fencing[camera.id] = fencing
                self.pipeline.add_camera(camera)
                log.info("worker %s: camera %s under fencing %d", self.worker_id, camera.id, fencing)

    def release(self, camera_ids: list[str], drain: bool = False) -> list[FencedEvent]:
        """Stop cameras that are moving away; what they had open closes under their lease.

        `drain` (a hand-off: the lease is still theirs): their events still queued here come
        back with this answer, so the serving process files them before the lease moves.
        Without it (a lease already gone) they stay queued and are refused at ingest."""
        with self._lock:
            for camera_id in camera_ids:
                self.pipeline.remove_camera(camera_id)  # may wait while the queue is full
                self.fencing.pop(camera_id, None)
        if not drain:
            return []
        wanted = set(camera_ids)
        with self.out.mutex:  # take them out, the other cameras' events keep their order
            drained = [item for item in self.out.queue if item.event.camera in wanted]
            kept = [item for item in self.out.queue if item.event.camera not in wanted]
            self.out.queue.clear()
            self.out.queue.extend(kept)
            self.out.not_full.notify_all()
        return drained

    def release_all(self) -> None:
        self.release(list(self.fencing))

    def take_events(self, limit: int, wait_s: float = 0.5) -> list[FencedEvent]:
        """Up to `limit` events, waiting up to `wait_s` for the first."""
        taken: list[FencedEvent] = []
        try:
            taken.append(self.out.get(timeout=wait_s))
            while len(taken) < limit:
                taken.append(self.out.get_nowait())
        except queue.Empty:
            pass
        return taken

    def report(self, learned: dict[str, dict[str, float]] | None = None) -> WorkerReport:
        """How this worker is doing; `learned`, the learned alert thresholds of its cameras
        (serving/cases/thresholds.py), replaces the last ones the heartbeat brought."""
        if learned is not None:
            self.learned = learned
        now = time.monotonic()
        then, busy_then = self._last
        busy = dict(self.pipeline.busy)
        span = max(1e-3, now - then)
        cost = {cid: max(0.0, busy.get(cid, 0.0) - busy_then.get(cid, 0.0)) / span for cid in self.fencing}
        self._last = (now, busy)
        calls, seconds = self.detector.calls, self.detector.seconds
        done = calls - self._detect_mark[0]
        detect_ms = 1000 * (seconds - self._detect_mark[1]) / done if done else 0.0
        self._detect_mark = (calls, seconds)
        health = {cid: h.to_json() for cid, h in self.pipeline.health.items() if cid in self.fencing}
        samples: list[LabellingSample] = []
        try:
            while len(samples) < SAMPLES_PER_REPORT:
                samples.append(self.samples.get_nowait())
        except queue.Empty:
            pass
        return WorkerReport(worker=self.worker_id, node=self.node, pid=os.getpid(), cameras=dict(self.fencing),
                            health=health, stats=dict(self.pipeline.stats), queue_depth=self.out.qsize(),
                            detect_ms=detect_ms, camera_cost=cost, samples=samples,
                            samples_dropped=self.samples_dropped,
                            tiled_checks={cid: state for cid, state in self.pipeline.tiled_checks().items()
                                          if cid in self.fencing})

    def stop(self) -> None:
        self.pipeline.stop()
