"""What a road camera will ask of a model, measured on a built dataset's val split.

    python scripts/road_checks.py --model weights/gridwatch-int8.onnx --data runs/datasets/full [--json OUT]

Three figures, printed and optionally written as JSON:
1. teacher: on the REAL val images, the share of the COCO teacher's context-class boxes
   (score >= 0.5) the model also finds (same class, >= 0.5, IoU >= 0.5, one to one). None of the
   sources has human labels for these classes, so the teacher's boxes are the reference.
2. road views: on the SYNTHETIC road-camera val images (`synthetic__roadview_*`, made by
   `gridwatch dataset build --road-views K`: night, infrared, overhead, rain, burned-in text),
   the frames holding a labelled truck where the model finds a truck at >= 0.5 on it, beside
   the teacher on the same frames. Synthetic: a proxy for checkpoint frames, never a real figure.
3. violations on vehicles: of the labelled trucks and buses in val (real and road views, counted
   apart), those that carry a violation-class box of the model at >= 0.4 (the box mostly inside
   the vehicle, or overlapping it at IoU >= 0.3) that no human label of that class explains:
   a red cab read as a bin, a cargo bed read as a window ad. Our sources hold no frame with only
   a truck in it (every thela photo has a cart, every garbage photo a bin), so this is counted per
   vehicle, not per frame. "after rules": those left once the rules drop a box lying inside a
   truck or bus the model found at >= 0.5 (taxonomy `not_part_of`; a class no rule watches, garbage_bin,
   and push_cart, which no rule guards so, are left as they are).
4. the guard's cost: of the human-labelled violation boxes in REAL val that the model finds
   (>= 0.4, IoU >= 0.5), those the same guard would drop (a real bin or sign inside a found truck).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector import Detector  # noqa: E402
from detector.boxes import box_iou, part_of  # noqa: E402
from detector.taxonomy import load_taxonomy  # noqa: E402
from serving.pipeline.rules import WHOLE_MIN_SCORE  # noqa: E402
from training.evaluation.teacher_check import (FOUND_IOU, FOUND_SCORE, TEACHERS, boxes_of,  # noqa: E402
                                              compare_to_teachers, matched)

TEACHER = TEACHERS[0]  # COCO YOLOv8n, 640 px
VIOLATION = ("garbage_bin", "bin_overflow", "garbage_pile", "push_cart", "shop_sign", "window_ad", "flyer", "banner")
VIOLATION_SCORE = 0.4


def read_labels(image: Path, names: list[str], size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    label = image.parent.parent.parent / "labels" / image.parent.name / f"{image.stem}.txt"
    w, h = size
    boxes, classes = [], []
    if label.exists():
        for line in label.read_text().split("\n"):
            parts = line.split()
            if len(parts) == 5:
                c, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:])
                boxes.append([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
                classes.append(names[c])
    return np.asarray(boxes, np.float32).reshape(-1, 4), classes


def on_vehicle(box: np.ndarray, vehicle: np.ndarray) -> bool:
    """The detection sits on the vehicle: mostly inside it (of any size), or overlapping it substantially."""
    return part_of(box, vehicle[None], inside=0.6, max_share=np.inf) or \
        box_iou(box[None].astype(np.float32), vehicle[None].astype(np.float32))[0, 0] >= 0.3


def guarded_by(taxonomy) -> dict[str, tuple[str, ...]]:
    """Detector class -> the classes its boxes are never part of, for every rule that watches it."""
    out: dict[str, set[str]] = {}
    for v in taxonomy.violations:
        for c in v.detector_classes:
            out.setdefault(c, set()).update(v.not_part_of)
    return {c: tuple(sorted(w)) for c, w in out.items() if w}


def dropped_as_part(box: np.ndarray, name: str, det, guards: dict[str, tuple[str, ...]]) -> bool:
    wholes = [boxes_of(det, w, WHOLE_MIN_SCORE) for w in guards.get(name, ())]
    return any(part_of(box, w) for w in wholes if len(w))


def run(model: Path, data: Path) -> dict:
    import yaml

    names_map = yaml.safe_load((data / "data.yaml").read_text())["names"]
    names = [names_map[i] for i in sorted(names_map)]
    ours = Detector(model, score_threshold=0.25)
    teacher = Detector(TEACHER, score_threshold=0.25)
    road = Counter()
    on_vehicles = {"real": Counter(), "road_view": Counter()}
    guards = guarded_by(load_taxonomy())
    guard_cost = Counter()
    val = sorted((data / "images" / "val").iterdir())
    real = [image for image in val if not image.name.startswith("synthetic__")]
    for image in val:
        roadview = image.name.startswith("synthetic__roadview_")
        if image.name.startswith("synthetic__") and not roadview:
            continue  # flyers and banners: not a road question
        bgr = cv2.imread(str(image))
        if bgr is None:
            continue
        boxes, classes = read_labels(image, names, (bgr.shape[1], bgr.shape[0]))
        mine = ours(bgr)
        if not roadview:
            for box, name, score in zip(mine.xyxy, mine.class_names, mine.scores):
                human = boxes[[c == name for c in classes]] if classes else boxes[:0]
                if name not in guards or score < VIOLATION_SCORE or not len(human) or \
                        box_iou(box[None].astype(np.float32), human).max() < FOUND_IOU:
                    continue
                guard_cost["found"] += 1
                guard_cost["dropped"] += dropped_as_part(box, name, mine, guards)
        trucks = boxes[[c == "truck" for c in classes]] if classes else boxes[:0]
        if roadview and len(trucks):
            road["frames"] += 1
            road["ours"] += matched(trucks, boxes_of(mine, "truck", FOUND_SCORE)) > 0
            t = teacher(bgr)
            road["teacher"] += matched(trucks, boxes_of(t, "truck", FOUND_SCORE)) > 0
            road["ours_truck_or_bus"] += matched(
                trucks, np.vstack([boxes_of(mine, "truck", FOUND_SCORE), boxes_of(mine, "bus", FOUND_SCORE)])) > 0
        vehicles = boxes[[c in ("truck", "bus") for c in classes]] if classes else boxes[:0]
        if len(vehicles):
            bucket = on_vehicles["road_view" if roadview else "real"]
            bucket["vehicles"] += len(vehicles)
            for vehicle in vehicles:
                fired, kept = set(), set()
                for box, name, score in zip(mine.xyxy, mine.class_names, mine.scores):
                    if name not in VIOLATION or score < VIOLATION_SCORE or not on_vehicle(box, vehicle):
                        continue
                    human = boxes[[c == name for c in classes]]
                    if len(human) and box_iou(box[None].astype(np.float32), human).max() >= FOUND_IOU:
                        continue  # a real bin or ad labelled there
                    fired.add(name)
                    if not dropped_as_part(box, name, mine, guards):
                        kept.add(name)
                bucket["with_violation_box"] += bool(fired)
                bucket["with_violation_box_after_rules"] += bool(kept)
                bucket.update(f"fired:{n}" for n in fired)
    return {
        "model": str(model),
        "data": str(data),
        "teacher_boxes_found": compare_to_teachers(model, real, teachers=(TEACHER,)).counts[TEACHER.name],
        "road_view_trucks": dict(road),
        "violations_on_vehicles": {k: dict(v) for k, v in on_vehicles.items()},
        "labelled_violations_the_guard_drops": dict(guard_cost),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="a built dataset folder (gridwatch dataset build)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    out = run(args.model, args.data)
    for name, v in out["teacher_boxes_found"].items():
        share = f"{v['found'] / v['teacher']:.0%}" if v["teacher"] else "-"
        print(f"teacher {name:<11} {v['found']:>4} of {v['teacher']:>4} ({share})")
    r = out["road_view_trucks"]
    print(f"road views (synthetic) with a labelled truck: {r.get('frames', 0)}; truck found: ours {r.get('ours', 0)}, "
          f"ours truck-or-bus {r.get('ours_truck_or_bus', 0)}, teacher {r.get('teacher', 0)}")
    for kind, v in out["violations_on_vehicles"].items():
        fired = ", ".join(f"{k[6:]} {n}" for k, n in sorted(v.items()) if k.startswith("fired:"))
        print(f"{kind} trucks and buses: {v.get('vehicles', 0)}, with a violation box on them: "
              f"{v.get('with_violation_box', 0)}" + (f" ({fired})" if fired else "")
              + f", after rules: {v.get('with_violation_box_after_rules', 0)}")
    cost = out["labelled_violations_the_guard_drops"]
    print(f"labelled violation boxes found (real val): {cost.get('found', 0)}, "
          f"dropped by the rules as part of a vehicle: {cost.get('dropped', 0)}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
