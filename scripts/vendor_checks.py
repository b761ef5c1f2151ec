"""What a street-vendor camera will ask of a model: does `mobile_vendor` open on every cart?

    python scripts/vendor_checks.py --model weights/gridwatch-int8.onnx --data runs/datasets/full [--json OUT]

Each REAL val image is replayed as a fixed camera that watches it for longer than the rule's
dwell: one analysed frame every 5 s, each a fresh camera-like copy (exposure and brightness
drift, sensor noise, a few pixels of shake, JPEG at quality 45-90; seeded, so runs repeat).
The frames go through the detector, the service's tracker and its rule engine with the
taxonomy's `mobile_vendor` rule on a whole-frame sidewalk zone, as `gridwatch serve` runs them.

Printed per `--min-score` (default: the taxonomy's, and a few below it):
- carts: labelled push carts an opening's best box lands on (IoU >= 0.5), of all of them;
- why each missed cart missed: never found as a cart (the model), or found but its median
  score under the bar (the rule);
- openings on no labelled cart, on the cart images and on images with no cart at all (the
  false alarms a lower bar would add).
The thela_india photos are the only source with carts; every other real val image counts as
a street without one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector import Detector, load_taxonomy  # noqa: E402
from detector.boxes import box_iou  # noqa: E402
from road_checks import read_labels  # noqa: E402
from serving.cameras import Camera  # noqa: E402
from serving.pipeline.rules import RuleEngine  # noqa: E402
from serving.pipeline.tracking import IoUTracker  # noqa: E402
from serving.pipeline.zones import ZoneMap  # noqa: E402

SAMPLE_S = 5
CART, RULE = "push_cart", "mobile_vendor"
CART_IOU = 0.5


def camera_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One analysed frame of a fixed camera looking at `image`."""
    h, w = image.shape[:2]
    lit = image.astype(np.float32) * rng.uniform(0.8, 1.15) + rng.uniform(-12, 12)
    noisy = np.clip(lit + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    dx, dy = rng.integers(-4, 5, 2)
    shaken = cv2.warpAffine(noisy, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REFLECT)
    ok, jpeg = cv2.imencode(".jpg", shaken, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(45, 91))])
    return cv2.imdecode(jpeg, cv2.IMREAD_COLOR)


def replay(frames: list[np.ndarray], found: list, min_score: float, taxonomy) -> list[np.ndarray]:
    """The best boxes of the `mobile_vendor` events opened over the replayed frames."""
    h, w = frames[0].shape[:2]
    camera = Camera(id="vendor-check", source="rtsp://vendor-check", division="370202", grid="370202001001001",
                    sample_every=SAMPLE_S,
                    zones=[{"name": "all", "type": "sidewalk", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
                    rules=[{"violation": RULE, "zone_types": ["sidewalk"], "min_score": min_score}])
    tracker, rules, zones = IoUTracker(max_age_s=camera.grace_s), RuleEngine(camera, taxonomy), ZoneMap(camera.zones, w, h)
    start = datetime(2026, 12, 6, 10, tzinfo=timezone.utc)
    opened = []
    for i, (frame, detections) in enumerate(zip(frames, found)):
        when = start + timedelta(seconds=i * SAMPLE_S)
        for transition in rules.update(tracker.update(detections, when), zones, when, frame, detections=detections):
            if transition.type == "opened":
                opened.append(transition.candidate.best_box)
    return opened


def run(model: Path, data: Path, min_scores: list[float]) -> dict:
    import yaml

    names_map = yaml.safe_load((data / "data.yaml").read_text())["names"]
    names = [names_map[i] for i in sorted(names_map)]
    taxonomy = load_taxonomy()
    dwell = taxonomy[RULE].dwell_s
    frames_per_image = int(dwell // SAMPLE_S) + 8  # 40 s past the dwell
    detector = Detector(model)
    rng = np.random.default_rng(0)
    out = {str(s): Counter() for s in min_scores}
    misses: dict[str, Counter] = {str(s): Counter() for s in min_scores}
    for image in sorted((data / "images" / "val").iterdir()):
        if image.name.startswith("synthetic__"):
            continue
        bgr = cv2.imread(str(image))
        if bgr is None:
            continue
        boxes, classes = read_labels(image, names, (bgr.shape[1], bgr.shape[0]))
        carts = boxes[[c == CART for c in classes]] if classes else boxes[:0]
        frames = [camera_copy(bgr, rng) for _ in range(frames_per_image)]
        found = detector.detect(frames)
        cart_scores = [[] for _ in carts]  # each cart's push_cart scores, frame by frame
        for detections in found:
            is_cart = [n == CART for n in detections.class_names]
            mine, scores = detections.xyxy[is_cart], detections.scores[is_cart]
            if len(mine) and len(carts):
                iou = box_iou(carts, mine)
                for k in range(len(carts)):
                    if iou[k].max() >= CART_IOU:
                        cart_scores[k].append(float(scores[iou[k].argmax()]))
        for s in min_scores:
            tally = out[str(s)]
            opened = replay(frames, found, s, taxonomy)
            hit = np.zeros(len(carts), bool)
            for box in opened:
                iou = box_iou(box[None].astype(np.float32), carts)[0] if len(carts) else np.zeros(0)
                if len(iou) and iou.max() >= CART_IOU:
                    hit[int(iou.argmax())] = True
                else:
                    tally["openings_on_no_cart" + ("" if len(carts) else "_in_images_without_carts")] += 1
            tally["carts"] += len(carts)
            tally["opened"] += int(hit.sum())
            tally["images_with_carts" if len(carts) else "images_without_carts"] += 1
            for k in np.flatnonzero(~hit):
                seen = cart_scores[k]
                misses[str(s)]["never found as a cart" if len(seen) < len(frames) / 2 else
                               "found, median score under the bar"] += 1
    return {"model": str(model), "data": str(data), "rule": RULE, "dwell_s": dwell, "sample_s": SAMPLE_S,
            "frames_per_image": frames_per_image,
            "by_min_score": {s: {**out[s], "missed": dict(misses[s])} for s in out}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="a built dataset folder (gridwatch dataset build)")
    p.add_argument("--min-score", type=float, nargs="+", help="the rule's bars to replay (default: the "
                   "taxonomy's and 0.05 and 0.1 below it)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    bar = load_taxonomy()[RULE].min_score
    out = run(args.model, args.data, args.min_score or [bar, round(bar - 0.05, 2), round(bar - 0.1, 2)])
    print(f"{out['rule']}: each real val image watched for {out['frames_per_image'] * SAMPLE_S} s "
          f"(dwell {out['dwell_s']:.0f} s), a frame every {SAMPLE_S} s")
    for s, v in out["by_min_score"].items():
        missed = ", ".join(f"{why} {n}" for why, n in v["missed"].items()) or "none"
        print(f"min_score {s}: carts opened {v['opened']} of {v['carts']} (missed: {missed}); openings on no "
              f"labelled cart: {v.get('openings_on_no_cart', 0)} in {v.get('images_with_carts', 0)} cart images, "
              f"{v.get('openings_on_no_cart_in_images_without_carts', 0)} in {v.get('images_without_carts', 0)} "
              "images without carts")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
