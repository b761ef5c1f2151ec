"""Active learning end to end on real images: the shipped model runs over a folder camera
of real street photos, the pipeline offers each detected frame to the service's sampler, and
the unsure ones land in the labelling queue with the right reasons, within the day's budget,
also after a restart."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import pytest

from detector import Detector
from serving.cameras import parse_cameras
from serving.pipeline import Pipeline
from tests.support.shared_data import real_images

SHIPPED = Path(__file__).resolve().parents[3] / "weights" / "gridwatch-int8.onnx"
START = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)  # 10:00 in Shanghai
BIN_MIN, PILE_MIN, BAND = 0.5, 0.95, 0.1


@pytest.fixture(scope="module")
def shipped_detector() -> Detector:
    return Detector(SHIPPED, threads=1)


def street_folder(tmp_path: Path, count: int) -> Path:
    """Real photos in a folder camera's order (linked, never copied into the repository)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, image in enumerate(real_images("garbage_overflow_cn", count)):
        (folder / f"{i:03d}.jpg").symlink_to(image)
    return folder


def cameras(folder: Path, tmp_path: Path, start: datetime = START):
    whole = [[0, 0], [1, 0], [1, 1], [0, 1]]
    entry = {"id": "cam-lab", "source": str(folder), "division": "370202", "grid": "370202001001001",
             "sample_every": 10, "tiled_static_checks": False, "start": start.isoformat(),
             "zones": [{"name": "all", "type": "bin_area", "polygon": whole},
                       {"name": "walk", "type": "sidewalk", "polygon": whole}],
             # bin_overflow: unsure near 0.5. exposed_garbage's bar is so high that every pile
             # is held back for its score: each frame with a pile is "dropped_for_score".
             "rules": [{"violation": "bin_overflow", "zone_types": ["bin_area"], "min_score": BIN_MIN, "dwell": 0},
                       {"violation": "exposed_garbage", "zone_types": ["sidewalk"], "min_score": PILE_MIN,
                        "dwell": 0}]}
    return parse_cameras({"cameras": [entry]}, tmp_path)


BARS = {"bin_overflow": BIN_MIN, "garbage_pile": PILE_MIN}


def check_reasons(reasons: list[str], detections: list[dict]) -> None:
    """What the stored detections say about why the frame was taken."""
    tops: dict[str, float] = {}
    for d in detections:
        tops[d["class_name"]] = max(tops.get(d["class_name"], 0.0), d["score"])
    in_band = any(abs(score - BARS[c]) <= BAND + 1e-4 for c, score in tops.items() if c in BARS)
    assert ("score_band" in reasons) == in_band
    below = any(d["score"] < BARS[d["class_name"]] for d in detections if d["class_name"] in BARS)
    if "garbage_pile" in tops:  # no pile reaches 0.95 here: each is held back
        assert "dropped_for_score" in reasons
    if "dropped_for_score" in reasons:
        assert below  # a watched object under its bar is what the rules held back
    assert set(reasons) <= {"score_band", "class_flip", "dropped_for_score"} and reasons


def test_unsure_real_frames_are_queued_with_their_reasons(run_service, shipped_detector, tmp_path) -> None:
    settings = {"labelling": {"daily_budget_per_camera": 3, "band": BAND, "min_gap_s": 0}}
    server = run_service(**settings)
    service = server.service
    folder = street_folder(tmp_path, 8)
    pipeline = Pipeline(cameras(folder, tmp_path), shipped_detector, service.taxonomy,
                        sampler=service.sampler, on_sample=service.on_sample)
    pipeline.run_until_done()
    assert pipeline.stats["detected"] == 8
    items = service.labelling.list()
    assert len(items) == 3 == pipeline.stats["sampled"]  # more were unsure; the budget took 3
    for item in items:
        assert item.camera == "cam-lab" and item.status == "pending"
        assert item.model_version == shipped_detector.info.version
        assert item.detections, "an unsure frame has detections"
        check_reasons(item.reasons, item.detections)
        # The stored frame is the camera's frame, lossless, with the detections in its pixels.
        stored = cv2.imread(str(service.evidence.resolve(item.path)))
        index = round((item.taken_at - START).total_seconds() / 10)
        original = cv2.imread(str(folder / f"{index:03d}.jpg"))
        assert stored.shape == original.shape == (item.height, item.width, 3)
        assert (stored == original).all()
    # Both reasons the rules and the scores give are among them (these photos have both).
    reasons = {r for item in items for r in item.reasons}
    assert {"score_band", "dropped_for_score"} <= reasons
    # Every frame the budget passed over after the third was unsure too: the first three
    # unsure frames of the day were taken, in order.
    taken = [round((i.taken_at - START).total_seconds() / 10) for i in items]
    assert taken == sorted(taken)

    # A restart the same day: a fresh sampler asks the queue what today cost and takes nothing.
    server.stop()
    again = run_service(**{**settings, "data_dir": service.settings.data_dir})
    pipeline = Pipeline(cameras(folder, tmp_path), shipped_detector, again.service.taxonomy,
                        sampler=again.service.sampler, on_sample=again.service.on_sample)
    pipeline.run_until_done()
    assert pipeline.stats["sampled"] == 0 and len(again.service.labelling.list()) == 3
    # The next local day has a budget of its own.
    tomorrow = cameras(folder, tmp_path, start=START + timedelta(days=1))
    pipeline = Pipeline(tomorrow, shipped_detector, again.service.taxonomy,
                        sampler=again.service.sampler, on_sample=again.service.on_sample)
    pipeline.run_until_done()
    assert pipeline.stats["sampled"] == 3 and len(again.service.labelling.list()) == 6


def test_the_service_wires_its_cameras_to_the_queue(shipped_detector, tmp_path) -> None:
    """`gridwatch serve`'s own pipeline (a config-file camera) samples into the queue."""
    from serving.settings import Settings
    from tests.support.service import RunningService, pick_port, wait_for

    folder = street_folder(tmp_path, 4)
    settings = Settings(data_dir=tmp_path / "data", port=pick_port(), admin_key="gw_test_admin_key_0123456789",
                        labelling={"daily_budget_per_camera": 2, "band": 1.0, "min_gap_s": 0})
    server = RunningService(settings, detector=shipped_detector,
                            file_cameras=list(cameras(folder, tmp_path).cameras))
    try:
        wait_for(lambda: len(server.service.labelling.list()) == 2, timeout=60)
        wait_for(lambda: server.service.cameras.stats().get("frames") == 4, timeout=60)
        assert len(server.service.labelling.list()) == 2  # the budget, though all four were unsure
        with server.client() as http:
            text = http.get("/metrics").text
            assert "gridwatch_labelling_sampled_total 2" in text
            # the samples went through the database writer's queue, counted there
            handed = [line for line in text.splitlines() if line.startswith('gridwatch_outlet_items_total{kind="samples"}')]
            assert handed and float(handed[0].split()[-1]) >= 2
    finally:
        server.stop()
