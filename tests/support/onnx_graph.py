"""Reading a QDQ int8 graph as ONNX Runtime runs it."""

from __future__ import annotations

import collections
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import numpy_helper

from training.export.qdq import graph_index


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
