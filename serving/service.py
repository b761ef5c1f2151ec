"""One gridwatch process: settings -> database -> detector -> stream pipeline -> cases -> delivery.

`GridwatchService` owns every long-lived part and their order of start and stop; the API
reads it through `app.state.service`. Shutdown stops intake first (streams), then lets the
case writer and the delivery worker finish what is in flight, then closes the database.
"""

from __future__ import annotations

import logging
from dataclasses import replace
import threading
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import cv2
import numpy as np
from sqlalchemy import func, select

from detector.detections import Detections
from detector.model import ModelInfo
from detector.taxonomy import load_taxonomy
from serving.audit import record
from serving.auth import ensure_admin_key
from serving.cameras import Camera
from serving.cameras.registry import CameraRegistry
from serving.chain import MIRROR_NAME, ChainSigner, EvidenceChain, enrol_unchained, load_or_create_key
from serving.cases import CasePolicy, CaseService
from serving.cases.held import HeldEvents
from serving.cases.ingest import IngestResult
from serving.cluster.leases import StaleLeaseError
from serving.cases.recheck import RecheckWorker, recheck_counts
from serving.cases.thresholds import ThresholdBook
from serving.clock import SYSTEM_CLOCK, SteadyClock, WallClock
from serving.delivery import DeliveryConfig, DeliveryWorker, outbox_stats
from serving.events import ViolationEvent
from serving.evidence import EvidenceError, EvidenceFrame, EvidenceStore
from serving.health import Faults, Probes, camera_faults, held_fault
from serving.labelling.queue import LabellingQueue
from serving.live_model import LiveDetector, ModelSwapError
from serving.model_history import audit_history
from serving.privacy import PrivacyPolicy
from serving.retention import Retention
from serving.pipeline.outlet import Outlet
from serving.pipeline.uncertainty import DailyBudget, LabellingSample, UncertaintySampler
from serving.settings import Settings, load_detector
from serving.store.db import Database, schema_is_current
from serving.store.models import Case, Evidence
from serving.streams.readers import Frame, grab_frame

log = logging.getLogger("gridwatch.service")


class GridwatchService:
    def __init__(self, settings: Settings, *, file_cameras: list[Camera] | None = None, detector: Any = None,
                 clock: WallClock = SYSTEM_CLOCK) -> None:
        """`clock`: the wall clock (tests move theirs); live frames follow a steady clock made from it."""
        self.settings = settings
        self.clock = clock
        self.steady_clock = SteadyClock(clock)
        if settings.ray_address:  # before anything is created: a SQLite file is refused here
            from serving.cluster.coordinator import require_cluster_database

            require_cluster_database(settings)
        self.coordinator: Any = None  # cluster mode: serving.cluster.coordinator.ClusterCoordinator
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url, connect_timeout_s=settings.database_connect_timeout_s)
        self._schema_current = schema_is_current(self.db.engine)  # migrated just now
        self.taxonomy = load_taxonomy(settings.taxonomy_file)
        self.evidence = EvidenceStore(settings.resolved_evidence_dir)
        # Every evidence item and case decision into the hash chain (serving/chain.py).
        self.chain = EvidenceChain(settings.data_dir / MIRROR_NAME)
        self.chain.install(self.db)
        self.detector = LiveDetector(detector if detector is not None else load_detector(settings),
                                     load=lambda path: load_detector(settings, model=path),
                                     smoke_frames=self._recent_evidence_frames,
                                     on_swap=lambda info: audit_history(self.db, info.path.parent))
        public_url = settings.public_url or f"http://{settings.host}:{settings.port}"
        self.faults = Faults()  # before the parts that report into it
        self.thresholds = ThresholdBook(self.db, settings.thresholds, faults=self.faults)
        self.privacy = PrivacyPolicy.from_settings(settings.privacy)
        self.cases = CaseService(self.db, self.evidence, self.taxonomy,
                                 CasePolicy.from_settings(settings, self.thresholds.auto_confirm),
                                 model_version=lambda: self.detector.version, public_url=public_url,
                                 instance=settings.instance_id, recheck=settings.recheck,
                                 cameras=lambda: self.cameras.all(), thresholds=self.thresholds, clock=clock,
                                 decisions_per_min=settings.review_max_per_min,
                                 privacy=self.privacy, chain=self.chain)
        # Active learning: the sampler (and its day's budget) outlives pipeline restarts.
        zone = ZoneInfo(settings.labelling.timezone)
        self.labelling = LabellingQueue(self.db, self.evidence, lambda: list(self.detector.info.names.values()), zone,
                                        clock=clock)
        self.sampler = UncertaintySampler(settings.labelling.band, DailyBudget(
            settings.labelling.daily_budget_per_camera, zone, settings.labelling.min_gap_s, self.labelling.spent))
        # The pipeline's own sampler asks no database on the frame path: its budget only spaces
        # samples out; the day's budget (what the queue holds) is applied on the outlet's thread.
        self.frame_sampler = UncertaintySampler(settings.labelling.band, DailyBudget(
            settings.labelling.daily_budget_per_camera, zone, settings.labelling.min_gap_s))
        delivery = DeliveryConfig.from_settings(settings)
        self.delivery = DeliveryWorker(self.db, delivery, clock, faults=self.faults) if delivery else None
        self.cameras = CameraRegistry(self.db, self.taxonomy, settings.data_dir.resolve(), file_cameras or [],
                                      self._start_pipeline, settings.resolved_media_roots)
        self.rechecks = RecheckWorker(self.cases, self.cameras.all, self.detector, self._fresh_frame, self.taxonomy,
                                      settings.recheck, alert_threshold=self.thresholds.alert,
                                      notify=self._wake_delivery, faults=self.faults) \
            if self.cases.recheck is not None else None
        self.new_admin_key = ensure_admin_key(self.db, settings.admin_key)
        self.signer = ChainSigner(self.db, load_or_create_key(settings.resolved_evidence_key), self.cases.instance,
                                  timestamp_url=settings.timestamp_url)
        # The case writer's lock: a purge's tombstone and an ingest never draw the same chain position.
        self.retention = Retention(self.db, self.evidence, self.chain, settings.retention, lock=self.cases._lock)
        self._evidence_figures: dict[str, Any] = {}
        self.probes = Probes(self.faults, self.db, self.evidence, self.steady_clock)
        self._db_figures: dict[str, Any] = {"cases_by_state": {}, "cases_by_review": {}, "rechecks": {},
                                            "outbox": {"pending": 0, "delivered": 0, "dead": 0, "lag_s": 0.0}}
        # Events of our cameras the database or the evidence disk refused: retried in order,
        # and spooled to disk so that a restart during an outage finds them again.
        self._held = HeldEvents(settings.held_frames_max_mb * 2**20, spool=settings.data_dir / "held")
        self._held_lock = threading.Lock()  # one drainer at a time, and no event overtakes the held
        # The pipeline's events and samples leave its thread here, stored by one writer thread
        # (serving/pipeline/outlet.py): a frame never waits on the database.
        self.outlet = Outlet(self.on_event, self.on_cluster_sample,
                             HeldEvents(settings.held_frames_max_mb * 2**20, spool=settings.data_dir / "queued"),
                             faults=self.faults)
        self._stop = threading.Event()
        self._retrier: threading.Thread | None = None
        self.counters = {"detect_requests": 0, "detections": 0, "events": 0, "event_failures": 0,
                         "sample_failures": 0, "events_fenced": 0}

    def _start_pipeline(self, cameras: list[Camera]) -> Any:
        if self.settings.ray_address:
            return self._start_cluster(cameras)
        from serving.pipeline import Pipeline

        pipeline = Pipeline(cameras, self.detector, self.taxonomy, on_event=self.outlet.event,
                            sampler=self.frame_sampler, on_sample=self.outlet.sample,
                            on_end=self.outlet.flush,
                            alert_threshold=self.thresholds.alert, live_clock=self.steady_clock)
        pipeline.start()
        return pipeline

    def _fresh_frame(self, camera: Camera, timeout: float) -> Frame | None:
        """For a re-check: the running pipeline's next frame of the camera, else its source
        opened once."""
        pipeline = self.cameras.pipeline
        # In cluster mode the cameras' frames are in the workers: the source is opened here once.
        frame = pipeline.snapshot(camera.id, timeout) if hasattr(pipeline, "snapshot") else None
        return frame if frame is not None else grab_frame(camera, timeout)

    def _wake_delivery(self) -> None:
        if self.delivery is not None:
            self.delivery.wake()

    def _start_cluster(self, cameras: list[Camera]) -> Any:
        """Cluster mode: the camera workers stand where the pipeline stands; camera changes
        through the API reach them as a new camera list, not a restart."""
        from serving.cluster.coordinator import ClusterCoordinator

        if self.coordinator is None:
            self.coordinator = ClusterCoordinator(self.settings, self.db, self.on_event,
                                                  backlog=lambda: len(self._held),
                                                  learned_alerts=self.thresholds.alerts_for,
                                                  on_sample=self.on_cluster_sample)
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
        try:
            info = self.detector.reload(target)
        except ModelSwapError as exc:
            self.refuse_reload(actor, str(exc), file=Path(file).name if file else current.path.name)
            raise
        with self.db.transaction() as session:
            record(session, actor, "model.reload", f"model:{info.path.name}",
                   {"version": current.version, "file": current.path.name},
                   {"version": info.version, "file": info.path.name})
        return info

    def refuse_reload(self, actor: str, reason: str, *, file: str | None = None, requested: Any = None) -> None:
        """A refused reload is an admin's act too: logged and audited like a swap, whether the
        service refused the file or the request never named a valid one (`requested`: what it sent)."""
        current = self.detector.info
        log.warning("model reload by %s refused, %s keeps running: %s", actor, current.version, reason)
        after: dict[str, Any] = {"refused": reason[:1000]}
        if requested is not None:
            after["requested"] = repr(requested)[:200]
        with self.db.transaction() as session:
            record(session, actor, "model.reload_refused", f"model:{file or current.path.name}"[:160],
                   {"version": current.version, "file": current.path.name}, after)

    def bundle(self, case: Case, principal: Any, *, originals: bool = False, reason: str = "") -> bytes:
        """The case's evidence bundle (serving/bundle.py); with `originals`, the sealed
        originals too: an admin's, with a reason, audited."""
        from serving.bundle import build_bundle
        from serving.privacy import SealedError

        if originals:
            if principal.role != "admin":
                raise SealedError("only an admin may bundle the sealed originals")
            if not reason.strip():
                raise SealedError("bundling the sealed originals needs a reason (?reason=...)", 422)
            with self.db.transaction() as session:
                record(session, principal.name, "evidence.bundle_originals", f"case:{case.case_number}", None,
                       {"reason": reason.strip()[:500]})
        return build_bundle(self.db, self.evidence.root, self.signer, case.case_number,
                            self.cases.public(case).model_dump(mode="json"), originals=originals)

    def _recent_evidence_frames(self, count: int = 3) -> list[np.ndarray]:
        """The last original evidence frames stored: what a new model is smoke-checked on."""
        with self.db.sessions() as session:
            paths = session.scalars(select(Evidence.path).where(Evidence.kind == "original")
                                    .order_by(Evidence.id.desc()).limit(count)).all()
        frames = [cv2.imread(str(self.evidence.resolve(p)), cv2.IMREAD_COLOR) for p in paths]
        return [f for f in frames if f is not None]

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        # Promotions and rollbacks made with the CLI while no service ran (weights/history/).
        audit_history(self.db, self.detector.info.path.parent)
        self.detector.watch(self.settings.model_watch_s)
        if self.delivery is not None:
            self.delivery.start()
        self.thresholds.start()
        self.outlet.start()
        self._retrier = threading.Thread(target=self._retry_loop, name="gridwatch-event-retry", daemon=True)
        self._retrier.start()
        self.chain.sync_mirror(self.db)
        enrolled = enrol_unchained(self.db, self.chain)
        if enrolled:
            log.info("%d evidence item(s) stored before the evidence chain existed joined it", enrolled)
        self._signing = threading.Thread(target=self._sign_loop, name="gridwatch-chain-sign", daemon=True)
        self._signing.start()
        self.retention.start()
        removed = self.evidence.remove_stale_partials()
        if removed:
            log.info("removed %d partial evidence file(s) left by an earlier process", removed)
        self.cases.end_stale(set(self.cameras.all()))
        self.log_delivery_routes()
        self.cameras.start()
        if self.rechecks is not None:
            self.rechecks.start()  # pending re-checks from before a restart included

    def log_delivery_routes(self) -> None:
        """One line per camera rule: how its cases reach the case system, so a setting that
        sends nothing is seen at start, not after a day of cases waiting for review."""
        pushed = (f"webhook to {self.settings.webhook_url}" if self.settings.webhook_url
                  else "never pushed (no webhook_url; case systems poll GET /v1/cases)")
        for camera in self.cameras.all().values():
            for rule in camera.rules:
                route = self.cases.policy.route(rule.violation, rule_score=rule.auto_confirm_score,
                                                scene_change=rule.scene_change, camera=camera.id)
                log.info("camera %s, %s: %s; %s", camera.id, rule.violation, route, pushed)

    def stop(self) -> None:
        self.detector.stop()
        if self.rechecks is not None:
            self.rechecks.stop()
        self.cameras.stop()  # intake first: the pipeline closes open events into cases
        self.outlet.close()  # what the pipeline handed over, stored (or held, spooled) before going on
        self.thresholds.stop()
        self._stop.set()
        if self._retrier is not None:
            self._retrier.join(5)
        if not self._drain_retries():
            log.error("%d event(s) could not be stored before stopping: %s", len(self._held), self.faults.current())
        if self.delivery is not None:
            self.delivery.stop()
        self.retention.stop()
        self._sign_head()  # at shutdown: the last entries leave under a signature
        self.db.close()

    def _sign_loop(self) -> None:
        while not self._stop.wait(self.settings.chain_sign_every_s):
            self._sign_head()

    def _sign_head(self) -> None:
        try:
            self.signer.sign_head()
        except Exception:  # noqa: BLE001 - the database may be away; the next interval signs
            log.exception("evidence chain head not signed")

    # -- events ----------------------------------------------------------------------------
    def on_event(self, event: ViolationEvent, frame: EvidenceFrame | None = None, fencing: int | None = None) -> None:
        """`fencing`: from a camera worker (cluster mode), the lease the camera ran under."""
        self.counters["events"] += 1
        with self._held_lock:
            if len(self._held):  # keep order: earlier events go first
                self._held.append(event, frame, fencing)
                return
            try:
                self._store(event, frame, fencing)
            except Exception as exc:  # noqa: BLE001
                self.counters["event_failures"] += 1
                if held_fault(exc) is None:  # the event's own problem: it would fail again
                    log.exception("event %s of camera %s cannot be stored", event.event_id, event.camera)
                    return
                self._held.append(event, frame, fencing)

    def ingest(self, event: ViolationEvent, frame: EvidenceFrame | None = None,
               fencing: int | None = None) -> IngestResult:
        """One event into its case. A failure because a part is away (database, evidence
        disk) enters that fault and is raised; success ends the faults it proves over."""
        writes = self.evidence.writes
        frame = self._find_people(event, frame)
        try:
            result = self.cases.ingest(event, frame, fencing=fencing)
        except Exception as exc:
            fault = held_fault(exc)
            if fault is not None:
                self.faults.enter(*fault)
            raise
        self.faults.leave("database")
        if self.evidence.writes > writes:
            self.faults.leave("evidence")
        if self.delivery is not None:
            self.delivery.wake()
        return result

    def _find_people(self, event: ViolationEvent, frame: EvidenceFrame | None) -> EvidenceFrame | None:
        """An uploaded frame comes without the model's view of it: the model looks for people
        in it here, so they are masked as on the service's own cameras (serving/privacy.py)."""
        if frame is None or frame.detections is not None or frame.mask or not self.privacy.wants(event.violation):
            return frame
        try:
            image = frame.decoded()
        except EvidenceError:
            return frame  # the case stage files the event without a picture
        people = self.privacy.people(self.detector.current.detect([image])[0])
        return replace(frame, mask=tuple(people)) if people else frame

    def _store(self, event: ViolationEvent, frame: EvidenceFrame | None, fencing: int | None) -> None:
        """An event of our cameras or camera workers; one whose camera has moved to another
        worker since (a stale fencing number) is refused and counted, never filed."""
        try:
            self.ingest(event, frame, fencing)
        except StaleLeaseError as exc:
            self.counters["events_fenced"] += 1
            log.warning("event %s (%s) refused: %s", event.event_id, event.type, exc)

    def on_sample(self, sample: LabellingSample) -> None:
        """An unsure frame into the labelling queue. Unlike an event it is not retried: the
        next unsure frame serves as well, and the budget stays with the frames kept."""
        try:
            self.labelling.add(sample)
        except Exception:  # noqa: BLE001 - the database or disk may be away
            self.counters["sample_failures"] += 1
            log.exception("labelling sample of %s at %s not stored", sample.camera, sample.taken_at)

    def on_cluster_sample(self, sample: LabellingSample) -> None:
        """A camera worker's (or, through the outlet, the local pipeline's) unsure frame: they
        only space samples out; the daily budget per camera is applied here, off the frame
        path, by the one who knows what the queue already holds."""
        if self.sampler.budget.take(sample.camera, sample.taken_at):
            self.on_sample(sample)

    def _drain_retries(self) -> bool:
        """Store held events in order until one is refused; True when none is left."""
        with self._held_lock:
            while (item := self._held.first()) is not None:
                try:
                    self._store(*item)
                except Exception as exc:  # noqa: BLE001
                    if held_fault(exc) is not None:
                        return False
                    log.exception("held event %s of camera %s cannot be stored", item[0].event_id, item[0].camera)
                self._held.pop_first()
            return True

    def _retry_loop(self) -> None:
        while not self._stop.wait(1.0):
            self.probes.clock()
            if self._drain_retries():  # nothing held to prove a part is back: look another way
                if "database" in self.faults:
                    self.probes.database(held=self.outlet.backlog)  # a backlog: its next store ends it
                if "evidence" in self.faults:
                    self.probes.evidence()

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
        """Each part's state ("ok" or what is wrong); the faults of the moment by name."""
        database = self.probes.database(held=len(self._held) + self.outlet.backlog)
        checks: dict[str, Any] = {"database": "schema not current" if database == "ok" and not self._schema_current
                                  else database}
        checks["detector"] = "ok"
        checks["model"] = self.detector.version
        checks["pipeline"] = self.cameras.pipeline_problem or "ok"
        checks.update(self.faults.current())
        checks.update(camera_faults(self.cameras.health()))
        if len(self._held):
            checks["events"] = f"{len(self._held)} held until they can be stored"
        if self.coordinator is not None:
            checks["cluster"] = self.coordinator.error or "ok"
        return checks

    def _database_figures(self) -> tuple[dict[str, Any], bool]:
        """Case, outbox and re-check counts from the database, and whether they are fresh.
        With the database away (a current fault, or the queries fail) the last figures read
        stand in: metrics are most needed during an outage and never wait on or fail with it."""
        if "database" not in self.faults:
            try:
                with self.db.sessions() as session:
                    by_state = dict(session.execute(select(Case.state, func.count()).group_by(Case.state)).all())
                    by_review = dict(session.execute(
                        select(Case.review_status, func.count()).group_by(Case.review_status)).all())
                self._db_figures = {"cases_by_state": by_state, "cases_by_review": by_review,
                                    "outbox": outbox_stats(self.db), "rechecks": recheck_counts(self.db)}
                return self._db_figures, True
            except Exception as exc:  # noqa: BLE001
                fault = held_fault(exc)
                if fault is None:
                    raise
                self.faults.enter(*fault)
        return self._db_figures, False

    def metrics(self) -> dict[str, Any]:
        figures, fresh = self._database_figures()
        return {
            **figures,
            "database_up": fresh,
            "pipeline": self.cameras.stats(),
            "counters": dict(self.counters),
            "case_counts": dict(self.cases.counts),
            "cameras": self.cameras.health(),
            "pending_events": len(self._held) + self.outlet.backlog,
            "outlet": dict(self.outlet.counters),
            "held_frames_dropped": self._held.frames_dropped,
            "cluster": self.coordinator.status() if self.coordinator is not None else None,
            "model": {"version": self.detector.version, "swaps": self.detector.swaps},
            "evidence": self._evidence_store_figures(fresh),
        }

    def _evidence_store_figures(self, database_up: bool) -> dict[str, Any]:
        """Evidence on disk, the chain and the purge schedule; the last figures while the database is away."""
        if database_up:
            try:
                self._evidence_figures = {**self.retention.figures(), "signed_heads": self.signer.signed,
                                          "timestamp_failures": self.signer.timestamp_failures}
            except Exception:  # noqa: BLE001 - metrics never fail with the database
                log.debug("evidence figures not read", exc_info=True)
        return self._evidence_figures

