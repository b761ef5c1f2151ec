"""The rebuilt YOLOv8n .pt reproduces the shared int8 COCO ONNX model on real images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tests.support.shared_data import COCO_INT8
from tests.support.training import bootstrapped_pt, source_images


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    if not COCO_INT8.is_file():
        pytest.skip(f"{COCO_INT8} not found")
    from training.offline import prepare

    prepare()
    return bootstrapped_pt(tmp_path_factory.mktemp("boot") / "boot.pt")


def _raw_outputs(pt_path, frames):
    """Raw heads of both models for the same letterboxed inputs the Detector makes."""
    from detector.boxes import letterbox_into, to_input
    from detector.model import open_session

    session, info = open_session(COCO_INT8)
    ckpt = torch.load(str(pt_path), map_location="cpu", weights_only=False)
    model = ckpt["model"].float().eval()
    canvas = np.empty((640, 640, 3), np.uint8)
    pairs = []
    for frame in frames:
        letterbox_into(frame, canvas)
        x = np.empty((1, 3, 640, 640), np.float32)
        to_input(canvas, x[0])
        (onnx_out,) = session.run(None, {info.input_name: x})
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        out = out[0] if isinstance(out, (list, tuple)) else out
        pairs.append((onnx_out[0], out[0].numpy()))
    return pairs


def test_checkpoint_loads_in_ultralytics_with_coco_names(rebuilt):
    from training.offline import ultralytics_offline

    YOLO = ultralytics_offline()
    model = YOLO(str(rebuilt))
    assert model.task == "detect"
    assert len(model.names) == 80 and model.names[0] == "person"


def test_rebuilt_model_reproduces_onnx_detections_on_real_images(rebuilt):
    from detector.boxes import box_iou, decode_raw

    frames = [cv2.imread(str(p)) for p in source_images("thela_india", 4) + source_images("garbage_overflow_cn", 4)]
    pairs = _raw_outputs(rebuilt, frames)
    matched = total = 0
    for onnx_head, torch_head in pairs:
        # Box coordinates and class scores both: the int8 activations are the only difference.
        assert np.corrcoef(onnx_head.ravel(), torch_head.ravel())[0, 1] > 0.99
        ref_boxes, ref_scores, ref_cls = decode_raw(onnx_head, 0.5, 0.7, 300)
        boxes, scores, cls = decode_raw(torch_head, 0.3, 0.7, 300)
        total += len(ref_boxes)
        if len(ref_boxes) and len(boxes):
            iou = box_iou(ref_boxes, boxes) * (ref_cls[:, None] == cls[None, :])
            matched += int((iou.max(axis=1) > 0.7).sum())
    assert total >= 5, "the chosen street images should contain confident COCO objects"
    assert matched / total >= 0.9


def test_the_shipped_default_rebuilds_as_a_trainable_start(tmp_path):
    """`gridwatch retrain` fine-tunes from weights/gridwatch-fp32.onnx: rebuilt into a .pt, its raw
    head matches the ONNX file's on real images (boxes within a few hundredths of a pixel)."""
    from detector.boxes import letterbox_into, to_input
    from detector.files import REPO_ROOT
    from detector.model import open_session
    from training.offline import prepare
    from training.promotion.retrain import default_start

    prepare()
    shipped = REPO_ROOT / "weights" / "gridwatch-fp32.onnx"
    images = source_images("garbage_overflow_cn", 8)
    pt = default_start(shipped.parent, tmp_path, images)
    assert default_start(shipped.parent, tmp_path, images) == pt  # built once per file
    session, info = open_session(shipped)
    size = info.input_hw[0]
    model = torch.load(str(pt), map_location="cpu", weights_only=False)["model"].float().eval()
    assert list(model.names.values())[:3] == ["garbage_bin", "bin_overflow", "garbage_pile"]
    canvas = np.empty((size, size, 3), np.uint8)
    for path in images[:3] + source_images("thela_india", 2):
        letterbox_into(cv2.imread(str(path)), canvas)
        x = np.empty((1, 3, size, size), np.float32)
        to_input(canvas, x[0])
        (expected,) = session.run(None, {info.input_name: x})
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        out = (out[0] if isinstance(out, (list, tuple)) else out).numpy()
        assert out.shape == expected.shape
        assert np.abs(out[:, :4] - expected[:, :4]).max() < 0.05  # box coordinates, pixels
        assert np.abs(out[:, 4:] - expected[:, 4:]).max() < 1e-4  # class scores
