"""`gridwatch export`: fp32 + static QDQ int8 with the head's post-processing kept in fp32.

Uses the bootstrapped COCO YOLOv8n (a real, trained detector) and real street images.
"""

from __future__ import annotations

import ast

import cv2
import numpy as np
import onnx
import pytest

from detector.boxes import box_iou
from detector.runtime import Detector
from tests.support.onnx_graph import concats_with_unequal_scales, ops_onnx_runtime_runs
from tests.support.shared_data import COCO_INT8
from tests.support.training import export_coco, source_images

pytestmark = pytest.mark.slow  # the shared export fixture takes 30-50 s on 2 cores


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if not COCO_INT8.is_file():
        pytest.skip(f"{COCO_INT8} not found")
    tmp = tmp_path_factory.mktemp("export")
    calib = tmp / "calib"
    calib.mkdir()
    for p in source_images("garbage_overflow_cn", 32, offset=1):
        (calib / p.name).symlink_to(p)
    return export_coco(tmp, calib=calib, model_version="test-1")


@pytest.fixture(scope="module")
def decoded_unaligned(exported, tmp_path_factory):
    """A second int8 file of the same weights, calibrated once for two tests (a calibration at
    640 px takes most of a minute here): Ultralytics' form (float input, decoded output) with
    each Concat's inputs left at their own scales. Returns the file and what it logged."""
    from training.export.export import quantize_int8

    out = tmp_path_factory.mktemp("export-decoded") / "decoded-unaligned-int8.onnx"
    lines: list[str] = []
    quantize_int8(exported.fp32, out, source_images("garbage_overflow_cn", 32, offset=1), {}, for_ultralytics=True,
                  share_scales=False, log=lines.append)
    return out, lines


def test_files_and_metadata(exported):
    assert exported.fp32.name == "coco-fp32.onnx" and exported.int8.name == "coco-int8.onnx"
    assert exported.calibration_images == 32
    for path in (exported.fp32, exported.int8):
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert ast.literal_eval(meta["names"])[0] == "person"
        assert ast.literal_eval(meta["imgsz"]) == [640, 640]
        assert meta["stride"] == "32" and meta["task"] == "detect"
        assert meta["gridwatch_model_version"] == "test-1"
        assert meta["gridwatch_taxonomy_version"]
        assert "gridwatch_dataset_hash" in meta
        # The served runtime opens it and reads the same facts.
        info = Detector(path).info
        assert info.input_hw == (640, 640) and info.version == "test-1"
        # Batch, height and width are free, int8 included: a 16:9 frame runs at 640x384.
        assert info.dynamic_hw and info.batch is None


def test_int8_is_qdq_and_ends_at_the_head_levels(exported):
    from detector.model import LEVEL_BOXES, LEVEL_CLASSES

    proto = onnx.load(str(exported.int8))
    graph = proto.graph
    ops = [n.op_type for n in graph.node]
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(ops)
    # The decode (DFL softmax, anchors, sigmoid, the final concat) is cut away: the runtime does it.
    assert "Softmax" not in ops and not set(exported.excluded_nodes) & {n.name for n in graph.node}
    names = [o.name for o in graph.output]
    assert names == [pattern.format(i) for i in range(3) for pattern in (LEVEL_BOXES, LEVEL_CLASSES)]
    by_output = {o: n for n in graph.node for o in n.output}
    # Each level's branch conv is quantised; its output leaves the graph in float.
    assert all(by_output[name].op_type == "DequantizeLinear" for name in names)
    channels = [o.type.tensor_type.shape.dim[1].dim_value for o in graph.output]
    assert channels == [64, 80] * 3  # 4 sides x 16 DFL bins; COCO's 80 classes
    # Quantisation still kept the head's post-processing in float before the cut.
    excluded = set(exported.excluded_nodes)
    assert any("Sigmoid" in n for n in excluded) and any("dfl" in n for n in excluded)
    assert not any("/cv2." in n or "/cv3." in n for n in excluded)  # the branch convs are quantised
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["gridwatch_head"] == "levels" and meta["gridwatch_input"] == "bgr-pixels"
    info = Detector(exported.int8).info
    assert info.head == "levels" and info.input_dtype == "uint8" and info.input_hw == (640, 640)
    shape = graph.input[0].type.tensor_type.shape.dim
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8 and shape[3].dim_value == 3


def test_pixel_input_is_bit_identical_to_float_planes_and_ultralytics_form_is_kept_on_request(
    exported, decoded_unaligned, tmp_path
):
    from training.export.export import cut_at_head_levels, take_pixels

    plain, lines = decoded_unaligned
    assert lines and lines[-1].startswith("  int8 calibration: 32/32 images run")  # the end, at least, is said
    info = Detector(plain).info
    assert info.head == "decoded" and info.input_dtype == "float32"  # what Ultralytics can run
    proto = onnx.load(str(plain))
    cut_at_head_levels(proto)
    planes, pixels = tmp_path / "planes.onnx", tmp_path / "pixels.onnx"
    onnx.save(proto, str(planes))
    assert take_pixels(proto)
    onnx.save(proto, str(pixels))
    assert not take_pixels(onnx.load(str(exported.fp32)))  # no input quantiser: nothing to take
    a, b = Detector(planes, score_threshold=0.001), Detector(pixels, score_threshold=0.001)
    frames = [cv2.imread(str(p)) for p in source_images("thela_india", 3) + source_images("garbage_overflow_cn", 3)]
    for frame in frames:
        x, y = a.session_input([frame]), b.session_input([frame])
        assert x.dtype == np.float32 and x.shape[1] == 3 and y.dtype == np.uint8 and y.shape[3] == 3
        for u, v in zip(a.session.run(None, {"images": x}), b.session.run(None, {"images": y})):
            assert np.array_equal(u, v)
        found_a, found_b = a(frame), b(frame)
        assert len(found_a) and np.array_equal(found_a.xyxy, found_b.xyxy)
        assert np.array_equal(found_a.scores, found_b.scores)


def test_level_outputs_decode_exactly_like_ultralytics_decoded_graph(exported, tmp_path):
    """The same fp32 graph, cut at the head's levels, gives the decoded graph's detections."""
    from training.export.export import cut_at_head_levels

    proto = onnx.load(str(exported.fp32))
    assert cut_at_head_levels(proto) == 3
    cut = tmp_path / "levels.onnx"
    onnx.save(proto, str(cut))
    frames = [cv2.imread(str(p)) for p in source_images("thela_india", 4) + source_images("garbage_overflow_cn", 4)]
    frames.append(cv2.resize(frames[0], (1920, 1080)))  # another shape, batched beside the others
    for threshold in (0.25, 0.05):
        decoded = Detector(exported.fp32, score_threshold=threshold).detect(frames)
        levels = Detector(cut, score_threshold=threshold).detect(frames)
        assert Detector(cut).info.head == "levels" and sum(map(len, decoded)) > 10
        for a, b in zip(decoded, levels):
            assert len(a) == len(b) and (a.class_ids == b.class_ids).all()
            np.testing.assert_allclose(b.xyxy, a.xyxy, atol=1e-3)
            np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
            assert (b.scores > threshold).all()


def test_int8_scores_not_degenerate_and_agree_with_fp32(exported):
    fp32 = Detector(exported.fp32, score_threshold=0.25)
    int8 = Detector(exported.int8, score_threshold=0.25)
    frames = [cv2.imread(str(p)) for p in source_images("thela_india", 6) + source_images("garbage_overflow_cn", 6)]
    best_int8 = 0.0
    matched = total = 0
    for frame in frames:
        a, b = fp32(frame), int8(frame)
        best_int8 = max(best_int8, float(b.scores.max(initial=0)))
        confident = a[a.scores > 0.5]
        total += len(confident)
        if len(confident) and len(b):
            iou = box_iou(confident.xyxy, b.xyxy) * (confident.class_ids[:, None] == b.class_ids[None, :])
            matched += int((iou.max(axis=1) > 0.5).sum())
    assert total >= 5, "these street images hold confident COCO objects for the fp32 model"
    assert best_int8 > 0.3  # whole-graph U8S8 quantisation gives ~0 here
    assert matched / total >= 0.8


def test_export_needs_real_calibration_images(tmp_path, exported):
    from training.export.export import ExportError, quantize_int8

    few = source_images("garbage_overflow_cn", 5)
    with pytest.raises(ExportError, match="at least 32"):
        quantize_int8(exported.fp32, tmp_path / "x.onnx", few, {})
    assert not (tmp_path / "x.onnx").exists()


def test_dfl_rewrite_keeps_ultralytics_outputs_on_real_images(exported, tmp_path):
    """The shipped graph computes the DFL with a last-axis Softmax; its raw outputs must
    equal Ultralytics' own export of the same weights."""
    import onnxruntime as ort

    from training.export.export import dfl_softmax_on_last_axis, letterboxed_inputs
    from training.offline import ultralytics_offline

    softmaxes = [n for n in onnx.load(str(exported.fp32)).graph.node if n.op_type == "Softmax"]
    assert softmaxes and all(a.i == -1 for n in softmaxes for a in n.attribute if a.name == "axis")

    YOLO = ultralytics_offline()
    pt = tmp_path / "coco.pt"
    pt.write_bytes((exported.fp32.parent.parent / "coco.pt").read_bytes())
    raw = YOLO(str(pt)).export(format="onnx", imgsz=640, simplify=True, dynamic=False, batch=1, device="cpu")
    raw_proto = onnx.load(raw)
    assert any(a.i == 1 for n in raw_proto.graph.node if n.op_type == "Softmax" for a in n.attribute)
    assert dfl_softmax_on_last_axis(raw_proto) == 1
    assert dfl_softmax_on_last_axis(raw_proto) == 0  # nothing left to rewrite

    original = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    shipped = ort.InferenceSession(str(exported.fp32), providers=["CPUExecutionProvider"])
    frames = source_images("garbage_overflow_cn", 3) + source_images("thela_india", 2)
    for x in letterboxed_inputs(frames, (640, 640)):
        a = original.run(None, {"images": x})[0]
        b = shipped.run(None, {"images": x})[0]
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-3)


def test_calibration_says_how_many_images_it_has_run(monkeypatch):
    """Progress while ORT calibrates: N of M images every few seconds, not a line per image."""
    import training.export.export as export_module

    clock = iter(float(t) for t in range(0, 1000, 4))  # each call 4 s later than the one before
    monkeypatch.setattr(export_module.time, "monotonic", lambda: next(clock))
    paths = source_images("garbage_overflow_cn", 6)
    lines: list[str] = []
    reader = export_module._Calibration("images", paths, (64, 64), lines.append, every_s=10)
    handed = 0
    while reader.get_next() is not None:
        handed += 1
    assert handed == 6
    progress = [line for line in lines if "about" in line]
    # a line once 10 s have passed since the last, counting the images already run
    assert progress == ["  int8 calibration: 2/6 images (12 s, about 24 s left)",
                        "  int8 calibration: 5/6 images (24 s, about 5 s left)"]
    assert lines[-1].startswith("  int8 calibration: 6/6 images run (28 s)")


def test_concats_copy_instead_of_requantising_and_every_conv_stays_int8(exported, decoded_unaligned, tmp_path):
    """share_concat_scales: one scale per Concat, so ONNX Runtime's QLinearConcat copies; the
    biases of the convolutions reading a rescaled tensor follow, so none falls back to float."""
    from training.export.export import cut_at_head_levels
    from training.export.qdq import share_concat_scales

    decoded, _ = decoded_unaligned
    proto = onnx.load(str(decoded))
    cut_at_head_levels(proto)  # the detector's graph: the decode's float Conv (DFL) goes with the cut
    unaligned = tmp_path / "unaligned.onnx"
    onnx.save(proto, str(unaligned))
    convs = sum(n.op_type == "Conv" for n in proto.graph.node)
    before = concats_with_unequal_scales(proto)
    assert before >= 5  # calibration gives every tensor its own range
    assert concats_with_unequal_scales(onnx.load(str(exported.int8))) == 0  # the export aligns them
    assert share_concat_scales(proto) >= before
    assert concats_with_unequal_scales(proto) == 0 and share_concat_scales(proto) == 0
    aligned = tmp_path / "aligned.onnx"
    onnx.save(proto, str(aligned))
    for model in (unaligned, aligned):
        ops = ops_onnx_runtime_runs(model, tmp_path)
        assert ops["QLinearConv"] == convs and ops["Conv"] == 0 and ops["QLinearConcat"] >= before
    # The same objects on real street images, at about the same scores.
    a, b = Detector(unaligned), Detector(aligned)
    frames = [cv2.imread(str(p)) for p in source_images("thela_india", 6) + source_images("garbage_overflow_cn", 6)]
    matched = total = 0
    for frame in frames:
        found_a, found_b = a(frame), b(frame)
        confident = found_a[found_a.scores > 0.4]
        total += len(confident)
        if len(confident) and len(found_b):
            iou = box_iou(confident.xyxy, found_b.xyxy) * (confident.class_ids[:, None] == found_b.class_ids[None, :])
            matched += int((iou.max(axis=1) > 0.7).sum())
    assert total >= 5 and matched / total >= 0.9
