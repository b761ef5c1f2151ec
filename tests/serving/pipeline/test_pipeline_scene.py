"""Scene change: a new persistent patch on the road after a truck is a spillage candidate,
a new patch on a wall a posting candidate; both need review. Real video, real detector."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from detector import load_taxonomy
from serving.cameras import parse_cameras
from serving.evidence import EvidenceStore
from serving.pipeline import Pipeline
from tests.support.shared_data import shared_available
from tests.support.streams import Placement, Timeline, seed_detector, seed_props, write_video

pytestmark = pytest.mark.skipif(not shared_available(), reason="../shared datasets/weights not found")
T0 = datetime(2026, 5, 1, 2, 0, tzinfo=timezone.utc)
DEBRIS = (300, 300, 70, 24)  # x, y, w, h on the road
POSTER = (100, 60, 40, 50)  # on the facade


def scene_video(tmp_path: Path, *, truck: bool) -> Path:
    tl = Timeline(seed_props(), duration=70, fps=5)
    if truck:  # a real truck photo crossing the road from 10 s to 20 s
        tl.add(Placement("truck", 160, 10, 20, path=((-60, 350), (700, 350))))
    tl.add_patch(22, DEBRIS, color=(30, 45, 70)).add_patch(30, POSTER, color=(200, 220, 240))
    return write_video(tmp_path / f"scene-{truck}.mp4", tl, creation_time=T0)


def config(tmp_path: Path, video: Path):
    return parse_cameras({"cameras": [{
        "id": "cam-s", "source": str(video), "division": "370202", "grid": "370202001001001", "sample_every": 2.0,
        "zones": [
            {"name": "road", "type": "roadway", "polygon": [[0, 0.75], [1, 0.75], [1, 1], [0, 1]]},
            {"name": "facade", "type": "wall", "polygon": [[0, 0], [1, 0], [1, 0.4], [0, 0.4]]},
        ],
        "rules": [
            {"violation": "road_spillage", "zone_types": ["roadway"], "scene_change": True,
             "after_classes": ["truck"], "dwell": 20},
            {"violation": "illegal_flyer", "zone_types": ["wall"], "scene_change": True, "dwell": 20},
        ],
    }]}, tmp_path)


def test_spillage_after_truck_and_new_posting(tmp_path: Path) -> None:
    pipeline = Pipeline(config(tmp_path, scene_video(tmp_path, truck=True)), seed_detector(), load_taxonomy(),
                        evidence=EvidenceStore(tmp_path / "ev"))
    events = pipeline.run_until_done()
    assert [(e.type, e.violation, e.zone) for e in events] == [
        ("opened", "road_spillage", "road"),
        ("opened", "illegal_flyer", "facade"),
        ("closed", "road_spillage", "road"),
        ("closed", "illegal_flyer", "facade"),
    ]
    spill, flyer = events[0], events[1]
    assert spill.needs_review and flyer.needs_review
    assert spill.source == flyer.source == "scene_change"
    assert spill.matter_code == "37020206014" and flyer.matter_code == "37020207001"
    assert 22 <= (spill.first_seen - T0).total_seconds() <= 26
    x1, y1, x2, y2 = spill.box
    assert abs(x1 - DEBRIS[0]) < 10 and abs(y2 - (DEBRIS[1] + DEBRIS[3])) < 10  # it found the patch
    assert len(spill.evidence) == 3


def test_patch_without_a_truck_is_not_spillage(tmp_path: Path) -> None:
    pipeline = Pipeline(config(tmp_path, scene_video(tmp_path, truck=False)), seed_detector(), load_taxonomy())
    events = pipeline.run_until_done()
    assert [(e.type, e.violation) for e in events] == [("opened", "illegal_flyer"), ("closed", "illegal_flyer")]
