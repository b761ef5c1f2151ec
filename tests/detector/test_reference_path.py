"""The detector's fast path against a straightforward one, on real street images.

The runtime letterboxes into reused buffers padding only the border, runs the session into
bound output buffers, decodes only the cells above the threshold and suppresses on a whole
IoU matrix. Here the same frames go through the plain way instead (grey canvas then resize,
session.run, every cell of every level decoded, NMS box by box) and the detections must agree.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detector import Detections, Detector
from detector.boxes import nms, rect_canvas
from tests.support.shared_data import camera_frame, real_images, shared_available

pytestmark = pytest.mark.skipif(not shared_available(), reason="../shared datasets/weights not found")

SHIPPED = Path(__file__).resolve().parents[2] / "weights" / "gridwatch-int8.onnx"
_CLASS_OFFSET = 7680.0


def _letterbox(frame: np.ndarray, hw: tuple[int, int], gain: float) -> tuple[np.ndarray, tuple[float, ...]]:
    """Ultralytics' LetterBox and scale_boxes, written out: the canvas, and (pad x, pad y,
    gain x, gain y) to take boxes back."""
    h0, w0 = frame.shape[:2]
    H, W = hw
    new_w, new_h = int(round(w0 * gain)), int(round(h0 * gain))
    top, left = int(round((H - new_h) / 2 - 0.1)), int(round((W - new_w) / 2 - 0.1))
    canvas = np.full((H, W, 3), 114, np.uint8)
    canvas[top : top + new_h, left : left + new_w] = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    fit = min(H / h0, W / w0)
    scaled_w, scaled_h = max(round(w0 * fit), 1), max(round(h0 * fit), 1)
    return canvas, (round((W - scaled_w) / 2 - 0.1), round((H - scaled_h) / 2 - 0.1), scaled_w / w0, scaled_h / h0)


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order and len(keep) < limit:
        i, order = order[0], order[1:]
        keep.append(int(i))
        survivors = []
        for j in order:
            w = max(min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]), 0)
            h = max(min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]), 0)
            area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if w * h / (area_i + area_j - w * h + 1e-9) <= iou_threshold:
                survivors.append(j)
        order = survivors
    return keep


def _reference_detect(det: Detector, frame: np.ndarray) -> Detections:
    hw, gain = rect_canvas(frame.shape[:2], det.input_size, det.info.stride)
    canvas, (pad_x, pad_y, gain_x, gain_y) = _letterbox(frame, hw, gain)
    outputs = dict(zip([o.name for o in det.session.get_outputs()],
                       det.session.run(None, {det.info.input_name: canvas[None]})))
    all_boxes, all_logits = [], []
    for level in range(det.info.levels):
        distributions = outputs[f"box_distribution_{level}"][0].astype(np.float64)
        logits = outputs[f"class_logits_{level}"][0]
        bins, h, w = distributions.shape[0] // 4, *logits.shape[1:]
        sides = distributions.reshape(4, bins, h * w)
        soft = np.exp(sides - sides.max(axis=1, keepdims=True))
        left, top, right, bottom = (soft * np.arange(bins)[:, None]).sum(axis=1) / soft.sum(axis=1)
        rows, cols = np.divmod(np.arange(h * w), w)
        stride_x, stride_y = hw[1] / w, hw[0] / h
        x, y = cols + 0.5, rows + 0.5
        all_boxes.append(np.stack([(x - left) * stride_x, (y - top) * stride_y,
                                   (x + right) * stride_x, (y + bottom) * stride_y], axis=1))
        all_logits.append(logits.reshape(logits.shape[0], -1).T)
    boxes, logits = np.concatenate(all_boxes), np.concatenate(all_logits)
    class_scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
    scores, class_ids = class_scores.max(axis=1), class_scores.argmax(axis=1)
    above = scores > det.score_threshold
    boxes, scores, class_ids = boxes[above], scores[above], class_ids[above]
    keep = _greedy_nms(boxes + class_ids[:, None] * _CLASS_OFFSET, scores, det.iou_threshold, det.max_detections)
    boxes = boxes[keep]
    h0, w0 = frame.shape[:2]
    boxes = np.stack([np.clip((boxes[:, 0] - pad_x) / gain_x, 0, w0), np.clip((boxes[:, 1] - pad_y) / gain_y, 0, h0),
                      np.clip((boxes[:, 2] - pad_x) / gain_x, 0, w0), np.clip((boxes[:, 3] - pad_y) / gain_y, 0, h0)],
                     axis=1)
    return Detections(xyxy=boxes.astype(np.float32), scores=scores[keep].astype(np.float32),
                      class_ids=class_ids[keep].astype(np.int64), names=det.names)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    paths = real_images("thela_india", 3) + real_images("facade_signs_spb", 3) + real_images("garbage_overflow_cn", 3)
    photos = [cv2.imread(str(p)) for p in paths]
    # Camera frames (what the pipeline sends), the photos at their own sizes, and one on its side.
    return [camera_frame(p) for p in photos[::2]] + photos + [np.ascontiguousarray(np.rot90(photos[0]))]


@pytest.mark.parametrize("score_threshold", [0.25, 0.02])
def test_the_fast_path_detects_what_the_straightforward_one_does(frames, score_threshold):
    """At the default threshold and at one low enough that NMS has hundreds of candidates."""
    det = Detector(SHIPPED, score_threshold=score_threshold)
    assert det.info.head == "levels" and det.info.input_dtype == "uint8"
    compared = 0
    for frame in frames:
        ours, plain = det(frame), _reference_detect(det, frame)
        assert len(ours) == len(plain)
        np.testing.assert_array_equal(ours.class_ids, plain.class_ids)
        np.testing.assert_allclose(ours.xyxy, plain.xyxy, atol=1e-3)
        np.testing.assert_allclose(ours.scores, plain.scores, atol=1e-6)
        compared += len(ours)
    assert compared > (200 if score_threshold < 0.1 else 20)


def test_a_frame_s_detections_are_not_overwritten_by_the_next_frame(frames):
    """The session writes into the same output buffers every run: what one call returned must
    not change when the next one runs."""
    det = Detector(SHIPPED)
    first = det(frames[0])
    kept = (first.xyxy.copy(), first.scores.copy(), first.class_ids.copy())
    assert len(first)
    for frame in frames[1:4]:
        det(frame)
    np.testing.assert_array_equal(first.xyxy, kept[0])
    np.testing.assert_array_equal(first.scores, kept[1])
    np.testing.assert_array_equal(first.class_ids, kept[2])
    # A batch through the same buffers gives each frame what it gets alone.
    for single, batched in zip([det(f) for f in frames[:3]], det.detect(frames[:3])):
        np.testing.assert_array_equal(single.xyxy, batched.xyxy)


@pytest.mark.parametrize("count", [40, 700])  # the IoU-matrix path and the box-by-box one
def test_nms_keeps_what_greedy_suppression_keeps(count):
    rng = np.random.default_rng(count)
    # Boxes clustered on a few spots so most overlap, scores on a coarse grid so many tie.
    centres = rng.uniform(50, 400, (6, 2))[rng.integers(0, 6, count)] + rng.normal(0, 8, (count, 2))
    sizes = rng.uniform(20, 60, (count, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    boxes[::17] = boxes[::17][:, [0, 1, 0, 1]]  # some with no area at all
    scores = np.round(rng.uniform(0.25, 1, count), 1).astype(np.float32)
    for iou_threshold, limit in [(0.7, 300), (0.45, 300), (0.7, 3), (0.7, 0)]:
        assert nms(boxes, scores, iou_threshold, limit).tolist() == _greedy_nms(boxes, scores, iou_threshold, limit)


def test_a_bound_run_reads_its_input_afresh_each_call(frames):
    """BoundRun binds the input by address: rewriting it in place is what the next run sees."""
    from detector.runtime import BoundRun

    det = Detector(SHIPPED)
    x = det.session_input([frames[0]])
    run = BoundRun(det.session, det.info.input_name, x)
    first = [o.copy() for o in run.outputs]
    x[...] = det.session_input([frames[1]])
    second = run()
    for bound, plain, before in zip(second, det.session.run(None, {det.info.input_name: x}), first):
        np.testing.assert_array_equal(bound, plain)
        assert not np.array_equal(bound, before)
    with pytest.raises(ValueError, match="contiguous"):
        BoundRun(det.session, det.info.input_name, det.session_input([frames[0]])[:, :, ::2])
