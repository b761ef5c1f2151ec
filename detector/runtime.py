"""The Detector: frames in, Detections out, one ONNX Runtime session per model."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnxruntime as ort

from detector.boxes import (
    Letterbox, decode_end2end, decode_levels, decode_raw, letterbox_into, rect_canvas, to_input, unletterbox,
)
from detector.detections import Detections
from detector.model import LEVEL_BOXES, LEVEL_CLASSES, InvalidImageError, ModelInfo, ModelLoadError, open_session
from detector.second_stage import CropClassifier, CropLabel
from detector.tiling import DEFAULT_OVERLAP, TiledCheck, detect_tiled, tiled_check


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
_MAX_INPUT_SHAPES = 4


class BoundRun:
    """session.run on one input array, with its outputs written into arrays allocated once.

    ORT's plain run() allocates every output afresh (the first level's box distributions alone
    are 460 KB at 448x256); bound to fixed buffers (IO binding) the same session run took about
    0.1 ms less CPU per 1080p frame here (docs/benchmarks.md). The input is bound by address:
    the caller rewrites `batch` in place between calls, and each call returns the same output
    arrays, overwritten.

    storage: where to write the outputs, from another BoundRun of the same input shape (a
    batch of up to `capacity` frames): the runs of every batch size then share one set of
    buffers, the first `len(batch)` rows of each.
    """

    def __init__(self, session: ort.InferenceSession, input_name: str, batch: np.ndarray, *,
                 storage: list[np.ndarray] | None = None, capacity: int = 0) -> None:
        if not batch.flags.c_contiguous:
            raise ValueError("a bound input must be one contiguous array")
        self.batch = batch  # held: the binding points into its memory
        # One plain run gives the output shapes for this input shape; its results are copied
        # into the buffers, so the call that made the binding has its outputs without a second run.
        first = session.run(None, {input_name: batch})
        n = len(batch)
        if storage is None or len(storage) != len(first) or not all(
                s.dtype == o.dtype and s.shape[1:] == o.shape[1:] and len(s) >= len(o) for s, o in zip(storage, first)):
            # Room for `capacity` frames in the outputs that go by the batch, so larger batches fit later.
            storage = [np.empty((max(n, capacity) if len(o) == n else len(o), *o.shape[1:]), o.dtype) for o in first]
        self.storage = storage
        self.outputs = [s[: len(o)] for s, o in zip(storage, first)]
        for out, o in zip(self.outputs, first):
            out[...] = o
        self._session = session
        self._binding = session.io_binding()
        self._binding.bind_input(input_name, "cpu", 0, batch.dtype.type, list(batch.shape), batch.ctypes.data)
        for meta, out in zip(session.get_outputs(), self.outputs):
            self._binding.bind_output(meta.name, "cpu", 0, out.dtype.type, list(out.shape), out.ctypes.data)

    def __call__(self) -> list[np.ndarray]:
        self._session.run_with_iobinding(self._binding)
        return self.outputs


@dataclass
class _InputBuffers:
    """The reused memory of one input shape: the model's input batch, scratch for a float
    input's canvas, and a bound session run per batch size that has run at this shape."""

    inputs: np.ndarray
    canvas: np.ndarray
    runs: dict[int, BoundRun] = field(default_factory=dict)


def _other_input_size(info: ModelInfo, imgsz: int) -> tuple[int, int]:
    """A dynamic-shape model can run at another longest side than it was exported for
    (a smaller one for a cheaper motion path); a static one cannot."""
    if not info.dynamic_hw:
        raise ModelLoadError(
            f"{info.path} takes a fixed {info.input_hw[0]}x{info.input_hw[1]} input; "
            f"export it with dynamic height and width to run it at {imgsz}"
        )
    if imgsz < info.stride or imgsz % info.stride:
        raise ModelLoadError(f"imgsz {imgsz} must be a positive multiple of the model's stride {info.stride}")
    return imgsz, imgsz


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
        imgsz: int | None = None,
        second_stage: Sequence[CropClassifier] = (),
    ) -> None:
        """`second_stage`: crop classifiers, each run by `classify_crops` on the boxes of its own
        detector class only (detector.second_stage; e.g. the load decision on trucks)."""
        if not 0 <= score_threshold <= 1 or not 0 <= iou_threshold <= 1:
            raise ValueError("score_threshold and iou_threshold must be within 0..1")
        self.session, self.info = open_session(
            model_path, threads=threads, providers=providers, spinning=spinning
        )
        if imgsz is not None and (imgsz, imgsz) != self.info.input_hw:
            self.info = replace(self.info, input_hw=_other_input_size(self.info, imgsz))
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        # A static-batch model takes exactly its batch; a dynamic one takes up to max_batch.
        self.batch_size = self.info.batch or max(1, max_batch)
        self._dtype = np.float16 if self.info.input_dtype == "float16" else np.float32
        # Input buffers per input shape, reused across calls (one shape for a static model, one
        # per frame shape seen for a dynamic one); one lock makes a Detector safe to share
        # between the stream pipeline and API threads.
        self._buffers: dict[tuple[int, int], _InputBuffers] = {}
        self._buffers_lock = threading.Lock()
        # Positions of each level's (box, class) outputs in the session's output list.
        names = [o.name for o in self.session.get_outputs()]
        self._level_outputs = [(names.index(LEVEL_BOXES.format(k)), names.index(LEVEL_CLASSES.format(k)))
                               for k in range(self.info.levels)]
        self.second_stage: dict[str, CropClassifier] = {}
        for stage in second_stage:
            if stage.stage_class not in self.info.names.values():
                raise ModelLoadError(f"second stage for {stage.stage_class!r}: the detector has no such class "
                                     f"({sorted(self.info.names.values())})")
            self.second_stage[stage.stage_class] = stage

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
        plans = [self.input_plan(frame) for frame in frames]
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, (hw, _) in enumerate(plans):
            by_shape.setdefault(hw, []).append(i)
        # Frames are batched with others of the same input shape, so a frame's detections do
        # not depend on what else was in the call.
        results: list[Detections] = [None] * len(frames)  # type: ignore[list-item]
        with self._buffers_lock:
            for hw, indices in by_shape.items():
                for start in range(0, len(indices), self.batch_size):
                    part = indices[start : start + self.batch_size]
                    found = self._detect_chunk([frames[i] for i in part], hw, [plans[i][1] for i in part])
                    for i, detections in zip(part, found):
                        results[i] = detections
        return results

    def __call__(self, frame: np.ndarray) -> Detections:
        return self.detect([frame])[0]

    def classify_crops(self, frame: np.ndarray, detections: Detections) -> dict[int, CropLabel]:
        """index in `detections` -> the second stage's label, for the boxes of a class that has a
        stage (none else: a person or a bin is never cropped and classified)."""
        out: dict[int, CropLabel] = {}
        names = detections.class_names
        for cls, stage in self.second_stage.items():
            picked = [i for i, n in enumerate(names) if n == cls]
            if picked:
                labels = stage.classify(check_frame(frame, 0), detections.xyxy[picked])
                out.update(zip(picked, labels))
        return out

    def detect_tiled(self, frame: np.ndarray, *, tile: int | None = None,
                     overlap: float = DEFAULT_OVERLAP) -> Detections:
        """One frame at native resolution: overlapping tiles plus the whole frame, merged
        (see detector.tiling). Costs one inference per tile; meant for occasional checks."""
        return detect_tiled(self, check_frame(frame, 0), tile=tile, overlap=overlap)

    def tiled_check(self, frame: np.ndarray, *, tile: int | None = None,
                    overlap: float = DEFAULT_OVERLAP) -> TiledCheck:
        """The same check, to be run a few images at a time (`TiledCheck.run`)."""
        return tiled_check(self, check_frame(frame, 0), tile=tile, overlap=overlap)

    def input_plan(self, frame: np.ndarray) -> tuple[tuple[int, int], float | None]:
        """The (height, width) this frame runs at, and the gain it is fitted with (None: the
        model's fixed input, fitted by letterbox_into itself)."""
        if not self.info.dynamic_hw:
            return self.info.input_hw, None
        return rect_canvas(frame.shape[:2], self.info.input_hw, self.info.stride)

    def session_input(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Frames of one input shape as the array the session takes (a new one): what detect()
        feeds it, for benchmarks and tests."""
        frames = [check_frame(f, i) for i, f in enumerate(frames)]
        plans = [self.input_plan(frame) for frame in frames]
        if len({hw for hw, _ in plans}) != 1:
            raise ValueError("session_input takes frames of one input shape; see input_plan()")
        inputs, canvas = self._new_buffers(plans[0][0], len(frames))
        self._prepare(frames, inputs, canvas, [gain for _, gain in plans])
        return inputs

    def _new_buffers(self, hw: tuple[int, int], batch: int) -> tuple[np.ndarray, np.ndarray]:
        if self.info.input_dtype == "uint8":  # the model takes the letterboxed canvas itself
            return np.zeros((batch, *hw, 3), np.uint8), np.empty(0, np.uint8)
        return np.zeros((batch, 3, *hw), self._dtype), np.empty((*hw, 3), np.uint8)

    def _buffers_for(self, hw: tuple[int, int]) -> _InputBuffers:
        buffers = self._buffers.get(hw)
        if buffers is None:
            if len(self._buffers) >= _MAX_INPUT_SHAPES:
                # API uploads come in any aspect ratio; cameras in a few. Bound the memory.
                self._buffers.clear()
            buffers = self._buffers[hw] = _InputBuffers(*self._new_buffers(hw, self.batch_size))
        return buffers

    def _run(self, buffers: _InputBuffers, batch: np.ndarray) -> list[np.ndarray]:
        """The session on `batch` (a leading slice of buffers.inputs, so its address is fixed):
        into bound output buffers, except an end-to-end head, whose output length a graph may
        choose per run. The arrays returned are overwritten by the next run at this shape."""
        if self.info.head == "end2end":
            return self.session.run(None, {self.info.input_name: batch})
        run = buffers.runs.get(len(batch))
        if run is None:
            shared = next(iter(buffers.runs.values())).storage if buffers.runs else None
            run = buffers.runs[len(batch)] = BoundRun(self.session, self.info.input_name, batch,
                                                      storage=shared, capacity=self.batch_size)
            return run.outputs
        return run()

    def _prepare(self, frames: Sequence[np.ndarray], inputs: np.ndarray, canvas: np.ndarray,
                 gains: Sequence[float | None]) -> list[Letterbox]:
        """Letterbox frames into the input batch (canvas: scratch space for a float input)."""
        geometry = []
        for i, (frame, gain) in enumerate(zip(frames, gains)):
            if self.info.input_dtype == "uint8":
                geometry.append(letterbox_into(frame, inputs[i], gain))
            else:
                geometry.append(letterbox_into(frame, canvas, gain))
                to_input(canvas, inputs[i])
        return geometry

    def _detect_chunk(
        self, frames: list[np.ndarray], hw: tuple[int, int], gains: list[float | None]
    ) -> list[Detections]:
        n = len(frames)
        buffers = self._buffers_for(hw)
        geometry = self._prepare(frames, buffers.inputs, buffers.canvas, gains)
        batch = buffers.inputs if self.info.batch else buffers.inputs[:n]
        outputs = [o.astype(np.float32, copy=False) for o in self._run(buffers, batch)]
        limits = (self.score_threshold, self.iou_threshold, self.max_detections)
        if self.info.head == "levels":
            levels = [(outputs[b], outputs[c]) for b, c in self._level_outputs]
            decoded = [decode_levels([(b[i], c[i]) for b, c in levels], hw, *limits) for i in range(n)]
        elif self.info.head == "end2end":
            decoded = [decode_end2end(outputs[0][i], self.score_threshold, self.max_detections) for i in range(n)]
        else:
            decoded = [decode_raw(outputs[0][i], *limits) for i in range(n)]
        return [
            Detections(xyxy=unletterbox(boxes, geometry[i]), scores=scores, class_ids=class_ids, names=self.info.names)
            for i, (boxes, scores, class_ids) in enumerate(decoded)
        ]
