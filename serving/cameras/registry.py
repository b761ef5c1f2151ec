"""The cameras a service runs: those of the config file (read-only) and those added through
the API (stored in the database), and the one pipeline that streams them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from detector.taxonomy import Taxonomy
from serving.audit import record
from serving.cameras.schema import Camera, parse_cameras
from serving.store.db import Database
from serving.store.models import CameraRecord

log = logging.getLogger("gridwatch.cameras")


class CameraError(ValueError):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class CameraRegistry:
    """Cameras from the config file (read-only) and from the API (stored), run by one pipeline.

    A change through the API rebuilds the pipeline with the new camera list: simple, and
    changes are rare next to frames."""

    def __init__(self, db: Database, taxonomy: Taxonomy, base_dir: Path, file_cameras: list[Camera],
                 start_pipeline: Callable[[list[Camera]], Any], media_roots: tuple[Path, ...] = ()) -> None:
        self.db = db
        self.taxonomy = taxonomy
        self.base_dir = base_dir  # relative camera sources from the API resolve here
        self.media_roots = media_roots  # the only places an API camera's file source may be
        self.file_cameras = {c.id: c for c in file_cameras}
        self.start_pipeline = start_pipeline
        self.pipeline: Any = None
        self._lock = threading.RLock()
        self.pipeline_error = ""

    def _validate(self, config: dict[str, Any]) -> Camera:
        try:
            parsed = parse_cameras({"cameras": [config]}, self.base_dir, "camera", self.taxonomy, self.media_roots)
        except ValueError as exc:
            raise CameraError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - odd input must be a 422, never a 500
            raise CameraError(f"camera: invalid configuration ({type(exc).__name__}: {exc})") from None
        return parsed.cameras[0]

    def stored(self) -> dict[str, Any]:
        with self.db.sessions() as session:
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

    def add(self, config: dict[str, Any], *, replace: bool = False, actor: str = "system") -> Any:
        camera = self._validate(config)
        with self._lock:
            if camera.id in self.file_cameras:
                raise CameraError(f"camera {camera.id!r} comes from the config file; edit it there", 409)
            with self.db.transaction() as session:
                row = session.get(CameraRecord, camera.id)
                if row is not None and not replace:
                    raise CameraError(f"camera {camera.id!r} exists", 409)
                record(session, actor, "camera.replace" if row else "camera.add", f"camera:{camera.id}",
                       row.config if row else None, config)
                if row is None:
                    session.add(CameraRecord(id=camera.id, config=config))
                else:
                    row.config = config
            self.restart()
        return camera

    def remove(self, camera_id: str, *, actor: str = "system") -> None:
        with self._lock:
            if camera_id in self.file_cameras:
                raise CameraError(f"camera {camera_id!r} comes from the config file; edit it there", 409)
            with self.db.transaction() as session:
                row = session.get(CameraRecord, camera_id)
                if row is None:
                    raise CameraError(f"no camera {camera_id!r}", 404)
                record(session, actor, "camera.remove", f"camera:{camera_id}", row.config, None)
                session.delete(row)
            self.restart()

    def start(self) -> None:
        with self._lock:
            cameras = list(self.all().values())
            if not cameras:
                return
            try:
                self.pipeline = self.start_pipeline(cameras)
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
        with self._lock:
            if hasattr(self.pipeline, "set_cameras"):  # cluster mode: the workers take the change
                self.pipeline.set_cameras(list(self.all().values()))
                return
            self.stop()
            self.start()

    def stats(self) -> dict[str, int]:
        return dict(getattr(self.pipeline, "stats", {}) or {})
