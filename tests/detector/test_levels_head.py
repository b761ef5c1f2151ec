"""The per-level head format (gridwatch's int8 export): decoding arithmetic and refusals.

That a real model cut at its levels detects exactly like its decoded graph is checked on
real images in tests/training/test_export.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from detector import Detector, ModelLoadError
from detector.boxes import decode_levels


def _one_hot_level(h: int, w: int, classes: int, cell: tuple[int, int], cls: int, logit: float,
                   distance_bin: int, bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    distributions = np.zeros((4 * bins, h, w), np.float32)
    distributions.reshape(4, bins, h, w)[:, distance_bin, cell[0], cell[1]] = 60.0  # softmax ~ one-hot
    logits = np.full((classes, h, w), -20.0, np.float32)
    logits[cls, cell[0], cell[1]] = logit
    return distributions, logits


def test_decode_places_the_box_at_the_cell_centre_times_the_stride():
    # A 32x64 input with a 2x4 level: stride 16. Cell (row 1, column 2), 3 bins on each side.
    level = _one_hot_level(2, 4, classes=3, cell=(1, 2), cls=1, logit=2.0, distance_bin=3)
    boxes, scores, class_ids = decode_levels([level], (32, 64), 0.25, 0.7, 300)
    centre_x, centre_y = (2 + 0.5) * 16, (1 + 0.5) * 16
    np.testing.assert_allclose(boxes, [[centre_x - 48, centre_y - 48, centre_x + 48, centre_y + 48]], atol=1e-3)
    np.testing.assert_allclose(scores, [1 / (1 + np.exp(-2.0))], rtol=1e-6)
    assert class_ids.tolist() == [1]


def test_threshold_is_on_the_score_and_levels_keep_their_own_stride():
    fine = _one_hot_level(4, 4, classes=2, cell=(0, 0), cls=0, logit=0.0, distance_bin=1)  # score 0.5
    coarse = _one_hot_level(2, 2, classes=2, cell=(1, 1), cls=1, logit=3.0, distance_bin=1)
    boxes, scores, class_ids = decode_levels([fine, coarse], (64, 64), 0.5, 0.7, 300)
    assert class_ids.tolist() == [1]  # 0.5 is not above a 0.5 threshold
    np.testing.assert_allclose(boxes, [[(1.5 - 1) * 32, (1.5 - 1) * 32, (1.5 + 1) * 32, (1.5 + 1) * 32]], atol=1e-3)
    _, scores, class_ids = decode_levels([fine, coarse], (64, 64), 0.49, 0.7, 300)
    assert class_ids.tolist() == [1, 0] and scores[1] == pytest.approx(0.5)
    empty = decode_levels([fine], (64, 64), 0.9, 0.7, 300)
    assert [part.shape for part in empty] == [(0, 4), (0,), (0,)]


def _pooling_model(path, outputs: dict[str, int]) -> None:
    """images (1,3,64,64) -> 8x8 pooled maps under the given output names, with a channel count
    each (a 1x1 Conv of zeros), so the session reports 4-D per-level outputs."""
    nodes = [helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8])]
    inits = []
    for name, channels in outputs.items():
        inits.append(helper.make_tensor(f"{name}_w", TensorProto.FLOAT, [channels, 3, 1, 1], [0.0] * channels * 3))
        nodes.append(helper.make_node("Conv", ["pooled", f"{name}_w"], [name]))
    graph = helper.make_graph(
        nodes, "levels", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, c, 8, 8]) for name, c in outputs.items()],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"names": "{0: 'cart', 1: 'sign'}", "stride": "8"})
    onnx.save(model, str(path))


def test_a_complete_levels_model_opens_and_runs(tmp_path):
    path = tmp_path / "levels.onnx"
    _pooling_model(path, {"box_distribution_0": 64, "class_logits_0": 2})
    detector = Detector(path)
    assert detector.info.head == "levels" and detector.names == {0: "cart", 1: "sign"}
    # All logits 0: every cell scores 0.5 for both classes, above the 0.25 default; the first
    # class wins the tie, as argmax does on Ultralytics' decoded output.
    found = detector(np.full((64, 64, 3), 90, np.uint8))
    assert len(found) and set(found.class_ids.tolist()) == {0}
    np.testing.assert_allclose(found.scores, 0.5)
    assert (found.xyxy >= 0).all() and (found.xyxy <= 64).all()


@pytest.mark.parametrize(("outputs", "message"), [
    ({"class_logits_0": 2}, "box_distribution_0"),
    ({"box_distribution_0": 64, "class_logits_0": 2, "class_logits_1": 3, "box_distribution_1": 64}, "disagree"),
    ({"box_distribution_0": 62, "class_logits_0": 2}, "disagree"),
    ({"box_distribution_0": 64, "class_logits_0": 3}, "names 2 classes"),
])
def test_an_incomplete_or_inconsistent_levels_model_is_refused(tmp_path, outputs, message):
    path = tmp_path / "bad.onnx"
    _pooling_model(path, outputs)
    with pytest.raises(ModelLoadError, match=message):
        Detector(path)
