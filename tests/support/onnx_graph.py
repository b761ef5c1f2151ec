"""Reading a QDQ int8 graph as ONNX Runtime runs it; two int8 files compared weight by weight."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from training.export.qdq import CHANNEL_ARRAYS, graph_index


def concats_with_unequal_scales(proto) -> int:
    """Quantised Concats whose inputs are read at another scale than their output is written."""
    producers, consumers, weights = graph_index(proto.graph)
    unequal = 0
    for node in proto.graph.node:
        readers = consumers.get(node.output[0], [])
        if node.op_type != "Concat" or not readers or readers[0].op_type != "QuantizeLinear":
            continue
        scales = {float(numpy_helper.to_array(weights[producers[x].input[1]])) for x in node.input}
        unequal += scales != {float(numpy_helper.to_array(weights[readers[0].input[1]]))}
    return unequal


def ops_onnx_runtime_runs(model: Path, folder: Path) -> dict[str, int]:
    """Op types of the graph ONNX Runtime executes after its own fusions."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / f"{model.stem}-as-run.onnx")
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def initializers(model: Path | onnx.ModelProto) -> dict[str, np.ndarray]:
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def widest_weight(arrays: dict[str, np.ndarray]) -> int:
    """The largest magnitude of an int8 file's quantised convolution weights (64 where they are 7-bit)."""
    return max(int(np.abs(v.astype(np.int32)).max()) for k, v in arrays.items() if k.endswith(".weight_quantized"))


# The head's last class convolution of each level in a YOLOv8n: output channel k scores class k.
SCORE_CONVS = tuple(f"model.22.cv3.{level}.2" for level in range(3))


def assert_int8_differs_only_in_rows(base: Path, grafted: Path, taught: np.ndarray) -> None:
    """Every int8 weight, scale and calibration of `grafted` is `base`'s, but the taught classes'
    rows (`taught`: one flag per class) of the class-score convolutions, which moved."""
    before, after = initializers(base), initializers(grafted)
    assert before.keys() == after.keys()
    row_arrays = {f"{conv}.{part}" for conv in SCORE_CONVS for part in CHANNEL_ARRAYS}
    assert row_arrays <= before.keys()
    moved = False
    for name, value in before.items():
        if name in row_arrays:
            assert np.array_equal(after[name][~taught], value[~taught]), f"{name}: an untaught row moved in int8"
            moved |= not np.array_equal(after[name][taught], value[taught])
        else:
            assert np.array_equal(after[name], value), f"{name} moved in the grafted int8 file"
    assert moved, "no taught row moved in the grafted int8 file"
