"""Opening an ONNX detection model and reading what it says about itself."""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnxruntime as ort


class DetectorError(Exception):
    """Base class for every error the detector raises on purpose."""


class ModelLoadError(DetectorError):
    """The model file is missing, unreadable, or not a detection model."""


class InvalidImageError(DetectorError):
    """A frame handed to the detector is not an HxWx3 uint8 BGR array."""


# What the session's outputs hold:
# - "decoded": Ultralytics' export, one (B, 4+C, anchors) tensor of pixel boxes and class scores;
# - "end2end": already NMS-ed, (B, K, 6) x1 y1 x2 y2 score class;
# - "levels": the detection head's last convolutions per feature level, named
#   box_distribution_{i} (B, 4*bins, h, w) and class_logits_{i} (B, C, h, w), decoded by the
#   runtime (detector.boxes.decode_levels). gridwatch's int8 export cuts its graph there: the
#   decode in the graph (DFL, anchors built from runtime shapes, layout transposes) cost 0.6 ms
#   of a 7.5 ms int8 session, and the runtime only needs it for the few anchors above threshold.
HeadFormat = Literal["decoded", "end2end", "levels"]
LEVEL_BOXES = "box_distribution_{}"
LEVEL_CLASSES = "class_logits_{}"


# An int8 file's weight range (training.export.qdq.WEIGHT_BITS): "7" where its weights lie within
# +-64; absent in gridwatch int8 files from before, whose weights span +-127.
WEIGHT_BITS_KEY = "gridwatch_weight_bits"
# x86 instruction sets whose int8 dot product accumulates in int32 (no pairwise int16 overflow).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    names: dict[int, str]
    input_name: str
    input_hw: tuple[int, int]
    # "float32" or "float16": 0..1 RGB planes, (B, 3, H, W); "uint8": the letterboxed BGR canvas
    # itself, (B, H, W, 3) (gridwatch's int8 export, training.export.export.take_pixels).
    input_dtype: str
    batch: int | None  # None: dynamic batch
    stride: int
    head: HeadFormat
    metadata: dict[str, str] = field(default_factory=dict)
    # Height and width left free at export: each frame runs at its own letterboxed shape
    # (detector.boxes.rect_canvas) up to input_hw, instead of always the full square.
    dynamic_hw: bool = False
    levels: int = 0  # feature levels of a "levels" head

    @property
    def version(self) -> str:
        # Ultralytics' own "version" key is the exporter's version, not the model's.
        return self.metadata.get("gridwatch_model_version") or self.path.stem


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), None)
    return frozenset(line.partition(":")[2].split()) if line else None


def int8_overflow(info: ModelInfo, flags: frozenset[str] | None = None) -> str | None:
    """Why this model computes wrong on this CPU, or None: a gridwatch U8S8 int8 file with 8-bit
    weights on an x86 CPU without VNNI, where ONNX Runtime's int8 kernel adds pairs of products in
    int16 and saturates (training.export.qdq.WEIGHT_BITS). `flags`: the CPU's (default: this one's)."""
    if not info.metadata.get("gridwatch_precision", "").startswith("int8-qdq-u8s8"):
        return None
    if info.metadata.get(WEIGHT_BITS_KEY) == "7":
        return None
    flags = cpu_flags() if flags is None else flags
    if not flags or "avx2" not in flags or flags & VNNI_FLAGS:
        return None  # not x86 (or unknown), or an int8 unit that does not saturate
    return (f"{info.path.name} ({info.version}) has 8-bit int8 weights and this CPU has no VNNI: ONNX Runtime's "
            "int8 kernel overflows on it and the model misses objects (measured on the shipped model: garbage_pile "
            "AP50 -12.5 points, truck -24). Use a model exported by this gridwatch (7-bit weights) or the fp32 file.")


def _literal(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        try:
            return json.loads(value)
        except ValueError:
            return value


def _parse_names(raw: Any, n_classes: int | None) -> dict[int, str]:
    if isinstance(raw, dict):
        return {int(k): str(v) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return dict(enumerate(map(str, raw)))
    if n_classes is not None:
        return {i: f"class{i}" for i in range(n_classes)}
    return {}


def session_options(threads: int | None, spinning: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # None keeps ORT's default: one thread per physical core, pinned; a count drops the pinning.
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if spinning:
        # Spin within a run (each of the graph's parallel sections starts without a wake-up),
        # but not after it: a pool left spinning between runs holds the second core while our
        # resize, decode and the stream readers need it (the camera bench's detect: 4.6 ms per
        # analysed frame left spinning, 4.2-4.5 ms stopped; docs/benchmarks.md), and the next
        # run loses nothing measurable by waking its pool once.
        options.add_session_config_entry("session.force_spinning_stop", "1")
    else:
        # Several sessions sharing two cores: spinning threads steal each other's time.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def open_session(
    path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    providers: list[str] | None = None,
    spinning: bool = True,
) -> tuple[ort.InferenceSession, ModelInfo]:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    available = ort.get_available_providers()
    if providers:
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise ModelLoadError(f"execution providers not available: {unknown} (available: {available})")
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(threads, spinning), providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises several private exception types
        raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc
    return session, describe(session, path)


def describe(session: ort.InferenceSession, path: Path) -> ModelInfo:
    meta = dict(session.get_modelmeta().custom_metadata_map)
    task = meta.get("task")
    if task and task != "detect":
        raise ModelLoadError(f"{path} is a '{task}' model; gridwatch needs a detection model")
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ModelLoadError(f"{path} is not a detection model: expected one NCHW image input")
    inp = inputs[0]
    pixels = inp.type == "tensor(uint8)"
    if pixels and inp.shape[3] != 3:
        raise ModelLoadError(f"{path}: a uint8 input must be (batch, height, width, 3) BGR pixels, got {inp.shape}")
    batch_dim, h_dim, w_dim = (inp.shape[0], *inp.shape[1:3]) if pixels else (inp.shape[0], *inp.shape[2:4])
    imgsz = _literal(meta.get("imgsz"))
    if isinstance(h_dim, int) and isinstance(w_dim, int):
        input_hw = (h_dim, w_dim)
    elif isinstance(imgsz, (list, tuple)) and len(imgsz) == 2:
        input_hw = (int(imgsz[0]), int(imgsz[1]))
    elif isinstance(imgsz, int):
        input_hw = (imgsz, imgsz)
    else:
        input_hw = (640, 640)

    raw_names = _literal(meta.get("names"))
    n_from_names = len(raw_names) if isinstance(raw_names, (dict, list, tuple)) else None
    outputs = session.get_outputs()
    head: HeadFormat
    levels = 0
    if any(o.name == LEVEL_CLASSES.format(0) for o in outputs):
        head = "levels"
        levels, n_classes = _level_classes(path, outputs)
    elif len(outputs) != 1 or len(outputs[0].shape) != 3:
        raise ModelLoadError(
            f"{path} is not a detection model: expected one (batch, 4+classes, anchors) output, "
            f"got {[o.shape for o in outputs]}"
        )
    else:
        out_shape = outputs[0].shape
        channels = out_shape[1] if isinstance(out_shape[1], int) else None
        last = out_shape[2] if isinstance(out_shape[2], int) else None
        end2end = str(meta.get("end2end", "")).lower() == "true" or (
            last == 6 and (n_from_names is None or channels != 4 + n_from_names)
        )
        head = "end2end" if end2end else "decoded"
        n_classes = n_from_names if end2end else (channels - 4 if channels is not None else n_from_names)
    if head != "end2end":
        if n_classes is not None and n_classes < 1:
            raise ModelLoadError(f"{path}: the head outputs {n_classes} classes; not a detection head")
        if n_from_names is not None and n_classes is not None and n_from_names != n_classes:
            raise ModelLoadError(
                f"{path}: metadata names {n_from_names} classes but the head outputs {n_classes}"
            )
    names = _parse_names(raw_names, n_classes)
    stride = _literal(meta.get("stride"))
    return ModelInfo(
        path=path,
        names=names,
        input_name=inp.name,
        input_hw=input_hw,
        input_dtype="uint8" if pixels else "float16" if "float16" in inp.type else "float32",
        batch=batch_dim if isinstance(batch_dim, int) else None,
        stride=int(stride) if isinstance(stride, (int, float)) else 32,
        head=head,
        metadata=meta,
        dynamic_hw=not (isinstance(h_dim, int) and isinstance(w_dim, int)),
        levels=levels,
    )


def _level_classes(path: Path, outputs: list) -> tuple[int, int | None]:
    """A per-level head must come in pairs with one class count; returns (levels, classes)."""
    names = {o.name: o for o in outputs}
    levels = sum(1 for name in names if name.startswith(LEVEL_CLASSES.format("")))
    for i in range(levels):
        for pattern in (LEVEL_BOXES, LEVEL_CLASSES):
            output = names.get(pattern.format(i))
            if output is None or len(output.shape) != 4:
                raise ModelLoadError(f"{path}: per-level head without a 4-D {pattern.format(i)} output")
    classes = {names[LEVEL_CLASSES.format(i)].shape[1] for i in range(levels)}
    bins = {names[LEVEL_BOXES.format(i)].shape[1] for i in range(levels)}
    if len(classes) != 1 or len(bins) != 1 or any(isinstance(b, int) and b % 4 for b in bins):
        raise ModelLoadError(f"{path}: per-level head outputs disagree (classes {classes}, box bins {bins})")
    (n,) = classes
    return levels, n if isinstance(n, int) else None
