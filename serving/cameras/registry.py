"""The cameras a service runs: those of the config file (read-only) and those added through
the API (stored in the database), and the one pipeline that streams them."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from detector.taxonomy import Taxonomy
from serving.audit import record, record_alone
from serving.cameras.credentials import has_clear_password, install_log_redaction, redact
from serving.cameras.schema import Camera, parse_cameras
from serving.pipeline import NO_TILED_CHECK
from serving.store.db import Database
from serving.store.models import CameraRecord

log = logging.getLogger("gridwatch.cameras")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


class CameraError(ValueError):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class CameraRegistry:
    """Cameras from the config file (read-only) and from the API (stored), run by one pipeline.

    A change through the API touches that camera only: the running pipeline adds, replaces
    or removes it between batches, and every other camera keeps its stream, tracks and open
    events (a restart of all of them would close and reopen their events as new sightings)."""

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
        install_log_redaction()  # stream readers log the URLs they fail to open

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

    def describe_all(self, *, show_source: bool = False) -> list[dict[str, Any]]:
        """Every camera as `describe` shows it, from one reading of the pipeline's health."""
        health = self.health()
        return [self._described(camera, show_source, health.get(camera.id)) for camera in self.all().values()]

    def describe(self, camera: Any, *, show_source: bool = False) -> dict[str, Any]:
        """A camera as shown: its source (as configured, password masked) only with
        `show_source` (admins); the others see no source at all."""
        return self._described(camera, show_source, self.health().get(camera.id))

    def _described(self, camera: Any, show_source: bool, health: dict[str, Any] | None) -> dict[str, Any]:
        config = camera.model_dump(mode="json")
        if show_source:
            config["source"] = redact(camera.configured_source)
        else:
            config.pop("source", None)
            if health is not None:
                health.pop("source", None)
                if isinstance(health.get("last_error"), str):  # stream errors quote the URL
                    health["last_error"] = _URL.sub("<source>", health["last_error"])
        return {
            "id": camera.id,
            "origin": "file" if camera.id in self.file_cameras else "api",
            "config": config,
            "health": health,
        }

    def health(self) -> dict[str, dict[str, Any]]:
        """Each camera's stream health, with its tiled checks (`TiledCheckState.to_json`):
        how long a due check has waited its turn, when the last one looked (None: none)."""
        pipeline = self.pipeline
        if pipeline is None:
            return {}
        try:
            checks = pipeline.tiled_checks()
            return {cid: {**_shown(h.to_json()), **checks.get(cid, NO_TILED_CHECK).to_json()}
                    for cid, h in pipeline.health.items()}
        except Exception:  # noqa: BLE001 - health is best-effort, never an error page
            return {}

    def add(self, config: dict[str, Any], *, replace: bool = False, actor: str = "system") -> Any:
        try:
            return self._add(config, replace=replace, actor=actor)
        except CameraError as exc:  # a refused add is audited too: who tried what, and why not
            record_alone(self.db, actor, "camera.add_refused", f"camera:{str(config.get('id'))[:128]}",
                         {"status": exc.status, "error": redact(str(exc))[:500]})
            raise

    def _add(self, config: dict[str, Any], *, replace: bool, actor: str) -> Any:
        camera = self._validate(config)
        if has_clear_password(camera.configured_source):  # the entry is stored as given
            raise CameraError(f"camera {camera.id!r}, field source: a password written into the source would be "
                              "stored in the database in clear; name an environment variable instead, "
                              "e.g. rtsp://USER:${CAMERA_GATE_PW}@HOST/PATH (see serving/cameras/credentials.py)")
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
            self._apply(camera.id, camera)
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
            self._apply(camera_id, None)

    def start(self) -> None:
        with self._lock:
            cameras = list(self.all().values())
            if not cameras:
                return
            try:
                self.pipeline = self.start_pipeline(cameras)
                self.pipeline_error = ""
            except Exception as exc:  # noqa: BLE001 - the API and delivery keep running
                self.pipeline, self.pipeline_error = None, redact(f"{type(exc).__name__}: {exc}")
                log.exception("pipeline failed to start")

    @property
    def pipeline_problem(self) -> str:
        """Why cameras are not being analysed: the pipeline failed to start, or its loop
        stopped on an error (a cluster's coordinator reports its own state); "" when neither."""
        return self.pipeline_error or getattr(self.pipeline, "stopped_by", "")

    def stop(self) -> None:
        with self._lock:
            if self.pipeline is not None:
                self.pipeline.stop()
                self.pipeline = None

    def _apply(self, camera_id: str, camera: Camera | None) -> None:
        """One camera added or changed (`camera`) or removed (None), in the running pipeline."""
        with self._lock:
            pipeline = self.pipeline
            if hasattr(pipeline, "set_cameras") or not hasattr(pipeline, "add_camera") or pipeline.wait(0):
                self.restart()  # cluster mode, or no loop running (none yet, or its files all ended)
                return
            if camera is None:
                pipeline.remove_camera(camera_id)
            else:
                pipeline.add_camera(camera)
            if pipeline.wait(0):  # the loop ended just before the camera came in
                self.restart()

    def restart(self) -> None:
        with self._lock:
            if hasattr(self.pipeline, "set_cameras"):  # cluster mode: the workers take the change
                self.pipeline.set_cameras(list(self.all().values()))
                return
            self.stop()
            self.start()

    def stats(self) -> dict[str, int]:
        return dict(getattr(self.pipeline, "stats", {}) or {})


def _shown(health: dict[str, Any]) -> dict[str, Any]:
    """A stream's health with its source's password and any in its last error masked."""
    for key in ("source", "last_error"):
        if isinstance(health.get(key), str):
            health[key] = redact(health[key])
    return health
