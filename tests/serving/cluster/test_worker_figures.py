"""What a camera worker reports for balancing and metrics: each camera's cost (a tiled check's
parts charged to its own camera), the pipeline's counters and the checks waiting their turn,
and how the coordinator merges them. No Ray needed."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import yaml

from detector import Detections, load_taxonomy
from serving.cameras import Camera
from tests.support.streams import EXAMPLE_YAML, SEED_TAXONOMY_OVERRIDE

T0 = datetime(2026, 5, 1, 2, 0, tzinfo=timezone.utc)
TILE_S = 0.01  # what each image of a tiled check costs the stand-in detector


def camera(**changes) -> Camera:
    entry = yaml.safe_load(EXAMPLE_YAML)["cameras"][0]
    entry.update(source="rtsp://unused", **changes)
    return Camera.model_validate(entry)


class _SlowTiles:
    """Finds nothing; an ordinary batch is free, each image of a tiled check takes TILE_S."""

    names = {0: "person"}

    def __init__(self) -> None:
        self.tile_images = 0

    def detect(self, images):
        return [Detections.empty(self.names) for _ in images]

    def run_tiles(self, images):
        time.sleep(TILE_S * len(images))
        self.tile_images += len(images)
        return [Detections.empty(self.names) for _ in images]

    def tiled_check(self, image, **options):
        from detector.tiling import TiledCheck

        return TiledCheck(self.run_tiles, image, size=128, iou_threshold=0.7, max_detections=300)


def test_a_tiled_checks_parts_are_charged_to_its_own_camera(tmp_path: Path) -> None:
    """Balancing places cameras by what they cost. A check runs a part beside each batch of
    other cameras' frames (and alone when none came): that time is its camera's, not theirs."""
    from serving.cluster.worker import WorkerPipeline
    from serving.pipeline.runner import TiledBudget
    from serving.streams.readers import Frame

    (tmp_path / "city.yaml").write_text(SEED_TAXONOMY_OVERRIDE, encoding="utf-8")
    detector = _SlowTiles()
    pipeline = WorkerPipeline([camera(id="cam-a", tiled_check_every=60), camera(id="cam-b", tiled_static_checks=False)],
                              detector, load_taxonomy(tmp_path / "city.yaml"), motion_gating=False)
    pipeline.tiled_budget = TiledBudget(burst=float("inf"))
    image = np.zeros((360, 640, 3), np.uint8)
    checked = pipeline.runtimes["cam-a"]
    due = checked.next_tiled_check(T0)
    pipeline.process([Frame("cam-a", T0, image, 0), Frame("cam-b", T0, image, 0)])
    pipeline.process([Frame("cam-a", due, image, 0), Frame("cam-b", due, image, 0)])
    at = due
    while checked.held is not None:
        at += timedelta(seconds=1)
        pipeline.process([Frame("cam-b", at, image, 0)])
        if checked.held is not None:
            pipeline.process([])  # as the loop does when no frame came but a check is in flight
    check_s = TILE_S * detector.tile_images
    assert detector.tile_images > 16  # the check ran over several batches
    assert pipeline.busy["cam-a"] >= check_s
    assert pipeline.busy["cam-b"] < check_s / 4


def test_the_coordinator_sums_workers_counters_and_shows_only_owned_waits(tmp_path: Path) -> None:
    from serving.api.metrics import render
    from serving.cluster.coordinator import ClusterCoordinator, WorkerHandle
    from serving.cluster.worker import WorkerReport
    from serving.pipeline import TiledCheckState
    from serving.settings import Settings

    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg2://gridwatch@127.0.0.1:1/none")
    coordinator = ClusterCoordinator(settings, db=None, on_event=lambda *a: None)
    checked = datetime(2026, 12, 7, 8, 0, tzinfo=timezone.utc)
    checks = {"w1": {"cam-1": TiledCheckState(40.0, checked), "cam-moved": TiledCheckState(900.0, None)},
              "w2": {"cam-2": TiledCheckState(75.5, None), "cam-3": TiledCheckState(None, checked)}}
    for wid, tiled in (("w1", 3), ("w2", 4)):
        worker = WorkerHandle(wid, actor=None, state="up")
        worker.report = WorkerReport(worker=wid, node="n", pid=1, cameras={}, health={},
                                     stats={"frames": 10, "detected": 5, "tiled": tiled, "tiled_missed": 1},
                                     queue_depth=0, detect_ms=3.0, tiled_checks=checks[wid])
        coordinator.workers[wid] = worker
    # cam-moved's lease went to w2 after w1's last report: w1's figure for it is stale.
    coordinator.owner.update({"cam-1": "w1", "cam-2": "w2", "cam-3": "w2", "cam-moved": "w2"})

    assert coordinator.stats == {"frames": 20, "detected": 10, "tiled": 7, "tiled_missed": 2}
    assert coordinator.tiled_checks() == {"cam-1": checks["w1"]["cam-1"], **checks["w2"]}
    # The service's cameras' health carries each camera's checks (CameraRegistry.health).
    cameras = {cid: state.to_json() for cid, state in coordinator.tiled_checks().items()}
    assert cameras["cam-3"] == {"tiled_check_waiting_s": None, "tiled_checked_at": "2026-12-07T08:00:00+00:00"}
    text = render({"pipeline": coordinator.stats, "counters": {"detect_requests": 0, "detections": 0},
                   "case_counts": {"events": 0, "cases_created": 0}, "pending_events": 0, "cases_by_state": {},
                   "cases_by_review": {}, "outbox": {"pending": 0, "delivered": 0, "dead": 0, "lag_s": 0.0},
                   "model": {"version": "v", "swaps": 0}, "rechecks": {}, "cameras": cameras})
    assert "gridwatch_frames_tiled_total 7.0" in text
    assert "gridwatch_tiled_checks_missed_total 2.0" in text
    assert "gridwatch_tiled_checks_waiting 2.0" in text
    assert "gridwatch_tiled_check_wait_seconds 75.5" in text
