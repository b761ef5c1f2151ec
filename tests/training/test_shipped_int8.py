"""The shipped int8 model is in the form its card's speed was measured on."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from serving.settings import DEFAULT_MODEL_NAME, WEIGHTS_DIR
from tests.support.onnx_graph import concats_with_unequal_scales, initializers, ops_onnx_runtime_runs, widest_weight


def test_shipped_int8_concats_share_one_scale_and_every_conv_runs_int8(tmp_path: Path):
    shipped = WEIGHTS_DIR / DEFAULT_MODEL_NAME
    proto = onnx.load(str(shipped))
    assert concats_with_unequal_scales(proto) == 0
    ops = ops_onnx_runtime_runs(shipped, tmp_path)
    assert ops["QLinearConv"] == sum(n.op_type == "Conv" for n in proto.graph.node) and ops["Conv"] == 0
    assert ops["QLinearConcat"] == sum(n.op_type == "Concat" for n in proto.graph.node)


def test_shipped_int8_has_7_bit_weights_and_scores_as_fp32_does_on_this_cpu():
    """8-bit weights overflow ONNX Runtime's int8 kernel on x86 CPUs without VNNI (training.export.qdq
    WEIGHT_BITS): there the 8-bit file lost 12.5 AP50 points of garbage_pile. The file's weights lie
    within +-64, and on real garbage photos its AP50 per class is fp32's, on whatever CPU runs this."""
    from dataclasses import replace

    from detector.model import WEIGHT_BITS_KEY
    from tests.support.shared_data import DATASETS, require_shared
    from training.evaluation.evaluate import evaluate, load_eval_set, onnx_predictor

    shipped = WEIGHTS_DIR / DEFAULT_MODEL_NAME
    proto = onnx.load(str(shipped))
    assert {p.key: p.value for p in proto.metadata_props}[WEIGHT_BITS_KEY] == "7"
    assert widest_weight(initializers(proto)) == 64

    require_shared()
    photos = load_eval_set(DATASETS / "garbage_overflow_cn", source="garbage_overflow_cn")
    photos = replace(photos, images=photos.images[::12])  # about 220 photos, a spread over the folder
    ap50 = {kind: evaluate(onnx_predictor(WEIGHTS_DIR / f"gridwatch-{kind}.onnx")[0], photos).classes
            for kind in ("fp32", "int8")}
    for cls in ("garbage_pile", "bin_overflow", "garbage_bin"):
        assert ap50["int8"][cls].ap50 == pytest.approx(ap50["fp32"][cls].ap50, abs=0.03), cls
