"""The shipped int8 model is in the form its card's speed was measured on."""

from __future__ import annotations

from pathlib import Path

import onnx

from serving.settings import DEFAULT_MODEL_NAME, WEIGHTS_DIR
from tests.support.onnx_graph import concats_with_unequal_scales, ops_onnx_runtime_runs


def test_shipped_int8_concats_share_one_scale_and_every_conv_runs_int8(tmp_path: Path):
    shipped = WEIGHTS_DIR / DEFAULT_MODEL_NAME
    proto = onnx.load(str(shipped))
    assert concats_with_unequal_scales(proto) == 0
    ops = ops_onnx_runtime_runs(shipped, tmp_path)
    assert ops["QLinearConv"] == sum(n.op_type == "Conv" for n in proto.graph.node) and ops["Conv"] == 0
    assert ops["QLinearConcat"] == sum(n.op_type == "Concat" for n in proto.graph.node)
