"""From a trained .pt to the served files: fp32 ONNX and static QDQ int8 ONNX.

Int8 recipe (see ../shared/docs/performance.md): `quant_pre_process` first, then static
QDQ quantisation with uint8 activations and int8 weights (U8S8, the VNNI fast path on
these CPUs; S8S8 is slower than fp32), calibrated on real images letterboxed exactly as
the detector does, activation ranges clipped at the 99.999th percentile (MinMax lets
a few outliers waste the 8 bits), and the head's post-processing (DFL, sigmoid, the final concat that
puts pixel boxes and 0..1 scores in one tensor) kept in fp32: quantised, that concat
shares one scale and every score reads 0.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from detector.boxes import letterbox_into, to_input
from detector.files import sha256_file
from detector.model import WEIGHT_BITS_KEY
from training.data.yolo_format import find_images, read_data_yaml
from training.export.qdq import WEIGHT_BITS, graph_index, share_concat_scales

MIN_CALIBRATION_IMAGES = 32
PROGRESS_S = 10.0  # seconds between calibration progress lines, as eval's
CALIBRATION_PERCENTILE = 99.999


class ExportError(ValueError):
    """Export input is missing or unusable; the message says which and why."""


@dataclass
class ExportResult:
    fp32: Path
    int8: Path | None
    metadata: dict[str, str]
    imgsz: int  # square input side of both files
    train_args: dict  # what the checkpoint was trained with (also in the metadata)
    excluded_nodes: list[str] = field(default_factory=list)
    calibration_images: int = 0

    @property
    def classes(self) -> list[str]:
        """Class names in id order, as Ultralytics wrote them into the metadata."""
        names = ast.literal_eval(self.metadata["names"])
        return [str(names[i]) for i in sorted(names)]


@dataclass(frozen=True)
class SpeedComparison:
    threads: int
    hw: str  # "HxW"
    fp32_ms: float
    int8_ms: float
    ratio: float
    meets_1_5x: bool


def dataset_hash(data_yaml: str | Path | None) -> str:
    """A stable fingerprint of a dataset: its data.yaml, label files and image names.

    Images are fingerprinted by name and size, not content, so hashing 3k images stays fast;
    a dataset build that records its own hash in data.yaml (`dataset_hash`) wins.
    """
    if not data_yaml or not Path(data_yaml).is_file():
        return "unknown"
    data = read_data_yaml(Path(data_yaml))
    if data.dataset_hash:
        return data.dataset_hash
    digest = hashlib.sha256(data.file.read_bytes())
    for sub in ("images", "labels"):
        folder = data.root / sub
        if not folder.is_dir():
            continue
        for f in sorted(folder.rglob("*")):
            if not f.is_file():
                continue
            digest.update(str(f.relative_to(data.root)).encode())
            digest.update(f.read_bytes() if sub == "labels" else str(f.stat().st_size).encode())
    return digest.hexdigest()[:16]


def calibration_images(folder: str | Path, count: int) -> list[Path]:
    """At most `count` images of the folder, evenly spread over it rather than the first N,
    which may all be one scene."""
    paths = find_images(Path(folder))
    if len(paths) <= count:
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).astype(int)]


def letterboxed_inputs(paths: Sequence[Path], hw: tuple[int, int]) -> Iterator[np.ndarray]:
    """1x3xHxW float32 inputs, exactly as `detector.Detector` prepares a frame."""
    import cv2

    canvas = np.empty((hw[0], hw[1], 3), np.uint8)
    for path in paths:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise ExportError(f"{path}: unreadable calibration image")
        letterbox_into(frame, canvas)
        x = np.empty((1, 3, hw[0], hw[1]), np.float32)
        to_input(canvas, x[0])
        yield x


# ---------------------------------------------------------------- fp32


def export_fp32(
    weights: Path, imgsz: int, out: Path, extra_metadata: dict[str, str], dynamic: bool = True
) -> tuple[Path, dict[str, str]]:
    """Ultralytics' ONNX export (simplified) plus gridwatch metadata.

    dynamic: batch, height and width left free, so a 16:9 camera frame runs at 448x256 rather
    than padded to 448x448 (detector.boxes.rect_canvas); imgsz stays the largest side. False
    gives the old static 1x3ximgszximgsz graph."""
    from training.offline import ultralytics_offline

    YOLO = ultralytics_offline()
    import onnx

    model = YOLO(str(weights))
    with tempfile.TemporaryDirectory() as tmp:
        # Export next to a copy so the run folder is not littered and parallel exports do not collide.
        staged = Path(tmp) / weights.name
        shutil.copyfile(weights, staged)
        exported = Path(
            YOLO(str(staged)).export(format="onnx", imgsz=imgsz, simplify=True, dynamic=dynamic,
                                     batch=1, nms=False, device="cpu", verbose=False)
        )
        proto = onnx.load(str(exported))
    del model
    dfl_softmax_on_last_axis(proto)
    _set_metadata(proto, extra_metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out, {p.key: p.value for p in proto.metadata_props}


def dfl_softmax_on_last_axis(proto) -> int:
    """Rewrite the head's DFL (Transpose, Softmax over axis 1, 1x1 Conv with the bin indices)
    into Transpose, Softmax over the last axis and a MatMul: the same numbers, computed
    the way ONNX Runtime is fast at. Its Softmax on a middle axis transposes internally and
    cost 1.1 ms of 12 (fp32) and 1.9 ms of 8.5 (int8) per 416 px frame on 2 cores; the
    rewrite is what brings int8 past 1.5x fp32. Returns the number of DFL blocks rewritten.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    by_output, consumers, initializers = graph_index(graph)

    def attribute(node, name):
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)

    rewritten = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        transpose = by_output.get(softmax.input[0])
        after = consumers.get(softmax.output[0], [])
        if (transpose is None or transpose.op_type != "Transpose" or len(after) != 1
                or after[0].op_type != "Conv" or len(after[0].input) != 2
                or after[0].input[1] not in initializers):
            continue
        conv = after[0]
        weight = numpy_helper.to_array(initializers[conv.input[1]])  # (1, bins, 1, 1)
        if list(attribute(transpose, "perm")) != [0, 2, 1, 3] or attribute(softmax, "axis") != 1 \
                or weight.ndim != 4 or weight.shape[0] != 1 or weight.shape[2:] != (1, 1):
            continue
        bins = numpy_helper.from_array(weight.reshape(-1, 1).astype(np.float32), f"{conv.name}/bins")
        graph.initializer.append(bins)
        replacements = (
            (transpose, helper.make_node("Transpose", list(transpose.input), list(transpose.output),
                                         name=transpose.name, perm=[0, 1, 3, 2])),
            (softmax, helper.make_node("Softmax", list(softmax.input), list(softmax.output),
                                       name=softmax.name, axis=-1)),
            (conv, helper.make_node("MatMul", [softmax.output[0], bins.name], list(conv.output),
                                    name=f"{conv.name}/MatMul")),
        )
        for old, new in replacements:
            position = list(graph.node).index(old)
            graph.node.remove(old)
            graph.node.insert(position, new)
        if not any(conv.input[1] in n.input for n in graph.node):
            graph.initializer.remove(initializers[conv.input[1]])
        rewritten += 1
    if rewritten:
        # Shapes recorded for the rewritten tensors no longer hold; ONNX Runtime infers them again.
        del graph.value_info[:]
    return rewritten


def _set_metadata(proto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            prop = proto.metadata_props.add()
            prop.key, prop.value = key, str(value)


# ---------------------------------------------------------------- int8


def _head_prefix(proto) -> str:
    indices = [int(m.group(1)) for n in proto.graph.node if (m := re.match(r"^/model\.(\d+)/", n.name))]
    if not indices:
        raise ExportError("cannot find the detection head: node names do not follow /model.N/...")
    return f"/model.{max(indices)}/"


def head_postprocess_nodes(proto) -> list[str]:
    """Nodes of the detection head after the last Conv of each branch.

    Ultralytics names nodes by module path (`/model.22/cv2.0/cv2.0.2/Conv`); the head is
    the highest-numbered module. Its box (cv2.*) and class (cv3.*) branches are convs and
    are quantised; everything else in it (concats, DFL softmax and conv, anchors, sigmoid)
    is arithmetic on outputs with very different ranges and stays fp32.
    """
    head = _head_prefix(proto)
    branches = (f"{head}cv2.", f"{head}cv3.", f"{head}one2one_cv2.", f"{head}one2one_cv3.")
    return [n.name for n in proto.graph.node if n.name.startswith(head) and not n.name.startswith(branches)]


def cut_at_head_levels(proto) -> int:
    """Make the per-level outputs of the head's last convolutions the graph's outputs, in
    place, and drop the decode after them (detector.model's "levels" head; the runtime decodes).

    Each level's box branch (`cv2.i`) and class branch (`cv3.i`) ends in a 1x1 Conv, followed in
    a QDQ graph by its Quantize/Dequantize pair; the output is taken after the pair, in float.
    Returns the number of levels."""
    from onnx import TensorProto, helper

    from detector.model import LEVEL_BOXES, LEVEL_CLASSES

    graph = proto.graph
    head = _head_prefix(proto)
    by_name = {n.name: n for n in graph.node}
    producers, consumers, weights = graph_index(graph)

    def level_output(branch: str, level: int) -> tuple[str, int] | None:
        conv = by_name.get(f"{head}{branch}.{level}/{branch}.{level}.2/Conv")
        if conv is None:
            return None
        channels = _conv_channels(conv, weights, producers)
        tensor = conv.output[0]
        for op in ("QuantizeLinear", "DequantizeLinear"):
            follow = [c for c in consumers.get(tensor, []) if c.op_type == op]
            if not follow:
                break
            tensor = follow[0].output[0]
        return tensor, channels

    outputs = []
    while (boxes := level_output("cv2", len(outputs))) and (classes := level_output("cv3", len(outputs))):
        outputs.append((boxes, classes))
    if not outputs:
        raise ExportError(f"cannot find the head's per-level convolutions ({head}cv2.0/cv2.0.2/Conv)")
    renamed: dict[str, str] = {}
    new_outputs = []
    for level, pair in enumerate(outputs):
        for pattern, (tensor, channels) in zip((LEVEL_BOXES, LEVEL_CLASSES), pair):
            renamed[tensor] = pattern.format(level)
            new_outputs.append(helper.make_tensor_value_info(
                renamed[tensor], TensorProto.FLOAT, ["batch", channels, f"height_{level}", f"width_{level}"]))
    needed, kept = set(renamed), []
    for node in reversed(list(graph.node)):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    for node in kept:
        for i, name in enumerate(node.output):
            node.output[i] = renamed.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.value_info[:]
    del graph.output[:]
    graph.output.extend(new_outputs)
    return len(outputs)


def take_pixels(proto) -> bool:
    """Make a QDQ graph take the letterboxed BGR canvas itself, (batch, H, W, 3) uint8, in place
    of the 0..1 RGB planes; True if done.

    The input's calibrated quantiser maps pixel p to round(p / 255 / scale) + zero_point, which
    is p itself when the zero point is 0 and the scale within 0.5/255 of 1/255 (calibration
    lands there: the input spans 0..1). The quantiser is then dropped and the pixels go straight
    to its DequantizeLinear, through an NHWC->NCHW Transpose that ONNX Runtime cancels against
    its own NHWC layout; the first convolution's input channels are reversed for BGR. Outputs
    are bit-identical, and the detector skips the float conversion (0.2 ms per 1080p frame) and
    the graph its quantiser. Returns False (graph unchanged) when those conditions do not hold."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    if len(graph.input) != 1:
        return False
    name = graph.input[0].name
    producers, consumers, weights = graph_index(graph)
    readers = consumers.get(name, [])
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
        return False
    quantiser = readers[0]
    scale, zero_point = (numpy_helper.to_array(weights[i]) if i in weights else None for i in quantiser.input[1:3])
    if scale is None or zero_point is None or scale.size != 1 or zero_point.dtype != np.uint8 or int(zero_point) != 0:
        return False
    if 255 * abs(1 / (255 * float(scale)) - 1) >= 0.5:
        return False
    dequantisers = consumers.get(quantiser.output[0], [])
    if not dequantisers or any(n.op_type != "DequantizeLinear" for n in dequantisers):
        return False
    convs = [conv for dq in dequantisers for conv in consumers.get(dq.output[0], [])]
    weight_dqs = [producers.get(conv.input[1]) if conv.op_type == "Conv" else None for conv in convs]
    if any(dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in weights for dq in weight_dqs):
        return False  # checked before anything changes: False leaves the graph as it was
    for weight in {dq.input[0] for dq in weight_dqs}:
        w = numpy_helper.to_array(weights[weight])
        weights[weight].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w[:, ::-1]), weight))
    dims = graph.input[0].type.tensor_type.shape.dim
    batch, _, height, width = (d.dim_param or d.dim_value for d in dims)
    for dq in dequantisers:
        dq.input[0] = f"{name}_nchw"
    graph.node.remove(quantiser)
    graph.node.insert(0, helper.make_node("Transpose", [name], [f"{name}_nchw"], perm=[0, 3, 1, 2],
                                          name=f"{name}_to_nchw"))
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(name, TensorProto.UINT8, [batch, height, width, 3]))
    return True


def _conv_channels(conv, weights: dict, producers: dict) -> int:
    """Output channels of a Conv whose weight is an initializer, directly or through a
    DequantizeLinear (QDQ weights)."""
    name = conv.input[1]
    if name not in weights and name in producers:
        name = producers[name].input[0]
    if name not in weights:
        raise ExportError(f"{conv.name}: weight {name} is not an initializer")
    return int(weights[name].dims[0])


class _Calibration:
    """onnxruntime CalibrationDataReader over letterboxed real images, with a progress line
    every `every_s` seconds: ORT runs each image as it asks for the next one, and 64 images
    on 2 cores take minutes without a word otherwise."""

    def __init__(self, input_name: str, paths: Sequence[Path], hw: tuple[int, int],
                 log: Callable[[str], None] | None = None, every_s: float = PROGRESS_S) -> None:
        self._input_name = input_name
        self._iter = letterboxed_inputs(paths, hw)
        self._total, self._handed = len(paths), 0
        self._log, self._every_s = log, every_s
        self._started = self._last = time.monotonic()

    def get_next(self):
        x = next(self._iter, None)
        self._progress(finished=x is None)
        if x is None:
            return None
        self._handed += 1
        return {self._input_name: x}

    def _progress(self, finished: bool) -> None:
        if self._log is None:
            return
        now, done = time.monotonic(), self._handed  # each image handed out before this call has run
        if finished:
            self._log(f"  int8 calibration: {done}/{self._total} images run ({now - self._started:.0f} s); "
                      "computing activation ranges and writing the int8 file ...")
        elif 0 < done and now - self._last >= self._every_s:
            self._last = now
            rate = done / max(now - self._started, 1e-9)
            self._log(f"  int8 calibration: {done}/{self._total} images ({now - self._started:.0f} s, "
                      f"about {(self._total - done) / rate:.0f} s left)")


def _has_dynamic_hw(model: Path) -> bool:
    """A model exported with dynamic height and width (rect inputs) defeats ORT's symbolic
    shape inference on the head's anchor arithmetic; ONNX's own inference is enough there."""
    import onnx

    dims = onnx.load(str(model), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return any(not d.HasField("dim_value") for d in dims[2:])


def quantize_int8(
    fp32: Path, out: Path, calibration: Sequence[Path], metadata: dict[str, str], per_channel: bool = True,
    for_ultralytics: bool = False, log: Callable[[str], None] | None = None, share_scales: bool = True,
    weight_bits: int = WEIGHT_BITS,
) -> list[str]:
    """Static QDQ U8S8 with the head's post-processing excluded; returns the excluded nodes.

    share_scales: give each Concat's inputs and output one scale (qdq.share_concat_scales), so
    ONNX Runtime copies where it would requantise; off only to measure what it changes.
    weight_bits: 7 (+-64), which no x86 int8 kernel overflows (qdq.WEIGHT_BITS); 8 only to measure.

    By default the file is for gridwatch's detector alone: cut at the head's per-level
    convolutions (cut_at_head_levels) and taking the letterboxed BGR pixels (take_pixels).
    for_ultralytics keeps Ultralytics' input and decoded output, so Ultralytics can run it."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if weight_bits not in (7, 8):
        raise ExportError(f"int8 weights are 7 or 8 bits, not {weight_bits}")
    if len(calibration) < MIN_CALIBRATION_IMAGES:
        raise ExportError(
            f"int8 calibration needs at least {MIN_CALIBRATION_IMAGES} real images, got {len(calibration)}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # ONNX Runtime's symbolic shape inference dumps sym_shape_infer_temp.onnx and its external
        # data into the working directory when it gives up; keep that in the temporary folder.
        with contextlib.chdir(tmp):
            quant_pre_process(str(Path(fp32).resolve()), str(pre), skip_symbolic_shape=_has_dynamic_hw(fp32))
        proto = onnx.load(str(pre))
        excluded = head_postprocess_nodes(proto)
        inp = proto.graph.input[0]
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if not (dims[2] and dims[3]):  # dynamic: calibrate at the size the model was exported for
            imgsz = ast.literal_eval({p.key: p.value for p in proto.metadata_props}.get("imgsz", "[640, 640]"))
            dims[2:] = imgsz if isinstance(imgsz, (list, tuple)) else (imgsz, imgsz)
        reader = _Calibration(inp.name, calibration, (dims[2], dims[3]), log)
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre), str(quantized), reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=weight_bits == WEIGHT_BITS,  # 7-bit weights (training.export.qdq.WEIGHT_BITS)
            # Percentile clipping of activation ranges: measured on a 416 px fine-tune (505 real
            # val images), MinMax lost 2.8 mAP50 points to fp32, Percentile 99.999 lost 1.3.
            calibrate_method=CalibrationMethod.Percentile,
            nodes_to_exclude=excluded,
            extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
        )
        proto = onnx.load(str(quantized))
    shared = share_concat_scales(proto) if share_scales else 0
    levels = not for_ultralytics and cut_at_head_levels(proto) > 0
    pixels = not for_ultralytics and take_pixels(proto)
    _set_metadata(proto, {**metadata, "gridwatch_precision": "int8-qdq-u8s8", WEIGHT_BITS_KEY: str(weight_bits),
                          "gridwatch_head": "levels" if levels else "decoded",
                          "gridwatch_input": "bgr-pixels" if pixels else "rgb-float",
                          "gridwatch_calibration": f"percentile {CALIBRATION_PERCENTILE}, {len(calibration)} images; "
                                                   f"{weight_bits}-bit weights"
                                                   + (f"; {shared} concats share one scale" if shared else "")})
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return excluded


def session_ms(model: Path, hw: tuple[int, int], threads: int = 2, runs: int = 20) -> float:
    """Median ms of one bare session run: the number performance.md compares."""
    from detector.runtime import Detector

    detector = Detector(model, threads=threads)
    frame = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    x = detector.session_input([frame])  # float planes or pixels, as the model takes them
    session, name = detector.session, detector.info.input_name
    for _ in range(3):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def camera_input_hw(model: Path, frame_hw: tuple[int, int] = (1080, 1920)) -> tuple[int, int]:
    """The input a 1080p camera frame runs at: 448x256 for a free-shape model at 448, the
    fixed square otherwise. Speed is measured there, as it is served."""
    from detector.runtime import Detector

    hw, _ = Detector(model, threads=1).input_plan(np.zeros((*frame_hw, 3), np.uint8))
    return hw


def compare_speed(fp32: Path, int8: Path, hw: tuple[int, int], threads: int = 2, rounds: int = 5) -> SpeedComparison:
    """fp32 and int8 session times measured in alternation, so load from other processes
    on a shared machine hits both alike; medians of the rounds."""
    a, b = [], []
    for _ in range(rounds):
        a.append(session_ms(fp32, hw, threads, runs=10))
        b.append(session_ms(int8, hw, threads, runs=10))
    fp32_ms, int8_ms = float(np.median(a)), float(np.median(b))
    # hw is written width x height, as the bench writes it.
    return SpeedComparison(threads=threads, hw=f"{hw[1]}x{hw[0]}", fp32_ms=round(fp32_ms, 2),
                           int8_ms=round(int8_ms, 2), ratio=round(fp32_ms / int8_ms, 2),
                           meets_1_5x=fp32_ms / int8_ms >= 1.5)


# ---------------------------------------------------------------- the whole export


def load_checkpoint(weights: str | Path) -> dict:
    import torch

    from training.offline import prepare

    prepare()  # unpickling a checkpoint imports ultralytics, whose import checks the network
    try:
        ckpt = torch.load(str(weights), map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle, zip and torch errors alike
        raise ExportError(f"{weights}: cannot read checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt and "ema" not in ckpt:
        raise ExportError(f"{weights}: not an Ultralytics checkpoint")
    return ckpt


def checkpoint_model(checkpoint: dict):  # noqa: ANN201
    """The checkpoint's network in full precision: its EMA weights (what Ultralytics serves), else its model."""
    return (checkpoint.get("ema") or checkpoint["model"]).float()


def read_checkpoint_args(weights: str | Path) -> dict:
    """The training arguments Ultralytics stored in a checkpoint (data, imgsz, epochs...)."""
    return dict(load_checkpoint(weights).get("train_args") or {})


def default_calibration_dir(train_args: dict) -> Path | None:
    if not train_args.get("data") or not Path(train_args["data"]).is_file():
        return None
    data = read_data_yaml(Path(train_args["data"]))
    # Calibrate on training images: the val split stays unseen by every step of the build.
    for split in ("train", "val"):
        folder = data.split_dir(split)
        if folder is not None and folder.is_dir():
            return folder
    return None


def export(
    weights: str | Path,
    out_dir: str | Path = "weights",
    *,
    imgsz: int | None = None,
    calib: str | Path | None = None,
    int8: bool = True,
    stem: str = "gridwatch",
    model_version: str | None = None,
    calibration_count: int = 64,
    dynamic: bool = True,
    int8_for_ultralytics: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    from detector.taxonomy import load_taxonomy

    weights = Path(weights)
    if not weights.is_file():
        raise ExportError(f"weights not found: {weights}")
    args = read_checkpoint_args(weights)
    imgsz = int(imgsz or args.get("imgsz") or 640)
    # Absolute: the int8 step runs in a temporary working folder, where a relative path would not resolve.
    out_dir = Path(out_dir).resolve()
    version = model_version or f"{stem}-{datetime.now(timezone.utc):%Y%m%d-%H%M}-{sha256_file(weights)[:8]}"
    train_args = {k: args[k] for k in ("data", "epochs", "imgsz", "batch", "model", "fraction", "seed") if k in args}
    metadata = {
        "gridwatch_model_version": version,
        "gridwatch_taxonomy_version": load_taxonomy().version,
        "gridwatch_dataset_hash": dataset_hash(args.get("data")),
        "gridwatch_train_args": json.dumps(train_args),
    }
    fp32, full_meta = export_fp32(weights, imgsz, out_dir / f"{stem}-fp32.onnx", metadata, dynamic=dynamic)
    result = ExportResult(fp32=fp32, int8=None, metadata=full_meta, imgsz=imgsz, train_args=train_args)
    if int8:
        folder = Path(calib) if calib else default_calibration_dir(args)
        if folder is None or not folder.is_dir():
            raise ExportError("int8 needs real calibration images: pass --calib DIR (or --no-int8)")
        paths = calibration_images(folder, calibration_count)
        int8_path = out_dir / f"{stem}-int8.onnx"
        if log is not None:
            log(f"int8 calibration on {len(paths)} images of {folder} ...")
        result.excluded_nodes = quantize_int8(fp32, int8_path, paths, full_meta,
                                              for_ultralytics=int8_for_ultralytics, log=log)
        result.int8 = int8_path
        result.calibration_images = len(paths)
    return result
