"""Letterboxing in, decoding and NMS out: the arithmetic around one session run.

Kept numerically identical to Ultralytics (letterbox rounding, 114 grey padding,
class-offset NMS, scale_boxes' padding) so our boxes match theirs on the same model.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
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
    # At least a pixel: a sliver of a frame (2000x1) would round to none.
    new_h, new_w = max(1, int(round(h0 * gain))), max(1, int(round(w0 * gain)))
    return (new_h + (size_hw[0] - new_h) % stride, new_w + (size_hw[1] - new_w) % stride), gain


def letterbox_into(frame: np.ndarray, canvas: np.ndarray, resize_gain: float | None = None) -> Letterbox:
    """Resize `frame` to fit `canvas` (HxWx3 uint8), centred on grey; returns the geometry.

    resize_gain: the gain rect_canvas() fitted the frame with, which rounding can leave a
    hair above what the canvas alone implies; the returned geometry is scale_boxes' either way."""
    h0, w0 = frame.shape[:2]
    H, W = canvas.shape[:2]
    gain = min(H / h0, W / w0)
    new_w, new_h = max(1, int(round(w0 * (resize_gain or gain)))), max(1, int(round(h0 * (resize_gain or gain))))
    dw, dh = (W - new_w) / 2, (H - new_h) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    # Only the border is grey: the resize writes the rest, so filling it first is a wasted pass
    # over the whole input.
    bottom, right = top + new_h, left + new_w
    canvas[:top] = PAD_VALUE
    canvas[bottom:] = PAD_VALUE
    canvas[top:bottom, :left] = PAD_VALUE
    canvas[top:bottom, right:] = PAD_VALUE
    target = canvas[top:bottom, left:right]
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


# Up to this many candidates NMS works on their whole IoU matrix (a 512x512 float64 matrix is
# 2 MB); a degenerate head that scores thousands of boxes falls back to suppressing box by box.
_NMS_MATRIX_MAX = 512


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS; returns kept indices in descending score order.

    Stopping at max_keep bounds the work on a degenerate head that scores everything
    high, and keeps the same boxes as NMS-then-truncate would.
    """
    order = np.argsort(-scores, kind="stable")
    limit = max_keep if max_keep is not None else len(order)
    if limit <= 0:
        return np.zeros(0, np.int64)
    if len(order) <= _NMS_MATRIX_MAX:
        return _nms_matrix(boxes[order], order, iou_threshold, limit)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
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


def _nms_matrix(ranked: np.ndarray, order: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """nms() for a few boxes, already in score order: every pair's IoU in a dozen array calls,
    then only a cheap walk over the rows of the boxes kept. The same IoU arithmetic, element by
    element, as the box-by-box loop, so the same boxes survive."""
    x1, y1, x2, y2 = ranked[:, 0], ranked[:, 1], ranked[:, 2], ranked[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    # np.maximum(.., 0): np.clip's arithmetic (NaN stays NaN) without its Python wrapper.
    w = np.maximum(np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :]), 0.0)
    h = np.maximum(np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :]), 0.0)
    inter = w * h
    # "<=", as the loop keeps a box: a NaN IoU suppresses in both.
    survives = inter / (areas[:, None] + areas[None, :] - inter + 1e-9) <= iou_threshold
    keep: list[int] = []
    alive = np.ones(len(ranked), bool)
    for i in range(len(ranked)):
        if alive[i]:
            keep.append(i)
            if len(keep) >= limit:
                break
            alive &= survives[i]
    return order[np.asarray(keep, dtype=np.int64)]


def pair_iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    """IoU of two [x1, y1, x2, y2] boxes as stored records hold them (lists, tuples); 0 when
    either is missing or they do not overlap."""
    if not a or not b:
        return 0.0
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


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


def part_of(box: np.ndarray, wholes: np.ndarray, *, inside: float = 0.8, max_share: float = 0.6) -> bool:
    """Whether `box` (4,) is a part of one of `wholes` (N, 4): at least `inside` of its area lies
    within that box, and it covers at most `max_share` of it (a box as large as the whole is the
    same object named twice, not a part of it)."""
    if len(wholes) == 0:
        return False
    box = np.asarray(box, np.float32)
    wholes = np.asarray(wholes, np.float32)
    tl = np.maximum(box[:2], wholes[:, :2])
    br = np.minimum(box[2:], wholes[:, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=1)
    area = max(float(np.prod(box[2:] - box[:2])), 1e-9)
    whole_area = np.prod(wholes[:, 2:] - wholes[:, :2], axis=1)
    return bool(np.any((inter >= inside * area) & (area <= max_share * whole_area)))


@functools.lru_cache(maxsize=16)
def _anchor_table(input_hw: tuple[int, int], level_hw: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Every cell of the levels in (level, row, column) order as rows x, y (the cell centre, in
    cells) and stride x, stride y: (4, cells) float64; and where each level starts. Built once
    per input shape: per frame, a candidate's anchor is then one lookup."""
    columns, starts, start = [], [], 0
    for h, w in level_hw:
        cells = np.arange(h * w)
        columns.append(np.stack([cells % w + 0.5, cells // w + 0.5,
                                 np.full(h * w, input_hw[1] / w), np.full(h * w, input_hw[0] / h)]))
        starts.append(start)
        start += h * w
    table = np.concatenate(columns, axis=1)
    table.flags.writeable = False  # shared by every call through the cache
    return table, tuple(starts)


@functools.lru_cache(maxsize=4)
def _bin_values(bins: int) -> np.ndarray:
    values = np.arange(bins, dtype=np.float32)[:, None]
    values.flags.writeable = False
    return values


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
    anchors, starts = _anchor_table(tuple(input_hw), tuple(classes.shape[1:] for _, classes in levels))
    # Candidates gathered level by level, then decoded in one pass: numpy's per-call cost, not
    # the arithmetic, is what a few dozen cells cost, so every step below is one call for all.
    gathered: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start, (distributions, classes) in zip(starts, levels):
        logits = classes.reshape(classes.shape[0], -1)
        (cells,) = (logits.max(axis=0) > logit_floor).nonzero()
        if cells.size:
            bins = distributions.reshape(4, -1, logits.shape[1])[:, :, cells]  # (4 sides, bins, cells)
            gathered.append((logits[:, cells], bins, cells + start))
    if not gathered:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    if len(gathered) == 1:
        logits, bins, index = gathered[0]
    else:
        logits, bins, index = (np.concatenate(parts, axis=-1) for parts in zip(*gathered))
    scores = 1 / (1 + np.exp(-logits.max(axis=0)))
    above = scores > score_threshold
    if not above.all():
        logits, bins, index, scores = logits[:, above], bins[:, :, above], index[above], scores[above]
    # floored: far-off bins would otherwise give float32 denormals, which are 100x slower
    weights = np.exp(np.maximum(bins - bins.max(axis=1, keepdims=True), -50))
    distances = (weights * _bin_values(bins.shape[1])).sum(axis=1) / weights.sum(axis=1)  # left, top, right, bottom
    centre, stride = anchors[:2, index], anchors[2:, index]
    boxes = np.concatenate([(centre - distances[:2]) * stride, (centre + distances[2:]) * stride]).T
    class_ids = logits.argmax(axis=0)
    keep = nms(boxes + (class_ids * _CLASS_OFFSET)[:, None], scores, iou_threshold, max_detections)
    return (np.ascontiguousarray(boxes[keep], dtype=np.float32), scores[keep].astype(np.float32),
            class_ids[keep].astype(np.int64))


def decode_end2end(
    rows: np.ndarray, score_threshold: float, max_detections: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's NMS-free output (K, 6): x1 y1 x2 y2 score class."""
    rows = rows[rows[:, 4] > score_threshold][:max_detections]
    return rows[:, :4].astype(np.float32), rows[:, 4].astype(np.float32), rows[:, 5].astype(np.int64)


def unletterbox(boxes: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """Input-pixel boxes -> original-frame pixels, clipped to the frame."""
    g = geometry
    # float32 throughout, as the boxes: each coordinate gets the very arithmetic it got one
    # column at a time, in three array calls instead of eight.
    out = (boxes - np.array([g.pad_x, g.pad_y, g.pad_x, g.pad_y], np.float32)) / np.array(
        [g.gain_x, g.gain_y, g.gain_x, g.gain_y], np.float32)
    return np.clip(out, np.float32(0), np.array([g.width, g.height, g.width, g.height], np.float32), out=out)
