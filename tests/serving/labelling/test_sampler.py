"""Which frames active learning takes, and why: pure decisions on constructed detections,
the tracker's class flips, the rules' score drops, and the per-camera daily budget."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import yaml

from detector import Detections, load_taxonomy
from serving.cameras import Camera
from serving.pipeline.rules import RuleEngine
from serving.pipeline.tracking import ClassFlip, IoUTracker
from serving.pipeline.uncertainty import DailyBudget, UncertaintySampler, unsure_reasons
from serving.pipeline.zones import ZoneMap
from tests.support.streams import EXAMPLE_YAML, SEED_TAXONOMY_OVERRIDE

NAMES = {0: "garbage_bin", 1: "bin_overflow", 2: "person"}
SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 24, 15, 0, tzinfo=timezone.utc)  # 23:00 in Shanghai


def dets(*boxes: tuple[str, tuple[float, float, float, float], float], names=NAMES) -> Detections:
    inv = {v: k for k, v in names.items()}
    if not boxes:
        return Detections.empty(names)
    return Detections(xyxy=np.array([b for _, b, _ in boxes], np.float32),
                      scores=np.array([s for _, _, s in boxes], np.float32),
                      class_ids=np.array([inv[n] for n, _, _ in boxes], np.int64), names=names)


THRESHOLDS = {"bin_overflow": 0.4}
BOX = (100.0, 100.0, 200.0, 220.0)


def test_top_score_in_the_band_around_the_rule_threshold() -> None:
    assert unsure_reasons(dets(("bin_overflow", BOX, 0.45)), THRESHOLDS, 0.1) == ("score_band",)
    assert unsure_reasons(dets(("bin_overflow", BOX, 0.31)), THRESHOLDS, 0.1) == ("score_band",)
    assert unsure_reasons(dets(("bin_overflow", BOX, 0.9)), THRESHOLDS, 0.1) == ()  # sure it is
    assert unsure_reasons(dets(("bin_overflow", BOX, 0.2)), THRESHOLDS, 0.1) == ()  # sure it is not
    # The class's top score decides: a sure box beside a weak one of the same class is sure.
    assert unsure_reasons(dets(("bin_overflow", BOX, 0.9), ("bin_overflow", (300, 300, 360, 380), 0.42)),
                          THRESHOLDS, 0.1) == ()
    # Classes no rule of the camera watches are not its concern.
    assert unsure_reasons(dets(("person", BOX, 0.4)), THRESHOLDS, 0.1) == ()
    assert unsure_reasons(dets(), THRESHOLDS, 0.1) == ()


def test_flips_and_drops_are_reasons() -> None:
    flip = ClassFlip(7, "garbage_bin", "bin_overflow", BOX)
    assert unsure_reasons(dets(("bin_overflow", BOX, 0.9)), THRESHOLDS, 0.1, flips=[flip]) == ("class_flip",)
    other = ClassFlip(8, "person", "garbage_bin", BOX)  # neither class watched here
    assert unsure_reasons(dets(("garbage_bin", BOX, 0.9)), THRESHOLDS, 0.1, flips=[other]) == ()
    assert unsure_reasons(dets(("bin_overflow", BOX, 0.35)), THRESHOLDS, 0.1, flips=[flip], dropped_for_score=1) == (
        "score_band", "class_flip", "dropped_for_score")


def test_tracker_reports_a_class_flip_on_the_same_spot() -> None:
    tracker = IoUTracker(max_age_s=60)
    tracker.update(dets(("garbage_bin", BOX, 0.8), ("person", (400, 50, 440, 200), 0.9)), T0)
    assert tracker.flips == []
    tracker.update(dets(("bin_overflow", (102, 98, 203, 221), 0.6), ("person", (400, 50, 440, 200), 0.9)),
                   T0 + timedelta(seconds=2))
    (flip,) = tracker.flips
    assert (flip.from_class, flip.to_class) == ("garbage_bin", "bin_overflow")
    # Both classes seen together (an overflowing bin is also a bin) is not a flip.
    tracker.update(dets(("bin_overflow", BOX, 0.6), ("garbage_bin", BOX, 0.7)), T0 + timedelta(seconds=4))
    assert tracker.flips == []
    # A new object elsewhere is not a flip either.
    tracker.update(dets(("bin_overflow", BOX, 0.6), ("garbage_bin", BOX, 0.7), ("person", (600, 0, 640, 90), 0.8)),
                   T0 + timedelta(seconds=6))
    assert tracker.flips == []


def test_rules_report_a_candidate_dropped_for_its_score(tmp_path) -> None:
    path = tmp_path / "tax.yaml"
    path.write_text(SEED_TAXONOMY_OVERRIDE, encoding="utf-8")
    taxonomy = load_taxonomy(path)
    entry = yaml.safe_load(EXAMPLE_YAML)["cameras"][0]
    entry.update(source="rtsp://unused")
    camera = Camera.model_validate(entry)
    rules = RuleEngine(camera, taxonomy)
    names = {0: "fire hydrant"}
    rule = next(r for r in rules.rules if "fire hydrant" in r.classes)
    assert rules.score_thresholds["fire hydrant"] == rule.min_score
    tracker, zones = IoUTracker(max_age_s=camera.grace_s), ZoneMap(camera.zones, 640, 360)
    frame = np.zeros((360, 640, 3), np.uint8)
    when = datetime(2026, 5, 1, 2, 0, tzinfo=timezone.utc)  # in the example's schedule
    weak = dets(("fire hydrant", (470, 200, 530, 280), rule.min_score - 0.15), names=names)
    seen = []
    for step in range(int(rule.dwell // 5) + 3):
        at = when + timedelta(seconds=5 * step)
        transitions = rules.update(tracker.update(weak, at), zones, at, frame)
        assert not transitions  # too weak to open
        seen.append(len(rules.dropped_for_score))
    assert seen[0] == 0 and seen[-1] == 1  # held back once it had stayed long enough


def test_budget_per_camera_per_local_day_across_midnight() -> None:
    spent_before = {("cam-a", date(2026, 11, 24)): 1}  # one sample stored before a restart
    budget = DailyBudget(per_camera=3, tz=SHANGHAI, min_gap_s=0,
                         spent=lambda camera, day: spent_before.get((camera, day), 0))
    sampler = UncertaintySampler(band=0.1, budget=budget)
    unsure = dets(("bin_overflow", BOX, 0.42))
    frame = np.zeros((8, 8, 3), np.uint8)

    def take(camera: str, minutes: float) -> bool:
        sample = sampler.consider(camera, T0 + timedelta(minutes=minutes), frame, unsure, THRESHOLDS, "v1")
        return sample is not None

    # 23:00-23:59 Shanghai on the 24th: two left of three, then nothing.
    assert [take("cam-a", m) for m in (0, 10, 20, 30)] == [True, True, False, False]
    assert [take("cam-b", m) for m in (0, 10, 20, 30)] == [True, True, True, False]  # its own budget
    # Midnight in Shanghai (16:00 UTC): a new day, a new budget, though UTC's day is the same.
    assert [take("cam-a", m) for m in (61, 62, 63, 64)] == [True, True, True, False]
    # A sure frame spends nothing.
    assert sampler.consider("cam-c", T0, frame, dets(("bin_overflow", BOX, 0.95)), THRESHOLDS, "v1") is None
    assert take("cam-c", 1)
    sample = sampler.consider("cam-d", T0, frame, unsure, THRESHOLDS, "v7")
    assert sample.reasons == ("score_band",) and sample.model_version == "v7" and sample.camera == "cam-d"


def test_budget_spreads_samples_over_the_day() -> None:
    budget = DailyBudget(per_camera=20, tz=SHANGHAI, min_gap_s=300)
    taken = [budget.take("cam-a", T0 + timedelta(seconds=s)) for s in (0, 2, 100, 299, 300, 302, 700)]
    assert taken == [True, False, False, False, True, False, True]


def test_budget_takes_nothing_while_the_store_cannot_say_what_today_cost() -> None:
    answers = iter([RuntimeError("database away"), 3])

    def spent(camera, day):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    budget = DailyBudget(per_camera=4, tz=ZoneInfo("Asia/Shanghai"), spent=spent)
    when = datetime(2026, 11, 25, 4, 0, tzinfo=timezone.utc)
    assert budget.take("cam-1", when) is False  # no frame sampled blind, and no error for the pipeline
    assert budget.take("cam-1", when) is True  # asked again: 3 of 4 spent, one left
    assert budget.take("cam-1", when) is False
