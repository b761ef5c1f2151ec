"""The Detector: frames in, Detections out, one ONNX Runtime session per model."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np

from detector.boxes import decode_end2end, decode_raw, letterbox_into, to_input, unletterbox
from detector.detections import Detections
from detector.model import InvalidImageError, ModelInfo, open_session
from detector.tiling import DEFAULT_OVERLAP, detect_tiled


def check_frame(frame: object, index: int = 0) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise InvalidImageError(f"frame {index}: expected a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InvalidImageError(f"frame {index}: expected dtype uint8, got {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise InvalidImageError(
            f"frame {index}: expected an HxWx3 BGR image, got shape {frame.shape} "
            "(convert grey or BGRA images with cv2.cvtColor first)"
        )
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InvalidImageError(f"frame {index}: empty image {frame.shape}")
    return frame


# Ultralytics' predict defaults, so the two agree on the same model; settings, the CLI and
# evaluation start from these.
DEFAULT_SCORE_THRESHOLD = 0.25
DEFAULT_IOU_THRESHOLD = 0.7


class Detector:
    """Runs an Ultralytics-exported detection ONNX model on BGR frames of any size.

    score_threshold and iou_threshold default to Ultralytics' predict defaults so the
    two agree on the same model.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        iou_threshold: float = DEFAULT_IOU_THRESHOLD,
        max_detections: int = 300,
        threads: int | None = None,
        providers: list[str] | None = None,
        spinning: bool = True,
        max_batch: int = 8,
    ) -> None:
        if not 0 <= score_threshold <= 1 or not 0 <= iou_threshold <= 1:
            raise ValueError("score_threshold and iou_threshold must be within 0..1")
        self.session, self.info = open_session(
            model_path, threads=threads, providers=providers, spinning=spinning
        )
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        # A static-batch model takes exactly its batch; a dynamic one takes up to max_batch.
        self.batch_size = self.info.batch or max(1, max_batch)
        h, w = self.info.input_hw
        dtype = np.float16 if self.info.input_dtype == "float16" else np.float32
        self._inputs = np.zeros((self.batch_size, 3, h, w), dtype)
        self._canvas = np.empty((h, w, 3), np.uint8)
        # The buffers above are reused across calls; one lock makes a Detector safe to
        # share between the stream pipeline and API threads.
        self._buffers_lock = threading.Lock()

    @property
    def names(self) -> dict[int, str]:
        return self.info.names

    @property
    def input_size(self) -> tuple[int, int]:
        return self.info.input_hw

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Detect in each frame; one Detections per frame, boxes in that frame's pixels."""
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = [frames]
        frames = [check_frame(f, i) for i, f in enumerate(frames)]
        results: list[Detections] = []
        with self._buffers_lock:
            for start in range(0, len(frames), self.batch_size):
                results.extend(self._detect_chunk(frames[start : start + self.batch_size]))
        return results

    def __call__(self, frame: np.ndarray) -> Detections:
        return self.detect([frame])[0]

    def detect_tiled(self, frame: np.ndarray, *, tile: int | None = None,
                     overlap: float = DEFAULT_OVERLAP) -> Detections:
        """One frame at native resolution: overlapping tiles plus the whole frame, merged
        (see detector.tiling). Costs one inference per tile; meant for occasional checks."""
        return detect_tiled(self, check_frame(frame, 0), tile=tile, overlap=overlap)

    def _detect_chunk(self, frames: list[np.ndarray]) -> list[Detections]:
        n = len(frames)
        geometry = []
        for i, frame in enumerate(frames):
            geometry.append(letterbox_into(frame, self._canvas))
            to_input(self._canvas, self._inputs[i])
        batch = self._inputs if self.info.batch else self._inputs[:n]
        (output,) = self.session.run(None, {self.info.input_name: batch})
        output = output.astype(np.float32, copy=False)
        results = []
        for i in range(n):
            if self.info.end2end:
                boxes, scores, class_ids = decode_end2end(
                    output[i], self.score_threshold, self.max_detections
                )
            else:
                boxes, scores, class_ids = decode_raw(
                    output[i], self.score_threshold, self.iou_threshold, self.max_detections
                )
            results.append(
                Detections(
                    xyxy=unletterbox(boxes, geometry[i]),
                    scores=scores,
                    class_ids=class_ids,
                    names=self.info.names,
                )
            )
        return results
