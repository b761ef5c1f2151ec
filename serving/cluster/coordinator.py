"""The serving process's side of cluster mode: camera workers on Ray, one case store here.

`ClusterCoordinator` stands where the single-process Pipeline stands (the camera registry
starts it with the camera list, asks it for health and stats, and hands it camera changes).
One thread:

- keeps one `CameraWorker` actor per `cluster_cpus_per_worker` CPUs the cluster has (placed
  by Ray on CPU resources, spread over nodes); a new worker takes a bounded share of cameras
  from the most loaded (`cluster_max_moves` per arrival);
- places cameras by measured cost (each worker reports seconds of work per camera per
  second), the costliest first onto the least loaded worker;
- grants each placement as a lease with a new fencing number (`serving.cluster.leases`,
  in the case database) before the worker starts the camera;
- heartbeats every worker (`cluster_heartbeat_s`); one that answers nothing for
  `cluster_lease_timeout_s` (dead node, hung process, partition) loses its leases and its
  cameras start on the others. If it wakes up, what it still sends is refused at ingest
  (old fencing number), and it is told to drop its cameras and take new ones;
- pulls events from each worker, at most `cluster_events_in_flight` per call and only while
  the service's own backlog (events the database has not taken yet) is under that bound:
  a slow or absent database backs up into the workers' queues and from there into their
  pipelines and readers, and nothing is dropped.

Ray is imported inside the methods, never at module level.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from serving.cameras import Camera
from serving.cluster import leases
from serving.cluster.worker import CameraWorker, FencedEvent, WorkerReport
from serving.events import ViolationEvent
from serving.evidence import EvidenceFrame
from serving.pipeline import TiledCheckState
from serving.pipeline.uncertainty import LabellingSample
from serving.settings import Settings
from serving.store.db import Database

log = logging.getLogger("gridwatch.cluster")

ClusterSink = Callable[[ViolationEvent, EvidenceFrame | None, int], None]
WorkerState = Literal["starting", "up", "lost"]  # and "dead" in status(), for workers gone
GONE_KEPT = 32  # dead workers still listed by status() (their metrics read 0)
DEFAULT_CAMERA_COST = 0.02  # seconds of work per second, until a camera is measured


class ClusterError(RuntimeError):
    """Cluster mode cannot start (Ray missing, cluster unreachable, wrong database)."""


def require_cluster_database(settings: Settings) -> None:
    """Camera workers on many nodes and one case store: PostgreSQL, never a SQLite file."""
    if not settings.resolved_database_url.startswith("postgresql"):
        raise ClusterError(
            "cluster mode needs PostgreSQL for cases: set database_url (GRIDWATCH_DATABASE_URL) to "
            "postgresql+psycopg2://USER:PASSWORD@HOST/DB; SQLite is refused in cluster mode")


@dataclass
class _Health:
    """A camera's stream health as a worker last reported it (what the dashboard reads)."""

    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass
class WorkerHandle:
    id: str
    actor: Any
    state: WorkerState = "starting"
    started: float = field(default_factory=time.monotonic)
    last_ok: float = field(default_factory=time.monotonic)
    report: WorkerReport | None = None
    cameras: set[str] = field(default_factory=set)
    take: Any = None  # the take_events call in flight
    beat: Any = None  # the report call in flight
    beat_sent: float = 0.0
    frames_rate: float = 0.0
    _frames_mark: tuple[float, int] = (0.0, 0)
    losses: int = 0  # times it was declared lost and came back
    take_sent: float = 0.0  # when the take_events call in flight went out


@dataclass
class Handoff:
    """A camera leaving a live worker. Until its events are in, the lease stays the donor's:
    the donor stops the camera and hands back what it still queued for it (the release
    call), any pull already in flight from the donor comes back, the service's own backlog
    empties; only then does the lease move (to `target`, or to whichever worker placement
    picks, or to no one when the camera was removed)."""

    camera: str
    donor: WorkerHandle
    release: Any  # the release call in flight; None once it answered
    target: str | None = None
    remove: bool = False
    released_at: float | None = None  # monotonic, when the release answered


class ClusterCoordinator:
    def __init__(self, settings: Settings, db: Database, on_event: ClusterSink,
                 backlog: Callable[[], int] = lambda: 0,
                 learned_alerts: Callable[[Iterable[str]], dict[str, dict[str, float]]] | None = None,
                 on_sample: Callable[[LabellingSample], None] | None = None) -> None:
        """`learned_alerts(cameras)`: the learned alert thresholds of those cameras
        (ThresholdBook.alerts_for), sent to each worker with its heartbeat. `on_sample`: where
        the workers' labelling samples go (the serving process applies the daily budget)."""
        require_cluster_database(settings)
        self.settings = settings
        self.db = db
        self.learned_alerts = learned_alerts
        self.on_sample = on_sample
        self.on_event = on_event
        self.backlog = backlog
        self.cameras: dict[str, Camera] = {}
        self.owner: dict[str, str | None] = {}
        self.cost: dict[str, float] = {}
        self.workers: dict[str, WorkerHandle] = {}
        self._gone: dict[str, dict[str, Any]] = {}  # dead workers as last seen, oldest first
        self.counters = {"workers_started": 0, "workers_lost": 0, "workers_dead": 0, "cameras_moved": 0,
                         "events_taken": 0, "samples_taken": 0}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_spawn_check = 0.0
        self._next_renewal = 0.0
        self._calls: dict[Any, tuple[WorkerHandle, str]] = {}  # Ray call in flight -> whose, which
        self.handoffs: dict[str, Handoff] = {}  # camera -> its hand-off under way
        # File and folder cameras played to their end, with their last reported health: never
        # moved or placed again (a new worker would replay the whole file for nothing) until
        # their definition changes.
        self.finished: dict[str, dict[str, Any]] = {}
        self.error = ""

    # -- life cycle --------------------------------------------------------------------------------
    def connect(self) -> None:
        try:
            import ray
        except ImportError:
            raise ClusterError("cluster mode needs Ray: pip install 'gridwatch[cluster]'") from None
        if not ray.is_initialized():
            try:
                ray.init(address=self.settings.ray_address, namespace="gridwatch", log_to_driver=False)
            except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ...
                raise ClusterError(f"cannot join the Ray cluster at {self.settings.ray_address!r}: {exc}") from None
        self._thread = threading.Thread(target=self._loop, name="gridwatch-cluster", daemon=True)
        self._thread.start()

    def set_cameras(self, cameras: list[Camera]) -> None:
        """The cameras to run now: new ones are placed, removed ones stopped and their leases
        revoked, changed ones restarted under a new lease."""
        with self._lock:
            wanted = {c.id: c for c in cameras}
            for cid, old in list(self.cameras.items()):
                if cid not in wanted or wanted[cid] != old:
                    self.finished.pop(cid, None)
                    self._unplace(cid, remove=cid not in wanted)
                    if cid not in wanted:
                        del self.cameras[cid]
            for cid, camera in wanted.items():
                if self.cameras.get(cid) != camera:
                    self.cameras[cid] = camera
                    if cid in self.handoffs:
                        self.handoffs[cid].remove = False  # back (or changed again) while draining
                    else:
                        self.owner[cid] = None

    def stop(self, drain_s: float = 20.0) -> None:
        """Stop every camera (open events close and are filed), then end the workers."""
        import ray

        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            # Pulls still in flight carry events already out of the workers' queues.
            for ref, (worker, kind) in list(self._calls.items()):
                if kind in ("take", "release") and worker.state == "up":
                    self._collect(worker, self._call(ref, 10.0, worker))
            self._calls.clear()
            self.handoffs.clear()
            up = [w for w in self.workers.values() if w.state == "up"]
            releases = [w.actor.release_all.remote() for w in up]
            deadline = time.monotonic() + drain_s
            pending = list(releases)
            while pending and time.monotonic() < deadline:
                for w in up:
                    self._collect(w, self._call(w.actor.take_events.remote(
                        self.settings.cluster_events_in_flight, 0.2), 5.0, w))
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.1)
            for w in up:  # what the releases closed
                while True:
                    got = self._call(w.actor.take_events.remote(self.settings.cluster_events_in_flight, 0.2), 5.0, w)
                    if not got:
                        break
                    self._collect(w, got)
            for w in self.workers.values():
                ray.kill(w.actor)
            self.workers.clear()

    def _call(self, ref: Any, timeout: float, worker: WorkerHandle) -> Any:
        import ray

        try:
            return ray.get(ref, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - a dead or hung worker at shutdown
            log.warning("worker %s: %s", worker.id, type(exc).__name__)
            return None

    # -- what the registry and the service read -------------------------------------------------------
    @property
    def health(self) -> dict[str, _Health]:
        with self._lock:
            out = {}
            for cid in self.cameras:
                worker = self.workers.get(self.owner.get(cid) or "")
                report = worker.report if worker is not None and worker.state == "up" else None
                data = report.health.get(cid) if report is not None else None
                data = data or self.finished.get(cid)
                out[cid] = _Health(data or {"camera": cid, "state": "starting", "connected": False, "errors": 0})
            return out

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            reports = [w.report for w in self.workers.values() if w.report is not None]
            totals: dict[str, int] = defaultdict(int)
            for report in reports:
                for key, value in report.stats.items():
                    totals[key] += value
            return dict(totals)

    def tiled_checks(self) -> dict[str, TiledCheckState]:
        """Each up worker's tiled checks, for the cameras it still owns."""
        with self._lock:
            return {cid: state for w in self.workers.values() if w.state == "up" and w.report is not None
                    for cid, state in w.report.tiled_checks.items() if self.owner.get(cid) == w.id}

    def status(self) -> dict[str, Any]:
        """Per worker: state, node, cameras, analysed frames per second, queue depth, detect ms."""
        with self._lock:
            workers = [self._describe(w) for w in sorted(self.workers.values(), key=lambda w: w.id)]
            workers += [dict(gone) for _, gone in sorted(self._gone.items())]
            unplaced = sorted(cid for cid, owner in self.owner.items() if owner is None and cid not in self.finished)
            return {"workers": workers, "unplaced": unplaced, "handing_off": sorted(self.handoffs),
                    "finished": sorted(self.finished),
                    "counters": dict(self.counters), "error": self.error}

    def _describe(self, w: WorkerHandle) -> dict[str, Any]:
        r = w.report
        return {
            "worker": w.id, "state": w.state, "node": r.node if r else "",
            "cameras": sorted(w.cameras), "frames_per_s": round(w.frames_rate, 3),
            "queue_depth": r.queue_depth if r else 0, "detect_ms": round(r.detect_ms, 2) if r else 0.0,
            "restarts": w.losses, "load": round(self._load(w.id), 4),
            "samples_dropped": r.samples_dropped if r else 0,
        }

    # -- the loop ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        import ray

        while not self._stop.is_set():
            try:
                with self._lock:
                    self._spawn_if_capacity()
                    refs = self._submit_calls()
                if not refs:
                    self._stop.wait(0.1)
                else:
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.1)
                    for ref in ready:
                        self._finish_call(ref)
                with self._lock:
                    self._expire_leases()
                    self._finish_handoffs()
                    self._place_unowned()
                    self._renew_leases()
                if self.error:
                    log.info("cluster coordinator rounds work again")
                self.error = ""
            except Exception as exc:  # noqa: BLE001 - the database may be away: try again next round
                from serving.health import held_fault

                if held_fault(exc) is not None:  # a part away: one line per outage, no traceback
                    if not self.error:
                        log.warning("cluster coordinator rounds fail until the database is back: %s",
                                    held_fault(exc)[1])
                else:
                    log.exception("cluster coordinator round failed")
                self.error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(1.0)

    def _renew_leases(self) -> None:
        """Stamp the live workers' leases: `gridwatch cluster status` tells a running service
        from one that is gone by how old the stamps are."""
        now = time.monotonic()
        if now < self._next_renewal:
            return
        self._next_renewal = now + leases.renewal_interval(self.settings.cluster_lease_timeout_s)
        try:
            leases.renew(self.db, [w.id for w in self._up()])
        except Exception as exc:  # noqa: BLE001 - the database away: the round goes on, stamps wait
            from serving.health import held_fault

            if held_fault(exc) is None:
                raise

    def _spawn_if_capacity(self) -> None:
        import ray

        now = time.monotonic()
        if now < self._next_spawn_check:
            return
        self._next_spawn_check = now + 2.0
        per_worker = self.settings.cluster_cpus_per_worker
        if any(w.state == "starting" for w in self.workers.values()):
            return  # their CPUs may not show as taken yet
        room = int((ray.available_resources().get("CPU", 0.0) + 1e-9) // per_worker)
        actor_class = ray.remote(num_cpus=per_worker, max_concurrency=4, max_restarts=0)(CameraWorker)
        for _ in range(room):
            wid = f"w{next(self._ids)}"
            actor = actor_class.options(name=f"gridwatch-{wid}-{int(time.time())}",
                                        scheduling_strategy="SPREAD").remote(
                wid, self.settings, self.settings.cluster_events_in_flight, self.settings.cluster_replay_speed)
            self.workers[wid] = WorkerHandle(wid, actor)
            self.counters["workers_started"] += 1
            log.info("camera worker %s starting", wid)

    def _submit_calls(self) -> list[Any]:
        now = time.monotonic()
        room = self.backlog() < self.settings.cluster_events_in_flight
        for w in self.workers.values():
            if w.beat is None and now - w.beat_sent >= self.settings.cluster_heartbeat_s:
                w.beat, w.beat_sent = w.actor.report.remote(self._learned_for(w)), now
                self._calls[w.beat] = (w, "beat")
            if w.take is None and room and w.state in ("up", "lost"):
                w.take, w.take_sent = w.actor.take_events.remote(self.settings.cluster_events_in_flight, 0.2), now
                self._calls[w.take] = (w, "take")
        return list(self._calls)

    def _learned_for(self, worker: WorkerHandle) -> dict[str, dict[str, float]] | None:
        if self.learned_alerts is None:
            return None
        try:
            return self.learned_alerts(list(worker.cameras))
        except Exception as exc:  # noqa: BLE001 - a heartbeat must go out whatever the thresholds do
            log.warning("learned thresholds not sent to worker %s: %s", worker.id, exc)
            return None

    def _finish_call(self, ref: Any) -> None:
        import ray

        with self._lock:
            worker, kind = self._calls.pop(ref)
        is_beat = kind == "beat"
        if is_beat:
            worker.beat = None
        elif kind == "take":
            worker.take = None
        try:
            result = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - RayActorError and kin: the worker is gone
            with self._lock:
                if self.workers.get(worker.id) is worker:
                    self._dead(worker, exc)
            return
        if is_beat:
            with self._lock:
                self._heard(worker, result)
            self._take_samples(result)
        else:
            self._collect(worker, result)  # a release's are the moving camera's last events
            if kind == "release":
                with self._lock:
                    for handoff in self.handoffs.values():
                        if handoff.release == ref:
                            handoff.release, handoff.released_at = None, time.monotonic()

    def _take_samples(self, report: WorkerReport) -> None:
        """Labelling samples out of a heartbeat, outside the lock (they are stored)."""
        samples, report.samples = report.samples, []  # the report is kept: not its frames
        for sample in samples:
            self.counters["samples_taken"] += 1
            if self.on_sample is not None:
                self.on_sample(sample)

    def _collect(self, worker: WorkerHandle, events: list[FencedEvent] | None) -> None:
        for item in events or ():
            self.counters["events_taken"] += 1
            self.on_event(item.event, item.frame, item.fencing)

    def _heard(self, worker: WorkerHandle, report: WorkerReport) -> None:
        now = time.monotonic()
        worker.last_ok, worker.report = now, report
        mark_t, mark_frames = worker._frames_mark
        if mark_t:
            worker.frames_rate = (report.stats.get("frames", 0) - mark_frames) / max(1e-3, now - mark_t)
        worker._frames_mark = (now, report.stats.get("frames", 0))
        for cid, cost in report.camera_cost.items():
            if cid in worker.cameras:  # a moving average: one busy second does not move a camera
                self.cost[cid] = cost if cid not in self.cost else 0.7 * self.cost[cid] + 0.3 * cost
        for cid in worker.cameras:
            data = report.health.get(cid)
            if data and data.get("state") == "finished" and self.owner.get(cid) == worker.id:
                self.finished[cid] = dict(data)
        if worker.state == "starting":
            worker.state = "up"
            log.info("camera worker %s up on node %s", worker.id, report.node)
            self._rebalance_onto(worker)
        elif worker.state == "lost":
            # Back after its leases went elsewhere: what it still holds is stale.
            stale = [cid for cid in report.cameras if self.owner.get(cid) != worker.id]
            log.warning("camera worker %s answers again; dropping its stale cameras %s", worker.id, stale)
            worker.actor.release.remote(stale)
            worker.state = "up"
            worker.losses += 1

    def _dead(self, worker: WorkerHandle, exc: Exception) -> None:
        import ray

        log.warning("camera worker %s is gone (%s)", worker.id, type(exc).__name__)
        self.counters["workers_dead"] += 1
        self._revoke(worker)
        self.workers.pop(worker.id, None)
        # Still listed, as dead, so its series read 0 rather than vanish (an alert on
        # gridwatch_worker_up == 0 must see it); only the latest few are kept.
        self._gone[worker.id] = {**self._describe(worker), "state": "dead", "frames_per_s": 0.0,
                                 "queue_depth": 0, "detect_ms": 0.0, "load": 0.0}
        while len(self._gone) > GONE_KEPT:
            del self._gone[next(iter(self._gone))]
        try:
            ray.kill(worker.actor)
        except Exception:  # noqa: BLE001
            pass

    def _expire_leases(self) -> None:
        now = time.monotonic()
        timeout = self.settings.cluster_lease_timeout_s
        for worker in list(self.workers.values()):
            if worker.state == "up" and now - worker.last_ok > timeout:
                log.warning("camera worker %s silent for %.1f s: its leases end", worker.id, now - worker.last_ok)
                self.counters["workers_lost"] += 1
                worker.state = "lost"
                self._revoke(worker)
            elif worker.state == "starting" and now - worker.started > max(120.0, 10 * timeout):
                self._dead(worker, TimeoutError("never came up"))

    def _revoke(self, worker: WorkerHandle) -> None:
        # Cameras it was handing off: it cannot finish, the lease goes at once like the rest.
        draining = [cid for cid, h in self.handoffs.items() if h.donor is worker]
        for cid in draining:
            handoff = self.handoffs.pop(cid)
            if handoff.remove:
                leases.grant(self.db, [cid], None)
                self.owner.pop(cid, None)
            else:
                worker.cameras.add(cid)  # revoked with the others below
        moved = [cid for cid in worker.cameras if self.owner.get(cid) == worker.id]
        worker.cameras.clear()
        if moved:
            leases.grant(self.db, moved, None)  # refused from now on, even before a new home
            for cid in moved:
                self.owner[cid] = None
            self.counters["cameras_moved"] += len([cid for cid in moved if cid not in self.finished])

    # -- placement ------------------------------------------------------------------------------
    def _camera_cost(self, cid: str) -> float:
        if cid in self.cost:
            return self.cost[cid]
        known = list(self.cost.values())
        return sum(known) / len(known) if known else DEFAULT_CAMERA_COST

    def _load(self, wid: str) -> float:
        worker = self.workers.get(wid)
        return sum(self._camera_cost(c) for c in worker.cameras) if worker else 0.0

    def _up(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.state == "up"]

    def _place_unowned(self) -> None:
        unowned = [cid for cid, owner in self.owner.items() if owner is None and cid not in self.finished]
        up = self._up()
        if not unowned or not up:
            return
        # At start, wait for the workers being started, so the first placement is spread.
        if any(w.state == "starting" and time.monotonic() - w.started < 60 for w in self.workers.values()) \
                and not any(w.cameras for w in up):
            return
        plan: dict[str, list[str]] = {}
        loads = {w.id: self._load(w.id) for w in up}
        for cid in sorted(unowned, key=self._camera_cost, reverse=True):
            target = min(up, key=lambda w: (loads[w.id], len(w.cameras) + len(plan.get(w.id, []))))
            plan.setdefault(target.id, []).append(cid)
            loads[target.id] += self._camera_cost(cid)
        for wid, cids in plan.items():
            self._start_on(self.workers[wid], cids)

    def _start_on(self, worker: WorkerHandle, cids: list[str]) -> None:
        node = worker.report.node if worker.report else ""
        granted = leases.grant(self.db, cids, worker.id, node)
        for cid in cids:
            self.owner[cid] = worker.id
            worker.cameras.add(cid)
        worker.actor.assign.remote([(self.cameras[cid], granted[cid]) for cid in cids])
        log.info("cameras %s -> worker %s", ", ".join(cids), worker.id)

    def _unplace(self, cid: str, remove: bool = False) -> None:
        """The camera leaves its worker (removed, or changed and to be placed again): handed
        off, so what it had open is filed under its lease first."""
        if cid in self.handoffs:
            self.handoffs[cid].remove = remove
            return
        worker = self.workers.get(self.owner.get(cid) or "")
        if worker is not None and worker.state == "up":
            self._hand_off(cid, worker, target=None, remove=remove)
            return
        if worker is not None:
            worker.cameras.discard(cid)
        leases.grant(self.db, [cid], None)
        if remove:
            self.owner.pop(cid, None)
        else:
            self.owner[cid] = None

    def _hand_off(self, cid: str, donor: WorkerHandle, target: str | None, remove: bool = False) -> None:
        donor.cameras.discard(cid)
        ref = donor.actor.release.remote([cid], True)
        self._calls[ref] = (donor, "release")
        self.handoffs[cid] = Handoff(cid, donor, ref, target=target, remove=remove)
        log.info("camera %s leaving worker %s: its events first, then the lease", cid, donor.id)

    def _finish_handoffs(self) -> None:
        """Move the lease of each camera whose hand-off has drained (see Handoff)."""
        for cid, handoff in list(self.handoffs.items()):
            if handoff.released_at is None:
                continue
            donor = handoff.donor
            if donor.take is not None and donor.take_sent <= handoff.released_at:
                continue  # a pull from before the release may still carry its events
            if self.backlog():
                continue  # events held for the database go in under the lease they came with
            del self.handoffs[cid]
            target = self.workers.get(handoff.target or "")
            if handoff.remove:
                leases.grant(self.db, [cid], None)
                self.owner.pop(cid, None)
            elif target is not None and target.state == "up" and cid in self.cameras:
                self._start_on(target, [cid])
                self.counters["cameras_moved"] += 1
            else:
                leases.grant(self.db, [cid], None)
                self.owner[cid] = None  # placed again by the next round

    def _rebalance_onto(self, new: WorkerHandle) -> None:
        """A new worker takes cameras from the most loaded ones while that evens the load, at
        most `cluster_max_moves` (each move restarts a stream). Each move is a hand-off: the
        camera's events are filed under the donor's lease before the new worker gets it."""
        moves, incoming = 0, 0.0
        while moves < self.settings.cluster_max_moves:
            donors = [w for w in self._up() if w is not new and w.cameras - self.finished.keys()]
            if not donors:
                return
            donor = max(donors, key=lambda w: self._load(w.id))
            cid = min(donor.cameras - self.finished.keys(), key=self._camera_cost)
            cost = self._camera_cost(cid)
            if self._load(donor.id) - cost < self._load(new.id) + incoming + cost - 1e-9:
                return
            self._hand_off(cid, donor, target=new.id)
            incoming += cost
            moves += 1
