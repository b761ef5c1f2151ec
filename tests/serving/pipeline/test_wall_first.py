"""Active learning asks first for frames where the wall scene-change rule fired (issue #28,
item 6): flyers and banners have no real labelled image, and these frames are where they are."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np

from detector import Detections, load_taxonomy
from serving.cameras import Camera
from serving.evidence import EvidenceStore
from serving.labelling.queue import LabellingQueue
from serving.pipeline.rules import RuleEngine
from serving.pipeline.scene import SCENE_CLASS_ID
from serving.pipeline.tracking import IoUTracker
from serving.pipeline.uncertainty import LabellingSample, unsure_reasons
from serving.pipeline.zones import ZoneMap
from serving.store.db import Database

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)


def test_a_wall_scene_candidate_is_a_reason_and_a_road_one_is_not():
    none = Detections.empty({0: "flyer"})
    assert unsure_reasons(none, {"flyer": 0.4}, 0.1, scene_zone_types={"wall"}) == ("wall_scene_change",)
    assert unsure_reasons(none, {"flyer": 0.4}, 0.1, scene_zone_types={"roadway"}) == ()
    assert unsure_reasons(none, {"flyer": 0.4}, 0.1) == ()


def test_rules_say_where_a_scene_change_candidate_stands():
    camera = Camera.model_validate({
        "id": "cam-w", "source": "rtsp://unused", "division": "370202", "grid": "370202001001001",
        "zones": [{"name": "facade", "type": "wall", "polygon": [[0, 0], [1, 0], [1, 0.5], [0, 0.5]]},
                  {"name": "road", "type": "roadway", "polygon": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}],
        "rules": [{"violation": "illegal_flyer", "zone_types": ["wall"], "scene_change": True, "dwell": 20}]})
    engine = RuleEngine(camera, load_taxonomy())
    zones, tracker = ZoneMap(camera.zones, 640, 360), IoUTracker(max_age_s=30)
    patch = Detections(xyxy=np.array([[100, 60, 140, 110]], np.float32), scores=np.array([0.8], np.float32),
                       class_ids=np.array([SCENE_CLASS_ID], np.int64), names={SCENE_CLASS_ID: "new_object"})
    engine.update(tracker.update(patch, T0), zones, T0, np.zeros((360, 640, 3), np.uint8))
    assert engine.scene_zone_types == {"wall"}
    later = T0 + timedelta(seconds=2)
    engine.update(tracker.update(Detections.empty({SCENE_CLASS_ID: "new_object"}), later), zones, later)
    assert engine.scene_zone_types == frozenset()  # the patch is not in this frame


def test_labelling_queue_hands_out_wall_frames_first(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    queue = LabellingQueue(db, EvidenceStore(tmp_path / "ev"), lambda: ["flyer"], ZoneInfo("Asia/Shanghai"))
    image = np.zeros((64, 96, 3), np.uint8)

    def add(minutes: int, *reasons: str) -> int:
        image[0, 0, 0] = minutes  # each frame its own bytes
        return queue.add(LabellingSample(camera="cam-w", taken_at=T0 + timedelta(minutes=minutes), reasons=reasons,
                                         image=image.copy(), detections=Detections.empty({0: "flyer"}),
                                         model_version="v"))

    oldest = add(0, "score_band")
    middle = add(10, "class_flip")
    wall = add(20, "score_band", "wall_scene_change")
    order = [queue.claim_next(who, [], 60).id for who in ("alice", "bob", "carol")]
    assert order == [wall, oldest, middle]  # the wall frame first although the newest
    assert queue.claim_next("dave", [], 60) is None
    db.close()
