"""The Detector contract, and agreement with Ultralytics' own predict on real images."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from detector import Detections, Detector, InvalidImageError, ModelLoadError
from detector.boxes import box_iou
from tests.support.shared_data import COCO_INT8, camera_frame, real_images


@pytest.fixture(scope="module")
def coco() -> Detector:
    return Detector(COCO_INT8)


@pytest.fixture(scope="module")
def street_frames() -> list[np.ndarray]:
    paths = real_images("thela_india", 12) + real_images("facade_signs_spb", 10) + real_images("garbage_overflow_cn", 8)
    return [cv2.imread(str(p)) for p in paths]


def _match_rate(a: Detections, b: Detections, iou_min: float = 0.9) -> tuple[float, list[float]]:
    """Share of a's boxes with a same-class box in b at IoU >= iou_min, and their score gaps."""
    if len(a) == 0:
        return 1.0, []
    iou = box_iou(a.xyxy, b.xyxy)
    same = a.class_ids[:, None] == b.class_ids[None, :]
    iou = np.where(same, iou, 0)
    matched, gaps = 0, []
    for i in range(len(a)):
        if iou.shape[1] and iou[i].max() >= iou_min:
            matched += 1
            gaps.append(abs(float(a.scores[i]) - float(b.scores[iou[i].argmax()])))
    return matched / len(a), gaps


def test_names_and_geometry_come_from_metadata(coco: Detector):
    assert coco.names[0] == "person" and coco.names[7] == "truck" and len(coco.names) == 80
    assert coco.input_size == (640, 640)
    assert coco.info.batch == 1


def test_matches_ultralytics_predict_on_real_images(coco: Detector, street_frames):
    from ultralytics import YOLO

    reference = YOLO(str(COCO_INT8), task="detect")
    ours_all, theirs_all = [], []
    total_ours = total_theirs = 0
    gaps: list[float] = []
    for frame in street_frames:
        ours = coco(frame)
        r = reference.predict(frame, imgsz=640, conf=0.25, iou=0.7, verbose=False)[0].boxes
        theirs = Detections(
            xyxy=r.xyxy.numpy().astype(np.float32),
            scores=r.conf.numpy().astype(np.float32),
            class_ids=r.cls.numpy().astype(np.int64),
            names=coco.names,
        )
        rate_ours, g = _match_rate(ours, theirs)
        rate_theirs, _ = _match_rate(theirs, ours)
        ours_all.append(rate_ours * len(ours))
        theirs_all.append(rate_theirs * len(theirs))
        total_ours += len(ours)
        total_theirs += len(theirs)
        gaps += g
    assert total_ours > 50, "too few detections on real street images for a meaningful comparison"
    assert sum(ours_all) / total_ours >= 0.98
    assert sum(theirs_all) / total_theirs >= 0.98
    assert max(gaps) <= 0.02


def test_batch_equals_single_frames(coco: Detector, street_frames):
    frames = street_frames[:4]
    batched = coco.detect(frames)
    for frame, result in zip(frames, batched):
        single = coco(frame)
        np.testing.assert_allclose(single.xyxy, result.xyxy, atol=1e-3)
        np.testing.assert_array_equal(single.class_ids, result.class_ids)


def test_boxes_are_in_original_frame_pixels(coco: Detector, street_frames):
    frame = street_frames[0]
    small = coco(frame)
    # The same scene at twice the size must give boxes twice as large.
    big = coco(cv2.resize(frame, (frame.shape[1] * 2, frame.shape[0] * 2), interpolation=cv2.INTER_LINEAR))
    assert len(small) > 0
    iou = box_iou(small.xyxy * 2, big.xyxy)
    assert (iou.max(axis=1) > 0.85).mean() >= 0.8
    h, w = frame.shape[:2]
    assert (small.xyxy[:, [0, 2]] <= w).all() and (small.xyxy[:, [1, 3]] <= h).all()
    assert (small.xyxy >= 0).all()


def test_any_frame_size_and_empty_scene(coco: Detector):
    grey = np.full((37, 1500, 3), 127, np.uint8)
    result = coco(grey)
    assert len(result) == 0 and result.xyxy.shape == (0, 4)
    assert result.xyxy.dtype == np.float32 and result.scores.dtype == np.float32


@pytest.mark.parametrize("shape", [(1, 2000, 3), (1500, 1, 3), (2, 2000, 3), (2, 30000, 3), (1, 1, 3)])
def test_a_sliver_of_a_frame_is_detected_on_not_refused(coco: Detector, shape):
    """A side that scales below one pixel still gets one (it rounded to none, and resizing to
    nothing raised, a 500 on /v1/detect and a failed batch for every camera in it)."""
    sliver = np.full(shape, 127, np.uint8)
    found = coco.detect([sliver, np.full((360, 640, 3), 127, np.uint8)])
    assert [len(d) for d in found] == [0, 0]
    check = coco.tiled_check(sliver)
    check.run(None)
    assert check.images >= 1 and len(check.result) == 0


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((64, 64), np.uint8), "HxWx3"),
        (np.zeros((64, 64, 4), np.uint8), "HxWx3"),
        (np.zeros((0, 64, 3), np.uint8), "empty"),
        ("not an image", "numpy array"),
    ],
)
def test_bad_frames_are_refused_clearly(coco: Detector, frame, message):
    with pytest.raises(InvalidImageError, match=message):
        coco.detect([frame])


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Detector(tmp_path / "nope.onnx")


def test_corrupt_model_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelLoadError, match="cannot load"):
        Detector(path)


def test_non_detection_model_is_refused(tmp_path):
    # A valid ONNX classifier-shaped graph: image in, (1, 1000) out.
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1])
    graph = helper.make_graph([helper.make_node("Reshape", ["images", "shape"], ["flat"]),
                               helper.make_node("Slice", ["flat", "starts", "ends"], ["logits"])],
                              "classifier", [inp], [out], [shape,
                              helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
                              helper.make_tensor("ends", TensorProto.INT64, [1], [1000])])
    path = tmp_path / "classifier.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelLoadError, match="not a detection model"):
        Detector(path)


@pytest.fixture(scope="module")
def dynamic_fp32_model(tmp_path_factory):
    """An fp32, dynamic-batch Ultralytics export of the bootstrapped COCO model."""
    from training.fit.bootstrap import bootstrap

    out = tmp_path_factory.mktemp("dynamic")
    pt = bootstrap(COCO_INT8, out / "coco.pt")
    from ultralytics import YOLO

    exported = YOLO(str(pt)).export(format="onnx", dynamic=True, imgsz=320, simplify=False, verbose=False)
    return exported


def _spy_on_runs(det: Detector) -> list[tuple[int, ...]]:
    """The input shape of each session run (plain or bound) the detector makes."""
    calls: list[tuple[int, ...]] = []
    real_run = det._run

    def spy(buffers, batch):
        calls.append(batch.shape)
        return real_run(buffers, batch)

    det._run = spy
    return calls


def test_dynamic_batch_runs_as_one_inference(dynamic_fp32_model, street_frames):
    det = Detector(dynamic_fp32_model, max_batch=8)
    assert det.info.batch is None and det.info.dynamic_hw and det.input_size == (320, 320)
    frames = [camera_frame(f) for f in street_frames[:5]]
    singles = [det(frame) for frame in frames]
    calls = _spy_on_runs(det)
    batched = det.detect(frames)
    # 16:9 frames at 320 need 320x192 (180 rounded up to the stride), not the padded square.
    assert calls == [(5, 3, 192, 320)]
    for single, result in zip(singles, batched):
        np.testing.assert_allclose(single.xyxy, result.xyxy, atol=0.05)
        np.testing.assert_allclose(single.scores, result.scores, atol=1e-3)


def test_mixed_frame_shapes_batch_by_input_shape(dynamic_fp32_model, street_frames):
    det = Detector(dynamic_fp32_model, max_batch=8)
    frames = [camera_frame(street_frames[0]), street_frames[1], camera_frame(street_frames[2]), street_frames[3]]
    singles = [det(frame) for frame in frames]
    plans = [det.input_plan(frame)[0] for frame in frames]
    calls = _spy_on_runs(det)
    results = det.detect(frames)
    assert sorted(c[2:] for c in calls) == sorted(set(plans)) and sum(c[0] for c in calls) == len(frames)
    for single, result in zip(singles, results):  # results come back in the caller's order
        np.testing.assert_allclose(single.xyxy, result.xyxy, atol=0.05)


def test_dynamic_model_runs_at_another_size_static_refuses(dynamic_fp32_model, coco, street_frames):
    small = Detector(dynamic_fp32_model, imgsz=256)
    frame = camera_frame(street_frames[0])
    assert small.input_size == (256, 256) and small.input_plan(frame)[0] == (160, 256)
    calls = _spy_on_runs(small)
    small(frame)
    assert calls == [(1, 3, 160, 256)]
    with pytest.raises(ModelLoadError, match="fixed 640x640 input"):
        Detector(COCO_INT8, imgsz=320)
    with pytest.raises(ModelLoadError, match="multiple of the model's stride"):
        Detector(dynamic_fp32_model, imgsz=300)


def test_rect_input_matches_ultralytics_predict(dynamic_fp32_model, street_frames):
    """Ultralytics' predict also letterboxes a dynamic model's frame to the stride only."""
    from ultralytics import YOLO

    det = Detector(dynamic_fp32_model)
    reference = YOLO(str(dynamic_fp32_model), task="detect")
    compared = 0
    for frame in [camera_frame(f) for f in street_frames[:4]] + street_frames[10:14]:
        ours = det(frame)
        r = reference.predict(frame, imgsz=320, conf=0.25, iou=0.7, verbose=False)[0].boxes
        assert len(ours) == len(r)
        order = np.argsort(-r.conf.numpy(), kind="stable")
        np.testing.assert_allclose(ours.scores, r.conf.numpy()[order], atol=1e-3)
        np.testing.assert_allclose(ours.xyxy, r.xyxy.numpy()[order], atol=0.1)
        compared += len(ours)
    assert compared > 10


def test_degenerate_head_is_bounded_and_ordered():
    from detector.boxes import decode_raw

    rng = np.random.default_rng(0)
    head = np.empty((84, 8400), np.float32)
    head[:2] = rng.uniform(0, 640, (2, 8400))
    head[2:4] = rng.uniform(4, 60, (2, 8400))
    head[4:] = rng.uniform(0.3, 0.9, (80, 8400))  # every anchor scores high for every class
    boxes, scores, class_ids = decode_raw(head, 0.25, 0.7, 300)
    assert len(boxes) == len(scores) == len(class_ids) == 300
    assert (np.diff(scores) <= 0).all()


def test_one_detector_is_safe_to_share_between_threads(coco: Detector, street_frames):
    from concurrent.futures import ThreadPoolExecutor

    frames = street_frames[:6]
    expected = [coco(f) for f in frames]
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(lambda f: coco(f), frames * 3))
    for i, result in enumerate(got):
        want = expected[i % len(frames)]
        np.testing.assert_allclose(result.xyxy, want.xyxy, atol=1e-3)
        np.testing.assert_array_equal(result.class_ids, want.class_ids)


@pytest.mark.parametrize("spinning", [True, False])
def test_the_pool_does_not_hold_a_core_after_a_run(spinning, street_frames):
    """A spinning pool (the default: each run's parallel sections start without a wake-up) kept
    spinning for about 27 ms of a core after each run, taking the core the stream readers and
    our own resize need between frames; it now stops when the run ends."""
    import time

    detector = Detector(COCO_INT8, spinning=spinning)
    for frame in street_frames[:3]:
        detector(frame)
    cpu = time.process_time()
    time.sleep(0.05)
    assert time.process_time() - cpu < 0.01


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    from detector.model import cpu_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx2 fma\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse4_2 avx2 fma\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse4_2", "avx2", "fma"}
    assert cpu_flags(tmp_path / "absent") is None
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert cpu_flags(tmp_path / "arm") is None  # no "flags" line: unknown, never a warning
