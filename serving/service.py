"""One gridwatch process: settings -> database -> detector -> stream pipeline -> cases -> delivery.

`GridwatchService` owns every long-lived part and their order of start and stop; the API
reads it through `app.state.service`. Shutdown stops intake first (streams), then lets the
case writer and the delivery worker finish what is in flight, then closes the database.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from collections import deque
from typing import Any

import cv2
import numpy as np
from sqlalchemy import func, select, text

from detector.detections import Detections
from detector.model import ModelInfo
from detector.taxonomy import load_taxonomy
from serving.audit import record
from serving.auth import ensure_admin_key
from serving.cameras import Camera
from serving.cameras.registry import CameraRegistry
from serving.cases import CasePolicy, CaseService
from serving.delivery import DeliveryConfig, DeliveryWorker, outbox_stats
from serving.events import ViolationEvent
from serving.evidence import EvidenceFrame, EvidenceStore
from serving.live_model import LiveDetector
from serving.settings import Settings, load_detector
from serving.store.db import Database, schema_is_current
from serving.store.models import Case, Evidence

log = logging.getLogger("gridwatch.service")


class GridwatchService:
    def __init__(self, settings: Settings, *, file_cameras: list[Camera] | None = None, detector: Any = None) -> None:
        self.settings = settings
        if settings.ray_address:  # before anything is created: a SQLite file is refused here
            from serving.cluster.coordinator import require_cluster_database

            require_cluster_database(settings)
        self.coordinator: Any = None  # cluster mode: serving.cluster.coordinator.ClusterCoordinator
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url)
        self._schema_current = schema_is_current(self.db.engine)  # migrated just now
        self.taxonomy = load_taxonomy(settings.taxonomy_file)
        self.evidence = EvidenceStore(settings.resolved_evidence_dir)
        self.detector = LiveDetector(detector if detector is not None else load_detector(settings),
                                     load=lambda path: load_detector(settings, model=path),
                                     smoke_frames=self._recent_evidence_frames)
        public_url = settings.public_url or f"http://{settings.host}:{settings.port}"
        self.cases = CaseService(self.db, self.evidence, self.taxonomy, CasePolicy.from_settings(settings),
                                 model_version=lambda: self.detector.version, public_url=public_url,
                                 instance=settings.instance_id)
        delivery = DeliveryConfig.from_settings(settings)
        self.delivery = DeliveryWorker(self.db, delivery) if delivery else None
        self.cameras = CameraRegistry(self.db, self.taxonomy, settings.data_dir.resolve(), file_cameras or [],
                                      self._start_pipeline, settings.resolved_media_roots)
        self.new_admin_key = ensure_admin_key(self.db, settings.admin_key)
        # Events the database refused (briefly away): retried in order, never dropped.
        # The third item: the camera lease's fencing number (cluster mode), else None.
        self._retry: deque[tuple[ViolationEvent, EvidenceFrame | None, int | None]] = deque()
        self._retry_lock = threading.Lock()
        self._stop = threading.Event()
        self._retrier: threading.Thread | None = None
        self.counters = {"detect_requests": 0, "detections": 0, "events": 0, "event_failures": 0,
                         "events_fenced": 0}

    def _start_pipeline(self, cameras: list[Camera]) -> Any:
        if self.settings.ray_address:
            return self._start_cluster(cameras)
        from serving.pipeline import Pipeline

        pipeline = Pipeline(cameras, self.detector, self.taxonomy, on_event=self.on_event)
        pipeline.start()
        return pipeline

    def _start_cluster(self, cameras: list[Camera]) -> Any:
        """Cluster mode: the camera workers stand where the pipeline stands; camera changes
        through the API reach them as a new camera list, not a restart."""
        from serving.cluster.coordinator import ClusterCoordinator

        if self.coordinator is None:
            self.coordinator = ClusterCoordinator(self.settings, self.db, self.on_event,
                                                  backlog=lambda: len(self._retry))
            self.coordinator.connect()
        self.coordinator.set_cameras(cameras)
        return self.coordinator

    @property
    def model_version(self) -> str:
        return self.detector.version

    def reload_model(self, file: str | None = None, *, actor: str) -> ModelInfo:
        """Put the model file (again, after a promotion), or another file of the same folder,
        live; audited. ModelSwapError, and the old model keeps serving, when it is refused."""
        current = self.detector.info
        target = current.path if file is None else current.path.parent / Path(file).name
        info = self.detector.reload(target)
        with self.db.transaction() as session:
            record(session, actor, "model.reload", f"model:{info.path.name}",
                   {"version": current.version, "file": current.path.name},
                   {"version": info.version, "file": info.path.name})
        return info

    def _recent_evidence_frames(self, count: int = 3) -> list[np.ndarray]:
        """The last original evidence frames stored: what a new model is smoke-checked on."""
        with self.db.sessions() as session:
            paths = session.scalars(select(Evidence.path).where(Evidence.kind == "original")
                                    .order_by(Evidence.id.desc()).limit(count)).all()
        frames = [cv2.imread(str(self.evidence.resolve(p)), cv2.IMREAD_COLOR) for p in paths]
        return [f for f in frames if f is not None]

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.detector.watch(self.settings.model_watch_s)
        if self.delivery is not None:
            self.delivery.start()
        self._retrier = threading.Thread(target=self._retry_loop, name="gridwatch-event-retry", daemon=True)
        self._retrier.start()
        removed = self.evidence.remove_stale_partials()
        if removed:
            log.info("removed %d partial evidence file(s) left by an earlier process", removed)
        self.cases.end_stale(set(self.cameras.all()))
        self.log_delivery_routes()
        self.cameras.start()

    def log_delivery_routes(self) -> None:
        """One line per camera rule: how its cases reach the case system, so a setting that
        sends nothing is seen at start, not after a day of cases waiting for review."""
        pushed = (f"webhook to {self.settings.webhook_url}" if self.settings.webhook_url
                  else "never pushed (no webhook_url; case systems poll GET /v1/cases)")
        for camera in self.cameras.all().values():
            for rule in camera.rules:
                route = self.cases.policy.route(rule.violation, rule_score=rule.auto_confirm_score,
                                                scene_change=rule.scene_change)
                log.info("camera %s, %s: %s; %s", camera.id, rule.violation, route, pushed)

    def stop(self) -> None:
        self.detector.stop()
        self.cameras.stop()  # intake first: the pipeline closes open events into cases
        self._stop.set()
        if self._retrier is not None:
            self._retrier.join(5)
        self._drain_retries()
        if self.delivery is not None:
            self.delivery.stop()
        self.db.close()

    # -- events ----------------------------------------------------------------------------
    def on_event(self, event: ViolationEvent, frame: EvidenceFrame | None = None, fencing: int | None = None) -> None:
        """`fencing`: from a camera worker (cluster mode), the lease the camera ran under."""
        self.counters["events"] += 1
        with self._retry_lock:
            if self._retry:  # keep order: earlier failures go first
                self._retry.append((event, frame, fencing))
                return
        try:
            self._ingest(event, frame, fencing)
        except Exception:  # noqa: BLE001 - the database may be away; keep the event
            self.counters["event_failures"] += 1
            log.exception("event %s not stored yet; will retry", event.event_id)
            with self._retry_lock:
                self._retry.append((event, frame, fencing))
            return
        if self.delivery is not None:
            self.delivery.wake()

    def _ingest(self, event: ViolationEvent, frame: EvidenceFrame | None, fencing: int | None) -> None:
        from serving.cluster.leases import StaleLeaseError

        try:
            self.cases.ingest(event, frame, fencing=fencing)
        except StaleLeaseError as exc:  # a worker that lost the camera: refused, counted, never filed
            self.counters["events_fenced"] += 1
            log.warning("event %s (%s) refused: %s", event.event_id, event.type, exc)

    def _drain_retries(self) -> bool:
        while True:
            with self._retry_lock:
                if not self._retry:
                    return True
                event, frame, fencing = self._retry[0]
            try:
                self._ingest(event, frame, fencing)
            except Exception:  # noqa: BLE001
                return False
            with self._retry_lock:
                self._retry.popleft()
            if self.delivery is not None:
                self.delivery.wake()

    def _retry_loop(self) -> None:
        while not self._stop.wait(1.0):
            self._drain_retries()

    # -- detection ---------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> tuple[Detections, str]:
        """Detections and the version of the model that made them (a swap may be under way)."""
        model = self.detector.current
        result = model.detect([image])[0]
        self.counters["detect_requests"] += 1
        self.counters["detections"] += len(result)
        return result, model.info.version

    # -- health and metrics ------------------------------------------------------------------
    def readiness(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            with self.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok" if self._schema_current else "schema not current"
        except Exception as exc:  # noqa: BLE001
            checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["detector"] = "ok"
        checks["model"] = self.detector.version
        checks["pipeline"] = self.cameras.pipeline_error or "ok"
        if self.coordinator is not None:
            checks["cluster"] = self.coordinator.error or "ok"
        return checks

    def metrics(self) -> dict[str, Any]:
        with self.db.sessions() as session:
            by_state = dict(session.execute(select(Case.state, func.count()).group_by(Case.state)).all())
            by_review = dict(session.execute(select(Case.review_status, func.count()).group_by(Case.review_status)).all())
        return {
            "pipeline": self.cameras.stats(),
            "counters": dict(self.counters),
            "cases_by_state": by_state,
            "cases_by_review": by_review,
            "case_counts": dict(self.cases.counts),
            "outbox": outbox_stats(self.db),
            "cameras": self.cameras.health(),
            "pending_events": len(self._retry),
            "cluster": self.coordinator.status() if self.coordinator is not None else None,
            "model": {"version": self.detector.version, "swaps": self.detector.swaps},
        }

