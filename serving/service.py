"""One gridwatch process: settings -> database -> detector -> stream pipeline -> cases -> delivery.

`GridwatchService` owns every long-lived part and their order of start and stop; the API
reads it through `app.state.service`. Shutdown stops intake first (streams), then lets the
case writer and the delivery worker finish what is in flight, then closes the database.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from detector.taxonomy import load_taxonomy
from serving.auth import ensure_admin_key
from serving.cases import CasePolicy, CaseService
from serving.delivery import DeliveryConfig, DeliveryWorker, outbox_stats
from serving.events import ViolationEvent
from serving.evidence import EvidenceStore
from serving.settings import Settings
from serving.store.db import Database, schema_is_current
from serving.store.models import Case, CameraRecord

log = logging.getLogger("gridwatch.service")


class CameraError(ValueError):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class CameraRegistry:
    """Cameras from the config file (read-only) and from the API (stored), run by one pipeline.

    A change through the API rebuilds the pipeline with the new camera list: simple, and
    changes are rare next to frames."""

    def __init__(self, service: GridwatchService, file_cameras: list[Any]) -> None:
        self.service = service
        self.file_cameras = {c.id: c for c in file_cameras}
        self.pipeline: Any = None
        self._lock = threading.RLock()
        self.pipeline_error = ""

    def _validate(self, config: dict[str, Any]) -> Any:
        from serving.cameras import parse_cameras

        try:
            parsed = parse_cameras({"cameras": [config]}, self.service.settings.data_dir.resolve(),
                                   "camera", self.service.taxonomy)
        except ValueError as exc:
            raise CameraError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - odd input must be a 422, never a 500
            raise CameraError(f"camera: invalid configuration ({type(exc).__name__}: {exc})") from None
        return parsed.cameras[0]

    def stored(self) -> dict[str, Any]:
        with self.service.db.sessions() as session:
            rows = session.scalars(select(CameraRecord).order_by(CameraRecord.id)).all()
        cameras = {}
        for row in rows:
            try:
                cameras[row.id] = self._validate(row.config)
            except CameraError as exc:  # a stored camera that no longer validates: report, keep others
                log.error("stored camera %s skipped: %s", row.id, exc)
        return cameras

    def all(self) -> dict[str, Any]:
        return {**self.stored(), **self.file_cameras}

    def describe(self, camera: Any) -> dict[str, Any]:
        health = self.health().get(camera.id)
        return {
            "id": camera.id,
            "origin": "file" if camera.id in self.file_cameras else "api",
            "config": camera.model_dump(mode="json"),
            "health": health,
        }

    def health(self) -> dict[str, dict[str, Any]]:
        pipeline = self.pipeline
        if pipeline is None:
            return {}
        try:
            return {cid: h.to_json() for cid, h in pipeline.health.items()}
        except Exception:  # noqa: BLE001 - health is best-effort, never an error page
            return {}

    def add(self, config: dict[str, Any], *, replace: bool = False) -> Any:
        camera = self._validate(config)
        with self._lock:
            if camera.id in self.file_cameras:
                raise CameraError(f"camera {camera.id!r} comes from the config file; edit it there", 409)
            with self.service.db.transaction() as session:
                row = session.get(CameraRecord, camera.id)
                if row is not None and not replace:
                    raise CameraError(f"camera {camera.id!r} exists", 409)
                if row is None:
                    session.add(CameraRecord(id=camera.id, config=config))
                else:
                    row.config = config
            self.restart()
        return camera

    def remove(self, camera_id: str) -> None:
        with self._lock:
            if camera_id in self.file_cameras:
                raise CameraError(f"camera {camera_id!r} comes from the config file; edit it there", 409)
            with self.service.db.transaction() as session:
                row = session.get(CameraRecord, camera_id)
                if row is None:
                    raise CameraError(f"no camera {camera_id!r}", 404)
                session.delete(row)
            self.restart()

    def start(self) -> None:
        with self._lock:
            cameras = list(self.all().values())
            if not cameras:
                return
            try:
                from serving.pipeline import Pipeline
            except ImportError as exc:
                self.pipeline_error = f"stream pipeline unavailable: {exc}"
                log.error(self.pipeline_error)
                return
            try:
                self.pipeline = Pipeline(cameras, self.service.detector, self.service.taxonomy,
                                         self.service.settings.data_dir / "frames", on_event=self.service.on_event)
                self.pipeline.start()
                self.pipeline_error = ""
            except Exception as exc:  # noqa: BLE001 - the API and delivery keep running
                self.pipeline, self.pipeline_error = None, f"{type(exc).__name__}: {exc}"
                log.exception("pipeline failed to start")

    def stop(self) -> None:
        with self._lock:
            if self.pipeline is not None:
                self.pipeline.stop()
                self.pipeline = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def stats(self) -> dict[str, int]:
        return dict(getattr(self.pipeline, "stats", {}) or {})


class GridwatchService:
    def __init__(self, settings: Settings, *, file_cameras: list[Any] | None = None, detector: Any = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url)
        self._schema_current = schema_is_current(self.db.engine)  # migrated just now
        self.taxonomy = load_taxonomy(settings.taxonomy_file)
        self.evidence = EvidenceStore(settings.resolved_evidence_dir)
        self.detector = detector if detector is not None else self._load_detector()
        info = getattr(self.detector, "info", None)
        self.model_version = getattr(info, "version", "") or ""
        public_url = settings.public_url or f"http://{settings.host}:{settings.port}"
        self.cases = CaseService(self.db, self.evidence, self.taxonomy, CasePolicy.from_settings(settings),
                                 model_version=self.model_version, public_url=public_url)
        delivery = DeliveryConfig.from_settings(settings)
        self.delivery = DeliveryWorker(self.db, delivery) if delivery else None
        self.cameras = CameraRegistry(self, file_cameras or [])
        self.new_admin_key = ensure_admin_key(self.db, settings.admin_key)
        # Events the database refused (briefly away): retried in order, never dropped.
        self._retry: deque[ViolationEvent] = deque()
        self._retry_lock = threading.Lock()
        self._stop = threading.Event()
        self._retrier: threading.Thread | None = None
        self.counters = {"detect_requests": 0, "detections": 0, "events": 0, "event_failures": 0}

    def _load_detector(self) -> Any:
        from detector.runtime import Detector

        s = self.settings
        return Detector(s.resolved_model(), score_threshold=s.score_threshold,
                        iou_threshold=s.iou_threshold, threads=s.threads)

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self.delivery is not None:
            self.delivery.start()
        self._retrier = threading.Thread(target=self._retry_loop, name="gridwatch-event-retry", daemon=True)
        self._retrier.start()
        self.cases.end_stale(set(self.cameras.all()))
        self.cameras.start()

    def stop(self) -> None:
        self.cameras.stop()  # intake first: the pipeline closes open events into cases
        self._stop.set()
        if self._retrier is not None:
            self._retrier.join(5)
        self._drain_retries()
        if self.delivery is not None:
            self.delivery.stop()
        self.db.close()

    # -- events ----------------------------------------------------------------------------
    def on_event(self, event: ViolationEvent) -> None:
        self.counters["events"] += 1
        with self._retry_lock:
            if self._retry:  # keep order: earlier failures go first
                self._retry.append(event)
                return
        try:
            self.cases.ingest(event)
        except Exception:  # noqa: BLE001 - the database may be away; keep the event
            self.counters["event_failures"] += 1
            log.exception("event %s not stored yet; will retry", event.event_id)
            with self._retry_lock:
                self._retry.append(event)
            return
        self._release_staged(event)
        if self.delivery is not None:
            self.delivery.wake()

    def _release_staged(self, event: ViolationEvent) -> None:
        """The pipeline's frames are staging: once the case holds its own hashed copies, the
        staged files go, so evidence is not kept twice."""
        staging = (self.settings.data_dir / "frames").resolve()
        for path in event.evidence:
            staged = Path(path).resolve()
            if staged.is_relative_to(staging):
                staged.unlink(missing_ok=True)

    def _drain_retries(self) -> bool:
        while True:
            with self._retry_lock:
                if not self._retry:
                    return True
                event = self._retry[0]
            try:
                self.cases.ingest(event)
            except Exception:  # noqa: BLE001
                return False
            with self._retry_lock:
                self._retry.popleft()
            self._release_staged(event)
            if self.delivery is not None:
                self.delivery.wake()

    def _retry_loop(self) -> None:
        while not self._stop.wait(1.0):
            self._drain_retries()

    # -- detection ---------------------------------------------------------------------------
    def detect(self, image: Any) -> Any:
        result = self.detector.detect([image])[0]
        self.counters["detect_requests"] += 1
        self.counters["detections"] += len(result)
        return result

    # -- health and metrics ------------------------------------------------------------------
    def readiness(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            with self.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok" if self._schema_current else "schema not current"
        except Exception as exc:  # noqa: BLE001
            checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["detector"] = "ok" if self.detector is not None else "not loaded"
        checks["pipeline"] = self.cameras.pipeline_error or "ok"
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
        }

