"""Tracks, zones, dwell, median score, schedule and events: units with Detections, then
end to end on real H.264 video built from real dataset images with the real seed detector."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml

from detector import Detections, load_taxonomy
from serving.cameras import Camera, parse_cameras
from serving.evidence import EvidenceStore
from serving.pipeline import Pipeline
from serving.pipeline.rules import RuleEngine
from serving.pipeline.tracking import IoUTracker
from serving.pipeline.zones import ZoneMap
from tests.support.shared_data import shared_available
from tests.support.streams import (
    EXAMPLE_YAML, SEED_TAXONOMY_OVERRIDE, seed_detector, seed_props, street_scene, whole_frame_check, write_video,
)

T0 = datetime(2026, 5, 1, 2, 0, tzinfo=timezone.utc)  # 10:00 in Shanghai, a Friday
NAMES = {0: "person", 1: "fire hydrant", 2: "car"}


def dets(*boxes: tuple[str, tuple[float, float, float, float], float]) -> Detections:
    inv = {v: k for k, v in NAMES.items()}
    if not boxes:
        return Detections.empty(NAMES)
    return Detections(
        xyxy=np.array([b for _, b, _ in boxes], np.float32),
        scores=np.array([s for _, _, s in boxes], np.float32),
        class_ids=np.array([inv[n] for n, _, _ in boxes], np.int64),
        names=NAMES,
    )


def example_camera(**changes) -> Camera:
    entry = yaml.safe_load(EXAMPLE_YAML)["cameras"][0]
    entry.update({"source": "rtsp://unused", **changes})
    return Camera.model_validate(entry)


@pytest.fixture(scope="module")
def taxonomy(tmp_path_factory):
    path = tmp_path_factory.mktemp("tax") / "city.yaml"
    path.write_text(SEED_TAXONOMY_OVERRIDE, encoding="utf-8")
    return load_taxonomy(path)


class Replay:
    """Feed Detections at given times through tracker + rules, as the pipeline does."""

    def __init__(self, camera: Camera, taxonomy) -> None:
        self.tracker = IoUTracker(max_age_s=camera.grace_s)
        self.rules = RuleEngine(camera, taxonomy)
        self.zones = ZoneMap(camera.zones, 640, 360)
        self.frame = np.zeros((360, 640, 3), np.uint8)
        self.log: list[tuple[str, str, str, int]] = []

    def step(self, seconds: float, detections: Detections) -> None:
        when = T0 + timedelta(seconds=seconds)
        tracks = self.tracker.update(detections, when)
        for t in self.rules.update(tracks, self.zones, when, self.frame):
            c = t.candidate
            self.log.append((t.type, c.rule.violation.id, c.zone.name, round(c.dwell_s)))

    def finish(self) -> None:
        for t in self.rules.close_all():
            self.log.append((t.type, t.candidate.rule.violation.id, t.candidate.zone.name, round(t.candidate.dwell_s)))


BIN = ("fire hydrant", (470, 200, 530, 280), 0.7)  # ground point (500, 280): in `bins` and the sidewalk


def test_static_bin_opens_once_after_dwell_and_closes_after_grace(taxonomy) -> None:
    r = Replay(example_camera(), taxonomy)
    for s in range(0, 100, 2):
        r.step(s, dets(BIN))
    for s in range(100, 200, 2):
        r.step(s, dets())
    # One instance, in one zone (bins comes first in the rule), though it stands in two zones.
    assert r.log == [("opened", "bin_overflow", "bins", 60), ("closed", "bin_overflow", "bins", 98)]


def test_readme_example_with_auto_confirm_setting_alone_is_delivered(taxonomy) -> None:
    """The README's example rules (no rule-level auto_confirm_score) plus `settings.auto_confirm:
    {bin_overflow: 0.5}` must send the case; it used to be needs_review and never delivered."""
    from serving.cases import CasePolicy
    from serving.store.models import Case

    def opened(camera: Camera):  # noqa: ANN202
        engine, zones = RuleEngine(camera, taxonomy), ZoneMap(camera.zones, 640, 360)
        tracker, frame = IoUTracker(max_age_s=camera.grace_s), np.zeros((360, 640, 3), np.uint8)
        for s in range(0, 100, 2):
            when = T0 + timedelta(seconds=s)
            for t in engine.update(tracker.update(dets(BIN), when), zones, when, frame):
                if t.type == "opened":
                    return t.candidate
        raise AssertionError("no event opened")

    policy = CasePolicy(auto_confirm={"bin_overflow": 0.5})
    candidate = opened(example_camera())
    case = Case(violation="bin_overflow", review_status="pending", needs_review=candidate.needs_review,
                score=candidate.median_score)
    assert candidate.needs_review is False and policy.deliverable(case)
    assert policy.route("bin_overflow") == "auto-confirm at score >= 0.5, review below it"
    assert policy.route("street_stall").startswith("review")
    # A rule's own bar still holds events under it back for review.
    strict = example_camera(rules=[{"violation": "bin_overflow", "zone_types": ["bin_area"], "min_score": 0.4,
                                    "dwell": 60, "auto_confirm_score": 0.9}])
    assert opened(strict).needs_review is True
    assert policy.route("bin_overflow", rule_score=0.9) == "auto-confirm at score >= 0.9, review below it"


def test_flickering_detection_is_one_instance(taxonomy) -> None:
    r = Replay(example_camera(), taxonomy)
    for s in range(0, 200, 2):
        r.step(s, dets(BIN) if (s // 2) % 4 else dets())  # missed every fourth sample
    r.finish()
    assert [e[:3] for e in r.log] == [("opened", "bin_overflow", "bins"), ("closed", "bin_overflow", "bins")]


def test_median_score_not_one_lucky_frame(taxonomy) -> None:
    r = Replay(example_camera(), taxonomy)
    for s in range(0, 200, 2):
        score = 0.9 if s % 10 == 0 else 0.3  # median 0.3 < min_score 0.4
        r.step(s, dets(("fire hydrant", BIN[1], score)))
    r.finish()
    assert r.log == []


def test_passer_by_and_short_stay_make_no_event(taxonomy) -> None:
    r = Replay(example_camera(), taxonomy)
    for i, s in enumerate(range(0, 40, 2)):  # a car crossing the sidewalk, 20 px per sample
        x = 20 + 30 * i
        r.step(s, dets(("car", (x, 280, x + 90, 330), 0.9)))
    for s in range(40, 160, 2):  # parks for 2 minutes: below street_stall's 180 s
        r.step(s, dets(("car", (300, 280, 390, 330), 0.9)))
    r.finish()
    assert r.log == []


def test_outside_schedule_nothing_opens(taxonomy) -> None:
    r = Replay(example_camera(), taxonomy)
    night = 13 * 3600  # 23:00 in Shanghai
    for s in range(night, night + 200, 2):
        r.step(s, dets(BIN))
    r.finish()
    assert r.log == []


def test_outside_any_rule_zone_makes_no_event(taxonomy) -> None:
    r = Replay(example_camera(), taxonomy)
    for s in range(0, 200, 2):
        r.step(s, dets(("fire hydrant", (100, 50, 160, 150), 0.9)))  # ground point in no zone
    r.finish()
    assert r.log == []


def test_tracker_keeps_id_through_gaps_and_small_moves() -> None:
    tracker = IoUTracker(max_age_s=30)
    (a,) = tracker.update(dets(("car", (100, 100, 200, 160), 0.9)), T0)
    tracker.update(dets(), T0 + timedelta(seconds=20))
    (b,) = tracker.update(dets(("car", (150, 100, 250, 162), 0.8)), T0 + timedelta(seconds=28))
    assert b.id == a.id and b.scores == pytest.approx([0.9, 0.8])
    (c,) = tracker.update(dets(("person", (150, 100, 250, 162), 0.8)), T0 + timedelta(seconds=30))
    assert c.id != a.id  # another class is another thing
    tracker.update(dets(), T0 + timedelta(seconds=70))
    (d,) = tracker.update(dets(("car", (150, 100, 250, 162), 0.8)), T0 + timedelta(seconds=72))
    assert d.id not in (a.id, c.id)  # gone longer than max_age: a new instance


# --- end to end ----------------------------------------------------------------------------

needs_shared = pytest.mark.skipif(not shared_available(), reason="../shared datasets/weights not found")


def _config(tmp_path: Path, video: Path, **changes) -> object:
    entry = yaml.safe_load(EXAMPLE_YAML)["cameras"][0]
    entry.update(source=str(video), **changes)
    return parse_cameras({"cameras": [entry]}, tmp_path)


@pytest.fixture(scope="module")
def street_video(tmp_path_factory) -> Path:
    if not shared_available():
        pytest.skip("../shared datasets/weights not found")
    path = tmp_path_factory.mktemp("media") / "street.mp4"
    return write_video(path, street_scene(seed_props()), creation_time=T0)


def _summary(events) -> list[tuple[str, str, str]]:
    return [(e.type, e.violation, e.zone) for e in events]


@needs_shared
def test_replay_yields_exactly_the_expected_events(tmp_path: Path, street_video: Path, taxonomy) -> None:
    seen, frames = [], []

    def sink(event, frame) -> None:
        seen.append(event)
        frames.append(frame)

    pipeline = Pipeline(_config(tmp_path, street_video), seed_detector(), taxonomy, on_event=sink,
                        evidence=EvidenceStore(tmp_path / "ev"))
    events = pipeline.run_until_done()
    assert events == seen
    # The best frame travels beside the opening events (new evidence); beside the closings goes
    # the latest sighting's frame, marked not best: a moment of the case's timeline, never its photo.
    assert [f.best for f in frames] == [True, True, False, False]
    assert frames[0].taken_at < frames[2].taken_at <= events[2].last_seen
    assert frames[0].image.shape == (360, 640, 3) and frames[0].box == pytest.approx(seen[0].box, abs=0.06)
    # Beside the frame, everything the model found in it: the violation's own box among them.
    assert frames[0].detections is not None
    assert any(np.allclose(box, frames[0].box, atol=0.1) for box in frames[0].detections.xyxy)
    assert _summary(events) == [
        ("opened", "bin_overflow", "bins"),  # at 80 s: 60 s after it appeared
        ("opened", "street_stall", "east-sidewalk"),  # at 220 s: 180 s after the cart parked
        ("closed", "bin_overflow", "bins"),  # ~30 s after it went at 200 s
        ("closed", "street_stall", "east-sidewalk"),  # at the end of the file
    ]
    bin_open, stall_open, bin_close, stall_close = events
    # Clock: the file's recorded start time; the bin stands from 20 s to 200 s of video time.
    assert T0 + timedelta(seconds=20) <= bin_open.first_seen <= T0 + timedelta(seconds=24)
    assert 60 <= bin_open.dwell_s <= 64
    assert T0 + timedelta(seconds=190) <= bin_close.last_seen <= T0 + timedelta(seconds=198)
    assert bin_open.event_id == bin_close.event_id != stall_open.event_id == stall_close.event_id
    assert bin_open.matter_code == "37020206042" and stall_open.matter_code == "37020209006"
    assert bin_open.grid == "370202001001001" and bin_open.camera == "cam-001"
    assert T0 + timedelta(seconds=40) <= stall_open.first_seen <= T0 + timedelta(seconds=44)
    assert stall_open.dwell_s >= 180
    assert stall_close.last_seen >= T0 + timedelta(seconds=296)  # the file ended with it still there
    # No rule-level auto_confirm_score: settings.auto_confirm alone decides, so no review flag.
    assert bin_open.score >= 0.4 and bin_open.needs_review is False
    assert {e.model_version for e in events} == {"coco-yolov8n-int8"}  # the model that saw them
    # Evidence: unaltered original (same size as the video), annotated copy, crop; all exist.
    original, annotated, crop = (Path(p) for p in bin_open.evidence)
    assert original.suffix == ".png" and original.is_relative_to(tmp_path / "ev" / "cam-001")
    import cv2

    assert cv2.imread(str(original)).shape == (360, 640, 3)
    assert crop.is_file() and annotated.is_file()
    line = json.loads(json.dumps(bin_open.to_json()))
    for key in ("type", "event_id", "camera", "violation", "matter_code", "grid", "zone", "first_seen",
                "last_seen", "dwell_s", "track_id", "score", "needs_review", "evidence"):
        assert key in line
    assert datetime.fromisoformat(line["first_seen"]) == bin_open.first_seen


@needs_shared
def test_replay_outside_schedule_yields_nothing(tmp_path: Path, street_video: Path, taxonomy) -> None:
    night = {"days": "mon-sun", "from": "20:00", "to": "06:00", "tz": "Asia/Shanghai"}  # 10:00 is outside
    pipeline = Pipeline(_config(tmp_path, street_video, schedule=[night]), seed_detector(), taxonomy)
    assert pipeline.run_until_done() == []
    assert pipeline.health["cam-001"].frames_sampled == 150


@needs_shared
def test_start_setting_is_the_clock_without_recorded_time(tmp_path: Path, taxonomy) -> None:
    video = write_video(tmp_path / "bare.mp4", street_scene(seed_props(), duration=100, cart_at=None, walker_at=None))
    start = datetime(2026, 5, 1, 9, 0, tzinfo=timezone(timedelta(hours=8)))
    pipeline = Pipeline(_config(tmp_path, video, start=start), seed_detector(), taxonomy)
    events = pipeline.run_until_done()
    assert _summary(events) == [("opened", "bin_overflow", "bins"), ("closed", "bin_overflow", "bins")]
    assert start + timedelta(seconds=20) <= events[0].first_seen <= start + timedelta(seconds=24)


@needs_shared
def test_broken_camera_does_not_stop_the_others(tmp_path: Path, street_video: Path, taxonomy) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(street_video.read_bytes()[:4000])  # truncated: header, no media
    good = yaml.safe_load(EXAMPLE_YAML)["cameras"][0] | {"source": str(street_video)}
    bad = good | {"id": "cam-002", "source": str(broken)}
    config = parse_cameras({"cameras": [bad, good]}, tmp_path)
    pipeline = Pipeline(config, seed_detector(), taxonomy)
    events = pipeline.run_until_done()
    assert {e.camera for e in events} == {"cam-001"} and len(events) == 4
    health = pipeline.health["cam-002"]
    assert health.state == "failed" and health.errors >= 1 and health.last_error


@needs_shared
def test_evidence_is_never_overwritten(tmp_path: Path, street_video: Path, taxonomy) -> None:
    # Replaying the same footage twice gives the same event ids and the same frames: the
    # second run finds its files already there and leaves them exactly as they were.
    store = EvidenceStore(tmp_path / "ev")
    first = Pipeline(_config(tmp_path, street_video), seed_detector(), taxonomy, evidence=store).run_until_done()
    written = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "ev").rglob("*") if p.is_file()}
    assert len(written) >= 6 and all(p.exists() for e in first for p in map(Path, e.evidence))
    second = Pipeline(_config(tmp_path, street_video), seed_detector(), taxonomy, evidence=store).run_until_done()
    assert [e.evidence for e in second] == [e.evidence for e in first]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written} == written


@needs_shared
def test_motion_gate_skips_still_frames_but_rechecks_static_scene(tmp_path: Path, taxonomy) -> None:
    from serving.pipeline import CameraRuntime
    from serving.streams.readers import Frame

    tl = street_scene(seed_props(), duration=10, cart_at=None, walker_at=None)
    still, changed = tl.frame(0), tl.frame(25)  # before and after the bin appears
    rt = CameraRuntime(example_camera(static_check_every=60), taxonomy, None)

    def frame(image, seconds: float) -> Frame:
        return Frame("cam-001", T0 + timedelta(seconds=seconds), image, 0)

    assert rt.needs_detection(frame(still, 0))  # nothing seen yet
    rt.last_detect = T0
    rt.motion.reference(still)
    assert not rt.needs_detection(frame(still.copy(), 2))  # nothing moved
    assert rt.needs_detection(frame(changed, 4))  # something new
    assert rt.needs_detection(frame(still.copy(), 60))  # static re-check due


@needs_shared
def test_replay_detects_only_when_needed(tmp_path: Path, street_video: Path, taxonomy) -> None:
    pipeline = Pipeline(_config(tmp_path, street_video), seed_detector(), taxonomy)
    pipeline.run_until_done()
    assert pipeline.stats["frames"] == 150
    assert 5 <= pipeline.stats["detected"] < 150  # motion and the 60 s re-check, not every frame


@needs_shared
@pytest.mark.parametrize("tiled", [True, False])
def test_static_checks_run_tiled_at_full_resolution(taxonomy, tiled: bool) -> None:
    import cv2

    from serving.streams.readers import Frame

    props = seed_props()
    frame = cv2.resize(props.background, (2560, 1440), interpolation=cv2.INTER_LINEAR)
    person = props.sized("person", 80)  # 20 px tall once the frame is shrunk to 640: unseen
    frame[900:900 + person.shape[0], 1500:1500 + person.shape[1]] = person
    pipeline = Pipeline([example_camera(tiled_static_checks=tiled, tiled_check_every=60)], seed_detector(),
                        taxonomy, motion_gating=False)
    from serving.pipeline.runner import TiledBudget

    pipeline.tiled_budget = TiledBudget(burst=float("inf"))  # what a check sees; its budget is tested apart
    due = pipeline.runtimes["cam-001"].next_tiled_check(T0)  # the camera's own phase, within 60 s
    assert T0 < due <= T0 + timedelta(seconds=60)
    for at in (T0, due, due + timedelta(seconds=5), due + timedelta(seconds=61)):
        pipeline.process([Frame("cam-001", at, frame, 0)])
    # The last check runs on beside the next batches (none here: the camera's frames wait for it).
    parts = 0
    while pipeline.runtimes["cam-001"].held is not None:
        pipeline.process([])
        parts += 1
    assert parts == (3 if tiled else 0)  # 30 images over the frame's pyramid, 8 a batch
    # The look at the camera's phase and the one a period later run tiled; the first frame
    # and the sample in between do not.
    assert pipeline.stats["tiled"] == (2 if tiled else 0) and pipeline.stats["detected"] == 4
    people = [t for t in pipeline.runtimes["cam-001"].tracker.tracks
              if t.class_name == "person" and t.box[0] >= 1490 and t.box[1] >= 890 and t.box[3] <= 990]
    assert bool(people) is tiled


class _NoDetections:
    """A detector that finds nothing, and counts its tiled checks (the batching under test)."""

    def __init__(self) -> None:
        self.info = type("Info", (), {"version": "none", "names": {0: "person"}})()
        self.tiled = 0

    def detect(self, images):
        return [Detections.empty({0: "person"}) for _ in images]

    def tiled_check(self, image, **options):
        self.tiled += 1
        return whole_frame_check(self.detect, image)


def test_tiled_checks_of_many_cameras_spread_over_their_interval(taxonomy) -> None:
    """100 cameras starting together: no tiled check on a first frame, each camera's check at
    its own phase of the 300 s period, and never more than one per batch."""
    import numpy as np

    from serving.streams.readers import Frame

    cams = [example_camera(id=f"cam-{n:03d}", tiled_check_every=300) for n in range(100)]
    detector = _NoDetections()
    pipeline = Pipeline(cams, detector, taxonomy, motion_gating=False)
    image = np.zeros((72, 128, 3), np.uint8)
    pipeline.process([Frame(c.id, T0, image, 0) for c in cams])
    assert detector.tiled == 0
    phases = sorted((pipeline.runtimes[c.id].next_tiled_check(T0) - T0).total_seconds() for c in cams)
    assert 0 < phases[0] and phases[-1] <= 300
    assert max(sum(1 for p in phases if start <= p < start + 30) for start in range(0, 300, 5)) <= 25  # ~10 each
    # Every camera a frame each 2 s for one period: each checked about once, at most one per batch.
    for step in range(1, 151):
        before = detector.tiled
        pipeline.process([Frame(c.id, T0 + timedelta(seconds=2 * step), image, 0) for c in cams])
        assert detector.tiled - before <= 1
    assert detector.tiled == pipeline.stats["tiled"] and 90 <= detector.tiled <= 100
    assert len({rt.tiled_checked_at for rt in pipeline.runtimes.values() if rt.tiled_checked_at}) >= 50


class _TileCounting:
    """A detector that finds nothing, and records how many images each of its calls ran:
    ordinary batches through `detect`, parts of a tiled check through `run_tiles`."""

    def __init__(self) -> None:
        self.info = type("Info", (), {"version": "none", "names": {0: "person"}})()
        self.batches: list[int] = []
        self.tile_parts: list[int] = []

    def detect(self, images):
        self.batches.append(len(images))
        return [Detections.empty({0: "person"}) for _ in images]

    def run_tiles(self, images):
        self.tile_parts.append(len(images))
        return [Detections.empty({0: "person"}) for _ in images]

    def tiled_check(self, image, **options):
        from detector.tiling import TiledCheck

        return TiledCheck(self.run_tiles, image, size=128, iou_threshold=0.7, max_detections=300)


def test_a_tiled_check_runs_a_part_beside_each_batch_and_holds_only_its_camera(taxonomy) -> None:
    """A check of 1080p is 35 images: run whole, it held every camera's frames for half a
    second. It runs TILED_IMAGES_PER_BATCH images beside each batch; only its own camera
    waits, and that camera's frame reaches its rules when the check is complete, in order.
    A camera due meanwhile starts its check in the batch where the one before completes."""
    import numpy as np

    from serving.pipeline.runner import TILED_IMAGES_PER_BATCH, TiledBudget
    from serving.streams.readers import Frame

    cams = [example_camera(id="cam-a", tiled_check_every=60), example_camera(id="cam-b", tiled_static_checks=False),
            example_camera(id="cam-c", tiled_check_every=60)]
    detector = _TileCounting()
    pipeline = Pipeline(cams, detector, taxonomy, motion_gating=False)
    pipeline.tiled_budget = TiledBudget(burst=float("inf"))
    image = np.zeros((360, 640, 3), np.uint8)
    images = detector.tiled_check(image).images  # 128 px tiles over its pyramid, then the whole frame
    assert images > 3 * TILED_IMAGES_PER_BATCH
    checked, waiting = pipeline.runtimes["cam-a"], pipeline.runtimes["cam-c"]
    due, c_due = checked.next_tiled_check(T0), waiting.next_tiled_check(T0)
    pipeline.process([Frame(c, T0, image, 0) for c in ("cam-a", "cam-b", "cam-c")])
    pipeline.process([Frame("cam-a", due, image, 0), Frame("cam-b", due, image, 0)])
    assert checked.held is not None and checked.held.frame.timestamp == due
    assert [f.camera for f in pipeline.last_analysed] == ["cam-b"]
    assert detector.batches == [3, 1]  # cam-a's due frame went to its check, not the batch
    at, c_at, batches = due, c_due, 0
    while checked.held is not None:
        at, c_at = at + timedelta(seconds=1), c_at + timedelta(seconds=1)
        # As the loop does: the held camera gives no frame; cam-c is due all along.
        pipeline.process([Frame("cam-b", at, image, 0), Frame("cam-c", c_at, image, 0)])
        batches += 1
        analysed = [(f.camera, f.timestamp) for f in pipeline.last_analysed]
        assert ("cam-b", at) in analysed
        assert (("cam-c", c_at) in analysed) is (checked.held is not None)  # detected, or held for its check
    assert ("cam-a", due) in analysed and checked.last_detect == due
    assert max(detector.tile_parts) == TILED_IMAGES_PER_BATCH and sum(detector.tile_parts) == images
    assert batches == len(detector.tile_parts) - 1 >= 3 and pipeline.stats["tiled"] == 1
    assert waiting.held is not None and waiting.held.frame.timestamp == c_at  # started as cam-a's completed
    while pipeline.checking:
        pipeline.process([])
    assert waiting.held is None and pipeline.stats["tiled"] == 2
    # A caller that feeds the held camera's next frame anyway gets the check finished first.
    due = checked.next_tiled_check(due)
    pipeline.process([Frame("cam-a", due, image, 0)])
    pipeline.process([Frame("cam-a", due + timedelta(seconds=1), image, 0)])
    assert checked.held is None and [f.timestamp for f in pipeline.last_analysed] == [due, due + timedelta(seconds=1)]
    assert pipeline.stats["tiled"] == 3


def test_a_due_check_that_waits_its_turn_is_reported_and_its_missed_periods_counted(taxonomy, tmp_path) -> None:
    """With the tiled budget spent, a due check waits: the pipeline says which camera waits and
    for how long (by its frames), as does the camera's health, and counts each period it waited
    through; once the check starts, the camera no longer waits."""
    import numpy as np

    from serving.cameras.registry import CameraRegistry
    from serving.pipeline.runner import TiledBudget
    from serving.store.db import Database
    from serving.streams.readers import Frame

    every = 60
    pipeline = Pipeline([example_camera(id="cam-a", tiled_check_every=every)], _TileCounting(), taxonomy,
                        motion_gating=False)
    pipeline.tiled_budget = TiledBudget(share=0.0, burst=0.0)  # nothing left: every due check waits
    image = np.zeros((360, 640, 3), np.uint8)
    rt = pipeline.runtimes["cam-a"]
    due = rt.next_tiled_check(T0)
    pipeline.process([Frame("cam-a", T0, image, 0)])
    pipeline.process([Frame("cam-a", due - timedelta(seconds=1), image, 0)])
    assert pipeline.tiled_waits() == {}  # not due yet
    for waited in (0, 30, 2 * every + 5):
        pipeline.process([Frame("cam-a", due + timedelta(seconds=waited), image, 0)])
        assert pipeline.tiled_waits() == {"cam-a": waited}
    assert rt.held is None and pipeline.stats["tiled_missed"] == 0  # counted when it starts
    db = Database(f"sqlite:///{tmp_path / 'cameras.db'}")
    registry = CameraRegistry(db, taxonomy, tmp_path, [], start_pipeline=lambda cameras: pipeline)
    registry.pipeline = pipeline
    assert registry.health()["cam-a"]["tiled_check_waiting_s"] == 2 * every + 5  # GET /v1/cameras/{id}
    pipeline.tiled_budget = TiledBudget(burst=float("inf"))
    checked = due + timedelta(seconds=2 * every + 6)
    pipeline.process([Frame("cam-a", checked, image, 0)])
    assert rt.held is not None and pipeline.tiled_waits() == {}
    assert registry.health()["cam-a"]["tiled_check_waiting_s"] is None
    assert registry.health()["cam-a"]["tiled_checked_at"] is None  # started, not yet done
    while rt.held is not None:
        pipeline.process([])
    assert registry.health()["cam-a"]["tiled_checked_at"] == checked.isoformat()  # the frame it looked at
    db.close()
    assert pipeline.stats["tiled_missed"] == 2  # fell due in one period, started two periods later


def test_tiled_budget_is_a_share_of_wall_time() -> None:
    from serving.pipeline.runner import TiledBudget

    now = [0.0]
    budget = TiledBudget(share=0.25, burst=1.0, clock=lambda: now[0])
    assert budget.available()
    budget.spend(1.5)  # one long tiled check overdraws the burst
    assert not budget.available()
    now[0] += 1.0  # 0.25 s earned: still 0.25 s in debt
    assert not budget.available()
    now[0] += 1.2
    assert budget.available()


def _folder_cameras(tmp_path: Path, *ids: str) -> list[Camera]:
    import cv2

    cams = []
    for cid in ids:
        folder = tmp_path / cid
        folder.mkdir()
        for n in range(3):
            cv2.imwrite(str(folder / f"{n}.jpg"), np.full((72, 128, 3), 40 * n, np.uint8))
        cams.append(example_camera(id=cid, source=str(folder), start=T0.isoformat()))
    return cams


def test_a_source_that_fails_ends_its_own_camera_only(taxonomy, tmp_path) -> None:
    """A reader that raises (it once did on a frame clock past year 9999) marks its camera
    failed; the other cameras' frames go on through the pipeline."""
    pipeline = Pipeline(_folder_cameras(tmp_path, "cam-a", "cam-b"), _NoDetections(), taxonomy, motion_gating=False)
    broken = pipeline.runtimes["cam-a"].reader
    real_frames = broken.frames

    def frames():
        frames_of_a = real_frames()
        yield next(frames_of_a)
        raise OverflowError("date value out of range")

    broken.frames = frames
    pipeline.run_until_done()
    assert pipeline.stats["frames"] == 1 + 3
    health = pipeline.health["cam-a"]
    assert health.state == "failed" and "OverflowError: date value out of range" in health.last_error
    assert pipeline.health["cam-b"].state != "failed"


def test_a_frame_loop_that_stops_on_an_error_says_so(taxonomy, tmp_path) -> None:
    """Should the background loop itself end on an error, the service is not ready, and says why
    (GET /readyz's "pipeline"), rather than going quietly blind while its cameras look connected."""
    from serving.cameras.registry import CameraRegistry
    from serving.store.db import Database

    pipeline = Pipeline(_folder_cameras(tmp_path, "cam-a"), _NoDetections(), taxonomy, motion_gating=False)

    def broken(files):
        raise RuntimeError("a fault outside any one batch")

    pipeline._next_file_frames = broken
    db = Database(f"sqlite:///{tmp_path / 'cameras.db'}")
    registry = CameraRegistry(db, taxonomy, tmp_path, [], start_pipeline=lambda cameras: pipeline)
    registry.pipeline = pipeline
    assert registry.pipeline_problem == ""
    pipeline.start()
    pipeline._thread.join(10)
    assert not pipeline._thread.is_alive()
    assert registry.pipeline_problem == "the frame loop stopped: RuntimeError: a fault outside any one batch"
    pipeline.stop()
    db.close()
