"""`gridwatch bench --cluster`: what running the cameras on Ray costs against one process.

One camera-like clip (as `--cameras` makes it: a real photo, something moving, sensor noise,
H.264 with B-frames) is looped by N cameras, unpaced, so each configuration runs flat out:

- the single process (`gridwatch serve` without a cluster: one pipeline, one ONNX Runtime
  session on one thread);
- cluster mode with 1 and with 2 camera-worker processes on this host (a local Ray with that
  many CPUs; each worker one session on one thread), events filed into PostgreSQL.

Analysed frames per second over the window, times `--sample-every`, is the number of cameras
that configuration sustains at that sampling interval (the camera's keyframes decoded, every
analysed frame detected: the clip moves, so motion gating skips nothing; no tiled checks).
The ratio to the single process is the cluster's overhead. Then the case store's ingest rate:
opened events with a real evidence frame (each a new case: hashed files written, outbox row),
and updates without one, through `CaseService.ingest` on the same PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from serving.commands.numbers import real, whole


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster overhead (--cluster)")
    g.add_argument("--cluster", action="store_true",
                   help="cluster mode: cameras sustained by 1 and 2 worker processes vs the single process, "
                   "and case-store ingest rate (needs Ray and PostgreSQL: --database-url)")
    g.add_argument("--cluster-cameras", type=whole(1), default=8, help="cameras looping the clip in each run")
    g.add_argument("--cluster-seconds", type=real(0, low_open=True), default=20.0, help="measured window per run, after warm-up")
    g.add_argument("--database-url", help="PostgreSQL for the cluster runs and the ingest figure "
                   "(default: the database_url setting, GRIDWATCH_DATABASE_URL)")
    g.add_argument("--ingest-events", type=whole(1), default=200, help="events per kind in the ingest measurement")


def _window(read_detected: Any, warmup_s: float, seconds: float) -> float:
    """Analysed frames per second over `seconds`, after `warmup_s`."""
    time.sleep(warmup_s)
    start_n, start_t = read_detected(), time.monotonic()
    time.sleep(seconds)
    return (read_detected() - start_n) / (time.monotonic() - start_t)


def _run_single(settings: Any, cameras: list, seconds: float) -> float:
    from serving.service import GridwatchService

    service = GridwatchService(settings.model_copy(update={"ray_address": None, "database_url": None}),
                               file_cameras=cameras)
    service.start()
    try:
        return _window(lambda: service.cameras.stats().get("detected", 0), 5.0, seconds)
    finally:
        service.stop()


def _run_cluster(settings: Any, cameras: list, workers: int, seconds: float) -> float:
    import ray

    from serving.service import GridwatchService
    from serving.store.db import Database
    from serving.store.models import Base

    db = Database(settings.database_url)  # a clean slate of leases for this run
    with db.transaction() as session:
        session.execute(Base.metadata.tables["camera_leases"].delete())
    db.close()
    ray.init(num_cpus=workers, include_dashboard=False, namespace="gridwatch-bench", log_to_driver=False)
    try:
        service = GridwatchService(settings.model_copy(update={"ray_address": "local"}), file_cameras=cameras)
        service.start()
        try:
            coordinator = service.coordinator
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                    sum(1 for w in coordinator.status()["workers"] if w["state"] == "up") == workers
                    and not coordinator.status()["unplaced"]):
                time.sleep(0.5)
            return _window(lambda: coordinator.stats["detected"], 8.0, seconds)
        finally:
            service.stop()
    finally:
        ray.shutdown()


def _ingest_rate(settings: Any, count: int, images: Path) -> dict[str, float]:
    import cv2

    from detector.files import is_image
    from detector.taxonomy import load_taxonomy
    from serving.cases import CasePolicy, CaseService
    from serving.events import ViolationEvent
    from serving.evidence import EvidenceFrame, EvidenceStore
    from serving.store.db import Database

    photo = next((cv2.imread(str(p)) for p in sorted(images.rglob("*")) if is_image(p)), None)
    if photo is None:
        raise ValueError(f"no image under {images} for evidence frames")
    db = Database(settings.database_url)
    with tempfile.TemporaryDirectory(prefix="gridwatch-bench-ingest-") as tmp:
        cases = CaseService(db, EvidenceStore(Path(tmp)), load_taxonomy(settings.taxonomy_file), CasePolicy(),
                            model_version="bench", public_url="http://bench")
        base = datetime.now(timezone.utc).replace(microsecond=0)
        run = f"{int(time.time())}"
        h, w = photo.shape[:2]
        box = (w * 0.3, h * 0.3, w * 0.6, h * 0.6)

        def event(i: int, kind: str, last_s: float) -> ViolationEvent:
            return ViolationEvent(type=kind, event_id=f"bench-{run}-{i}", camera=f"bench-{run}-{i % 50}",
                                  violation="bin_overflow", matter_code="37020206042", grid="370202001001001",
                                  zone=f"z{i}", first_seen=base, last_seen=base + timedelta(seconds=last_s),
                                  score=0.8, best_score=0.8, box=box, division="370202")

        start = time.perf_counter()
        for i in range(count):
            cases.ingest(event(i, "opened", 60), EvidenceFrame(box=box, image=photo, label="bench"))
        opened = count / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(count):
            cases.ingest(event(i, "updated", 120), None)
        updated = count / (time.perf_counter() - start)
    db.close()
    return {"opened_with_evidence_per_s": round(opened, 1), "updated_per_s": round(updated, 1),
            "evidence_frame": f"{w}x{h}"}


def run(args: argparse.Namespace) -> int:
    from serving.bench.cameras import _background, make_clip
    from serving.cameras import Camera
    from serving.settings import SettingsError, load_settings

    try:
        import ray  # noqa: F401
    except ImportError:
        print("error: bench --cluster needs Ray: pip install 'gridwatch[cluster]'", file=sys.stderr)
        return 2
    try:
        settings = load_settings(model=args.model, database_url=args.database_url, threads=1)
        settings.resolved_model()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not (settings.database_url or "").startswith("postgresql"):
        print("error: bench --cluster needs PostgreSQL: --database-url postgresql+psycopg2://...", file=sys.stderr)
        return 2
    w, h = (int(v) for v in args.resolution.lower().split("x"))
    results: dict[str, Any] = {"cameras": args.cluster_cameras, "sample_every": args.sample_every,
                               "resolution": args.resolution, "seconds": args.cluster_seconds}
    with tempfile.TemporaryDirectory(prefix="gridwatch-bench-cluster-") as tmp:
        clip = make_clip(Path(tmp) / "camera.mp4", _background(args.images, (w, h)), args.fps,
                         max(args.clip_seconds, 10), args.keyframe_every)
        cameras = [Camera(id=f"bench-{i:03d}", source=str(clip), division="370202", grid="370202001001001",
                          sample_every=args.sample_every, loop=True, tiled_static_checks=False,
                          start=datetime(2026, 1, 1, tzinfo=timezone.utc))
                   for i in range(args.cluster_cameras)]
        # One ONNX Runtime thread everywhere: the single process against one worker is then the
        # cost of Ray alone, and two workers show what a second process buys on this host.
        base = settings.model_copy(update={"data_dir": Path(tmp) / "data", "threads": 1,
                                           "admin_key": "gw_bench_admin_key_0123456789"})
        fps = {"single process": _run_single(base, cameras, args.cluster_seconds)}
        for workers in (1, 2):
            fps[f"cluster, {workers} worker{'s' if workers > 1 else ''}"] = _run_cluster(
                base, cameras, workers, args.cluster_seconds)
        single = fps["single process"]
        results["runs"] = [{"mode": mode, "frames_per_s": round(rate, 2),
                            "cameras_sustained": round(rate * args.sample_every, 1),
                            "vs_single": round(rate / single, 3) if single else None}
                           for mode, rate in fps.items()]
        results["ingest"] = _ingest_rate(settings, args.ingest_events, args.images)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{args.cluster_cameras} cameras looping a {args.resolution} clip, analysed every {args.sample_every} s, "
          f"{args.cluster_seconds:.0f} s windows")
    print(f"{'mode':<22} {'frames/s':>9} {'cameras':>8} {'vs single':>10}")
    for r in results["runs"]:
        print(f"{r['mode']:<22} {r['frames_per_s']:>9.2f} {r['cameras_sustained']:>8.1f} {r['vs_single']:>9.2f}x")
    ingest = results["ingest"]
    print(f"case store (PostgreSQL): {ingest['opened_with_evidence_per_s']} opened events/s with a "
          f"{ingest['evidence_frame']} evidence frame, {ingest['updated_per_s']} updates/s")
    return 0
