"""Letterboxing in, decoding and NMS out: the arithmetic around one session run.

Kept numerically identical to Ultralytics (letterbox rounding, 114 grey padding,
class-offset NMS, scale_boxes' padding) so our boxes match theirs on the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114
_CLASS_OFFSET = 7680.0  # Ultralytics' max_wh: separates classes for one NMS pass


@dataclass(frozen=True)
class Letterbox:
    """How one frame was placed into the model's input, so boxes can go back."""

    gain_x: float
    gain_y: float
    pad_x: int
    pad_y: int
    height: int
    width: int


def rect_canvas(frame_hw: tuple[int, int], size_hw: tuple[int, int], stride: int) -> tuple[tuple[int, int], float]:
    """The smallest input a dynamic-shape model needs for a frame, as Ultralytics' LetterBox
    (auto=True) makes it: the frame fitted into size_hw, padded only up to a multiple of stride.
    A 1920x1080 camera frame at 448 becomes 448x256, not 448x448: 43% fewer pixels to run.
    Returns ((H, W), the resize gain)."""
    h0, w0 = frame_hw
    gain = min(size_hw[0] / h0, size_hw[1] / w0)
    new_h, new_w = int(round(h0 * gain)), int(round(w0 * gain))
    return (new_h + (size_hw[0] - new_h) % stride, new_w + (size_hw[1] - new_w) % stride), gain


def letterbox_into(frame: np.ndarray, canvas: np.ndarray, resize_gain: float | None = None) -> Letterbox:
    """Resize `frame` to fit `canvas` (HxWx3 uint8), centred on grey; returns the geometry.

    resize_gain: the gain rect_canvas() fitted the frame with, which rounding can leave a
    hair above what the canvas alone implies; the returned geometry is scale_boxes' either way."""
    h0, w0 = frame.shape[:2]
    H, W = canvas.shape[:2]
    gain = min(H / h0, W / w0)
    new_w, new_h = int(round(w0 * (resize_gain or gain))), int(round(h0 * (resize_gain or gain)))
    dw, dh = (W - new_w) / 2, (H - new_h) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    canvas[...] = PAD_VALUE
    target = canvas[top : top + new_h, left : left + new_w]
    if (new_w, new_h) == (w0, h0):
        target[...] = frame
    else:
        cv2.resize(frame, (new_w, new_h), dst=target, interpolation=cv2.INTER_LINEAR)
    # scale_boxes() recomputes the geometry from the canvas: each side's own gain from its
    # rounded size, and the pad from that; mirror it exactly.
    scaled_w, scaled_h = max(round(w0 * gain), 1), max(round(h0 * gain), 1)
    return Letterbox(gain_x=scaled_w / w0, gain_y=scaled_h / h0,
                     pad_x=round((W - scaled_w) / 2 - 0.1), pad_y=round((H - scaled_h) / 2 - 0.1),
                     height=h0, width=w0)


def to_input(canvas: np.ndarray, out: np.ndarray) -> None:
    """HxWx3 BGR uint8 -> 3xHxW RGB in 0..1, written into a reused buffer."""
    # Splitting into contiguous planes first is twice as fast as a strided transpose.
    blue, green, red = cv2.split(canvas)
    for plane, target in zip((red, green, blue), out):
        np.multiply(plane, np.float32(1 / 255), out=target, casting="unsafe")


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS; returns kept indices in descending score order.

    Stopping at max_keep bounds the work on a degenerate head that scores everything
    high, and keeps the same boxes as NMS-then-truncate would.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    limit = max_keep if max_keep is not None else len(order)
    while order.size and len(keep) < limit:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,4) x (M,4) -> (N,M) IoU matrix."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def decode_raw(
    head: np.ndarray, score_threshold: float, iou_threshold: float, max_detections: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw head (4+C, A) -> boxes xyxy in input pixels, scores, class ids."""
    class_scores = head[4:]
    best = class_scores.max(axis=0)
    candidates = np.flatnonzero(best > score_threshold)
    if candidates.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    scores = best[candidates]
    class_ids = class_scores[:, candidates].argmax(axis=0)
    cx, cy, w, h = head[:4, candidates]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    keep = nms(boxes + (class_ids * _CLASS_OFFSET)[:, None], scores, iou_threshold, max_detections)
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32), class_ids[keep].astype(np.int64)


def decode_levels(
    levels: list[tuple[np.ndarray, np.ndarray]], input_hw: tuple[int, int],
    score_threshold: float, iou_threshold: float, max_detections: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's per-level head [(box distributions (4*bins, h, w), class logits (C, h, w))]
    -> the same boxes, scores and classes decode_raw gives for Ultralytics' decoded output.

    Ultralytics' Detect: anchors at cell centres, stride = input / level size, each side's
    distance the expectation of a softmax over its bins (DFL). Only cells whose best class
    clears the threshold are decoded, found on the logits (sigmoid is monotonic) and checked
    again on the score; cell order (level, row, column) is kept, so NMS breaks ties as it does
    on the decoded tensor."""
    # A hair below the threshold's logit: the exact comparison is made on the scores.
    logit_floor = -np.inf if score_threshold <= 0 else np.log(score_threshold / max(1 - score_threshold, 1e-12)) - 1e-3
    # Candidates gathered level by level, then decoded in one pass: numpy's per-call cost, not
    # the arithmetic, is what a few dozen cells cost.
    gathered: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for level, (distributions, classes) in enumerate(levels):
        logits = classes.reshape(classes.shape[0], -1)
        cells = np.flatnonzero(logits.max(axis=0) > logit_floor)
        if cells.size:
            bins = distributions.reshape(4, -1, logits.shape[1])[:, :, cells]  # (4 sides, bins, cells)
            gathered.append((logits[:, cells], bins, cells, np.full(cells.size, level)))
    if not gathered:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    logits, bins, cells, level = (np.concatenate(parts, axis=-1) for parts in zip(*gathered))
    scores = 1 / (1 + np.exp(-logits.max(axis=0)))
    above = scores > score_threshold
    if not above.all():
        logits, bins, cells, level, scores = logits[:, above], bins[:, :, above], cells[above], level[above], scores[above]
    # floored: far-off bins would otherwise give float32 denormals, which are 100x slower
    weights = np.exp(np.maximum(bins - bins.max(axis=1, keepdims=True), -50))
    left, top, right, bottom = (weights * np.arange(bins.shape[1], dtype=np.float32)[:, None]).sum(axis=1) / weights.sum(axis=1)
    heights, widths = np.array([classes.shape[1:] for _, classes in levels]).T
    w = widths[level]
    x, y = cells % w + 0.5, cells // w + 0.5
    stride_x, stride_y = input_hw[1] / w, input_hw[0] / heights[level]
    boxes = np.stack([(x - left) * stride_x, (y - top) * stride_y, (x + right) * stride_x, (y + bottom) * stride_y], axis=1)
    class_ids = logits.argmax(axis=0)
    keep = nms(boxes + (class_ids * _CLASS_OFFSET)[:, None], scores, iou_threshold, max_detections)
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32), class_ids[keep].astype(np.int64)


def decode_end2end(
    rows: np.ndarray, score_threshold: float, max_detections: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's NMS-free output (K, 6): x1 y1 x2 y2 score class."""
    rows = rows[rows[:, 4] > score_threshold][:max_detections]
    return rows[:, :4].astype(np.float32), rows[:, 4].astype(np.float32), rows[:, 5].astype(np.int64)


def unletterbox(boxes: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """Input-pixel boxes -> original-frame pixels, clipped to the frame."""
    out = boxes.copy()
    out[:, [0, 2]] -= geometry.pad_x
    out[:, [1, 3]] -= geometry.pad_y
    out[:, [0, 2]] /= geometry.gain_x
    out[:, [1, 3]] /= geometry.gain_y
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, geometry.width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, geometry.height)
    return out
